//! The gridsync event log.
//!
//! A [`Store`] owns one ordered key/value store ([`Kv`]: sled on disk,
//! [`MemKv`] in the simulator) and one writer thread. Appends are sent to the
//! writer over a bounded channel; the writer gathers whatever is queued into
//! one commit (group commit), numbers and chains the events, cuts them into
//! chunks closed by a signed head, writes chunks, indexes and heads in one
//! atomic batch, makes it durable, and only then answers the callers and
//! wakes subscribers. A failed commit is fatal: the store stops accepting.
//!
//! On open the whole log is read back and verified (chains, signatures,
//! heads table); a log that does not verify is refused with a message.

pub mod bodies;
mod client_index;
mod entries;
pub mod heads_file;
pub mod kv;
pub mod layout;
mod read;
mod recent;
mod recover;
pub mod sled_kv;
mod types;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use gridsync_model::chunk::LinkedChunk;
use gridsync_model::ingest::PreparedEvent;
use gridsync_model::kinds::EventRef;
use gridsync_model::{Chunk, EventRecord, Hash32, VerifiedEvent};
use tokio::sync::{mpsc, oneshot, watch};

pub use client_index::ClientIndexConfig;
pub use kv::{Kv, MemKv};
pub use sled_kv::SledKv;
pub use types::{
    AppendError, Appended, EncodedEntry, HeadState, KeyLookup, LogCounts, OriginIdentity,
    PostingHold, StoreConfig, StoreError, StoredChunk,
};

pub(crate) struct Shared {
    pub kv: Arc<dyn Kv>,
    pub heads: RwLock<BTreeMap<String, HeadState>>,
    /// When each head last moved: a generation bumped by every commit
    /// that moves heads (those recovered at open: 1), and per origin the
    /// generation that last moved it — for [`Store::heads_since`]. Taken
    /// after `heads` (writer and readers alike).
    pub heads_moved: RwLock<(u64, BTreeMap<String, u64>)>,
    pub stats: RwLock<LogCounts>,
    pub failed: AtomicBool,
    pub failure: RwLock<Option<String>>,
    /// Next log offset; bumped after each durable commit.
    pub committed: watch::Sender<u64>,
    /// Posts are refused while set (durable before it takes effect).
    pub hold: RwLock<Option<PostingHold>>,
    /// Kinds of this origin's newest durable events.
    pub recent: RwLock<recent::RecentKinds>,
}

impl Shared {
    /// `Some` once a commit has failed: nothing is acknowledged after that.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let why = self
            .failure
            .read()
            .expect("lock")
            .clone()
            .unwrap_or_default();
        Some(StoreError::Failed(why))
    }

    /// Records a failed commit; every later request is refused.
    pub(crate) fn fail(&self, why: String) {
        *self.failure.write().expect("lock") = Some(why);
        self.failed.store(true, Ordering::Release);
    }
}

pub(crate) enum Request {
    Originate {
        events: Vec<PreparedEvent>,
        now_ms: i64,
        reply: oneshot::Sender<Result<Vec<Appended>, AppendError>>,
    },
    Import {
        chunks: Vec<LinkedChunk>,
        now_ms: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Evidence {
        summary: Vec<u8>,
        writes: Vec<kv::KvWrite>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    SetHold {
        hold: Option<PostingHold>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Owns the writer: dropping the last handle closes the channel, lets the
/// writer commit and answer everything queued, and joins it.
struct WriterHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The event log of one node. Cheap to clone; the writer stops (after
/// finishing queued appends) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    handle: Arc<WriterHandle>,
    origin: Option<String>,
    read_uncommitted: bool,
    /// What the open found (for [`Store::verify_log`]) and the key lookup.
    opened: Arc<(recover::Recovered, KeyLookup)>,
}

/// The database is a gridsync store of the format this build reads (an
/// empty one becomes one).
fn check_format(kv: &dyn Kv) -> Result<(), StoreError> {
    match kv.get(layout::FORMAT_KEY)? {
        None => {
            if !kv.scan(b"", b"", 1)?.is_empty() {
                return Err(StoreError::Open(
                    "data directory holds a database that is not a gridsync store".into(),
                ));
            }
            kv.commit(vec![(
                layout::FORMAT_KEY.to_vec(),
                Some(layout::FORMAT_VALUE.to_vec()),
            )])?;
        }
        Some(v) if v == layout::FORMAT_VALUE => {}
        Some(v) if v == layout::FORMAT_VALUE_1 || v == layout::FORMAT_VALUE_2 => {
            // Format 1 is format 2 without packs, format 2 format 3 without
            // body pointers: read as they are; marked, so that a build that
            // cannot read packs or body pointers refuses it from now on.
            kv.commit(vec![(
                layout::FORMAT_KEY.to_vec(),
                Some(layout::FORMAT_VALUE.to_vec()),
            )])?;
        }
        Some(v) => {
            return Err(StoreError::Open(format!(
                "store format {:?} is not supported by this build (it reads {:?})",
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(layout::FORMAT_VALUE)
            )))
        }
    }
    Ok(())
}

impl Store {
    /// Opens the log over `kv`, verifies it, and starts the writer.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the stored log does not verify (with
    /// what and where), [`StoreError::Open`] for a foreign store format.
    pub fn open(
        kv: Arc<dyn Kv>,
        config: StoreConfig,
        origin: Option<OriginIdentity>,
        keys: KeyLookup,
    ) -> Result<Self, StoreError> {
        check_format(kv.as_ref())?;
        if let Some(bodies) = kv.bodies() {
            // Bodies past the last commit's are cut off; fewer refuse.
            let cp = recover::read_checkpoint(kv.as_ref())?;
            bodies.reconcile(cp.and_then(|c| c.bodies_len))?;
        }
        let recovered = recover::recover(
            kv.as_ref(),
            &keys,
            config.verify_all_signatures,
            config.verify_whole_log,
        )?;
        let opened = Arc::new((recovered.clone(), keys));
        let heads_writer = match &config.heads_record {
            None => None,
            Some(dir) => Some(recover::check_heads_record(
                kv.as_ref(),
                dir,
                &recovered,
                config.accept_shorter_log,
            )?),
        };
        let hold = match kv.get(layout::HOLD_KEY)? {
            None => match &config.hold_on_open {
                Some(h) => {
                    kv.commit(vec![(layout::HOLD_KEY.to_vec(), Some(h.encode()))])?;
                    Some(h.clone())
                }
                None => None,
            },
            Some(v) => Some(
                PostingHold::decode(&v)
                    .ok_or_else(|| StoreError::Corrupt("malformed posting hold record".into()))?,
            ),
        };
        let (committed, _) = watch::channel(recovered.next_offset);
        let shared = Arc::new(Shared {
            kv,
            heads: RwLock::new(recovered.heads.clone()),
            heads_moved: RwLock::new((1, recovered.heads.keys().map(|o| (o.clone(), 1)).collect())),
            stats: RwLock::new(recovered.counts),
            failed: AtomicBool::new(false),
            failure: RwLock::new(None),
            committed,
            hold: RwLock::new(hold),
            recent: RwLock::new(recent::RecentKinds::new(
                origin.as_ref().map(|o| o.node_id.clone()),
                config.recent_kinds_max,
            )),
        });
        let (tx, rx) = mpsc::channel(config.queue_requests_max.max(1));
        let origin_id = origin.as_ref().map(|o| o.node_id.clone());
        let config_read_uncommitted = config.unsafe_read_uncommitted;
        let pack = entries::open_pack_at_end(shared.kv.as_ref())?;
        let w = writer::Writer::new(
            shared.clone(),
            config,
            origin,
            recovered,
            heads_writer,
            pack,
        );
        let handle = std::thread::Builder::new()
            .name("gridsync-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Io(format!("spawn writer thread: {e}")))?;
        Ok(Self {
            shared,
            handle: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(handle),
            }),
            origin: origin_id,
            read_uncommitted: config_read_uncommitted,
            opened,
        })
    }

    /// Reads back every entry the log held when it was opened — chains,
    /// chunk index, each origin's newest signature (every chunk's with
    /// `verify_all`) — and checks they reach exactly the heads and counts
    /// the open found. An open at a checkpoint leaves this to be run after
    /// the node listens; it reads only committed entries, beside the writer.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first problem, or a read error.
    /// `stop` is asked between pages of the log: once it says so, the pass
    /// ends with [`StoreError::Closed`].
    pub fn verify_log(
        &self,
        verify_all: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<LogCounts, StoreError> {
        let (opened, keys) = &*self.opened;
        recover::verify_log(self.shared.kv.as_ref(), keys, verify_all, opened, stop)
    }

    /// Whether the open checked the log at its checkpoint only (the whole
    /// log is then for [`Store::verify_log`]).
    pub fn opened_at_checkpoint(&self) -> bool {
        self.opened.0.at_checkpoint
    }

    /// Stops the store acknowledging anything more, for `why` (a log found
    /// damaged after the open): every append and import is refused from
    /// now on with [`StoreError::Failed`].
    pub fn fail(&self, why: &str) {
        self.shared.fail(why.to_owned());
    }

    /// Appends events created at this node (an origin), all or nothing.
    /// Returns when the commit that holds them is durable.
    ///
    /// # Errors
    /// See [`AppendError`].
    pub async fn append(
        &self,
        events: Vec<PreparedEvent>,
        now_ms: i64,
    ) -> Result<Vec<Appended>, AppendError> {
        if self.origin.is_none() {
            return Err(AppendError::NotAnOrigin);
        }
        self.check_failed()?;
        if let Some(h) = self.posting_hold() {
            return Err(AppendError::Held(h));
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.handle.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Request::Originate {
            events,
            now_ms,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues verified chunks received from a child; the returned receiver
    /// answers once they are durable (with the number of new events).
    /// Requests are committed in the order they are queued, so callers that
    /// queue in order see completions in order. Linked
    /// ([`Chunk::linked`]): the writer links them to the heads it holds
    /// with the hashes they carry, without reading each event again.
    ///
    /// # Errors
    /// The store failed or is closed.
    pub async fn submit_import(
        &self,
        chunks: Vec<LinkedChunk>,
        now_ms: i64,
    ) -> Result<oneshot::Receiver<Result<u64, StoreError>>, StoreError> {
        self.check_failed()?;
        let (reply, rx) = oneshot::channel();
        let tx = self.handle.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Request::Import {
            chunks,
            now_ms,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// [`Store::submit_import`] of these chunks, linked here (on the
    /// caller's task, not the writer's thread), and wait for it.
    ///
    /// # Errors
    /// A chunk whose links do not hold; the store failed or refused the
    /// chunks (gap or fork against what it holds).
    pub async fn import(&self, chunks: Vec<Chunk>, now_ms: i64) -> Result<u64, StoreError> {
        let chunks = chunks
            .into_iter()
            .map(|c| {
                let origin = c.origin.clone();
                c.linked()
                    .map_err(|e| StoreError::Refused(format!("origin {origin}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.submit_import(chunks, now_ms)
            .await?
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Durably records equivocation evidence: what this node holds for
    /// `origin`/`seq` (`ours`: the stored chunk holding it, so its signed
    /// head vouches for it, or only its hash when it was not durable yet)
    /// and the conflicting chunk it was offered. Recorded once per
    /// `(origin, seq, their hash)`: returns whether this call added it.
    ///
    /// # Errors
    /// The store failed or is closed.
    pub async fn record_evidence(
        &self,
        origin: &str,
        seq: u64,
        ours: Vec<u8>,
        theirs: &Chunk,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let their_hash = theirs
            .events
            .iter()
            .zip(theirs.first_seq()..)
            .find(|(_, s)| *s == seq)
            .or(theirs.events.last().map(|r| (r, 0)))
            .map(|(r, _)| gridsync_model::event::event_hash(&r.envelope))
            .unwrap_or(theirs.head.hash);
        let summary = layout::evidence_summary_key(origin, seq, &their_hash);
        if self.shared.kv.get(&summary)?.is_some() {
            return Ok(false);
        }
        let mut whole = Vec::with_capacity(8 + ours.len() + 256);
        whole.extend_from_slice(&(ours.len() as u64).to_be_bytes());
        whole.extend_from_slice(&ours);
        whole.extend_from_slice(&theirs.encode());
        let parts: Vec<&[u8]> = whole.chunks(layout::FRAGMENT_BYTES_MAX).collect();
        let n_parts = u16::try_from(parts.len())
            .map_err(|_| StoreError::Refused("evidence too large to record".into()))?;
        let mut writes: Vec<kv::KvWrite> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    layout::evidence_key(origin, seq, &their_hash, i as u16),
                    Some(p.to_vec()),
                )
            })
            .collect();
        let mut value = now_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&n_parts.to_be_bytes());
        writes.push((summary.clone(), Some(value)));
        let (reply, rx) = oneshot::channel();
        let tx = self.handle.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Request::Evidence {
            summary,
            writes,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Equivocation evidence recorded so far (at most `max`):
    /// `(origin, seq, recorded_at_ms)`. Reads only the small summary keys.
    ///
    /// # Errors
    /// Storage errors.
    pub fn evidence(&self, max: usize) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let tag = [layout::EVIDENCE_SUMMARY];
        let mut out = Vec::new();
        for (k, v) in self.shared.kv.scan(&tag, &tag, max)? {
            if let (Some((origin, seq, _)), Some(at)) = (
                layout::parse_origin_seq_key(&k),
                v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) {
                out.push((origin, seq, i64::from_be_bytes(at)));
            }
        }
        Ok(out)
    }

    /// Why posts are refused, if they are.
    pub fn posting_hold(&self) -> Option<PostingHold> {
        self.shared.hold.read().expect("lock").clone()
    }

    /// Sets (or with `None` lifts) the posting hold, durably, before it
    /// takes effect. Appends queued behind it see it.
    ///
    /// # Errors
    /// The store failed or is closed.
    pub async fn set_posting_hold(&self, hold: Option<PostingHold>) -> Result<(), StoreError> {
        if self.posting_hold() == hold {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.handle.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Request::SetHold { hold, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Hash of event `seq` of `origin`, if held.
    ///
    /// # Errors
    /// Storage errors.
    pub fn hash_at(&self, origin: &str, seq: u64) -> Result<Option<Hash32>, StoreError> {
        if let Some(h) = self.head(origin) {
            if h.seq == seq {
                return Ok(Some(h.hash));
            }
        }
        Ok(self
            .find_event(&EventRef {
                origin: origin.to_owned(),
                seq,
            })?
            .map(|(e, _)| e.hash))
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        self.shared.failure().map_or(Ok(()), Err)
    }

    /// Log bodies read so far from memory (those appended last) and from
    /// the body file; `None` for a store without one.
    pub fn body_reads(&self) -> Option<(u64, u64)> {
        self.shared.kv.bodies().map(bodies::BodyFile::reads)
    }

    /// `Err` once a commit has failed (the node must stop acknowledging).
    ///
    /// # Errors
    /// [`StoreError::Failed`] after a failed commit.
    pub fn health(&self) -> Result<(), StoreError> {
        self.check_failed()
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The version vector: every origin held and its head.
    pub fn heads(&self) -> BTreeMap<String, HeadState> {
        self.shared.heads.read().expect("lock").clone()
    }

    pub fn head(&self, origin: &str) -> Option<HeadState> {
        self.shared.heads.read().expect("lock").get(origin).cloned()
    }

    /// Every origin held, its head's seq and hash, in origin order: what
    /// [`Store::heads`] says without copying each signed head (the sync
    /// sessions read this per batch; an aggregator holds ~1,000 origins).
    pub fn head_positions(&self) -> Vec<(String, u64, Hash32)> {
        let heads = self.shared.heads.read().expect("lock");
        heads
            .iter()
            .map(|(o, h)| (o.clone(), h.seq, h.hash))
            .collect()
    }

    pub fn counts(&self) -> LogCounts {
        *self.shared.stats.read().expect("lock")
    }

    /// The durable heads that moved after `since` (a stamp an earlier call
    /// returned; 0 for every head), in origin order, and the stamp to ask
    /// from next time: a sync session with 1,000 origins reads what a
    /// commit moved instead of every head per batch. `None` while readers
    /// see uncommitted writes (a planted bug for tests: the heads are then
    /// read from the log, not from the commits).
    pub fn heads_since(&self, since: u64) -> Option<(Vec<(String, u64)>, u64)> {
        if self.read_uncommitted {
            return None;
        }
        let heads = self.shared.heads.read().expect("lock");
        let moved = self.shared.heads_moved.read().expect("lock");
        let out = moved
            .1
            .iter()
            .filter(|(_, at)| **at > since)
            .filter_map(|(o, _)| Some((o.clone(), heads.get(o)?.seq)))
            .collect();
        Some((out, moved.0))
    }

    /// Next log offset (= number of log entries). Changes after each commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// Drops this handle; when it is the last one, waits for the writer to
    /// commit and answer everything queued.
    pub fn close(self) {
        drop(self);
    }
}
