//! The log writes of a staged commit: each chunk pushed becomes the next
//! log entry — kept in the newest pack when it is small, otherwise in the
//! body file beside sled under a pointer (`bodies.rs`; in fragments in a
//! store without one) — and is named by the chunk index: an entry of its
//! own, or the one index entry of its origin's chunks in that pack.

use super::*;
use crate::entries::{entry_writes, one_fragment_entry, IndexGroup, ENTRY_HEADER_BYTES};

impl Writer {
    /// Adds the log entries and index entries of every chunk the commit
    /// pushed to its writes, and leaves the pack the log ends in (if any)
    /// for the commit to keep once it is durable. An entry of at most
    /// `pack_entry_bytes_max` bytes goes into the newest pack, which this
    /// commit rewrites whole (never past [`layout::FRAGMENT_BYTES_MAX`];
    /// the entries already in it keep their bytes), and its origin's index
    /// entry for that pack is rewritten under its new last seq; a larger
    /// entry closes the pack and is appended to the body file (or written
    /// in fragments) with an index entry of its own.
    ///
    /// # Errors
    /// A failed append to the body file: the commit must not go ahead.
    pub(super) fn log_writes(&self, work: &mut Work) -> Result<(), StoreError> {
        let start = work.offset - work.pushed.len() as u64;
        let mut pack = self.pack.clone();
        let limit = self
            .config
            .pack_entry_bytes_max
            .min(layout::FRAGMENT_BYTES_MAX - layout::PACK_HEADER_BYTES - 2);
        let mut writes = Vec::new();
        let mut dirty = false;
        for (i, (chunk, at)) in work.pushed.iter().zip(&work.pushed_at).enumerate() {
            let offset = start + i as u64;
            let (first_seq, last_seq) = (chunk.first_seq(), chunk.last_seq());
            let entry = one_fragment_entry(*at, chunk);
            if entry.len() > limit {
                if let Some(mut p) = pack.take() {
                    flush(&mut p, dirty, &mut writes);
                }
                dirty = false;
                // In the body file when the store keeps one (appended
                // now, synced by the commit before its batch), else in
                // fragments.
                match self.shared.kv.bodies() {
                    Some(bodies) => {
                        let pointer = bodies.append(&entry)?;
                        writes.push((layout::log_key(offset, 0), Some(pointer)));
                    }
                    None => writes.extend(entry_writes(offset, *at, &entry[ENTRY_HEADER_BYTES..])),
                }
                writes.push((
                    layout::index_key(&chunk.origin, last_seq),
                    Some(layout::index_value(offset, first_seq)),
                ));
                continue;
            }
            let fits = pack.as_ref().is_some_and(|p| {
                p.first + u64::from(p.count) == offset
                    && p.count < u16::MAX
                    && p.value.len() + 2 + entry.len() <= layout::FRAGMENT_BYTES_MAX
            });
            if !fits {
                if let Some(mut p) = pack.take() {
                    flush(&mut p, dirty, &mut writes);
                }
                pack = Some(OpenPack {
                    first: offset,
                    count: 0,
                    value: Vec::new(),
                    groups: HashMap::new(),
                });
            }
            let p = pack.as_mut().expect("a pack is open");
            layout::append_to_pack(&mut p.value, &mut p.count, &entry);
            let group = p
                .groups
                .entry(chunk.origin.clone())
                .or_insert_with(|| IndexGroup {
                    written_last: None,
                    last: 0,
                    chunks: Vec::new(),
                    dirty: false,
                });
            group.chunks.push((offset, first_seq));
            group.last = last_seq;
            group.dirty = true;
            dirty = true;
        }
        if let Some(p) = pack.as_mut() {
            flush(p, dirty, &mut writes);
        }
        work.writes.extend(writes);
        work.pack = pack;
        Ok(())
    }
}

/// The writes of a pack this commit changed (`dirty`) and of the index
/// entries it changed; afterwards they are as written.
fn flush(p: &mut OpenPack, dirty: bool, writes: &mut Vec<KvWrite>) {
    if !dirty {
        return;
    }
    writes.push((layout::log_key(p.first, 0), Some(p.value.clone())));
    for (origin, g) in p.groups.iter_mut().filter(|(_, g)| g.dirty) {
        if let Some(old) = g.written_last.filter(|l| *l != g.last) {
            writes.push((layout::index_key(origin, old), None));
        }
        writes.push((
            layout::index_key(origin, g.last),
            Some(layout::index_group_value(&g.chunks)),
        ));
        g.written_last = Some(g.last);
        g.dirty = false;
    }
}
