//! The chunk index held against the log: what the log implies, one compact
//! entry per chunk and origin, against what the stored index names — read
//! by a thread of its own while the log is read, and compared after.

use std::collections::HashMap;

use gridsync_store::kv::Kv;
use gridsync_store::layout;

use super::{origin_seq, Auditor};

/// One chunk as the chunk index names it, within its origin: `(last seq,
/// log offset, first seq)` — 24 bytes a chunk, where a key and value pair
/// each with its own allocations took several times that at ten million.
type IndexedChunk = (u64, u64, u64);

/// The origin and seq a problem names.
type Named = (Option<String>, Option<u64>);

const EXTRA: &str = "the chunk index points at a log entry that does not hold this chunk (entries moved or altered)";

/// The chunk index the log implies: per origin (by id), its chunks in log
/// order — seq order, unless the log is damaged.
#[derive(Default)]
pub(super) struct Expected {
    ids: HashMap<String, usize>,
    origins: Vec<(String, Vec<IndexedChunk>)>,
}

impl Expected {
    /// The chunk `first..=last` of `origin` is log entry `offset`.
    pub(super) fn push(&mut self, origin: &str, last: u64, offset: u64, first: u64) {
        let id = match self.ids.get(origin) {
            Some(id) => *id,
            None => {
                self.ids.insert(origin.to_owned(), self.origins.len());
                self.origins.push((origin.to_owned(), Vec::new()));
                self.origins.len() - 1
            }
        };
        self.origins[id].1.push((last, offset, first));
    }
}

/// The stored chunk index, per origin in key order, and the entries that
/// do not parse.
pub(super) struct Stored {
    origins: Vec<(String, Vec<IndexedChunk>)>,
    malformed: Vec<Named>,
}

/// Reads the whole stored chunk index, entry by entry (it runs beside
/// the log's reading, so that its time is not added to it). An entry
/// naming several chunks (those one pack holds) is taken apart into its
/// chunks; a malformed one points nowhere.
pub(super) fn read_stored(kv: &dyn Kv) -> Stored {
    let mut stored = Stored {
        origins: Vec::new(),
        malformed: Vec::new(),
    };
    // Entries as read (`Kv::visit`): nothing copied or allocated for an
    // entry but the chunks it names. A read error ends the reading: what
    // was not read is reported as lacking.
    let _ = kv.visit(&[layout::INDEX], &[layout::INDEX], &mut |k, v| {
        let Some((origin, _, _)) = layout::origin_seq_of_key(k) else {
            stored.malformed.push(origin_seq(k));
            return true;
        };
        let origin = String::from_utf8_lossy(origin);
        let new = stored.origins.last().is_none_or(|(o, _)| *o != origin);
        if new {
            stored.origins.push((origin.into_owned(), Vec::new()));
        }
        let list = &mut stored.origins.last_mut().expect("one at least").1;
        if layout::index_chunks_into(k, v, list).is_none() {
            if new {
                stored.origins.pop();
            }
            stored.malformed.push(origin_seq(k));
        }
        true
    });
    stored
}

impl Auditor<'_> {
    /// The chunk index must match the chunks: per origin, the chunks the
    /// log implies and those the stored index names, both sorted, walked
    /// side by side. A chunk only the index names points at an entry that
    /// does not hold it; a chunk only the log holds is lacking from the
    /// index (memory: the two lists, 24 bytes a chunk each).
    pub(super) fn check_index(&mut self, stored: Stored) {
        let mut expected = std::mem::take(&mut self.index_expected);
        let mut wrong: Vec<(Named, &str)> =
            stored.malformed.into_iter().map(|at| (at, EXTRA)).collect();
        let mut lacking: Vec<(String, u64)> = Vec::new();
        let mut seen = vec![false; expected.origins.len()];
        for (origin, mut theirs) in stored.origins {
            let ours = match expected.ids.get(&origin) {
                Some(id) => {
                    seen[*id] = true;
                    &mut expected.origins[*id].1
                }
                None => &mut Vec::new(),
            };
            let (extra, lacks) = compare(ours, &mut theirs);
            wrong.extend(
                extra
                    .into_iter()
                    .map(|l| ((Some(origin.clone()), Some(l)), EXTRA)),
            );
            lacking.extend(lacks.into_iter().map(|l| (origin.clone(), l)));
        }
        for ((origin, ours), seen) in expected.origins.iter_mut().zip(seen) {
            if !seen {
                sort_unless_sorted(ours);
                lacking.extend(ours.iter().map(|c| (origin.clone(), c.0)));
            }
        }
        let lacking = lacking
            .into_iter()
            .map(|(o, l)| ((Some(o), Some(l)), "the chunk index lacks this chunk"));
        wrong.extend(lacking);
        for ((origin, seq), message) in wrong {
            self.report.problem(
                "index_mismatch",
                origin.as_deref(),
                seq,
                None,
                message.into(),
            );
        }
    }
}

/// One origin's chunks as the log implies them (`ours`) against those the
/// stored index names (`theirs`), both sorted and walked side by side:
/// the last seqs of the chunks only the index names (in its order), and of
/// those it lacks (in the log's). The same as set differences, without a
/// lookup per chunk.
fn compare(ours: &mut [IndexedChunk], theirs: &mut [IndexedChunk]) -> (Vec<u64>, Vec<u64>) {
    sort_unless_sorted(ours);
    sort_unless_sorted(theirs);
    let (mut extra, mut lacking) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (ours.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if b < a => {
                extra.push(b.0);
                j += 1;
            }
            (Some(a), _) => {
                lacking.push(a.0);
                i += 1;
            }
            (None, Some(b)) => {
                extra.push(b.0);
                j += 1;
            }
            (None, None) => return (extra, lacking),
        }
    }
}

/// Sorted as the walk needs; a log or index in order (every undamaged
/// one) is only checked.
fn sort_unless_sorted(list: &mut [IndexedChunk]) {
    if !list.is_sorted() {
        list.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunks() -> impl Strategy<Value = Vec<IndexedChunk>> {
        prop::collection::vec((0u64..12, 0u64..4, 0u64..3), 0..24)
    }

    proptest! {
        /// The walk finds exactly the multiset differences, whatever the
        /// order either list comes in (a damaged log or index is out of
        /// order) and with repeats.
        #[test]
        fn the_walk_is_the_set_difference(mut ours in chunks(), mut theirs in chunks()) {
            let difference = |a: &[IndexedChunk], b: &[IndexedChunk]| {
                let mut left = b.to_vec();
                let mut out: Vec<u64> = Vec::new();
                let mut a = a.to_vec();
                a.sort_unstable();
                for c in a {
                    match left.iter().position(|x| *x == c) {
                        Some(at) => {
                            left.swap_remove(at);
                        }
                        None => out.push(c.0),
                    }
                }
                out
            };
            let extra_want = difference(&theirs, &ours);
            let lacking_want = difference(&ours, &theirs);
            let (extra, lacking) = compare(&mut ours, &mut theirs);
            prop_assert_eq!(extra, extra_want);
            prop_assert_eq!(lacking, lacking_want);
        }
    }
}
