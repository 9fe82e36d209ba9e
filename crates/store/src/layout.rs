//! Key layout. Everything lives in sled's default tree so that one
//! `apply_batch` commits an event, its indexes and its origin's head
//! atomically (sled batches are per tree).
//!
//! | key | value |
//! |---|---|
//! | `V` | store format, `gridsync-store-3` (`-2`: no body pointers, `-1`: no packs either; upgraded at open) |
//! | `L` offset:u64be part:u16be | fragment `part` of log entry `offset`, or (part 0) a pack of small entries from `offset` on, or (part 0) a body pointer |
//! | `I` len:u8 origin last_seq:u64be | (offset:u64be first_seq:u64be)+ — a chunk in its own entry, or the chunks of one origin that one pack holds |
//! | `C` len:u8 origin client_id | seq:u64be hash:32 fingerprint:32 — the client-id index before its runs, one key per event (moved into a run at open) |
//! | `c` run:u64be h:u64be seq:u64be | a block of the client-id index: up to 448 sorted `h:u64be seq:u64be` pairs, the first being the key's — origins only |
//! | `j` | the client-id index's state: runs, merges in progress, indexed_upto (see `client_index.rs`) |
//! | `H` origin | seq:u64be hash:32 signed-head bytes |
//! | `Z` | posting hold of an origin: since_ms:i64be code_len:u16be code message |
//! | `X` len:u8 origin seq:u64be their_hash:32 | equivocation evidence summary: at_ms:i64be parts:u16be |
//! | `E` len:u8 origin seq:u64be their_hash:32 part:u16be | fragment `part` of the evidence: ours_len:u64be ours ‖ their chunk |
//!
//! A log entry is `parts:u16be ‖ received_at_ms:i64be ‖ chunk bytes`,
//! split into `parts` fragments of at most [`FRAGMENT_BYTES_MAX`] bytes so
//! that no sled value is large enough to push a tree node into sled's
//! unsynced blob files. Small entries (a phone's one-event post) are kept
//! several to a value instead — a **pack**, `0:u16be ‖ count:u16be ‖
//! (len:u16be ‖ entry)*`, each entry a whole one-fragment entry of the
//! offsets `offset`, `offset + 1`, …: sled's memory and work grow with its
//! keys, and one key per one-event entry made them grow with the events.
//! The writer rewrites the newest pack with each commit until it is full;
//! the entries already in it keep their bytes. A larger entry goes to the
//! body file beside sled, `log-bodies`, written once, and its key holds a
//! **body pointer**, `0xFFFF ‖ received_at_ms:i64be ‖ position:u64be ‖
//! length:u32be ‖ checksum:16` (`bodies.rs`); fragments are what a store
//! without a body file (in memory) writes, and what builds before format 3
//! wrote, still read.

pub const FORMAT_KEY: &[u8] = b"V";
pub const FORMAT_VALUE: &[u8] = b"gridsync-store-3";
/// The format before body pointers: read as it is, marked as format 3 at
/// open.
pub const FORMAT_VALUE_2: &[u8] = b"gridsync-store-2";
/// The format before packs: read as it is, marked as format 3 at open.
pub const FORMAT_VALUE_1: &[u8] = b"gridsync-store-1";
pub const LOG: u8 = b'L';
pub const INDEX: u8 = b'I';
pub const CLIENT: u8 = b'C';
pub const CLIENT_RUN: u8 = b'c';
/// The client-id index's state (see `client_index.rs`).
pub const CLIENT_META_KEY: &[u8] = b"j";
pub const HEAD: u8 = b'H';
pub const EVIDENCE: u8 = b'E';
pub const EVIDENCE_SUMMARY: u8 = b'X';
/// Why an origin refuses posts for now (absent when it takes them).
pub const HOLD_KEY: &[u8] = b"Z";
/// The checkpoint: where the log ends and what it holds, written in every
/// commit's batch (`next_offset ‖ chunks ‖ events ‖ bodies_len`, u64be
/// each; `bodies_len`, the body file's length, absent in a store without
/// one and in those written before format 3).
pub const CHECKPOINT_KEY: &[u8] = b"K";

/// Largest sled value the log writes. sled 0.34.7 moves a serialized tree
/// node over ~128 KiB to a blob file it never fsyncs, and a node holds up to
/// ~16 items, so values stay at or below ~8 KiB.
pub const FRAGMENT_BYTES_MAX: usize = 7 * 1024;

pub fn log_key(offset: u64, part: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(11);
    k.push(LOG);
    k.extend_from_slice(&offset.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k
}

pub fn log_prefix(offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOG);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// `(offset, part)` of a log key.
pub fn parse_log_key(k: &[u8]) -> Option<(u64, u16)> {
    if k.len() != 11 || k[0] != LOG {
        return None;
    }
    Some((
        u64::from_be_bytes(k[1..9].try_into().ok()?),
        u16::from_be_bytes(k[9..11].try_into().ok()?),
    ))
}

fn origin_prefix(tag: u8, origin: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + origin.len() + 8);
    k.push(tag);
    // Node ids are at most 64 bytes (topology check); a longer origin from
    // tampered data gets a key no real origin has, never a panic.
    k.push(u8::try_from(origin.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(origin.as_bytes());
    k
}

/// Summary key of the equivocation evidence for `(origin, seq, their hash)`:
/// one record per distinct conflicting event, however often it is offered.
pub fn evidence_summary_key(origin: &str, seq: u64, their_hash: &[u8; 32]) -> Vec<u8> {
    let mut k = origin_prefix(EVIDENCE_SUMMARY, origin);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(their_hash);
    k
}

/// Key of fragment `part` of that evidence.
pub fn evidence_key(origin: &str, seq: u64, their_hash: &[u8; 32], part: u16) -> Vec<u8> {
    let mut k = origin_prefix(EVIDENCE, origin);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(their_hash);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

pub fn index_prefix(origin: &str) -> Vec<u8> {
    origin_prefix(INDEX, origin)
}

pub fn index_key(origin: &str, last_seq: u64) -> Vec<u8> {
    let mut k = origin_prefix(INDEX, origin);
    k.extend_from_slice(&last_seq.to_be_bytes());
    k
}

/// The index value of one chunk: `offset ‖ first_seq`.
pub fn index_value(offset: u64, first_seq: u64) -> Vec<u8> {
    index_group_value(&[(offset, first_seq)])
}

/// The index value of a group of chunks of one origin (those one pack
/// holds): each chunk's `offset ‖ first_seq`, in seq order.
pub fn index_group_value(chunks: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 * chunks.len());
    for (offset, first_seq) in chunks {
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&first_seq.to_be_bytes());
    }
    v
}

/// An index entry taken apart into the entries each of its chunks would
/// have alone (`(key, value)`, as a format-1 store keeps them): what the
/// open's whole-log check compares with the log. `None` if malformed.
pub fn index_entries_per_chunk(k: &[u8], v: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let (origin, _, _) = parse_origin_seq_key(k)?;
    let chunks = index_chunks(k, v)?;
    Some(
        chunks
            .into_iter()
            .map(|(last, offset, first)| (index_key(&origin, last), index_value(offset, first)))
            .collect(),
    )
}

/// The chunks an index entry (key `k`, value `v`) names, each as
/// `(last_seq, offset, first_seq)`: a chunk ends where the next begins,
/// the last at the key's seq. `None` if malformed (no chunk, or seqs and
/// offsets not increasing).
pub fn index_chunks(k: &[u8], v: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
    let mut out = Vec::with_capacity(v.len() / 16);
    index_chunks_into(k, v, &mut out)?;
    Some(out)
}

/// [`index_chunks`] appended to `out` (left as it was if malformed): no
/// allocation of its own, for a reader of every entry.
pub fn index_chunks_into(k: &[u8], v: &[u8], out: &mut Vec<(u64, u64, u64)>) -> Option<()> {
    let (_, last, rest) = origin_seq_of_key(k)?;
    if !rest.is_empty() || v.is_empty() || !v.len().is_multiple_of(16) {
        return None;
    }
    let pair = |p: &[u8]| {
        let n = |r: std::ops::Range<usize>| u64::from_be_bytes(p[r].try_into().expect("8"));
        (n(0..8), n(8..16))
    };
    let before = out.len();
    let mut pairs = v.chunks_exact(16).map(pair).peekable();
    let mut all = || {
        while let Some((offset, first)) = pairs.next() {
            let end = match pairs.peek() {
                Some(&(next_offset, next_first)) if next_offset > offset && next_first > first => {
                    next_first - 1
                }
                Some(_) => return None,
                None => last,
            };
            if end < first || first == 0 {
                return None;
            }
            out.push((end, offset, first));
        }
        Some(())
    };
    let taken = all();
    if taken.is_none() {
        out.truncate(before);
    }
    taken
}

/// `(origin, seq, rest)` of a key laid out as
/// `tag ‖ len:u8 ‖ origin ‖ seq:u64be ‖ rest` (index and evidence keys).
pub fn parse_origin_seq_key(k: &[u8]) -> Option<(String, u64, &[u8])> {
    let (origin, seq, rest) = origin_seq_of_key(k)?;
    Some((String::from_utf8_lossy(origin).into_owned(), seq, rest))
}

/// [`parse_origin_seq_key`] with the origin's bytes as they are in the key.
pub fn origin_seq_of_key(k: &[u8]) -> Option<(&[u8], u64, &[u8])> {
    let len = usize::from(*k.get(1)?);
    let origin = k.get(2..2 + len)?;
    let seq = u64::from_be_bytes(k.get(2 + len..10 + len)?.try_into().ok()?);
    Some((origin, seq, &k[10 + len..]))
}

pub fn client_key(origin: &str, client_id: &str) -> Vec<u8> {
    let mut k = origin_prefix(CLIENT, origin);
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// Prefix of the blocks of client-index run `run`.
pub fn client_run_prefix(run: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = CLIENT_RUN;
    k[1..].copy_from_slice(&run.to_be_bytes());
    k
}

/// Key of the client-index block of `run` whose first pair is `(h, seq)`.
pub fn client_block_key(run: u64, h: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&client_run_prefix(run));
    k.extend_from_slice(&h.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first pair `(h, seq)` of a client-index block key.
pub fn parse_client_block_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 25 || k[0] != CLIENT_RUN {
        return None;
    }
    Some((
        u64::from_be_bytes(k[9..17].try_into().ok()?),
        u64::from_be_bytes(k[17..25].try_into().ok()?),
    ))
}

pub fn head_key(origin: &str) -> Vec<u8> {
    let mut k = vec![HEAD];
    k.extend_from_slice(origin.as_bytes());
    k
}

/// Bytes before a pack's entries: zero (a plain entry has at least one
/// part), then the entry count.
pub const PACK_HEADER_BYTES: usize = 4;

/// Whether log value `v` (of a part-0 key) is a pack of entries.
pub fn is_pack(v: &[u8]) -> bool {
    v.len() >= PACK_HEADER_BYTES && v[0] == 0 && v[1] == 0
}

/// How many entries the pack `v` says it holds (`None` if `v` is not a
/// pack).
pub fn pack_count(v: &[u8]) -> Option<usize> {
    is_pack(v).then(|| usize::from(u16::from_be_bytes([v[2], v[3]])))
}

/// The log entries that log value `v` under key `k` begins: each entry's
/// offset and where its bytes lie in `v` — one for a plain entry's first
/// fragment (the whole fragment), each entry of a pack; none for a later
/// fragment. `None` if the key or a pack is malformed.
pub fn log_value_entries(k: &[u8], v: &[u8]) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
    let (offset, part) = parse_log_key(k)?;
    if part > 0 {
        return Some(Vec::new());
    }
    if !is_pack(v) {
        return Some(vec![(offset, 0..v.len())]);
    }
    let count = pack_count(v)?;
    let mut out = Vec::with_capacity(count);
    let mut at = PACK_HEADER_BYTES;
    for i in 0..count {
        let len = usize::from(u16::from_be_bytes(v.get(at..at + 2)?.try_into().ok()?));
        let range = at + 2..at + 2 + len;
        if range.end > v.len() || len == 0 {
            return None;
        }
        out.push((offset.checked_add(i as u64)?, range.clone()));
        at = range.end;
    }
    (at == v.len() && count > 0).then_some(out)
}

/// Adds one entry (a whole one-fragment entry) to the pack `v` holding
/// `count` entries; an empty `v` becomes a pack.
pub fn append_to_pack(v: &mut Vec<u8>, count: &mut u16, entry: &[u8]) {
    if v.is_empty() {
        v.extend_from_slice(&[0; PACK_HEADER_BYTES]);
    }
    let len = u16::try_from(entry.len()).expect("packed entries are small");
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(entry);
    *count += 1;
    v[2..4].copy_from_slice(&count.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `index_chunks_into` appends what `index_chunks` returns, and leaves
    /// the list as it was for a malformed entry (however far it got).
    #[test]
    fn index_chunks_are_appended_whole_or_not_at_all() {
        let k = index_key("c1", 40);
        let good = index_group_value(&[(5, 10), (6, 20), (9, 31)]);
        let want = vec![(19, 5, 10), (30, 6, 20), (40, 9, 31)];
        assert_eq!(index_chunks(&k, &good), Some(want.clone()));
        let mut list = vec![(1, 1, 1)];
        assert_eq!(index_chunks_into(&k, &good, &mut list), Some(()));
        assert_eq!(list[1..], want[..]);
        // Offsets not increasing at the third chunk; a first seq of 0; a
        // last seq below the last chunk's first; a torn value.
        for bad in [
            index_group_value(&[(5, 10), (6, 20), (6, 31)]),
            index_group_value(&[(5, 0)]),
            index_group_value(&[(5, 10), (6, 41)]),
            good[..good.len() - 1].to_vec(),
        ] {
            let before = list.clone();
            assert_eq!(index_chunks_into(&k, &bad, &mut list), None);
            assert_eq!(list, before);
            assert_eq!(index_chunks(&k, &bad), None);
        }
    }
}
