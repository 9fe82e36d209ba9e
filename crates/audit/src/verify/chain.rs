//! One origin's chain as the audit rebuilds it from the log.

use std::collections::{BTreeMap, BTreeSet};

use gridsync_model::{Hash32, ZERO_HASH};

/// Largest gap in an origin's seqs the audit pads to keep indexing by seq.
const GAP_FILL_MAX: u64 = 1 << 20;

pub(super) struct Chain {
    pub seq: u64,
    pub hash: Hash32,
    /// The first 8 bytes of every event's hash, by seq (telling a
    /// `duplicate` from a `fork` where a chunk overlaps the chain): 8
    /// bytes an event, where whole hashes took 32 (320 MB at 10 M events).
    pub prefixes: Vec<u64>,
    /// Whole hashes of the seqs a reference names (asked for before the
    /// log is read), for comparing with it.
    pub kept: BTreeMap<u64, Hash32>,
    pub events: u64,
    pub first: Option<u64>,
}

/// The first 8 bytes of `h`.
pub(super) fn prefix(h: &Hash32) -> u64 {
    u64::from_be_bytes(h[..8].try_into().expect("8 of 32 bytes"))
}

impl Chain {
    pub(super) fn empty() -> Self {
        Self {
            seq: 0,
            hash: ZERO_HASH,
            prefixes: Vec::new(),
            kept: BTreeMap::new(),
            events: 0,
            first: None,
        }
    }

    /// Takes the seqs of a chunk starting at `first` beyond the chain's
    /// end, keeping the whole hash of those in `wanted`.
    pub(super) fn extend(&mut self, first: u64, hashes: &[Hash32], wanted: Option<&BTreeSet<u64>>) {
        for (i, h) in hashes.iter().enumerate() {
            let seq = first + i as u64;
            if seq > self.seq {
                // A tampered seq far ahead (up to u64::MAX) must not make the
                // audit fill billions of placeholders: such a jump is
                // reported (as a gap) and its hashes are not kept.
                let gap = seq - 1 - (self.prefixes.len() as u64).min(seq - 1);
                if gap > GAP_FILL_MAX {
                    continue;
                }
                while (self.prefixes.len() as u64) + 1 < seq {
                    self.prefixes.push(0);
                }
                self.prefixes.push(prefix(h));
                if wanted.is_some_and(|w| w.contains(&seq)) {
                    self.kept.insert(seq, *h);
                }
                self.events += 1;
            }
        }
        let last = first + hashes.len() as u64 - 1;
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.seq = self.seq.max(last);
        self.hash = *hashes.last().expect("non-empty");
    }
}
