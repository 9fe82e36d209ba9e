//! The client-id index's durable state (key `j`): its runs, the merges in
//! progress and how far the log is indexed, in a versioned big-endian
//! encoding.

use crate::recover::corrupt;
use crate::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) tier: u8,
    pub(super) pairs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Merge {
    pub(super) inputs: Vec<u64>,
    pub(super) output: u64,
    /// Tier of the output.
    pub(super) tier: u8,
    pub(super) slices: u64,
    pub(super) done: u64,
    pub(super) written: u64,
}

/// The durable state (`j`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Every own event up to this seq is in a run.
    pub(super) indexed_upto: u64,
    pub(super) next_run: u64,
    /// Runs lookups read (merge inputs stay here until the merge is done).
    pub(super) runs: Vec<Run>,
    pub(super) merges: Vec<Merge>,
    /// Merged-away runs whose blocks are being deleted.
    pub(super) dead: Vec<u64>,
}

impl Meta {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = vec![1u8];
        let mut put = |x: u64| v.extend_from_slice(&x.to_be_bytes());
        put(self.indexed_upto);
        put(self.next_run);
        put(self.runs.len() as u64);
        for r in &self.runs {
            put(r.id);
            put(u64::from(r.tier));
            put(r.pairs);
        }
        put(self.merges.len() as u64);
        for m in &self.merges {
            put(m.inputs.len() as u64);
            for i in &m.inputs {
                put(*i);
            }
            put(m.output);
            put(u64::from(m.tier));
            put(m.slices);
            put(m.done);
            put(m.written);
        }
        put(self.dead.len() as u64);
        for d in &self.dead {
            put(*d);
        }
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let bad = || corrupt("malformed client-id index record");
        if v.first() != Some(&1) {
            return Err(bad());
        }
        let mut at = 1usize;
        let mut get = || -> Result<u64, StoreError> {
            let x = v.get(at..at + 8).ok_or_else(bad)?;
            at += 8;
            Ok(u64::from_be_bytes(x.try_into().expect("8 bytes")))
        };
        let small = |x: u64| {
            usize::try_from(x)
                .ok()
                .filter(|n| *n <= 1 << 16)
                .ok_or_else(bad)
        };
        let tier = |x: u64| u8::try_from(x).map_err(|_| bad());
        let indexed_upto = get()?;
        let next_run = get()?;
        let mut runs = Vec::new();
        for _ in 0..small(get()?)? {
            runs.push(Run {
                id: get()?,
                tier: tier(get()?)?,
                pairs: get()?,
            });
        }
        let mut merges = Vec::new();
        for _ in 0..small(get()?)? {
            let inputs = (0..small(get()?)?)
                .map(|_| get())
                .collect::<Result<Vec<_>, _>>()?;
            merges.push(Merge {
                inputs,
                output: get()?,
                tier: tier(get()?)?,
                slices: get()?,
                done: get()?,
                written: get()?,
            });
        }
        let dead = (0..small(get()?)?)
            .map(|_| get())
            .collect::<Result<Vec<_>, _>>()?;
        if at != v.len() {
            return Err(bad());
        }
        Ok(Self {
            indexed_upto,
            next_run,
            runs,
            merges,
            dead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_and_damage_is_refused() {
        let meta = Meta {
            indexed_upto: 77,
            next_run: 9,
            runs: vec![
                Run {
                    id: 3,
                    tier: 1,
                    pairs: 40,
                },
                Run {
                    id: 8,
                    tier: 0,
                    pairs: 16,
                },
            ],
            merges: vec![Merge {
                inputs: vec![4, 5, 6],
                output: 7,
                tier: 1,
                slices: 5,
                done: 2,
                written: 19,
            }],
            dead: vec![1, 2],
        };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes).unwrap(), meta);
        assert_eq!(
            Meta::decode(&Meta::default().encode()).unwrap(),
            Meta::default()
        );
        for cut in 0..bytes.len() {
            assert!(Meta::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Meta::decode(&longer).is_err());
        let mut other_version = bytes;
        other_version[0] = 2;
        assert!(Meta::decode(&other_version).is_err());
    }
}
