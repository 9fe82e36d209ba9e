//! The single log writer (group commit) and log recovery on open.

use std::collections::{BTreeMap, HashMap, HashSet};

use gridsync_model::ingest::PreparedEvent;
use std::sync::Arc;
use std::time::Instant;

use gridsync_model::event::{event_hash, EnvelopeHeader};
use gridsync_model::{Chunk, EventRecord, Hash32, SignedHead, ZERO_HASH};
use tokio::sync::{mpsc, oneshot};

use crate::kv::{Kv, KvEntry, KvWrite};
use crate::layout::{self, FRAGMENT_BYTES_MAX};
use crate::{
    AppendError, Appended, HeadState, KeyLookup, LogCounts, OriginIdentity, PostingHold, Request,
    Shared, StoreConfig, StoreError, StoredChunk,
};

/// Bytes before the chunk in fragment 0: parts:u16be received_at_ms:i64be.
const ENTRY_HEADER_BYTES: usize = 10;

/// Encodes one log entry into its fragments' key/value writes.
pub(crate) fn entry_writes(offset: u64, received_at_ms: i64, chunk_bytes: &[u8]) -> Vec<KvWrite> {
    let total = ENTRY_HEADER_BYTES + chunk_bytes.len();
    let parts = total.div_ceil(FRAGMENT_BYTES_MAX);
    let parts_u16 = u16::try_from(parts).expect("events are limited far below 65535 fragments");
    let mut whole = Vec::with_capacity(total);
    whole.extend_from_slice(&parts_u16.to_be_bytes());
    whole.extend_from_slice(&received_at_ms.to_be_bytes());
    whole.extend_from_slice(chunk_bytes);
    whole
        .chunks(FRAGMENT_BYTES_MAX)
        .enumerate()
        .map(|(i, part)| (layout::log_key(offset, i as u16), Some(part.to_vec())))
        .collect()
}

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(msg.into())
}

fn assemble(offset: u64, frags: &[KvEntry]) -> Result<StoredChunk, StoreError> {
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
    let received_at_ms = i64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let chunk = Chunk::decode(&bytes[ENTRY_HEADER_BYTES..])
        .map_err(|e| corrupt(format!("log entry {offset}: {e}")))?;
    Ok(StoredChunk {
        offset,
        received_at_ms,
        chunk,
    })
}

/// Reads up to `max_entries` consecutive log entries from `offset`.
pub(crate) fn read_entries(
    kv: &dyn Kv,
    offset: u64,
    max_entries: usize,
) -> Result<Vec<StoredChunk>, StoreError> {
    let mut out = Vec::new();
    let mut next = offset;
    while out.len() < max_entries {
        let want = max_entries - out.len();
        // One fragment per entry is the common case; an entry with more
        // fragments than the page holds is fetched whole below.
        let page = kv.scan(&layout::log_key(next, 0), &[layout::LOG], want)?;
        if page.is_empty() {
            break;
        }
        let mut i = 0;
        let mut progressed = false;
        while i < page.len() && out.len() < max_entries {
            let (off, part) =
                layout::parse_log_key(&page[i].0).ok_or_else(|| corrupt("malformed log key"))?;
            if off != next {
                return Err(corrupt(format!(
                    "log entry {next} is missing (found {off} after it)"
                )));
            }
            if part != 0 || page[i].1.len() < 2 {
                return Err(corrupt(format!("log entry {off}: first fragment missing")));
            }
            let parts = usize::from(u16::from_be_bytes([page[i].1[0], page[i].1[1]]));
            if parts == 0 {
                return Err(corrupt(format!("log entry {off}: zero fragments")));
            }
            if i + parts > page.len() {
                break;
            }
            out.push(assemble(off, &page[i..i + parts])?);
            next = off + 1;
            i += parts;
            progressed = true;
        }
        if !progressed {
            // One entry with more fragments than the page held.
            let prefix = layout::log_prefix(next);
            let frags = kv.scan(&prefix, &prefix, usize::from(u16::MAX))?;
            out.push(assemble(next, &frags)?);
            next += 1;
        }
    }
    Ok(out)
}

pub(crate) struct Recovered {
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

    fn next(&mut self, kv: &dyn Kv) -> Result<Option<crate::kv::KvEntry>, StoreError> {
        if self.page.is_empty() && !self.done {
            let got = kv.scan(&self.next_start, &self.prefix, INDEX_PAGE)?;
            self.done = got.len() < INDEX_PAGE;
            if let Some((k, _)) = got.last() {
                self.next_start = k.clone();
                self.next_start.push(0);
            }
            self.page.extend(got);
        }
        Ok(self.page.pop_front())
    }
}

/// Counts the keys under `prefix`, a page at a time.
fn count_keys(kv: &dyn Kv, prefix: &[u8]) -> Result<u64, StoreError> {
    let mut start = prefix.to_vec();
    let mut n = 0u64;
    loop {
        let got = kv.scan(&start, prefix, 4096)?;
        n += got.len() as u64;
        match got.last() {
            Some((k, _)) if got.len() == 4096 => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(n),
        }
    }
}

/// Reads the whole log back, recomputing every event's chain link, and
/// checks the heads table and the chunk index against it. Signatures: each
/// origin's newest head (which authenticates its whole chain through the
/// links), or every chunk's with `verify_all`. Memory holds per-origin
/// state and a page of index entries per origin, never the log or index.
pub(crate) fn recover(
    kv: &dyn Kv,
    keys: &KeyLookup,
    verify_all: bool,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let mut heads: BTreeMap<String, HeadState> = BTreeMap::new();
    let mut cursors: HashMap<String, IndexCursor> = HashMap::new();
    let mut counts = LogCounts::default();
    let mut next = 0u64;
    loop {
        let entries = read_entries(kv, next, 512)?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            let origin = e.chunk.origin.clone();
            let key = keys(&origin, e.chunk.last_seq()).ok_or_else(|| {
                corrupt(format!(
                    "log entry {} holds events of origin {origin:?}, which the topology does not list, so they cannot be verified",
                    e.offset
                ))
            })?;
            let (seq, prev) = heads
                .get(&origin)
                .map_or((0, ZERO_HASH), |h| (h.seq, h.hash));
            if e.chunk.first_seq() != seq.saturating_add(1) {
                return Err(corrupt(format!(
                    "log entry {}: origin {origin} resumes at seq {} but the log holds up to seq {seq}",
                    e.offset,
                    e.chunk.first_seq()
                )));
            }
            e.chunk
                .check_links(seq.saturating_add(1), &prev)
                .and_then(|_| {
                    if verify_all {
                        e.chunk.head.verify(&key)
                    } else {
                        Ok(())
                    }
                })
                .map_err(|err| corrupt(format!("log entry {}: {err}", e.offset)))?;
            let expected = (
                layout::index_key(&origin, e.chunk.last_seq()),
                layout::index_value(e.offset, e.chunk.first_seq()),
            );
            let found = cursors
                .entry(origin.clone())
                .or_insert_with(|| IndexCursor::new(&origin))
                .next(kv)?;
            if found.as_ref() != Some(&expected) {
                return Err(corrupt(format!(
                    "chunk index does not match the log at entry {} (origin {origin}, seq {})",
                    e.offset,
                    e.chunk.last_seq()
                )));
            }
            counts.chunks += 1;
            counts.events += e.chunk.events.len() as u64;
            heads.insert(
                origin,
                HeadState {
                    seq: e.chunk.head.seq,
                    hash: e.chunk.head.hash,
                    signed: e.chunk.head.clone(),
                },
            );
            next = e.offset + 1;
        }
    }
    // Each origin's newest signed head vouches for its whole chain.
    if !verify_all {
        for (origin, h) in &heads {
            let key = keys(origin, h.seq)
                .ok_or_else(|| corrupt(format!("origin {origin:?} is not in the topology")))?;
            h.signed
                .verify(&key)
                .map_err(|err| corrupt(format!("origin {origin}, head at seq {}: {err}", h.seq)))?;
        }
    }
    // The heads table must say exactly what the log says.
    let mut table: BTreeMap<String, HeadState> = BTreeMap::new();
    for (k, v) in kv.scan(&[layout::HEAD], &[layout::HEAD], usize::MAX)? {
        let origin =
            String::from_utf8(k[1..].to_vec()).map_err(|_| corrupt("malformed heads key"))?;
        table.insert(origin, decode_head_value(&v)?);
    }
    for (origin, h) in &heads {
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
    if let Some(extra) = table.keys().find(|o| !heads.contains_key(*o)) {
        return Err(corrupt(format!(
            "heads table lists origin {extra} at seq {} but the log holds none of its events; the log was cut or altered",
            table[extra].seq
        )));
    }
    // Every log entry matched its own index entry; equal counts leave no
    // index entry without one.
    let index_found = count_keys(kv, &[layout::INDEX])?;
    if index_found != counts.chunks {
        return Err(corrupt(format!(
            "chunk index has {index_found} entries but the log has {} chunks",
            counts.chunks
        )));
    }
    tracing::info!(
        chunks = counts.chunks,
        events = counts.events,
        origins = heads.len(),
        all_signatures = verify_all,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log verified on open"
    );
    Ok(Recovered {
        next_offset: next,
        heads,
        counts,
    })
}

/// Hash of event `seq` of `origin` as the log holds it (durably).
pub(crate) fn hash_in_log(
    kv: &dyn Kv,
    origin: &str,
    seq: u64,
) -> Result<Option<Hash32>, StoreError> {
    let start = layout::index_key(origin, seq);
    let prefix = layout::index_prefix(origin);
    let Some((_, v)) = kv.scan(&start, &prefix, 1)?.pop() else {
        return Ok(None);
    };
    let (offset, _) =
        layout::parse_index_value(&v).ok_or_else(|| corrupt("malformed index entry"))?;
    Ok(read_entries(kv, offset, 1)?
        .pop()
        .and_then(|e| event_in_chunk(&e.chunk, seq)))
}

fn event_in_chunk(c: &Chunk, seq: u64) -> Option<Hash32> {
    (c.first_seq() <= seq && seq <= c.last_seq()).then(|| {
        let i = usize::try_from(seq - c.first_seq()).expect("within the chunk");
        event_hash(&c.events[i].envelope)
    })
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

/// The heads record writer and when it last wrote.
pub(crate) struct HeadsOut {
    writer: crate::heads_file::HeadsWriter,
    last: Option<Instant>,
    dirty: bool,
}

impl HeadsOut {
    fn new(data_dir: &std::path::Path, generation: u64) -> Self {
        Self {
            writer: crate::heads_file::HeadsWriter::new(data_dir, generation),
            last: None,
            dirty: false,
        }
    }
}

fn encode_head_value(h: &HeadState) -> Vec<u8> {
    let mut v = Vec::with_capacity(180);
    v.extend_from_slice(&h.seq.to_be_bytes());
    v.extend_from_slice(&h.hash);
    v.extend_from_slice(&h.signed.encode());
    v
}

fn decode_head_value(v: &[u8]) -> Result<HeadState, StoreError> {
    if v.len() < 40 {
        return Err(corrupt("malformed heads entry"));
    }
    Ok(HeadState {
        seq: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        hash: v[8..40].try_into().expect("32 bytes"),
        signed: SignedHead::decode(&v[40..]).map_err(|e| corrupt(format!("heads entry: {e}")))?,
    })
}

type Reply = oneshot::Sender<Result<Vec<Appended>, AppendError>>;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    config: StoreConfig,
    origin: Option<OriginIdentity>,
    heads: BTreeMap<String, HeadState>,
    next_offset: u64,
    heads_out: Option<HeadsOut>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: StoreConfig,
        origin: Option<OriginIdentity>,
        recovered: Recovered,
        heads_out: Option<HeadsOut>,
    ) -> Self {
        Self {
            shared,
            config,
            origin,
            heads: recovered.heads,
            next_offset: recovered.next_offset,
            heads_out,
        }
    }

    /// Writes the heads record if it is behind and `force` or its interval
    /// has passed. A failed write is fatal, like a failed commit.
    fn write_heads(&mut self, force: bool) -> Result<(), StoreError> {
        let interval = std::time::Duration::from_millis(self.config.heads_interval_ms);
        let Some(out) = self.heads_out.as_mut() else {
            return Ok(());
        };
        if !out.dirty || !(force || out.last.is_none_or(|t| t.elapsed() >= interval)) {
            return Ok(());
        }
        let events = self.shared.stats.read().expect("lock").events;
        let mut record = crate::heads_file::HeadsRecord {
            generation: 0,
            written_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            next_offset: self.next_offset,
            events,
            heads: self
                .heads
                .iter()
                .map(|(o, h)| (o.clone(), h.signed.clone()))
                .collect(),
        };
        match out.writer.write(&mut record) {
            Ok(()) => {
                out.dirty = false;
                out.last = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                let why = format!("writing the heads record beside the data directory: {e}");
                tracing::error!(error = %why, "the log writer stops acknowledging");
                self.shared.fail(why.clone());
                Err(StoreError::Failed(why))
            }
        }
    }

    /// The next request; while the heads record is behind, waits at most
    /// until it is due and writes it.
    fn next_request(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        timer: &tokio::runtime::Runtime,
    ) -> Option<Request> {
        loop {
            let due = match &self.heads_out {
                Some(o) if o.dirty && self.shared.failure().is_none() => o.last.map(|t| {
                    std::time::Duration::from_millis(self.config.heads_interval_ms)
                        .saturating_sub(t.elapsed())
                }),
                _ => return rx.blocking_recv(),
            };
            match due {
                // Wait for the next request, but no longer than the record
                // is due (a request wakes the writer at once).
                Some(d) if !d.is_zero() => {
                    let waited = timer.block_on(async { tokio::time::timeout(d, rx.recv()).await });
                    if let Ok(r) = waited {
                        return r;
                    }
                }
                _ => {
                    let _ = self.write_heads(true);
                }
            }
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // A timer for waiting on the queue with a deadline (the heads record).
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread timer runtime");
        let _ = self.write_heads(true);
        while let Some(first) = self.next_request(&mut rx, &timer) {
            let mut n_events = first.n_events();
            let mut batch = vec![first];
            while n_events < self.config.commit_events_max {
                match rx.try_recv() {
                    Ok(r) => {
                        n_events += r.n_events();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        if self.shared.failure().is_none() {
            let _ = self.write_heads(true);
        }
        tracing::debug!("log writer stopped: every sender is gone and the queue is drained");
    }

    fn head_of(&self, work: &Work, origin: &str) -> (u64, Hash32) {
        work.heads
            .get(origin)
            .or_else(|| self.heads.get(origin))
            .map_or((0, ZERO_HASH), |h| (h.seq, h.hash))
    }

    /// One durable commit for every request gathered: events originated
    /// here and chunks received from children alike.
    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(err) = self.shared.failure() {
            for r in batch {
                r.fail(err.clone());
            }
            return;
        }
        let mut work = Work {
            offset: self.next_offset,
            ..Work::default()
        };
        let mut pending: Vec<PendingReply> = Vec::new();
        for r in batch {
            match r {
                Request::Originate { reply, .. } if work.hold(&self.shared).is_some() => {
                    let hold = work.hold(&self.shared).expect("checked");
                    let _ = reply.send(Err(AppendError::Held(hold)));
                }
                Request::SetHold { hold, reply } => {
                    let write = hold.as_ref().map(PostingHold::encode);
                    work.writes.push((layout::HOLD_KEY.to_vec(), write));
                    work.hold = Some(hold);
                    pending.push(PendingReply::SetHold(reply));
                }
                Request::Originate {
                    events,
                    now_ms,
                    reply,
                } => match self.originate(&mut work, events, now_ms) {
                    Ok(results) => pending.push(PendingReply::Originate(reply, results)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Request::Import {
                    chunks,
                    now_ms,
                    reply,
                } => match self.import(&mut work, chunks, now_ms) {
                    Ok(n) => pending.push(PendingReply::Import(reply, n)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Request::Evidence {
                    summary,
                    writes,
                    reply,
                } => {
                    let held = work.evidence.contains(&summary)
                        || matches!(self.shared.kv.get(&summary), Ok(Some(_)));
                    if held {
                        let _ = reply.send(Ok(false));
                    } else {
                        work.evidence.insert(summary);
                        work.writes.extend(writes);
                        pending.push(PendingReply::Evidence(reply));
                    }
                }
            }
        }
        if work.writes.is_empty() {
            for p in pending {
                p.succeed();
            }
            return;
        }
        for (origin, head) in &work.heads {
            work.writes
                .push((layout::head_key(origin), Some(encode_head_value(head))));
        }
        if self.config.unsafe_ack_before_durable {
            // Negative control for the crash test only: acknowledge first.
            for p in pending.drain(..) {
                p.succeed();
            }
        }
        let t0 = Instant::now();
        let writes = std::mem::take(&mut work.writes);
        match self.shared.kv.commit(writes) {
            Ok(t) => {
                let node = self.config.node_label.clone();
                metrics::histogram!("gridsync_commit_seconds", "node" => node.clone())
                    .record(t0.elapsed().as_secs_f64());
                metrics::histogram!("gridsync_fsync_seconds", "node" => node.clone())
                    .record(t.fsync_s + t.flush_s);
                metrics::counter!("gridsync_commits_total", "node" => node.clone()).increment(1);
                metrics::counter!("gridsync_events_appended_total", "node" => node)
                    .increment(work.events);
                self.next_offset = work.offset;
                {
                    let mut shared_heads = self.shared.heads.write().expect("lock");
                    for (origin, head) in work.heads {
                        self.heads.insert(origin.clone(), head.clone());
                        shared_heads.insert(origin, head);
                    }
                }
                {
                    let mut s = self.shared.stats.write().expect("lock");
                    s.chunks += work.chunks;
                    s.events += work.events;
                }
                if let Some(hold) = work.hold.take() {
                    *self.shared.hold.write().expect("lock") = hold;
                }
                if let Some(out) = self.heads_out.as_mut() {
                    out.dirty = true;
                }
                if self.config.heads_interval_ms == 0 {
                    // The record is part of the commit: written before
                    // anyone hears of it.
                    if let Err(e) = self.write_heads(true) {
                        for p in pending {
                            p.fail(e.clone());
                        }
                        return;
                    }
                }
                // Readers see the commit (durable now) before anyone hears
                // of it: a client reads its own acknowledged writes.
                self.shared.committed.send_replace(self.next_offset);
                for p in pending {
                    p.succeed();
                }
                let _ = self.write_heads(false);
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "commit failed; the log writer stops acknowledging");
                self.shared.fail(why.clone());
                for p in pending {
                    p.fail(StoreError::Failed(why.clone()));
                }
            }
        }
    }

    /// Adds one chunk to the work as the next log entry.
    fn push_chunk(work: &mut Work, chunk: Chunk, received_at_ms: i64) {
        work.writes
            .extend(entry_writes(work.offset, received_at_ms, &chunk.encode()));
        work.writes.push((
            layout::index_key(&chunk.origin, chunk.last_seq()),
            Some(layout::index_value(work.offset, chunk.first_seq())),
        ));
        work.offset += 1;
        work.chunks += 1;
        work.events += chunk.events.len() as u64;
        work.heads.insert(
            chunk.origin.clone(),
            HeadState {
                seq: chunk.head.seq,
                hash: chunk.head.hash,
                signed: chunk.head.clone(),
            },
        );
        work.pushed.push(chunk);
    }

    /// Hash of event `seq` of `origin` as this writer holds it: in this
    /// commit's work, or durable in the log.
    fn held_hash(&self, work: &Work, origin: &str, seq: u64) -> Result<Option<Hash32>, StoreError> {
        if seq == 0 {
            return Ok(Some(ZERO_HASH));
        }
        let (head_seq, head_hash) = self.head_of(work, origin);
        if seq > head_seq {
            return Ok(None);
        }
        if seq == head_seq {
            return Ok(Some(head_hash));
        }
        if let Some(h) = work
            .pushed
            .iter()
            .rev()
            .filter(|c| c.origin == origin)
            .find_map(|c| event_in_chunk(c, seq))
        {
            return Ok(Some(h));
        }
        hash_in_log(self.shared.kv.as_ref(), origin, seq)
    }

    /// Chunks received from a child (or, at an origin repairing itself,
    /// its own chain pulled back from its parent), already verified by the
    /// protocol. The writer re-checks them against its own heads (a second
    /// session of the same child may have sent the same events): what is
    /// held is skipped if its hash is the one held, a gap refuses the whole
    /// request, and a different event at a held seq refuses it as
    /// [`StoreError::Diverged`].
    fn import(
        &mut self,
        work: &mut Work,
        chunks: Vec<Chunk>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let snapshot = work.snapshot();
        let result = self.import_all(work, chunks, now_ms);
        if result.is_err() {
            work.restore(snapshot);
        }
        result
    }

    fn import_all(
        &mut self,
        work: &mut Work,
        chunks: Vec<Chunk>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let own = self.origin.as_ref().map(|o| o.node_id.clone());
        let mut n_new = 0u64;
        for chunk in chunks {
            let origin = chunk.origin.clone();
            let (head_seq, head_hash) = self.head_of(work, &origin);
            let (first, last) = (chunk.first_seq(), chunk.last_seq());
            if last <= head_seq {
                let theirs = event_hash(&chunk.events.last().expect("non-empty").envelope);
                if self.held_hash(work, &origin, last)? != Some(theirs) {
                    return Err(StoreError::Diverged { origin, seq: last });
                }
                continue;
            }
            if first > head_seq.saturating_add(1) {
                return Err(StoreError::Refused(format!(
                    "origin {origin}: gap (holds {head_seq}, chunk starts at {first})"
                )));
            }
            let suffix = chunk.suffix_after(head_seq).expect("last > head");
            if suffix.first_prev().ok() != Some(head_hash) {
                return Err(StoreError::Diverged {
                    origin,
                    seq: head_seq,
                });
            }
            suffix
                .check_links(head_seq.saturating_add(1), &head_hash)
                .map_err(|e| StoreError::Refused(format!("origin {origin}: {e}")))?;
            if own.as_deref() == Some(origin.as_str()) {
                // This origin's own chain coming back from its parent: index
                // its client ids so a phone's retry is still a duplicate.
                for rec in &suffix.events {
                    let (client_id, value) = client_entry(rec)
                        .map_err(|e| StoreError::Refused(format!("origin {origin}: {e}")))?;
                    work.writes.push((
                        layout::client_key(&origin, &client_id),
                        Some(value.to_vec()),
                    ));
                    work.clients.insert(client_id, decode_client_value(&value)?);
                }
            }
            n_new += suffix.events.len() as u64;
            Self::push_chunk(work, suffix, now_ms);
        }
        Ok(n_new)
    }

    fn originate(
        &mut self,
        work: &mut Work,
        events: Vec<PreparedEvent>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, AppendError> {
        let Some(origin) = self.origin.as_ref() else {
            return Err(AppendError::NotAnOrigin);
        };
        let origin_id = origin.node_id.clone();
        let start = self.head_of(work, &origin_id);
        let (mut seq, mut hash) = start;
        let mut records: Vec<EventRecord> = Vec::new();
        let mut added: Vec<(String, (u64, Hash32, Hash32))> = Vec::new();
        let mut results = Vec::with_capacity(events.len());
        for (index, ev) in events.into_iter().enumerate() {
            let existing = match work.clients.get(&ev.client_id) {
                Some(p) => Some(*p),
                None => match added.iter().find(|(c, _)| *c == ev.client_id) {
                    Some((_, p)) => Some(*p),
                    None => self.lookup_client(&origin_id, &ev.client_id)?,
                },
            };
            if let Some((s, h, fp)) = existing {
                if fp != ev.fingerprint && fp != UNKNOWN_FINGERPRINT {
                    return Err(AppendError::ClientIdReused {
                        index,
                        client_id: ev.client_id,
                        seq: s,
                    });
                }
                results.push(Appended {
                    origin: origin_id.clone(),
                    seq: s,
                    hash: h,
                    duplicate: true,
                });
                continue;
            }
            seq += 1;
            let digest = ev.personal.as_ref().map(|p| p.digest());
            let envelope = EnvelopeHeader {
                origin: &origin_id,
                seq,
                kind: &ev.kind,
                schema: ev.schema,
                occurred_at: ev.occurred_at,
                recorded_at_ms: now_ms,
                grid: &ev.grid,
                recorded_by: &ev.recorded_by,
                client_id: &ev.client_id,
                prev: &hash,
                personal_digest: digest.as_ref(),
            }
            .encode_with_data(&ev.data);
            hash = event_hash(&envelope);
            records.push(EventRecord {
                envelope,
                personal: ev.personal,
            });
            added.push((ev.client_id, (seq, hash, ev.fingerprint)));
            results.push(Appended {
                origin: origin_id.clone(),
                seq,
                hash,
                duplicate: false,
            });
        }
        if records.is_empty() {
            return Ok(results);
        }
        // Cut the new events into chunks of about chunk_bytes_target, each
        // closed by a signed head.
        let key = &origin.key;
        let mut current: Vec<EventRecord> = Vec::new();
        let mut current_bytes = 0usize;
        let mut chunk_seq = start.0;
        let mut chunk_hash = start.1;
        let n_records = records.len();
        for (i, rec) in records.into_iter().enumerate() {
            chunk_seq += 1;
            chunk_hash = event_hash(&rec.envelope);
            current_bytes +=
                rec.envelope.len() + rec.personal.as_ref().map_or(0, |p| p.bytes.len() + 24) + 8;
            current.push(rec);
            if current_bytes >= self.config.chunk_bytes_target || i + 1 == n_records {
                let head = SignedHead::sign(key, &origin_id, chunk_seq, chunk_hash, now_ms);
                let chunk = Chunk {
                    origin: origin_id.clone(),
                    events: std::mem::take(&mut current),
                    head,
                };
                Self::push_chunk(work, chunk, now_ms);
                current_bytes = 0;
            }
        }
        debug_assert_eq!((chunk_seq, chunk_hash), (seq, hash));
        for (client_id, (s, h, fp)) in added {
            let mut v = Vec::with_capacity(72);
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&h);
            v.extend_from_slice(&fp);
            work.writes
                .push((layout::client_key(&origin_id, &client_id), Some(v)));
            work.clients.insert(client_id, (s, h, fp));
        }
        Ok(results)
    }

    fn lookup_client(
        &self,
        origin: &str,
        client_id: &str,
    ) -> Result<Option<(u64, Hash32, Hash32)>, StoreError> {
        match self.shared.kv.get(&layout::client_key(origin, client_id))? {
            None => Ok(None),
            Some(v) => decode_client_value(&v).map(Some),
        }
    }
}

/// The fingerprint recorded for an event whose personal part this node got
/// back without (a retry with its client id is taken as a duplicate).
const UNKNOWN_FINGERPRINT: Hash32 = [0xff; 32];

/// The client-id index entry of a stored event of this origin:
/// `(client_id, seq ‖ hash ‖ content fingerprint)`.
fn client_entry(rec: &EventRecord) -> Result<(String, [u8; 72]), String> {
    let env = gridsync_model::Envelope::decode(&rec.envelope).map_err(|e| e.to_string())?;
    let fp = if env.personal_digest.is_some() && rec.personal.is_none() {
        // Pulled back from a parent that never held the personal part: the
        // content cannot be compared, only the client id.
        UNKNOWN_FINGERPRINT
    } else {
        gridsync_model::ingest::stored_fingerprint(&env, rec.personal.as_ref())
    };
    let mut v = [0u8; 72];
    v[..8].copy_from_slice(&env.seq.to_be_bytes());
    v[8..40].copy_from_slice(&event_hash(&rec.envelope));
    v[40..].copy_from_slice(&fp);
    Ok((env.client_id, v))
}

fn decode_client_value(v: &[u8]) -> Result<(u64, Hash32, Hash32), StoreError> {
    if v.len() != 72 {
        return Err(corrupt("malformed client_id index entry"));
    }
    Ok((
        u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        v[8..40].try_into().expect("32 bytes"),
        v[40..72].try_into().expect("32 bytes"),
    ))
}

impl Request {
    fn n_events(&self) -> usize {
        match self {
            Request::Originate { events, .. } => events.len().max(1),
            Request::Import { chunks, .. } => {
                chunks.iter().map(|c| c.events.len()).sum::<usize>().max(1)
            }
            Request::Evidence { .. } | Request::SetHold { .. } => 1,
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Request::Originate { reply, .. } => {
                let _ = reply.send(Err(err.into()));
            }
            Request::Import { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Evidence { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::SetHold { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What one commit will write, and the heads it will leave.
#[derive(Default)]
struct Work {
    writes: Vec<KvWrite>,
    offset: u64,
    chunks: u64,
    events: u64,
    heads: HashMap<String, HeadState>,
    /// Client ids originated (or re-imported) earlier in this commit.
    clients: HashMap<String, (u64, Hash32, Hash32)>,
    /// The chunks this commit appends, in log order.
    pushed: Vec<Chunk>,
    /// Evidence summary keys written by this commit.
    evidence: HashSet<Vec<u8>>,
    /// A posting hold set (or lifted) by this commit.
    hold: Option<Option<PostingHold>>,
}

/// What a failed request rolls back to.
struct WorkSnapshot {
    writes: usize,
    offset: u64,
    chunks: u64,
    events: u64,
    heads: HashMap<String, HeadState>,
    clients: HashMap<String, (u64, Hash32, Hash32)>,
    pushed: usize,
}

impl Work {
    /// The posting hold as of this point of the commit.
    fn hold(&self, shared: &Shared) -> Option<PostingHold> {
        match &self.hold {
            Some(h) => h.clone(),
            None => shared.hold.read().expect("lock").clone(),
        }
    }

    fn snapshot(&self) -> WorkSnapshot {
        WorkSnapshot {
            writes: self.writes.len(),
            offset: self.offset,
            chunks: self.chunks,
            events: self.events,
            heads: self.heads.clone(),
            clients: self.clients.clone(),
            pushed: self.pushed.len(),
        }
    }

    fn restore(&mut self, s: WorkSnapshot) {
        self.writes.truncate(s.writes);
        self.pushed.truncate(s.pushed);
        (
            self.offset,
            self.chunks,
            self.events,
            self.heads,
            self.clients,
        ) = (s.offset, s.chunks, s.events, s.heads, s.clients);
    }
}

enum PendingReply {
    Originate(Reply, Vec<Appended>),
    Import(oneshot::Sender<Result<u64, StoreError>>, u64),
    Evidence(oneshot::Sender<Result<bool, StoreError>>),
    SetHold(oneshot::Sender<Result<(), StoreError>>),
}

impl PendingReply {
    fn succeed(self) {
        match self {
            PendingReply::Originate(r, results) => {
                let _ = r.send(Ok(results));
            }
            PendingReply::Import(r, n) => {
                let _ = r.send(Ok(n));
            }
            PendingReply::Evidence(r) => {
                let _ = r.send(Ok(true));
            }
            PendingReply::SetHold(r) => {
                let _ = r.send(Ok(()));
            }
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            PendingReply::Originate(r, _) => {
                let _ = r.send(Err(err.into()));
            }
            PendingReply::Import(r, _) => {
                let _ = r.send(Err(err));
            }
            PendingReply::Evidence(r) => {
                let _ = r.send(Err(err));
            }
            PendingReply::SetHold(r) => {
                let _ = r.send(Err(err));
            }
        }
    }
}
