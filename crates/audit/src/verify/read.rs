//! Reading the log for the audit: page by page, tolerating damage (a
//! missing entry or a stray fragment is a problem, not a stop), each
//! page's whole entries then checked by the worker threads.

use std::borrow::Cow;

use gridsync_deploy::topology::Topology;
use gridsync_store::kv::{Kv, SharedValue};
use gridsync_store::layout;

use super::entry::{self, Examined};
use super::Signatures;

/// What reading a page found, in log order: a whole entry or a problem
/// (kind, offset, message) with the reading itself.
pub(super) enum Item {
    Entry(Pending),
    Problem(&'static str, Option<u64>, String),
}

/// A log entry being reassembled from its fragments.
pub(super) struct Pending {
    pub offset: u64,
    bytes: EntryBytes,
    parts: u16,
}

/// An entry's bytes: reassembled from its fragments, or its place in a
/// value as read (a whole entry's own, or a pack's shared by the pack's
/// entries) — not copied out of what the store read —, or the pointer to
/// it in the body file, read by the worker that checks it.
enum EntryBytes {
    Own(Vec<u8>),
    Shared(SharedValue, std::ops::Range<usize>),
    Body(SharedValue),
}

impl Pending {
    /// Every fragment of the entry was read.
    pub(super) fn whole(&self) -> bool {
        !(self.parts > 1 && matches!(&self.bytes, EntryBytes::Own(b) if b.is_empty()))
    }

    /// The entry's bytes; from the body file (checked against the
    /// pointer's checksum) when it lives there.
    pub(super) fn read(&self, kv: &dyn Kv) -> Result<Cow<'_, [u8]>, String> {
        match &self.bytes {
            EntryBytes::Own(b) => Ok(Cow::Borrowed(b)),
            EntryBytes::Shared(v, range) => Ok(Cow::Borrowed(&(**v).as_ref()[range.clone()])),
            EntryBytes::Body(v) => match kv.bodies() {
                Some(b) => b
                    .read(self.offset, (**v).as_ref())
                    .map(Cow::Owned)
                    .map_err(|e| e.to_string()),
                None => Err("a body pointer in a store without a body file".into()),
            },
        }
    }
}

/// A whole entry's offset and its bytes, or why they could not be read.
type ReadEntry<'a> = (u64, Result<Cow<'a, [u8]>, String>);

/// A page's whole entries checked (by one worker thread, which reads
/// those in the body file); one result per whole entry, in the page's
/// order — an unreadable body is undecodable.
pub(super) fn examine_items(
    items: &[Item],
    kv: &dyn Kv,
    topology: &Topology,
    signatures: Signatures,
) -> Vec<Examined> {
    let read: Vec<ReadEntry<'_>> = items
        .iter()
        .filter_map(|i| match i {
            Item::Entry(p) if p.whole() => Some((p.offset, p.read(kv))),
            _ => None,
        })
        .collect();
    let entries: Vec<(u64, &[u8])> = read
        .iter()
        .filter_map(|(o, r)| r.as_ref().ok().map(|b| (*o, b.as_ref())))
        .collect();
    let mut checked = entry::examine_all(&entries, topology, signatures).into_iter();
    read.into_iter()
        .map(|(_, r)| match r {
            Ok(_) => checked.next().expect("one result per entry read"),
            Err(m) => Examined::Undecodable(m),
        })
        .collect()
}

/// Log keys read at a time: a page of packs holds up to ~19 entries a key
/// (~1 MB of entries at 128 keys), and the auditor bounds the pages in
/// memory at once. 32 to 512 keys measured alike in time; larger pages
/// hold more memory (BENCHMARKS.md, "The audit's pages checked by a pool
/// of workers").
const PAGE_KEYS: usize = 128;

/// Reads the log page by page into [`Item`]s, in log order, and hands
/// each page's to `send`; stops at the log's end, at a read error (sent as
/// a problem), or when `send` says to (`false`).
pub(super) fn read_pages(kv: &dyn Kv, send: &mut dyn FnMut(Vec<Item>) -> bool) {
    let mut start = vec![layout::LOG];
    let mut expected_offset = 0u64;
    let mut current: Option<Pending> = None;
    let mut items = Vec::new();
    loop {
        let page = match kv.scan_shared(&start, &[layout::LOG], PAGE_KEYS) {
            Ok(p) => p,
            Err(e) => {
                let m = format!("cannot read the log: {e}");
                items.push(Item::Problem("undecodable", None, m));
                break;
            }
        };
        let Some((last, _)) = page.last() else { break };
        start.clone_from(last);
        start.push(0);
        for (k, shared) in page {
            let v: &[u8] = (*shared).as_ref();
            let Some((offset, part)) = layout::parse_log_key(&k) else {
                let m = "malformed log key".into();
                items.push(Item::Problem("undecodable", None, m));
                continue;
            };
            if part > 0 {
                match current.as_mut() {
                    Some(Pending {
                        offset: o,
                        bytes: EntryBytes::Own(b),
                        ..
                    }) if *o == offset => b.extend_from_slice(v),
                    _ => items.push(Item::Problem(
                        "missing_entry",
                        Some(offset),
                        format!("fragment {part} without its entry"),
                    )),
                }
                continue;
            }
            if let Some(p) = current.take() {
                items.push(Item::Entry(p));
            }
            if layout::is_pack(v) {
                // Several small entries in one value, each whole.
                let Some(entries) = layout::log_value_entries(&k, v) else {
                    let m = "malformed pack of log entries".into();
                    items.push(Item::Problem("undecodable", Some(offset), m));
                    continue;
                };
                for (offset, range) in entries {
                    expect_offset(&mut items, &mut expected_offset, offset);
                    items.push(Item::Entry(Pending {
                        offset,
                        bytes: EntryBytes::Shared(shared.clone(), range),
                        parts: 1,
                    }));
                }
                continue;
            }
            expect_offset(&mut items, &mut expected_offset, offset);
            if gridsync_store::bodies::is_pointer(v) {
                // A large entry, in the body file beside the store: read
                // by the worker that checks it (one past the file's end or
                // not matching its checksum is undecodable there).
                items.push(Item::Entry(Pending {
                    offset,
                    bytes: EntryBytes::Body(shared.clone()),
                    parts: 1,
                }));
                continue;
            }
            let parts = if v.len() >= 2 {
                u16::from_be_bytes([v[0], v[1]])
            } else {
                0
            };
            // An entry in fragments is copied once, to be extended by
            // the rest; a whole one stays in the value read.
            let bytes = if parts > 1 {
                EntryBytes::Own(v.to_vec())
            } else {
                EntryBytes::Shared(shared.clone(), 0..v.len())
            };
            current = Some(Pending {
                offset,
                bytes,
                parts,
            });
        }
        if !send(std::mem::take(&mut items)) {
            return;
        }
    }
    items.extend(current.take().map(Item::Entry));
    send(items);
}

/// The next entry read is `offset`: those skipped since the last one
/// are missing.
fn expect_offset(items: &mut Vec<Item>, expected: &mut u64, offset: u64) {
    if offset != *expected {
        items.push(Item::Problem(
            "missing_entry",
            Some(*expected),
            format!("log entries {expected}..{offset} are missing"),
        ));
    }
    *expected = offset + 1;
}
