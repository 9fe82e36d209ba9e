//! The open-time verification of the whole log (chains, signatures, heads
//! table, chunk index) and the check against the heads record beside it;
//! the entries themselves are read by `entries.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use gridsync_model::chunk::{failing_heads, HEADS_PER_BATCH};
use gridsync_model::{Hash32, SignedHead, ZERO_HASH};

use crate::entries::{last_offset, read_entries};
use crate::kv::Kv;
use crate::layout;
use crate::read::hash_in_log;
use crate::writer::HeadsOut;
use crate::{HeadState, KeyLookup, LogCounts, StoreError, StoredChunk};

pub(crate) fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(msg.into())
}

#[derive(Clone)]
pub(crate) struct Recovered {
    /// Opened at a checkpoint: the entries before it are left to
    /// [`verify_log`].
    pub at_checkpoint: bool,
    pub next_offset: u64,
    pub heads: BTreeMap<String, HeadState>,
    pub counts: LogCounts,
}

/// Index entries of one origin, read in key (= seq) order a page at a
/// time: the open-time index check compares them with the log entries of
/// that origin as they come, holding a page per origin, not the index.
struct IndexCursor {
    prefix: Vec<u8>,
    next_start: Vec<u8>,
    page: std::collections::VecDeque<crate::kv::KvEntry>,
    done: bool,
}

const INDEX_PAGE: usize = 64;

/// Log entries the whole-log check reads and decodes at a time. It runs on
/// its own thread beside a serving node, and what that thread's heap
/// arena held for a page stays resident after the check, among the sled
/// cache pages it filled: with 512 entries a page a 10 M-event street
/// rested at 206 MiB against 162 with 64 (BENCHMARKS.md, "RSS at rest
/// under 200 MB"), and the check was no faster.
const LOG_PAGE: usize = 64;

impl IndexCursor {
    fn new(origin: &str) -> Self {
        let prefix = layout::index_prefix(origin);
        Self {
            next_start: prefix.clone(),
            prefix,
            page: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// The next chunk the index names, as the index entry of that chunk
    /// alone would be (an entry naming several is taken apart).
    fn next(&mut self, kv: &dyn Kv) -> Result<Option<crate::kv::KvEntry>, StoreError> {
        if self.page.is_empty() && !self.done {
            let got = kv.scan(&self.next_start, &self.prefix, INDEX_PAGE)?;
            self.done = got.len() < INDEX_PAGE;
            if let Some((k, _)) = got.last() {
                self.next_start = k.clone();
                self.next_start.push(0);
            }
            for (k, v) in got {
                let each = layout::index_entries_per_chunk(&k, &v)
                    .ok_or_else(|| corrupt("malformed index entry"))?;
                self.page.extend(each);
            }
        }
        Ok(self.page.pop_front())
    }
}

/// Counts the chunks the index names, a page of its entries at a time.
fn count_indexed_chunks(kv: &dyn Kv) -> Result<u64, StoreError> {
    let prefix = [layout::INDEX];
    let mut start = prefix.to_vec();
    let mut n = 0u64;
    loop {
        let got = kv.scan(&start, &prefix, 4096)?;
        for (k, v) in &got {
            let chunks =
                layout::index_chunks(k, v).ok_or_else(|| corrupt("malformed index entry"))?;
            n += chunks.len() as u64;
        }
        match got.last() {
            Some((k, _)) if got.len() == 4096 => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(n),
        }
    }
}

/// Opens the log: with a checkpoint (and neither `whole_log` nor
/// `verify_all`), checks what the checkpoint vouches for — every origin's
/// signed head in the heads table, and that the log ends where the
/// checkpoint says with the head the table lists — in time independent of
/// the log's length; otherwise reads the whole log back ([`walk_log`]) and
/// checks the heads table, the chunk index and the checkpoint against it.
pub(crate) fn recover(
    kv: &dyn Kv,
    keys: &KeyLookup,
    verify_all: bool,
    whole_log: bool,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let checkpoint = read_checkpoint(kv)?;
    let (recovered, how) = match checkpoint {
        Some(cp) if !whole_log && !verify_all => (open_at_checkpoint(kv, keys, cp)?, "checkpoint"),
        _ => {
            let r = walk_log(kv, keys, verify_all, None, &|| false)?;
            check_heads_table(kv, &r.heads)?;
            // Every log entry matched its own index entry; equal counts
            // leave no index entry without one.
            let index_found = count_indexed_chunks(kv)?;
            if index_found != r.counts.chunks {
                return Err(corrupt(format!(
                    "chunk index has {index_found} entries but the log has {} chunks",
                    r.counts.chunks
                )));
            }
            if let Some(cp) = checkpoint {
                if (cp.next_offset, cp.counts) != (r.next_offset, r.counts) {
                    return Err(corrupt(format!(
                        "the checkpoint says the log ends at entry {} with {} events, but it ends at {} with {}",
                        cp.next_offset, cp.counts.events, r.next_offset, r.counts.events
                    )));
                }
            }
            (r, "whole log")
        }
    };
    tracing::info!(
        chunks = recovered.counts.chunks,
        events = recovered.counts.events,
        origins = recovered.heads.len(),
        checked = how,
        all_signatures = verify_all,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log verified on open"
    );
    Ok(recovered)
}

/// Where the log ended at the last commit, and what it held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkpoint {
    next_offset: u64,
    counts: LogCounts,
    /// The body file's length after that commit (`None`: written by a
    /// build before body files, or by a store without one).
    pub(crate) bodies_len: Option<u64>,
}

/// `next_offset ‖ chunks ‖ events`, then `bodies_len` when the store keeps
/// a body file (u64be each).
pub(crate) fn encode_checkpoint(
    next_offset: u64,
    counts: LogCounts,
    bodies_len: Option<u64>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&next_offset.to_be_bytes());
    v.extend_from_slice(&counts.chunks.to_be_bytes());
    v.extend_from_slice(&counts.events.to_be_bytes());
    if let Some(len) = bodies_len {
        v.extend_from_slice(&len.to_be_bytes());
    }
    v
}

pub(crate) fn read_checkpoint(kv: &dyn Kv) -> Result<Option<Checkpoint>, StoreError> {
    let Some(v) = kv.get(layout::CHECKPOINT_KEY)? else {
        return Ok(None);
    };
    let n = |i: usize| {
        v.get(i * 8..i * 8 + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    };
    match (n(0), n(1), n(2)) {
        (Some(next_offset), Some(chunks), Some(events)) if v.len() == 24 || v.len() == 32 => {
            Ok(Some(Checkpoint {
                next_offset,
                counts: LogCounts { chunks, events },
                bodies_len: n(3),
            }))
        }
        _ => Err(corrupt("malformed checkpoint record")),
    }
}

/// The open at a checkpoint: every origin's head in the heads table carries
/// its origin's valid signature (which covers its whole chain through the
/// hash links), and the log's last entry is the checkpoint's and ends in
/// the head the table lists for its origin. What lies before it is checked
/// by [`verify_log`], after the node listens.
fn open_at_checkpoint(
    kv: &dyn Kv,
    keys: &KeyLookup,
    cp: Checkpoint,
) -> Result<Recovered, StoreError> {
    let heads = read_heads_table(kv)?;
    for (origin, h) in &heads {
        check_signed_head(keys, origin, h)?;
    }
    let last = last_offset(kv)?;
    if last.map_or(0, |o| o + 1) != cp.next_offset {
        return Err(corrupt(format!(
            "the checkpoint says the log ends before entry {} but its last entry is {:?}; \
             the log was cut or altered (serve --verify-all reads it all)",
            cp.next_offset, last
        )));
    }
    if let Some(offset) = last {
        let e = read_entries(kv, offset, 1)?
            .pop()
            .ok_or_else(|| corrupt(format!("log entry {offset} cannot be read")))?;
        let listed = heads.get(&e.chunk.origin);
        if listed.is_none_or(|h| h.signed != e.chunk.head) {
            return Err(corrupt(format!(
                "the log's last entry ({offset}, origin {}) does not end in the head the heads table lists",
                e.chunk.origin
            )));
        }
    }
    Ok(Recovered {
        at_checkpoint: true,
        next_offset: cp.next_offset,
        heads,
        counts: cp.counts,
    })
}

/// The whole-log check of a store opened at its checkpoint: every entry
/// before `opened.next_offset` is read back (chains, index, signatures as
/// [`walk_log`]) and must reach exactly the heads and counts the open
/// found. Reads only committed entries, so it runs beside the writer;
/// `stop` is asked between pages ([`StoreError::Closed`] once it says so).
pub(crate) fn verify_log(
    kv: &dyn Kv,
    keys: &KeyLookup,
    verify_all: bool,
    opened: &Recovered,
    stop: &dyn Fn() -> bool,
) -> Result<LogCounts, StoreError> {
    let r = walk_log(kv, keys, verify_all, Some(opened.next_offset), stop)?;
    if r.counts != opened.counts {
        return Err(corrupt(format!(
            "the log holds {} chunks and {} events before entry {} but its checkpoint said {} and {}",
            r.counts.chunks, r.counts.events, r.next_offset, opened.counts.chunks, opened.counts.events
        )));
    }
    // The heads the open took from the heads table.
    compare_heads(&r.heads, &opened.heads)?;
    Ok(r.counts)
}

/// A head whose entry checked out, its signature not yet verified: the
/// entry's offset, the head, the key it must verify under.
type Unsigned = (u64, SignedHead, ed25519_dalek::VerifyingKey);

/// Reads the log back (to its end, or up to entry `end`), recomputing every
/// event's chain link and comparing each entry with its chunk-index entry.
/// Signatures: each origin's newest head (which authenticates its whole
/// chain through the links), or every chunk's with `verify_all` — those
/// on a second thread, in batches, while this one reads on; a head the
/// origin's next head names (v2 `after`, same key) is vouched for by that
/// one, every byte of it, and is not verified again. A failing signature
/// is the error (it comes before any problem the walk found: every head
/// read before that problem is sent). Memory holds per-origin state, a
/// page of index entries per origin and up to three batches of heads,
/// never the log or the index.
fn walk_log(
    kv: &dyn Kv,
    keys: &KeyLookup,
    verify_all: bool,
    end: Option<u64>,
    stop: &dyn Fn() -> bool,
) -> Result<Recovered, StoreError> {
    if !verify_all {
        return walk(kv, keys, end, stop, None);
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Unsigned>>(1);
        let verifier = s.spawn(move || rx.into_iter().try_for_each(check_signatures));
        let walked = walk(kv, keys, end, stop, Some(tx));
        let signed = verifier.join().expect("the signature thread panicked");
        signed.and(walked)
    })
}

/// [`walk_log`]'s reading; with `signatures`, every entry's head is sent
/// there in batches instead of only each origin's newest being verified
/// here. Should that thread stop (a bad signature), so does the walk.
fn walk(
    kv: &dyn Kv,
    keys: &KeyLookup,
    end: Option<u64>,
    stop: &dyn Fn() -> bool,
    signatures: Option<std::sync::mpsc::SyncSender<Vec<Unsigned>>>,
) -> Result<Recovered, StoreError> {
    let mut heads: BTreeMap<String, HeadState> = BTreeMap::new();
    let mut cursors: HashMap<String, IndexCursor> = HashMap::new();
    let mut counts = LogCounts::default();
    let mut next = 0u64;
    let mut unsigned: Vec<Unsigned> = Vec::new();
    // With `signatures`: where each origin's latest head (the one
    // `heads` holds) was read and the key it must verify under; the head
    // is sent once the next one shows whether it names it.
    let mut held: HashMap<String, (u64, ed25519_dalek::VerifyingKey)> = HashMap::new();
    let unnamed = |origin: &str, (offset, key), heads: &BTreeMap<String, HeadState>| {
        let head = heads[origin].signed.clone();
        (offset, head, key)
    };
    // Sends the heads gathered; false when the verifier has stopped.
    let send = |unsigned: &mut Vec<Unsigned>| match &signatures {
        Some(tx) if !unsigned.is_empty() => tx.send(std::mem::take(unsigned)).is_ok(),
        _ => true,
    };
    'log: while end.is_none_or(|e| next < e) {
        if stop() {
            return Err(StoreError::Closed);
        }
        let entries = read_entries(kv, next, LOG_PAGE)?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            if end.is_some_and(|end| e.offset >= end) {
                break;
            }
            let origin = e.chunk.origin.clone();
            let prev = heads
                .get(&origin)
                .map_or((0, ZERO_HASH), |h| (h.seq, h.hash));
            let checked = keys(&origin, e.chunk.last_seq())
                .ok_or_else(|| {
                    corrupt(format!(
                        "log entry {} holds events of origin {origin:?}, which the topology does not list, so they cannot be verified",
                        e.offset
                    ))
                })
                .and_then(|key| {
                    check_recovered_entry(&e, prev)?;
                    let cursor = cursors
                        .entry(origin.clone())
                        .or_insert_with(|| IndexCursor::new(&origin));
                    check_index_entry(kv, cursor, &e)?;
                    Ok(key)
                });
            match checked {
                // Earlier entries' heads still go to be checked: a bad
                // signature among them is the first problem.
                Err(err) => {
                    unsigned.extend(held.into_iter().map(|(o, h)| unnamed(&o, h, &heads)));
                    send(&mut unsigned);
                    return Err(err);
                }
                Ok(key) if signatures.is_some() => {
                    match held.insert(origin.clone(), (e.offset, key)) {
                        Some((_, k))
                            if k == key && e.chunk.head.follows(&heads[&origin].signed) => {}
                        Some(earlier) => unsigned.push(unnamed(&origin, earlier, &heads)),
                        None => {}
                    }
                }
                Ok(_) => {}
            }
            counts.chunks += 1;
            counts.events += e.chunk.events.len() as u64;
            heads.insert(origin, HeadState::of(&e.chunk.head));
            next = e.offset + 1;
            // (After `heads` took this entry's head, which `held` names.
            // A verifier that stopped found a bad signature: that is the
            // result, whatever the walk counted.)
            if unsigned.len() >= HEADS_PER_BATCH && !send(&mut unsigned) {
                break 'log;
            }
        }
    }
    unsigned.extend(held.into_iter().map(|(o, h)| unnamed(&o, h, &heads)));
    send(&mut unsigned);
    // Each origin's newest signed head vouches for its whole chain.
    if signatures.is_none() {
        for (origin, h) in &heads {
            check_signed_head(keys, origin, h)?;
        }
    }
    Ok(Recovered {
        at_checkpoint: false,
        next_offset: next,
        heads,
        counts,
    })
}

/// The signatures of a batch of heads (`failing_heads`: the same heads
/// fail as one by one, in about a third of the time); the first that
/// fails is the error.
fn check_signatures(batch: Vec<Unsigned>) -> Result<(), StoreError> {
    let heads: Vec<_> = batch.iter().map(|(_, h, k)| (h, k)).collect();
    match failing_heads(&heads).first().map(|&i| &batch[i]) {
        None => Ok(()),
        Some((offset, h, _)) => {
            let err = gridsync_model::ChunkError::BadSignature {
                origin: h.origin.clone(),
                seq: h.seq,
            };
            Err(corrupt(format!("log entry {offset}: {err}")))
        }
    }
}

/// One log entry at open: it continues its origin's chain from `(seq,
/// hash)` and its links hold (its signature is checked by the caller).
fn check_recovered_entry(e: &StoredChunk, (seq, prev): (u64, Hash32)) -> Result<(), StoreError> {
    let origin = &e.chunk.origin;
    if e.chunk.first_seq() != seq.saturating_add(1) {
        return Err(corrupt(format!(
            "log entry {}: origin {origin} resumes at seq {} but the log holds up to seq {seq}",
            e.offset,
            e.chunk.first_seq()
        )));
    }
    e.chunk
        .check_links(seq.saturating_add(1), &prev)
        .map(|_| ())
        .map_err(|err| corrupt(format!("log entry {}: {err}", e.offset)))
}

/// The origin's next chunk-index entry must point at this log entry.
fn check_index_entry(
    kv: &dyn Kv,
    cursor: &mut IndexCursor,
    e: &StoredChunk,
) -> Result<(), StoreError> {
    let expected = (
        layout::index_key(&e.chunk.origin, e.chunk.last_seq()),
        layout::index_value(e.offset, e.chunk.first_seq()),
    );
    if cursor.next(kv)?.as_ref() != Some(&expected) {
        return Err(corrupt(format!(
            "chunk index does not match the log at entry {} (origin {}, seq {})",
            e.offset,
            e.chunk.origin,
            e.chunk.last_seq()
        )));
    }
    Ok(())
}

/// The heads table must say exactly what the log says.
fn check_heads_table(kv: &dyn Kv, heads: &BTreeMap<String, HeadState>) -> Result<(), StoreError> {
    compare_heads(heads, &read_heads_table(kv)?)
}

/// The heads table, origin by origin.
fn read_heads_table(kv: &dyn Kv) -> Result<BTreeMap<String, HeadState>, StoreError> {
    let mut table = BTreeMap::new();
    for (k, v) in kv.scan(&[layout::HEAD], &[layout::HEAD], usize::MAX)? {
        let origin =
            String::from_utf8(k[1..].to_vec()).map_err(|_| corrupt("malformed heads key"))?;
        table.insert(origin, decode_head_value(&v)?);
    }
    Ok(table)
}

/// `log`: the heads the log's chains end in; `table`: what the heads table
/// lists. They must be the same.
fn compare_heads(
    log: &BTreeMap<String, HeadState>,
    table: &BTreeMap<String, HeadState>,
) -> Result<(), StoreError> {
    for (origin, h) in log {
        match table.get(origin) {
            Some(t) if t == h => {}
            Some(t) => {
                return Err(corrupt(format!(
                    "heads table says origin {origin} is at seq {} but the log ends at seq {}; the log was cut or altered",
                    t.seq, h.seq
                )))
            }
            None => return Err(corrupt(format!("heads table lacks origin {origin}, which the log holds"))),
        }
    }
    if let Some(extra) = table.keys().find(|o| !log.contains_key(*o)) {
        return Err(corrupt(format!(
            "heads table lists origin {extra} at seq {} but the log holds none of its events; the log was cut or altered",
            table[extra].seq
        )));
    }
    Ok(())
}

/// `h` is `origin`'s own signed head, and its signature verifies with the
/// key the origin held at that seq.
fn check_signed_head(keys: &KeyLookup, origin: &str, h: &HeadState) -> Result<(), StoreError> {
    let key = keys(origin, h.seq)
        .ok_or_else(|| corrupt(format!("origin {origin:?} is not in the topology")))?;
    if (h.signed.origin.as_str(), h.signed.seq, h.signed.hash) != (origin, h.seq, h.hash) {
        return Err(corrupt(format!(
            "heads table entry of {origin} is not its signed head"
        )));
    }
    h.signed
        .verify(&key)
        .map_err(|err| corrupt(format!("origin {origin}, head at seq {}: {err}", h.seq)))
}

/// Compares the log with the heads record beside it: a log holding less
/// than the record is refused (or, with `accept`, reported and taken).
pub(crate) fn check_heads_record(
    kv: &dyn Kv,
    data_dir: &std::path::Path,
    recovered: &Recovered,
    accept: bool,
) -> Result<HeadsOut, StoreError> {
    use crate::heads_file::{self, Loaded};
    let loaded = heads_file::load(data_dir);
    let was_valid = matches!(loaded, Loaded::Valid(_));
    let (generation, problems) = match loaded {
        Loaded::Absent => (0, Vec::new()),
        Loaded::Damaged(m) => (2, vec![m]),
        Loaded::Valid(r) => {
            let mut problems = Vec::new();
            for (origin, h) in &r.heads {
                let held = recovered.heads.get(origin).map_or(0, |s| s.seq);
                if held < h.seq {
                    problems.push(format!(
                        "origin {origin}: the log holds up to seq {held}, the record up to seq {} (seqs {}–{} missing)",
                        h.seq,
                        held + 1,
                        h.seq
                    ));
                } else if hash_in_log(kv, origin, h.seq)? != Some(h.hash) {
                    problems.push(format!(
                        "origin {origin}: the log's event at seq {} differs from the recorded one",
                        h.seq
                    ));
                }
            }
            if problems.is_empty() && recovered.next_offset < r.next_offset {
                problems.push(format!(
                    "the log has {} entries, the record {}",
                    recovered.next_offset, r.next_offset
                ));
            }
            (r.generation, problems)
        }
    };
    if !problems.is_empty() {
        let what = problems.join("; ");
        if !accept {
            return Err(StoreError::Truncated(what));
        }
        tracing::error!(
            missing = %what,
            "taking a log shorter than its heads record (--after-restore): the missing events come back from the parent or the children"
        );
    }
    let mut out = HeadsOut::new(data_dir, generation);
    // Record what this log holds now (a new node, an older store, or an
    // accepted shorter log).
    out.dirty = !was_valid || !problems.is_empty();
    Ok(out)
}

pub(crate) fn encode_head_value(h: &HeadState) -> Vec<u8> {
    let mut v = Vec::with_capacity(180);
    v.extend_from_slice(&h.seq.to_be_bytes());
    v.extend_from_slice(&h.hash);
    v.extend_from_slice(&h.signed.encode());
    v
}

pub(crate) fn decode_head_value(v: &[u8]) -> Result<HeadState, StoreError> {
    if v.len() < 40 {
        return Err(corrupt("malformed heads entry"));
    }
    Ok(HeadState {
        seq: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        hash: v[8..40].try_into().expect("32 bytes"),
        signed: SignedHead::decode(&v[40..]).map_err(|e| corrupt(format!("heads entry: {e}")))?,
    })
}
