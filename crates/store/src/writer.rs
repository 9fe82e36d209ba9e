//! The single log writer (group commit) and log recovery on open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use gridsync_model::event::{event_hash, EnvelopeHeader};
use gridsync_model::{Chunk, EventRecord, Hash32, SignedHead, ZERO_HASH};
use tokio::sync::{mpsc, oneshot};

use crate::kv::{Kv, KvEntry, KvWrite};
use crate::layout::{self, FRAGMENT_BYTES_MAX};
use crate::{
    AppendError, Appended, HeadState, KeyLookup, LogCounts, OriginIdentity, Request, Shared,
    StoreConfig, StoreError, StoredChunk,
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
        let page = kv.scan(&layout::log_key(next, 0), &[layout::LOG], want + 8)?;
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

/// Reads the whole log back, verifying every chunk's chain and signature,
/// and checks the heads table and the chunk index against it.
pub(crate) fn recover(kv: &dyn Kv, keys: &KeyLookup) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let mut heads: BTreeMap<String, HeadState> = BTreeMap::new();
    let mut counts = LogCounts::default();
    let mut index_expected: HashSet<(Vec<u8>, Vec<u8>)> = HashSet::new();
    let mut next = 0u64;
    loop {
        let entries = read_entries(kv, next, 512)?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            let origin = e.chunk.origin.clone();
            let key = keys(&origin).ok_or_else(|| {
                corrupt(format!(
                    "log entry {} holds events of origin {origin:?}, which the topology does not list, so they cannot be verified",
                    e.offset
                ))
            })?;
            let (seq, prev) = heads
                .get(&origin)
                .map_or((0, ZERO_HASH), |h| (h.seq, h.hash));
            if e.chunk.first_seq() != seq + 1 {
                return Err(corrupt(format!(
                    "log entry {}: origin {origin} resumes at seq {} but the log holds up to seq {seq}",
                    e.offset,
                    e.chunk.first_seq()
                )));
            }
            e.chunk
                .verify(seq + 1, &prev, &key)
                .map_err(|err| corrupt(format!("log entry {}: {err}", e.offset)))?;
            index_expected.insert((
                layout::index_key(&origin, e.chunk.last_seq()),
                layout::index_value(e.offset, e.chunk.first_seq()),
            ));
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
    let mut index_found = 0usize;
    for (k, v) in kv.scan(&[layout::INDEX], &[layout::INDEX], usize::MAX)? {
        if !index_expected.contains(&(k, v)) {
            return Err(corrupt(
                "chunk index holds an entry that does not match the log",
            ));
        }
        index_found += 1;
    }
    if index_found != index_expected.len() {
        return Err(corrupt(format!(
            "chunk index has {index_found} entries but the log has {} chunks",
            index_expected.len()
        )));
    }
    tracing::info!(
        chunks = counts.chunks,
        events = counts.events,
        origins = heads.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log verified on open"
    );
    Ok(Recovered {
        next_offset: next,
        heads,
        counts,
    })
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
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: StoreConfig,
        origin: Option<OriginIdentity>,
        recovered: Recovered,
    ) -> Self {
        Self {
            shared,
            config,
            origin,
            heads: recovered.heads,
            next_offset: recovered.next_offset,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
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
            self.commit_originated(batch);
        }
        tracing::debug!("log writer stopped: every sender is gone and the queue is drained");
    }

    fn failure(&self) -> Option<StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            let why = self
                .shared
                .failure
                .read()
                .expect("lock")
                .clone()
                .unwrap_or_default();
            return Some(StoreError::Failed(why));
        }
        None
    }

    fn commit_originated(&mut self, batch: Vec<Request>) {
        if let Some(err) = self.failure() {
            for Request::Originate { reply, .. } in batch {
                let _ = reply.send(Err(err.clone().into()));
            }
            return;
        }
        let Some(origin) = self.origin.as_ref() else {
            for Request::Originate { reply, .. } in batch {
                let _ = reply.send(Err(AppendError::NotAnOrigin));
            }
            return;
        };
        let origin_id = origin.node_id.clone();
        let start = self
            .heads
            .get(&origin_id)
            .map_or((0, ZERO_HASH), |h| (h.seq, h.hash));
        let (mut seq, mut hash): (u64, Hash32) = start;
        let mut records: Vec<EventRecord> = Vec::new();
        let mut pending: HashMap<String, (u64, Hash32, Hash32)> = HashMap::new();
        let mut accepted: Vec<(Reply, Vec<Appended>)> = Vec::new();
        let mut signed_at_ms = i64::MIN;

        for Request::Originate {
            events,
            now_ms,
            reply,
        } in batch
        {
            let snapshot = (seq, hash, records.len());
            let mut added: Vec<String> = Vec::new();
            let mut results = Vec::with_capacity(events.len());
            let mut refused: Option<AppendError> = None;
            for (index, ev) in events.into_iter().enumerate() {
                let existing = match pending.get(&ev.client_id) {
                    Some(p) => Some(*p),
                    None => match self.lookup_client(&origin_id, &ev.client_id) {
                        Ok(x) => x,
                        Err(e) => {
                            refused = Some(e.into());
                            break;
                        }
                    },
                };
                if let Some((s, h, fp)) = existing {
                    if fp != ev.fingerprint {
                        refused = Some(AppendError::ClientIdReused {
                            index,
                            client_id: ev.client_id,
                            seq: s,
                        });
                        break;
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
                pending.insert(ev.client_id.clone(), (seq, hash, ev.fingerprint));
                added.push(ev.client_id);
                results.push(Appended {
                    origin: origin_id.clone(),
                    seq,
                    hash,
                    duplicate: false,
                });
            }
            if let Some(err) = refused {
                (seq, hash) = (snapshot.0, snapshot.1);
                records.truncate(snapshot.2);
                for c in added {
                    pending.remove(&c);
                }
                let _ = reply.send(Err(err));
                continue;
            }
            signed_at_ms = signed_at_ms.max(now_ms);
            accepted.push((reply, results));
        }

        if records.is_empty() {
            // Only duplicates (or refusals): nothing to write; the originals
            // were durable before they were first acknowledged.
            for (reply, results) in accepted {
                let _ = reply.send(Ok(results));
            }
            return;
        }

        // Cut the new events into chunks of about chunk_bytes_target and sign each head.
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut current: Vec<EventRecord> = Vec::new();
        let mut current_bytes = 0usize;
        let mut chunk_seq = start.0;
        let mut chunk_hash = start.1;
        let key = &origin.key;
        let close = |current: &mut Vec<EventRecord>,
                     last_seq: u64,
                     last_hash: Hash32,
                     chunks: &mut Vec<Chunk>| {
            let head = SignedHead::sign(key, &origin_id, last_seq, last_hash, signed_at_ms);
            chunks.push(Chunk {
                origin: origin_id.clone(),
                events: std::mem::take(current),
                head,
            });
        };
        for rec in records {
            chunk_seq += 1;
            chunk_hash = event_hash(&rec.envelope);
            current_bytes +=
                rec.envelope.len() + rec.personal.as_ref().map_or(0, |p| p.bytes.len() + 24) + 8;
            current.push(rec);
            if current_bytes >= self.config.chunk_bytes_target {
                close(&mut current, chunk_seq, chunk_hash, &mut chunks);
                current_bytes = 0;
            }
        }
        if !current.is_empty() {
            close(&mut current, chunk_seq, chunk_hash, &mut chunks);
        }
        debug_assert_eq!((chunk_seq, chunk_hash), (seq, hash));

        let mut writes: Vec<KvWrite> = Vec::new();
        let mut offset = self.next_offset;
        let mut n_events = 0u64;
        for c in &chunks {
            writes.extend(entry_writes(offset, signed_at_ms, &c.encode()));
            writes.push((
                layout::index_key(&c.origin, c.last_seq()),
                Some(layout::index_value(offset, c.first_seq())),
            ));
            n_events += c.events.len() as u64;
            offset += 1;
        }
        for (client_id, (s, h, fp)) in &pending {
            let mut v = Vec::with_capacity(72);
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(h);
            v.extend_from_slice(fp);
            writes.push((layout::client_key(&origin_id, client_id), Some(v)));
        }
        let head = HeadState {
            seq,
            hash,
            signed: chunks.last().expect("at least one chunk").head.clone(),
        };
        writes.push((layout::head_key(&origin_id), Some(encode_head_value(&head))));

        if self.config.unsafe_ack_before_durable {
            // Negative control for the crash test only: acknowledge first.
            for (reply, results) in accepted.drain(..) {
                let _ = reply.send(Ok(results));
            }
        }
        let t0 = Instant::now();
        match self.shared.kv.commit(writes) {
            Ok(t) => {
                let node = self.config.node_label.clone();
                metrics::histogram!("gridsync_commit_seconds", "node" => node.clone())
                    .record(t0.elapsed().as_secs_f64());
                metrics::histogram!("gridsync_fsync_seconds", "node" => node.clone())
                    .record(t.fsync_s + t.flush_s);
                metrics::counter!("gridsync_commits_total", "node" => node.clone()).increment(1);
                metrics::counter!("gridsync_events_appended_total", "node" => node)
                    .increment(n_events);
                self.next_offset = offset;
                self.heads.insert(origin_id.clone(), head.clone());
                self.shared
                    .heads
                    .write()
                    .expect("lock")
                    .insert(origin_id, head);
                {
                    let mut s = self.shared.stats.write().expect("lock");
                    s.chunks += chunks.len() as u64;
                    s.events += n_events;
                }
                for (reply, results) in accepted {
                    let _ = reply.send(Ok(results));
                }
                self.shared.committed.send_replace(offset);
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "commit failed; the log writer stops acknowledging");
                *self.shared.failure.write().expect("lock") = Some(why.clone());
                self.shared.failed.store(true, Ordering::Release);
                for (reply, _) in accepted {
                    let _ = reply.send(Err(StoreError::Failed(why.clone()).into()));
                }
            }
        }
    }

    fn lookup_client(
        &self,
        origin: &str,
        client_id: &str,
    ) -> Result<Option<(u64, Hash32, Hash32)>, StoreError> {
        let Some(v) = self.shared.kv.get(&layout::client_key(origin, client_id))? else {
            return Ok(None);
        };
        if v.len() != 72 {
            return Err(corrupt("malformed client_id index entry"));
        }
        Ok(Some((
            u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            v[8..40].try_into().expect("32 bytes"),
            v[40..72].try_into().expect("32 bytes"),
        )))
    }
}

impl Request {
    fn n_events(&self) -> usize {
        match self {
            Request::Originate { events, .. } => events.len().max(1),
        }
    }
}
