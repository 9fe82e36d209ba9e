//! The chunk index held against the log: what the log implies, one compact
//! entry per chunk, and what the index holds, both sorted and walked
//! together.

use std::collections::HashMap;

use gridsync_store::kv::Kv;
use gridsync_store::layout;

use super::{origin_seq, Auditor};

/// One chunk as the chunk index names it: `(origin id, last seq, log
/// offset, first seq)` — 32 bytes a chunk, where a key and value pair each
/// with its own allocations took several times that at ten million.
pub(super) type IndexedChunk = (u32, u64, u64, u64);

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
    /// The chunk index must match the chunks: both sides sorted and
    /// walked together.
    pub(super) fn check_index(&mut self, kv: &dyn Kv) {
        let Ok(entries) = kv.scan(&[layout::INDEX], &[layout::INDEX], usize::MAX) else {
            return;
        };
        // An entry naming several chunks (those one pack holds) is taken
        // apart into the entries of each; a malformed one points nowhere.
        let mut found: Vec<IndexedChunk> = Vec::new();
        let mut malformed = Vec::new();
        for (k, v) in entries {
            match (
                layout::parse_origin_seq_key(&k),
                layout::index_chunks(&k, &v),
            ) {
                (Some((origin, _, _)), Some(chunks)) => {
                    let id = self.origins.id(&origin);
                    found.extend(chunks.into_iter().map(|(l, o, f)| (id, l, o, f)));
                }
                _ => malformed.push(k),
            }
        }
        let names = &self.origins.names;
        let order = |a: &IndexedChunk, b: &IndexedChunk| {
            (&names[a.0 as usize], a.1, a.2, a.3).cmp(&(&names[b.0 as usize], b.1, b.2, b.3))
        };
        let mut expected = std::mem::take(&mut self.index_expected);
        expected.sort_unstable_by(order);
        found.sort_unstable_by(order);
        found.dedup();
        let (mut extra, mut lacking) = (Vec::new(), Vec::new());
        let (mut e, mut f) = (expected.iter().peekable(), found.iter().peekable());
        loop {
            match (e.peek(), f.peek()) {
                (None, None) => break,
                (Some(x), Some(y)) if x == y => {
                    e.next();
                    f.next();
                }
                (Some(x), Some(y)) if order(x, y).is_lt() => lacking.extend(e.next()),
                (Some(_), None) => lacking.extend(e.next()),
                (_, Some(_)) => extra.extend(f.next()),
            }
        }
        let named = |c: &&IndexedChunk| (Some(names[c.0 as usize].clone()), Some(c.1));
        let wrong: Vec<_> = malformed
            .iter()
            .map(|k| origin_seq(k))
            .chain(extra.iter().map(named))
            .map(|at| (at, "the chunk index points at a log entry that does not hold this chunk (entries moved or altered)"))
            .chain(lacking.iter().map(|c| (named(c), "the chunk index lacks this chunk")))
            .collect();
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
