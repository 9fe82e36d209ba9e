//! The chunk index held against the log: what the log implies, per
//! origin, against what the stored index names — the index read by a
//! thread of its own while the log is read, and compared after.
//!
//! Each side is kept as a digest per origin, not as a list: BLAKE3 over
//! its chunks' places `(last seq, log offset, first seq)` in order. Two
//! origins whose places both came in order and hash alike hold the same
//! places. Only an origin where they differ (or came out of order: a
//! damaged log or index) is read again, as lists, to name the chunks at
//! fault. Kept as lists for every origin, the two took 48 bytes a chunk:
//! ~250 MB of the ~455 MB an audit of 10 M events held, every page of it
//! touched fresh (BENCHMARKS.md, "The chunk index compared by digests;
//! pages and results freed where they were made").

use std::collections::{BTreeSet, HashMap, HashSet};

use gridsync_model::chunk::ChunkView;
use gridsync_model::Hash32;
use gridsync_store::kv::Kv;
use gridsync_store::layout;

use super::read::{read_pages, Item};
use super::{origin_seq, Auditor};

/// One chunk as the chunk index names it, within its origin: `(last seq,
/// log offset, first seq)`.
type IndexedChunk = (u64, u64, u64);

/// The origin and seq a problem names.
type Named = (Option<String>, Option<u64>);

const EXTRA: &str = "the chunk index points at a log entry that does not hold this chunk (entries moved or altered)";

/// Bytes of places gathered before they are hashed (one BLAKE3 call per
/// ~170 chunks, not one per chunk).
const GATHER_BYTES: usize = 24 * 170;

/// One origin's chunk places, hashed in the order they come.
pub(super) struct Places {
    hasher: blake3::Hasher,
    gathered: Vec<u8>,
    last: Option<IndexedChunk>,
    sorted: bool,
}

impl Places {
    fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            gathered: Vec::new(),
            last: None,
            sorted: true,
        }
    }

    fn push(&mut self, c: IndexedChunk) {
        if self.last.is_some_and(|l| c < l) {
            self.sorted = false;
        }
        self.last = Some(c);
        if self.gathered.len() + 24 > GATHER_BYTES {
            self.hasher.update(&self.gathered);
            self.gathered.clear();
        }
        for n in [c.0, c.1, c.2] {
            self.gathered.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// The digest of the places, when they came in order (sorted, a
    /// digest stands for the set: two equal sets sort alike).
    fn digest(mut self) -> Option<Hash32> {
        self.sorted.then(|| {
            self.hasher.update(&self.gathered);
            *self.hasher.finalize().as_bytes()
        })
    }
}

/// The chunk index the log implies: per origin (by id), its chunks' places.
#[derive(Default)]
pub(super) struct Expected {
    ids: HashMap<String, usize>,
    origins: Vec<(String, Places)>,
    /// The origin of the last chunk pushed (consecutive chunks are often
    /// one origin's: no lookup then).
    latest: Option<usize>,
}

impl Expected {
    /// The chunk `first..=last` of `origin` is log entry `offset`.
    pub(super) fn push(&mut self, origin: &str, last: u64, offset: u64, first: u64) {
        let id = match self.latest {
            Some(id) if self.origins[id].0 == origin => id,
            _ => match self.ids.get(origin) {
                Some(id) => *id,
                None => {
                    self.ids.insert(origin.to_owned(), self.origins.len());
                    self.origins.push((origin.to_owned(), Places::new()));
                    self.origins.len() - 1
                }
            },
        };
        self.latest = Some(id);
        self.origins[id].1.push((last, offset, first));
    }
}

/// The stored chunk index, per origin in key order, and the entries that
/// do not parse.
pub(super) struct Stored {
    origins: Vec<(String, Places)>,
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
    let mut chunks = Vec::new();
    // Entries as read (`Kv::visit`): nothing copied or allocated for an
    // entry. A read error ends the reading: what was not read is reported
    // as lacking.
    let _ = kv.visit(&[layout::INDEX], &[layout::INDEX], &mut |k, v| {
        let Some((origin, _, _)) = layout::origin_seq_of_key(k) else {
            stored.malformed.push(origin_seq(k));
            return true;
        };
        chunks.clear();
        if layout::index_chunks_into(k, v, &mut chunks).is_none() {
            stored.malformed.push(origin_seq(k));
            return true;
        }
        let origin = String::from_utf8_lossy(origin);
        if stored.origins.last().is_none_or(|(o, _)| *o != origin) {
            stored.origins.push((origin.into_owned(), Places::new()));
        }
        let places = &mut stored.origins.last_mut().expect("one at least").1;
        for c in &chunks {
            places.push(*c);
        }
        true
    });
    stored
}

impl Auditor<'_> {
    /// The chunk index must match the chunks: per origin, the places the
    /// log implies and those the stored index names. Where their digests
    /// differ, both are read again as lists, sorted and walked side by
    /// side: a chunk only the index names points at an entry that does not
    /// hold it; a chunk only the log holds is lacking from the index.
    pub(super) fn check_index(&mut self, kv: &dyn Kv, stored: Stored) {
        let Expected { ids, origins, .. } = std::mem::take(&mut self.index_expected);
        let (names, places): (Vec<String>, Vec<Places>) = origins.into_iter().unzip();
        // Each origin's digest as the log implies it, taken once the
        // stored index names the origin.
        let mut ours: Vec<Option<Option<Hash32>>> =
            places.into_iter().map(|p| Some(p.digest())).collect();
        // Origins to read again, in the order the problems are reported:
        // the stored index's, then those only the log holds.
        let (mut again, mut queued) = (Vec::new(), HashSet::new());
        for (origin, places) in stored.origins {
            let theirs = places.digest();
            let ours = ids.get(&origin).and_then(|id| ours[*id].take());
            let agree = theirs.is_some() && ours == Some(theirs);
            if !agree && queued.insert(origin.clone()) {
                again.push(origin);
            }
        }
        for (origin, unseen) in names.into_iter().zip(ours) {
            if unseen.is_some() && queued.insert(origin.clone()) {
                again.push(origin);
            }
        }
        let mut wrong: Vec<(Named, &str)> =
            stored.malformed.into_iter().map(|at| (at, EXTRA)).collect();
        let mut lacking: Vec<(String, u64)> = Vec::new();
        if !again.is_empty() {
            let wanted: BTreeSet<&str> = again.iter().map(String::as_str).collect();
            let (mut in_log, mut in_index) = (log_places(kv, &wanted), stored_places(kv, &wanted));
            for origin in &again {
                let mut ours = in_log.remove(origin.as_str()).unwrap_or_default();
                let mut theirs = in_index.remove(origin.as_str()).unwrap_or_default();
                let (extra, lacks) = compare(&mut ours, &mut theirs);
                wrong.extend(
                    extra
                        .into_iter()
                        .map(|l| ((Some(origin.clone()), Some(l)), EXTRA)),
                );
                lacking.extend(lacks.into_iter().map(|l| (origin.clone(), l)));
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

/// The places of the chunks of `origins` as the log holds them, in log
/// order: each whole entry that decodes as a chunk, as the audit's first
/// reading counted it (read again only for origins whose digests differ).
fn log_places(kv: &dyn Kv, origins: &BTreeSet<&str>) -> HashMap<String, Vec<IndexedChunk>> {
    let mut out: HashMap<String, Vec<IndexedChunk>> = HashMap::new();
    read_pages(kv, &mut |items| {
        for item in &items {
            let Item::Entry(p) = item else { continue };
            if !p.whole() {
                continue;
            }
            let Ok(bytes) = p.read(kv) else { continue };
            let Some(Ok(chunk)) = bytes.get(10..).map(ChunkView::decode) else {
                continue;
            };
            if origins.contains(chunk.origin) {
                out.entry(chunk.origin.to_owned()).or_default().push((
                    chunk.last_seq(),
                    p.offset,
                    chunk.first_seq(),
                ));
            }
        }
        true
    });
    out
}

/// The places the stored index names for `origins` (read whole again, as
/// the first reading named each origin; its malformed entries were
/// reported then).
fn stored_places(kv: &dyn Kv, origins: &BTreeSet<&str>) -> HashMap<String, Vec<IndexedChunk>> {
    let mut out: HashMap<String, Vec<IndexedChunk>> = HashMap::new();
    let _ = kv.visit(&[layout::INDEX], &[layout::INDEX], &mut |k, v| {
        if let Some((origin, _, _)) = layout::origin_seq_of_key(k) {
            let origin = String::from_utf8_lossy(origin);
            if origins.contains(origin.as_ref()) {
                let list = out.entry(origin.into_owned()).or_default();
                let _ = layout::index_chunks_into(k, v, list);
            }
        }
        true
    });
    out
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

    /// The digest of `places` pushed in the order given.
    fn digest_of(places: &[IndexedChunk]) -> Option<Hash32> {
        let mut p = Places::new();
        for c in places {
            p.push(*c);
        }
        p.digest()
    }

    proptest! {
        /// Places that came in order have a digest, equal for two lists
        /// exactly when they hold the same places; out of order, none (and
        /// the origin is compared as lists).
        #[test]
        fn a_digest_stands_for_the_places_in_order(mut a in chunks(), mut b in chunks()) {
            let unsorted = !a.is_sorted();
            prop_assert_eq!(digest_of(&a).is_none(), unsorted);
            a.sort_unstable();
            b.sort_unstable();
            let (da, db) = (digest_of(&a), digest_of(&b));
            prop_assert!(da.is_some() && db.is_some());
            prop_assert_eq!(da == db, a == b);
        }
    }

    /// Many places: the gathered bytes are hashed in several calls, and a
    /// change in any one place shows.
    #[test]
    fn a_long_list_changed_anywhere_hashes_otherwise() {
        let list: Vec<IndexedChunk> = (1..=1_000u64).map(|i| (i * 2, i, i * 2 - 1)).collect();
        let whole = digest_of(&list).unwrap();
        for at in [0, 169, 170, 171, 500, 999] {
            let mut changed = list.clone();
            changed[at].1 += 7_000;
            assert_ne!(digest_of(&changed).unwrap(), whole, "place {at}");
        }
        assert_ne!(digest_of(&list[..999]).unwrap(), whole);
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
