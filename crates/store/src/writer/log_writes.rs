//! The log writes of a staged commit: each chunk pushed becomes the next
//! log entry — kept in the newest pack when it is small, in its own
//! fragments otherwise — and an index key.

use super::*;
use crate::recover::{entry_writes, ENTRY_HEADER_BYTES};

impl Writer {
    /// Adds the log entries and index keys of every chunk the commit
    /// pushed to its writes, and leaves the pack the log ends in (if it has
    /// room) for the commit to keep once it is durable. An entry of at
    /// most `pack_entry_bytes_max` bytes goes into the newest pack, which
    /// this commit rewrites whole (never past [`layout::FRAGMENT_BYTES_MAX`];
    /// the entries already in it keep their bytes); a larger entry closes
    /// the pack and is written in fragments as before packs.
    pub(super) fn log_writes(&self, work: &mut Work) {
        let start = work.offset - work.pushed.len() as u64;
        let mut pack = self.pack.clone();
        let mut pack_dirty = false;
        let limit = self
            .config
            .pack_entry_bytes_max
            .min(layout::FRAGMENT_BYTES_MAX - layout::PACK_HEADER_BYTES - 2);
        for (i, (chunk, at)) in work.pushed.iter().zip(&work.pushed_at).enumerate() {
            let offset = start + i as u64;
            work.writes.push((
                layout::index_key(&chunk.origin, chunk.last_seq()),
                Some(layout::index_value(offset, chunk.first_seq())),
            ));
            let encoded = chunk.encode();
            if ENTRY_HEADER_BYTES + encoded.len() > limit {
                if let (Some(p), true) = (pack.take(), pack_dirty) {
                    work.writes.push(pack_write(p));
                }
                pack_dirty = false;
                work.writes.extend(entry_writes(offset, *at, &encoded));
                continue;
            }
            let mut entry = Vec::with_capacity(ENTRY_HEADER_BYTES + encoded.len());
            entry.extend_from_slice(&1u16.to_be_bytes());
            entry.extend_from_slice(&at.to_be_bytes());
            entry.extend_from_slice(&encoded);
            let fits = pack.as_ref().is_some_and(|p| {
                p.first + u64::from(p.count) == offset
                    && p.count < u16::MAX
                    && p.value.len() + 2 + entry.len() <= layout::FRAGMENT_BYTES_MAX
            });
            if !fits {
                if let (Some(p), true) = (pack.take(), pack_dirty) {
                    work.writes.push(pack_write(p));
                }
                pack = Some(OpenPack {
                    first: offset,
                    count: 0,
                    value: Vec::new(),
                });
            }
            let p = pack.as_mut().expect("a pack is open");
            layout::append_to_pack(&mut p.value, &mut p.count, &entry);
            pack_dirty = true;
        }
        if let (Some(p), true) = (pack.as_ref(), pack_dirty) {
            work.writes.push(pack_write(p.clone()));
        }
        work.pack = pack;
    }
}

/// The write of a pack under the key of its first entry.
fn pack_write(p: OpenPack) -> KvWrite {
    (layout::log_key(p.first, 0), Some(p.value))
}
