//! The chunk index held against the log: what the log implies, one compact
//! entry per chunk, sorted; the stored index read a page at a time and
//! looked up in it.

use std::collections::HashMap;

use gridsync_store::kv::Kv;
use gridsync_store::layout;

use super::{origin_seq, Auditor};

/// One chunk as the chunk index names it: `(origin id, last seq, log
/// offset, first seq)` — 32 bytes a chunk, where a key and value pair each
/// with its own allocations took several times that at ten million.
pub(super) type IndexedChunk = (u32, u64, u64, u64);

/// The origin and seq a problem names.
type Named = (Option<String>, Option<u64>);

/// Origins by id, for [`IndexedChunk`]s.
#[derive(Default)]
pub(super) struct OriginIds {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl OriginIds {
    /// `origin`'s id.
    pub(super) fn id(&mut self, origin: &str) -> u32 {
        if let Some(id) = self.ids.get(origin) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 origins");
        self.ids.insert(origin.to_owned(), id);
        self.names.push(origin.to_owned());
        id
    }
}

impl Auditor<'_> {
    /// The chunk index must match the chunks. The chunks the log implies
    /// are sorted; the stored index is read a page at a time and each
    /// chunk it names looked up among them (memory: the sorted list and
    /// one page, whatever the index's size).
    pub(super) fn check_index(&mut self, kv: &dyn Kv) {
        const EXTRA: &str = "the chunk index points at a log entry that does not hold this chunk (entries moved or altered)";
        let mut expected = std::mem::take(&mut self.index_expected);
        expected.sort_unstable();
        let mut matched = vec![false; expected.len()];
        let mut wrong: Vec<(Named, &str)> = Vec::new();
        let mut start = vec![layout::INDEX];
        while let Ok(page) = kv.scan(&start, &[layout::INDEX], 4096) {
            let Some((last, _)) = page.last() else { break };
            start.clone_from(last);
            start.push(0);
            for (k, v) in &page {
                // An entry naming several chunks (those one pack holds) is
                // taken apart into the entries of each; a malformed one
                // points nowhere.
                let (Some((origin, _, _)), Some(chunks)) =
                    (layout::parse_origin_seq_key(k), layout::index_chunks(k, v))
                else {
                    wrong.push((origin_seq(k), EXTRA));
                    continue;
                };
                let id = self.origins.id(&origin);
                for (l, o, f) in chunks {
                    match expected.binary_search(&(id, l, o, f)) {
                        Ok(at) => matched[at] = true,
                        Err(_) => wrong.push(((Some(origin.clone()), Some(l)), EXTRA)),
                    }
                }
            }
        }
        let names = &self.origins.names;
        let lacking = expected
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(c, _)| {
                let at = (Some(names[c.0 as usize].clone()), Some(c.1));
                (at, "the chunk index lacks this chunk")
            });
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
