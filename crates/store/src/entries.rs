//! Log entries as stored: in the body file under a pointer, written in
//! fragments, or kept several to a value in packs (see `layout.rs`), and
//! read back any way — one entry, its start, a run of entries — and the
//! newest pack, which the writer takes up again after a restart.

use std::collections::HashMap;

use gridsync_model::Chunk;

use crate::bodies;
use crate::kv::{Kv, KvEntry, KvWrite};
use crate::layout::{self, FRAGMENT_BYTES_MAX};
use crate::recover::corrupt;
use crate::{EncodedEntry, StoreError, StoredChunk};

/// Bytes before the chunk in fragment 0: parts:u16be received_at_ms:i64be.
pub(crate) const ENTRY_HEADER_BYTES: usize = 10;

/// A log entry's header: its fragment count and its receipt time.
pub(crate) fn entry_header(parts: u16, received_at_ms: i64) -> [u8; ENTRY_HEADER_BYTES] {
    let mut h = [0; ENTRY_HEADER_BYTES];
    h[..2].copy_from_slice(&parts.to_be_bytes());
    h[2..].copy_from_slice(&received_at_ms.to_be_bytes());
    h
}

/// `chunk` as a whole one-fragment log entry (header, then the chunk's
/// encoding, written once): a pack's member or a body file's entry.
pub(crate) fn one_fragment_entry(received_at_ms: i64, chunk: &Chunk) -> Vec<u8> {
    let mut entry = Vec::with_capacity(ENTRY_HEADER_BYTES + chunk.encoded_len_hint());
    entry.extend_from_slice(&entry_header(1, received_at_ms));
    chunk.encode_into(&mut entry);
    entry
}

/// Encodes one log entry into its fragments' key/value writes.
pub(crate) fn entry_writes(offset: u64, received_at_ms: i64, chunk_bytes: &[u8]) -> Vec<KvWrite> {
    let total = ENTRY_HEADER_BYTES + chunk_bytes.len();
    let parts = total.div_ceil(FRAGMENT_BYTES_MAX);
    let parts_u16 = u16::try_from(parts).expect("events are limited far below 65535 fragments");
    let mut whole = Vec::with_capacity(total);
    whole.extend_from_slice(&entry_header(parts_u16, received_at_ms));
    whole.extend_from_slice(chunk_bytes);
    whole
        .chunks(FRAGMENT_BYTES_MAX)
        .enumerate()
        .map(|(i, part)| (layout::log_key(offset, i as u16), Some(part.to_vec())))
        .collect()
}

/// Log entry `offset`'s bytes (header, then chunk) as an [`EncodedEntry`]:
/// the chunk's encoding copied out, not decoded.
pub(crate) fn encoded_entry(offset: u64, bytes: &[u8]) -> Result<EncodedEntry, StoreError> {
    Ok(EncodedEntry {
        offset,
        received_at_ms: received_at_of(offset, bytes)?,
        chunk: bytes[ENTRY_HEADER_BYTES..].to_vec(),
    })
}

/// A stored chunk from log entry `offset`'s bytes (header, then chunk).
pub(crate) fn assemble_bytes(offset: u64, bytes: &[u8]) -> Result<StoredChunk, StoreError> {
    let received_at_ms = received_at_of(offset, bytes)?;
    let chunk = Chunk::decode(&bytes[ENTRY_HEADER_BYTES..])
        .map_err(|e| corrupt(format!("log entry {offset}: {e}")))?;
    Ok(StoredChunk {
        offset,
        received_at_ms,
        chunk,
    })
}

/// The receipt time in the header of log entry `offset` (its first
/// fragment or its whole bytes).
pub(crate) fn received_at_of(offset: u64, first: &[u8]) -> Result<i64, StoreError> {
    first
        .get(2..ENTRY_HEADER_BYTES)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt(format!("log entry {offset}: truncated header")))
}

/// Every fragment of log entry `offset` (none if it is absent).
pub(crate) fn entry_fragments(kv: &dyn Kv, offset: u64) -> Result<Vec<KvEntry>, StoreError> {
    let prefix = layout::log_prefix(offset);
    kv.scan(&prefix, &prefix, usize::from(u16::MAX))
}

/// Log entry `offset` put together from its fragments: its receipt time
/// and its bytes (the chunk from [`ENTRY_HEADER_BYTES`] on).
pub(crate) fn entry_bytes(
    kv: &dyn Kv,
    offset: u64,
    frags: &[KvEntry],
) -> Result<(i64, Vec<u8>), StoreError> {
    if let [(_, v)] = frags {
        if bodies::is_pointer(v) {
            let bytes = body(kv, offset, v)?;
            return Ok((received_at_of(offset, &bytes)?, bytes));
        }
    }
    let mut bytes = Vec::with_capacity(frags.iter().map(|f| f.1.len()).sum());
    for (i, (k, v)) in frags.iter().enumerate() {
        match layout::parse_log_key(k) {
            Some((o, p)) if o == offset && usize::from(p) == i => bytes.extend_from_slice(v),
            _ => {
                return Err(corrupt(format!(
                    "log entry {offset}: fragment {i} missing or out of place"
                )))
            }
        }
    }
    if bytes.len() < ENTRY_HEADER_BYTES {
        return Err(corrupt(format!("log entry {offset}: truncated header")));
    }
    let received_at_ms = received_at_of(offset, &bytes)?;
    Ok((received_at_ms, bytes))
}

/// Log entry `offset`'s bytes from the body file, through its pointer `v`.
pub(crate) fn body(kv: &dyn Kv, offset: u64, v: &[u8]) -> Result<Vec<u8>, StoreError> {
    kv.bodies()
        .ok_or_else(|| {
            corrupt(format!(
                "log entry {offset}: a body pointer in a store without a body file"
            ))
        })?
        .read(offset, v)
}

/// The entries of the pack `v` stored under key `k`, each with its offset
/// (a pack's entries are whole one-fragment entries).
fn pack_entries<'v>(k: &[u8], v: &'v [u8]) -> Result<Vec<(u64, &'v [u8])>, StoreError> {
    let at = layout::parse_log_key(k).map_or(0, |(o, _)| o);
    let entries = layout::log_value_entries(k, v)
        .ok_or_else(|| corrupt(format!("log pack at entry {at}: malformed")))?;
    Ok(entries.into_iter().map(|(o, r)| (o, &v[r])).collect())
}

/// The pack holding log entry `offset` when it is not the pack's first
/// (those entries have no key of their own).
fn pack_holding(kv: &dyn Kv, offset: u64) -> Result<Option<KvEntry>, StoreError> {
    let Some((k, v)) = kv.last_before(&[layout::LOG], &layout::log_key(offset, 0))? else {
        return Ok(None);
    };
    let holds = match layout::parse_log_key(&k) {
        Some((first, 0)) => {
            layout::pack_count(&v).is_some_and(|count| offset < first.saturating_add(count as u64))
        }
        _ => false,
    };
    Ok(holds.then_some((k, v)))
}

/// Log entry `offset`'s bytes from the pack `(k, v)` that holds it.
fn entry_in_pack(k: &[u8], v: &[u8], offset: u64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(pack_entries(k, v)?
        .into_iter()
        .find(|(o, _)| *o == offset)
        .map(|(_, e)| e.to_vec()))
}

/// The start of log entry `offset` — at least its header, the whole entry
/// when it is packed — without reading its other fragments.
pub(crate) fn entry_start(kv: &dyn Kv, offset: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let key = layout::log_key(offset, 0);
    match kv.get(&key)? {
        Some(v) if layout::is_pack(&v) => entry_in_pack(&key, &v, offset),
        // A body pointer holds the header: the body is not read.
        Some(v) => match bodies::Pointer::decode(&v) {
            Some(p) => Ok(Some(p.header())),
            None => Ok(Some(v)),
        },
        None => match pack_holding(kv, offset)? {
            Some((k, v)) => entry_in_pack(&k, &v, offset),
            None => Ok(None),
        },
    }
}

/// Reads log entries one at a time, keeping the last pack it read: the
/// chunks of one origin that a pack holds (a sender's batch, a run of
/// reads by seq) read the pack once, not once each. A pack read before a
/// commit added to it still holds its earlier entries unchanged; an entry
/// past it is read anew.
#[derive(Default)]
pub(crate) struct EntryReader {
    /// The pack's offsets and its key and value.
    pack: Option<(std::ops::Range<u64>, KvEntry)>,
}

impl EntryReader {
    /// Log entry `offset`'s whole bytes (`None` if the log has no such
    /// entry).
    pub(crate) fn entry(
        &mut self,
        kv: &dyn Kv,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some((range, (k, v))) = &self.pack {
            if range.contains(&offset) {
                return entry_in_pack(k, v, offset);
            }
        }
        let mut frags = entry_fragments(kv, offset)?;
        let (k, v) = match frags.first() {
            Some((_, v)) if layout::is_pack(v) => frags.swap_remove(0),
            Some(_) => return Ok(Some(entry_bytes(kv, offset, &frags)?.1)),
            None => match pack_holding(kv, offset)? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let entry = entry_in_pack(&k, &v, offset)?;
        if let (Some((first, 0)), Some(count)) = (layout::parse_log_key(&k), layout::pack_count(&v))
        {
            self.pack = Some((first..first.saturating_add(count as u64), (k, v)));
        }
        Ok(entry)
    }
}

/// The offset of the log's last entry, if any.
pub(crate) fn last_offset(kv: &dyn Kv) -> Result<Option<u64>, StoreError> {
    let Some((k, v)) = kv.last_with_prefix(&[layout::LOG])? else {
        return Ok(None);
    };
    let (offset, part) = layout::parse_log_key(&k).ok_or_else(|| corrupt("malformed log key"))?;
    if part == 0 && layout::is_pack(&v) {
        let last = pack_entries(&k, &v)?.last().map(|(o, _)| *o);
        return Ok(last);
    }
    Ok(Some(offset))
}

/// The newest pack, when the log ends in one: where the writer goes on
/// packing after a restart, with the index entries of the chunks in it
/// that it may go on growing (an origin whose chunks there are not named
/// by one index entry — written by a build that indexed each chunk alone —
/// starts a new one).
pub(crate) fn open_pack_at_end(kv: &dyn Kv) -> Result<Option<OpenPack>, StoreError> {
    let Some((k, v)) = kv.last_with_prefix(&[layout::LOG])? else {
        return Ok(None);
    };
    let Some((first, 0)) = layout::parse_log_key(&k) else {
        return Ok(None);
    };
    if !layout::is_pack(&v) {
        return Ok(None);
    }
    let entries = pack_entries(&k, &v)?;
    let mut last_seqs: HashMap<String, u64> = HashMap::new();
    for (offset, e) in &entries {
        let c = assemble_bytes(*offset, e)?.chunk;
        last_seqs.insert(c.origin.clone(), c.last_seq());
    }
    let mut groups = HashMap::new();
    for (origin, last) in last_seqs {
        let Some((ik, iv)) = kv.last_with_prefix(&layout::index_prefix(&origin))? else {
            continue;
        };
        let Some(chunks) = layout::index_chunks(&ik, &iv) else {
            continue;
        };
        if chunks.first().is_some_and(|c| c.1 >= first) && chunks.last().map(|c| c.0) == Some(last)
        {
            let group = IndexGroup {
                written_last: Some(last),
                last,
                chunks: chunks.into_iter().map(|(_, o, f)| (o, f)).collect(),
                dirty: false,
            };
            groups.insert(origin, group);
        }
    }
    Ok(Some(OpenPack {
        first,
        count: entries.len() as u16,
        value: v,
        groups,
    }))
}

/// The newest pack of the log, while it may take more entries, and the
/// index entries of its chunks, per origin.
#[derive(Clone, Debug)]
pub(crate) struct OpenPack {
    pub first: u64,
    pub count: u16,
    pub value: Vec<u8>,
    pub groups: HashMap<String, IndexGroup>,
}

/// One index entry naming the chunks of one origin in the newest pack.
#[derive(Clone, Debug)]
pub(crate) struct IndexGroup {
    /// The seq its key has in the store (`None`: not written yet).
    pub written_last: Option<u64>,
    pub last: u64,
    /// `(offset, first_seq)` of each chunk.
    pub chunks: Vec<(u64, u64)>,
    /// Changed by the commit being staged.
    pub dirty: bool,
}

/// Reads up to `max_entries` consecutive log entries from `offset`.
pub(crate) fn read_entries(
    kv: &dyn Kv,
    offset: u64,
    max_entries: usize,
) -> Result<Vec<StoredChunk>, StoreError> {
    read_entries_as(kv, offset, max_entries, assemble_bytes)
}

/// [`read_entries`] with each entry made by `make` from its offset and
/// bytes (header, then chunk).
pub(crate) fn read_entries_as<T>(
    kv: &dyn Kv,
    offset: u64,
    max_entries: usize,
    make: impl Fn(u64, &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut next = offset;
    while out.len() < max_entries {
        let want = max_entries - out.len();
        // One fragment per entry (or a pack of entries) is the common
        // case; an entry with more fragments than the page holds is
        // fetched whole below.
        let mut page = kv.scan(&layout::log_key(next, 0), &[layout::LOG], want)?;
        let starts_at_next = page
            .first()
            .and_then(|(k, _)| layout::parse_log_key(k))
            .is_some_and(|(o, _)| o == next);
        if !starts_at_next {
            // `next` may be in a pack that begins before it.
            if let Some(p) = pack_holding(kv, next)? {
                page.insert(0, p);
            }
        }
        if page.is_empty() {
            break;
        }
        let mut i = 0;
        let mut progressed = false;
        while i < page.len() && out.len() < max_entries {
            let (k, v) = &page[i];
            let (off, part) =
                layout::parse_log_key(k).ok_or_else(|| corrupt("malformed log key"))?;
            if part == 0 && layout::is_pack(v) {
                for (o, e) in pack_entries(k, v)? {
                    if o < next {
                        continue;
                    }
                    if o != next {
                        return Err(missing_from(next, o));
                    }
                    if out.len() == max_entries {
                        break;
                    }
                    out.push(make(o, e)?);
                    next = o + 1;
                }
                i += 1;
                progressed = true;
                continue;
            }
            if off != next {
                return Err(missing_from(next, off));
            }
            if part == 0 && bodies::is_pointer(v) {
                out.push(make(off, &body(kv, off, v)?)?);
                next = off + 1;
                i += 1;
                progressed = true;
                continue;
            }
            if part != 0 || v.len() < 2 {
                return Err(corrupt(format!("log entry {off}: first fragment missing")));
            }
            let parts = usize::from(u16::from_be_bytes([v[0], v[1]]));
            if parts == 0 {
                return Err(corrupt(format!("log entry {off}: zero fragments")));
            }
            if i + parts > page.len() {
                break;
            }
            out.push(make(off, &entry_bytes(kv, off, &page[i..i + parts])?.1)?);
            next = off + 1;
            i += parts;
            progressed = true;
        }
        if !progressed {
            // One entry with more fragments than the page held.
            out.push(make(
                next,
                &entry_bytes(kv, next, &entry_fragments(kv, next)?)?.1,
            )?);
            next += 1;
        }
    }
    Ok(out)
}

fn missing_from(next: u64, found: u64) -> StoreError {
    corrupt(format!(
        "log entry {next} is missing (found {found} after it)"
    ))
}
