//! The single log writer (group commit): requests staged into one sled
//! batch, made durable, published, then answered.

use std::collections::{BTreeMap, HashMap, HashSet};

use gridsync_model::ingest::PreparedEvent;
use std::sync::Arc;
use std::time::Instant;

use gridsync_model::chunk::LinkedChunk;
use gridsync_model::event::{event_hash, EnvelopeHeader};
use gridsync_model::{Chunk, EventRecord, Hash32, SignedHead, ZERO_HASH};
use tokio::sync::{mpsc, oneshot};

use crate::entries::OpenPack;
use crate::kv::KvWrite;
use crate::layout;
use crate::read::{event_in_chunk, hash_in_log};
use crate::recover::{encode_checkpoint, encode_head_value, Recovered};
use crate::{
    AppendError, Appended, HeadState, OriginIdentity, PostingHold, Request, Shared, StoreConfig,
    StoreError,
};

mod import;
mod log_writes;
mod originate;

use crate::client_index::{
    client_key, entry_of, own_event, record_fingerprint, ClientEntry, ClientIds, ClientIndex,
};

/// The heads record writer and when it last wrote.
pub(crate) struct HeadsOut {
    writer: crate::heads_file::HeadsWriter,
    last: Option<Instant>,
    pub(crate) dirty: bool,
}

impl HeadsOut {
    pub(crate) fn new(data_dir: &std::path::Path, generation: u64) -> Self {
        Self {
            writer: crate::heads_file::HeadsWriter::new(data_dir, generation),
            last: None,
            dirty: false,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Appended>, AppendError>>;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    config: StoreConfig,
    origin: Option<OriginIdentity>,
    heads: BTreeMap<String, HeadState>,
    next_offset: u64,
    heads_out: Option<HeadsOut>,
    /// The origin's client-id index, loaded when the thread starts.
    clients: Option<ClientIndex>,
    /// The log's newest pack of small entries, while it has room.
    pack: Option<OpenPack>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: StoreConfig,
        origin: Option<OriginIdentity>,
        recovered: Recovered,
        heads_out: Option<HeadsOut>,
        pack: Option<OpenPack>,
    ) -> Self {
        Self {
            shared,
            config,
            origin,
            heads: recovered.heads,
            next_offset: recovered.next_offset,
            heads_out,
            clients: None,
            pack,
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
        self.load_client_index();
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

    /// Loads the origin's client-id index (before the first commit, on
    /// this thread, so the node listens meanwhile). A damaged index stops
    /// the store like a failed commit.
    fn load_client_index(&mut self) {
        let Some(origin) = self.origin.as_ref() else {
            return;
        };
        let t0 = Instant::now();
        let own_head = self.heads.get(&origin.node_id).map_or(0, |h| h.seq);
        match ClientIndex::open(
            self.shared.kv.as_ref(),
            &origin.node_id,
            own_head,
            self.config.client_index,
        ) {
            Ok((index, st)) => {
                tracing::info!(
                    runs = st.runs,
                    indexed = st.indexed,
                    recent = st.recent,
                    filter_bytes = st.filter_bytes,
                    migrated = st.migrated,
                    seconds = t0.elapsed().as_secs_f64(),
                    "client-id index loaded"
                );
                self.clients = Some(index);
            }
            Err(e) => {
                let why = format!("loading the client-id index: {e}");
                tracing::error!(error = %why, "the log writer stops acknowledging");
                self.shared.fail(why);
            }
        }
    }

    fn head_of(&self, work: &Work, origin: &str) -> (u64, Hash32) {
        if let (Some(own), Some(o)) = (&work.own, &self.origin) {
            if o.node_id == origin {
                return own.end;
            }
        }
        self.held_head(work, origin)
            .map_or((0, ZERO_HASH), |h| (h.seq, h.hash))
    }

    /// The last chunk head of `origin` in this commit's work, or else
    /// stored.
    fn held_head<'a>(&'a self, work: &'a Work, origin: &str) -> Option<&'a HeadState> {
        work.heads.get(origin).or_else(|| self.heads.get(origin))
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
        let (mut work, mut pending) = self.stage(batch);
        if let Err(e) = self.log_writes(&mut work) {
            return self.stop_acknowledging(format!("log bodies: {e}"), pending);
        }
        if work.writes.is_empty() {
            for p in pending {
                p.succeed();
            }
            return;
        }
        if let Err(e) = self.stage_client_index(&mut work) {
            return self.stop_acknowledging(format!("client-id index: {e}"), pending);
        }
        for (origin, head) in &work.heads {
            work.writes
                .push((layout::head_key(origin), Some(encode_head_value(head))));
        }
        // Where the log ends after this commit: what the next open checks
        // instead of reading the whole log back.
        let before = *self.shared.stats.read().expect("lock");
        let after = crate::LogCounts {
            chunks: before.chunks + work.chunks,
            events: before.events + work.events,
        };
        work.writes.push((
            layout::CHECKPOINT_KEY.to_vec(),
            Some(encode_checkpoint(
                work.offset,
                after,
                self.shared.kv.bodies().map(crate::bodies::BodyFile::len),
            )),
        ));
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
                self.publish(work, pending);
            }
            Err(e) => self.stop_acknowledging(format!("commit failed: {e}"), pending),
        }
    }

    /// A commit that could not be made: the store fails (every later
    /// append refused, `/healthz` says why) and the commit's requests get
    /// the reason.
    fn stop_acknowledging(&self, why: String, pending: Vec<PendingReply>) {
        tracing::error!(error = %why, "the log writer stops acknowledging");
        self.shared.fail(why.clone());
        for p in pending {
            p.fail(StoreError::Failed(why.clone()));
        }
    }

    /// The client-id index's part of this commit (see `client_index.rs`).
    fn stage_client_index(&mut self, work: &mut Work) -> Result<(), StoreError> {
        let Some(origin) = self.origin.as_ref() else {
            return Ok(());
        };
        let head = self.head_of(work, &origin.node_id).0;
        let Some(index) = self.clients.as_mut() else {
            return Ok(());
        };
        if work.clients.is_empty() && !index.busy() {
            return Ok(());
        }
        index.stage(
            self.shared.kv.as_ref(),
            std::mem::take(&mut work.clients),
            head,
            &mut work.writes,
        )?;
        metrics::gauge!("gridsync_client_index_runs", "node" => self.config.node_label.clone())
            .set(index.runs() as f64);
        Ok(())
    }

    /// Turns a batch of requests into the writes of one commit; requests
    /// refused outright are answered here, the others wait for the commit.
    fn stage(&mut self, batch: Vec<Request>) -> (Work, Vec<PendingReply>) {
        let mut work = Work {
            offset: self.next_offset,
            ..Work::default()
        };
        // Sized once for the commit's own events (each new id goes in).
        work.clients.reserve(
            batch
                .iter()
                .map(|r| match r {
                    Request::Originate { events, .. } => events.len(),
                    _ => 0,
                })
                .sum(),
        );
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
                } => {
                    // The log keeps each origin's events in seq order.
                    self.cut_own(&mut work);
                    match self.import(&mut work, chunks, now_ms) {
                        Ok(n) => pending.push(PendingReply::Import(reply, n)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
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
        self.cut_own(&mut work);
        (work, pending)
    }

    /// After a durable commit: heads, counts and hold take its values, the
    /// heads record is written (within the commit when its interval is 0),
    /// readers see it, and only then are the requests answered.
    fn publish(&mut self, mut work: Work, pending: Vec<PendingReply>) {
        self.next_offset = work.offset;
        self.pack = work.pack.take();
        {
            let mut shared_heads = self.shared.heads.write().expect("lock");
            let mut moved = self.shared.heads_moved.write().expect("lock");
            if !work.heads.is_empty() {
                moved.0 += 1;
            }
            let generation = moved.0;
            for (origin, head) in work.heads {
                self.heads.insert(origin.clone(), head.clone());
                moved.1.insert(origin.clone(), generation);
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
        if self.origin.is_some() {
            let mut recent = self.shared.recent.write().expect("lock");
            for chunk in &work.pushed {
                recent.learn(chunk);
            }
        }
        if let Some(out) = self.heads_out.as_mut() {
            out.dirty = true;
        }
        if self.config.heads_interval_ms == 0 {
            // The record is part of the commit: written before anyone
            // hears of it.
            if let Err(e) = self.write_heads(true) {
                for p in pending {
                    p.fail(e.clone());
                }
                return;
            }
        }
        // Readers see the commit (durable now) before anyone hears of it: a
        // client reads its own acknowledged writes.
        self.shared.committed.send_replace(self.next_offset);
        for p in pending {
            p.succeed();
        }
        let _ = self.write_heads(false);
    }
}

impl Request {
    fn n_events(&self) -> usize {
        match self {
            Request::Originate { events, .. } => events.len().max(1),
            Request::Import { chunks, .. } => chunks
                .iter()
                .map(|c| c.chunk().events.len())
                .sum::<usize>()
                .max(1),
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
    clients: ClientIds,
    /// The chunks this commit appends, in log order (the first at the
    /// writer's `next_offset`), and when each was received; their log
    /// writes are made once the commit is staged ([`Writer::log_writes`]).
    pushed: Vec<Chunk>,
    pushed_at: Vec<i64>,
    /// The newest pack after this commit, if it has room.
    pack: Option<OpenPack>,
    /// Evidence summary keys written by this commit.
    evidence: HashSet<Vec<u8>>,
    /// A posting hold set (or lifted) by this commit.
    hold: Option<Option<PostingHold>>,
    /// Events originated in this commit, not yet cut into chunks.
    own: Option<OwnEvents>,
}

/// This origin's new events of a commit, after `start` (seq, hash) up to
/// `end`, signed at `now_ms` once the commit is staged.
struct OwnEvents {
    start: (u64, Hash32),
    end: (u64, Hash32),
    records: Vec<EventRecord>,
    /// Each record's event hash, computed once when it was chained.
    hashes: Vec<Hash32>,
    now_ms: i64,
}

/// What a failed request rolls back to.
struct WorkSnapshot {
    writes: usize,
    offset: u64,
    chunks: u64,
    events: u64,
    heads: HashMap<String, HeadState>,
    clients: ClientIds,
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
        self.pushed_at.truncate(s.pushed);
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
