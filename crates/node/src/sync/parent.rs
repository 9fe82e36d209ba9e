//! Parent side: `GET /v1/sync` upgrades to a websocket and runs a
//! [`ParentSession`] per child.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gridsync_model::{Chunk, Hash32};
use gridsync_protocol::{Frame, Output, ParentConfig, ParentSession};
use gridsync_store::StoreError;
use tokio::sync::{oneshot, Notify};

use super::random_nonce;
use super::views::{StoreView, TopoView};
use crate::error::ApiError;
use crate::state::{system_now_ms, NodeState};

/// `GET /v1/sync`: a child's replication connection.
pub async fn sync_endpoint(
    State(state): State<Arc<NodeState>>,
    channel: Option<axum::Extension<crate::tls::ChannelBinding>>,
    ws: WebSocketUpgrade,
) -> Response {
    let binding = channel
        .and_then(|c| c.0 .0)
        .filter(|_| !state.unsafe_no_channel_binding)
        .map(|b| b.to_vec())
        .unwrap_or_default();
    // An unauthenticated socket holds only a handshake slot, for at most
    // handshake_timeout_ms; a connection slot is taken once the child has
    // proved its key.
    let Ok(permit) = state.sync.handshakes.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_handshakes",
            "this node has as many sync handshakes in progress as it accepts; retry later",
        )
        .into_response();
    };
    let s = &state.config.sync;
    ws.max_message_size(s.frame_bytes_max)
        .max_frame_size(s.frame_bytes_max)
        .read_buffer_size(super::LINK_BUFFER_BYTES)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(s.write_buffer_bytes_max)
        .on_upgrade(move |socket| parent_session(state, socket, permit, binding))
}

fn parent_cfg(state: &NodeState, channel_binding: Vec<u8>) -> ParentConfig {
    ParentConfig {
        channel_binding,
        node_id: state.config.id.clone(),
        key: state.key.clone(),
        heartbeat_ms: state.config.sync.heartbeat_ms,
        idle_timeout_ms: state.config.sync.idle_timeout_ms,
        fetch_bytes_max: state.config.sync.batch_bytes_max,
        batch_bytes_asked: Some(state.sync.batch_bytes_asked),
        bug_ack_before_durable: false,
    }
}

type ImportDone = oneshot::Receiver<Result<u64, StoreError>>;
type PendingImport = (u64, ImportDone);

/// The import's answer, with the frame's share of the received-bytes
/// budget given back as soon as the store answers — not when this session
/// next looks: a session waiting for a share must never hold the shares
/// that would free it.
fn give_back_when_done(
    done: ImportDone,
    share: Option<tokio::sync::OwnedSemaphorePermit>,
) -> ImportDone {
    let Some(share) = share else {
        return done;
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let answer = done.await;
        drop(share);
        // A store gone without answering: `tx` dropped, `rx` errs alike.
        if let Ok(answer) = answer {
            let _ = tx.send(answer);
        }
    });
    rx
}

/// What woke a parent session.
enum Wake {
    Socket(Option<Result<Message, axum::Error>>),
    Persisted(
        u64,
        Result<Result<u64, StoreError>, oneshot::error::RecvError>,
    ),
    Tick,
}

/// One child's connection: the sans-IO session and what it holds.
struct ChildConnection {
    state: Arc<NodeState>,
    socket: WebSocket,
    session: ParentSession,
    session_id: u64,
    /// Held until the child proves its key, then traded for `connection`.
    handshake: Option<tokio::sync::OwnedSemaphorePermit>,
    connection: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Notified when a newer session of the same child replaces this one.
    cancel: Arc<Notify>,
    /// Imports submitted to the store, oldest first.
    pending: VecDeque<PendingImport>,
    /// The share of `sync.received_bytes_max` taken for the frame being
    /// handled: handed to its import (given back when that commits), or
    /// dropped once the frame is handled.
    share: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Once authenticated.
    child: Option<String>,
    /// The child's lag changed since `gridsync_sync_child_lag_events` was
    /// last set, and when that was (it sums over every origin the child
    /// reports, so it is set at most every [`LAG_GAUGE_EVERY`]).
    lag_dirty: bool,
    lag_gauge_at: Option<tokio::time::Instant>,
}

/// How often at most a link's lag gauge is recomputed (it reads this
/// node's head of every origin the child reports: 1,000 below a street).
const LAG_GAUGE_EVERY: Duration = Duration::from_secs(1);

async fn parent_session(
    state: Arc<NodeState>,
    socket: WebSocket,
    handshake: tokio::sync::OwnedSemaphorePermit,
    channel_binding: Vec<u8>,
) {
    let session_id = state
        .sync
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = ParentSession::new(
        parent_cfg(&state, channel_binding),
        random_nonce(),
        system_now_ms(),
    );
    let mut c = ChildConnection {
        state,
        socket,
        session,
        session_id,
        handshake: Some(handshake),
        connection: None,
        cancel: Arc::new(Notify::new()),
        pending: VecDeque::new(),
        share: None,
        child: None,
        lag_dirty: false,
        lag_gauge_at: None,
    };
    let reason = c.run().await;
    c.close(&reason).await;
}

impl ChildConnection {
    /// Runs the session until it ends; returns why.
    async fn run(&mut self) -> String {
        let opened = tokio::time::Instant::now();
        let sync = &self.state.config.sync;
        let handshake_deadline = Duration::from_millis(sync.handshake_timeout_ms.max(100) as u64);
        let mut stop = self.state.sync.stop.subscribe();
        loop {
            let mut wake_at = super::wake_at(self.session.next_tick_ms());
            if self.child.is_none() {
                wake_at = wake_at.min(opened + handshake_deadline);
            }
            let Self {
                socket,
                pending,
                cancel,
                ..
            } = self;
            let wake = tokio::select! {
                msg = socket.recv() => Wake::Socket(msg),
                done = async { (&mut pending.front_mut().expect("guarded").1).await }, if !pending.is_empty() => {
                    Wake::Persisted(pending.pop_front().expect("guarded").0, done)
                }
                () = tokio::time::sleep_until(wake_at) => Wake::Tick,
                () = cancel.notified() => return "replaced by a newer session of the same child".into(),
                _ = stop.changed() => return "this node is shutting down".into(),
            };
            let outs = match wake {
                Wake::Socket(msg) => match self.on_message(msg).await {
                    Ok(outs) => outs,
                    Err(reason) => return reason,
                },
                Wake::Persisted(batch, done) => self.on_persisted(batch, done),
                Wake::Tick if self.child.is_none() && opened.elapsed() > handshake_deadline => {
                    return "handshake timed out".into()
                }
                Wake::Tick => self.session.on_tick(system_now_ms()),
            };
            if let Err(reason) = self.on_authenticated().await {
                return reason;
            }
            self.update_link();
            let performed = self.perform(outs).await;
            self.share = None;
            if let Err(reason) = performed {
                return reason;
            }
        }
    }

    async fn refuse(&mut self, code: &str, message: String) {
        let f = Frame::Refused {
            code: code.into(),
            message,
        };
        let _ = self.socket.send(Message::Binary(f.encode().into())).await;
    }

    /// A message from the child: a frame for the session, or the end.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Result<Vec<Output>, String> {
        let bytes = match msg {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Text(_))) => {
                let m = "text frames are not part of the protocol";
                self.refuse("malformed", m.into()).await;
                return Err("text frame".into());
            }
            Some(Ok(_)) => return Ok(Vec::new()),
            Some(Err(e)) => return Err(format!("websocket error: {e}")),
            None => return Err("connection closed by the child".into()),
        };
        metrics::counter!("gridsync_sync_bytes_received_total", "node" => self.state.config.id.clone())
            .increment(bytes.len() as u64);
        // A child's frame takes its share of the received-bytes budget
        // before it is decoded (waiting here leaves the rest of the frames
        // unread on the socket); the share goes with its import.
        if self.child.is_some() {
            let sync = &self.state.sync;
            let n = u32::try_from(bytes.len().min(sync.received_max)).unwrap_or(u32::MAX);
            let share = match sync.received.clone().try_acquire_many_owned(n) {
                Ok(share) => Some(share),
                Err(tokio::sync::TryAcquireError::Closed) => None,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    // The budget is in use: counted, so an operator sees
                    // when it holds children back.
                    metrics::counter!("gridsync_sync_received_budget_waits_total", "node" => self.state.config.id.clone())
                        .increment(1);
                    sync.received.clone().acquire_many_owned(n).await.ok()
                }
            };
            self.share = Some(share.ok_or("this node is shutting down")?);
        }
        // Decoding and verifying a batch (hashes, signatures) is CPU work:
        // done in place of this worker, so the runtime hands other tasks to
        // another one meanwhile.
        let (state, session) = (&self.state, &mut self.session);
        let decoded = cpu_work(bytes.len(), || {
            let frame = Frame::decode(&bytes, state.config.sync.frame_bytes_max)?;
            let (topo, store) = (TopoView(&state.topology), StoreView(&state.store));
            Ok::<_, gridsync_protocol::FrameError>(session.on_frame(
                frame,
                &topo,
                &store,
                system_now_ms(),
            ))
        });
        match decoded {
            Ok(outs) => Ok(outs),
            Err(e) => {
                metrics::counter!("gridsync_sync_rejections_total", "node" => self.state.config.id.clone(), "code" => "malformed").increment(1);
                self.refuse("malformed", e.to_string()).await;
                Err(format!("malformed frame: {e}"))
            }
        }
    }

    /// An import finished in the store (or failed).
    fn on_persisted(
        &mut self,
        batch: u64,
        done: Result<Result<u64, StoreError>, oneshot::error::RecvError>,
    ) -> Vec<Output> {
        let node = self.state.config.id.clone();
        match done {
            Ok(Ok(n_new)) => {
                if n_new == 0 {
                    metrics::counter!("gridsync_sync_duplicate_batches_total", "node" => node.clone()).increment(1);
                }
                metrics::counter!("gridsync_sync_events_received_total", "node" => node.clone())
                    .increment(n_new);
                metrics::counter!("gridsync_sync_batches_received_total", "node" => node)
                    .increment(1);
                let store = StoreView(&self.state.store);
                self.session.on_persisted(batch, &store, system_now_ms())
            }
            Ok(Err(e)) => self.session.on_persist_failed(&e.to_string()),
            Err(_) => self.session.on_persist_failed("store closed"),
        }
    }

    /// Once the child has proved its key: trade the handshake slot for a
    /// connection slot (before the welcome goes out) and take over the
    /// child's link from any older session.
    async fn on_authenticated(&mut self) -> Result<(), String> {
        let c = match (&self.child, self.session.child()) {
            (None, Some(c)) => c.to_owned(),
            _ => return Ok(()),
        };
        match self.state.sync.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.connection = Some(p);
                drop(self.handshake.take());
            }
            Err(_) => {
                let m = "this node has as many sync connections as it accepts; retry later";
                self.refuse("too_many_connections", m.into()).await;
                return Err("no connection slot left".into());
            }
        }
        let mut children = self.state.sync.children.lock().expect("lock");
        let link = children.entry(c.clone()).or_default();
        if let Some(old) = link.cancel.replace(self.cancel.clone()) {
            old.notify_one();
        }
        link.session = self.session_id;
        link.connected = true;
        tracing::debug!(child = c, "child connected");
        self.child = Some(c);
        Ok(())
    }

    /// The child's link as `/v1/status` shows it: last contact and lag
    /// (each origin's latest report merged in).
    fn update_link(&mut self) {
        let Some(c) = &self.child else { return };
        let reports = self.session.take_lag();
        let mut children = self.state.sync.children.lock().expect("lock");
        let Some(link) = children.get_mut(c).filter(|l| l.session == self.session_id) else {
            return;
        };
        link.last_contact_ms = Some(self.session.last_rx_ms());
        if !reports.is_empty() {
            link.lag.extend(reports);
            self.lag_dirty = true;
        }
        let due = self
            .lag_gauge_at
            .is_none_or(|at| at.elapsed() >= LAG_GAUGE_EVERY);
        if self.lag_dirty && due {
            self.lag_dirty = false;
            self.lag_gauge_at = Some(tokio::time::Instant::now());
            let store = &self.state.store;
            let lag: u64 = link
                .lag
                .values()
                .map(|l| {
                    l.seq
                        .saturating_sub(store.head(&l.origin).map_or(0, |h| h.seq))
                })
                .sum();
            metrics::gauge!("gridsync_sync_child_lag_events", "node" => self.state.config.id.clone(), "child" => c.clone())
                .set(lag as f64);
        }
    }

    /// Carries out what the session asked for.
    async fn perform(&mut self, outs: Vec<Output>) -> Result<(), String> {
        let state = self.state.clone();
        for o in outs {
            match o {
                Output::Send(f) => {
                    let sent = self.socket.send(Message::Binary(f.encode().into())).await;
                    sent.map_err(|e| format!("send failed: {e}"))?;
                }
                Output::Persist { batch, chunks } => {
                    let rx = state.store.submit_import(chunks, system_now_ms()).await;
                    let rx = rx.map_err(|e| format!("store: {e}"))?;
                    let rx = give_back_when_done(rx, self.share.take());
                    self.pending.push_back((batch, rx));
                }
                Output::Equivocation {
                    origin,
                    seq,
                    ours,
                    theirs,
                } => record_equivocation(&state, &origin, seq, ours, &theirs).await,
                Output::Rejected { code, message } => {
                    metrics::counter!("gridsync_sync_rejections_total", "node" => state.config.id.clone(), "code" => code.as_str())
                        .increment(1);
                    tracing::warn!(child = self.child.as_deref().unwrap_or("?"), code = code.as_str(), %message, "refused");
                }
                Output::Close { reason } => return Err(reason),
                Output::Import { .. } | Output::OriginBlocked { .. } | Output::OwnChain(_) => {}
            }
        }
        Ok(())
    }

    /// Closes the socket, frees the slots, marks the link disconnected.
    async fn close(mut self, reason: &str) {
        let _ = self.socket.send(Message::Close(None)).await;
        drop((self.handshake.take(), self.connection.take()));
        let Some(c) = &self.child else {
            tracing::debug!(%reason, "sync connection closed before authentication");
            return;
        };
        let mut children = self.state.sync.children.lock().expect("lock");
        if let Some(link) = children.get_mut(c) {
            if link.session == self.session_id {
                link.connected = false;
                link.cancel = None;
            }
        }
        tracing::debug!(child = c, %reason, "child disconnected");
    }
}

/// The largest frame decoded and verified in place on the async worker;
/// larger ones hand the worker over first ([`cpu_work`]).
///
/// A frame's work is ~0.9 µs an event (decode, chain links and hashes, a
/// head signature per ~32 KiB chunk: BENCHMARKS.md, "What an aggregator
/// spends per received event"), ~0.3 ms at 64 KiB — and a hand-off was
/// not cheaper: `block_in_place` wakes or spawns a thread of the blocking
/// pool to carry on as the worker, and with 1,000 children each sending
/// a ~38 KB message at once that cost the street ~10 % of its CPU in
/// their catch-up (threads started, their stacks first touched, a switch
/// each way). In place up to 64 KiB, over twelve pairs: the street's CPU
/// in that catch-up median 1.06 → 0.95 s, its RSS after 71 → 64 MB, the
/// catch-up 1.05× (BENCHMARKS.md, "Children's frames handled in place").
/// A full batch (`batch_bytes_max`, 256 KiB: ~1.2 ms) is still handed off,
/// so no other link waits behind one for long.
const IN_PLACE_FRAME_BYTES_MAX: usize = 64 * 1024;

/// Runs `f` (CPU-heavy: `bytes` of input) so that it does not stall the
/// other tasks of this async worker: on a multi-threaded runtime the
/// worker is handed over (`block_in_place`) for inputs over
/// [`IN_PLACE_FRAME_BYTES_MAX`]; smaller inputs and single-threaded
/// runtimes (tests) run it inline.
fn cpu_work<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi && bytes > IN_PLACE_FRAME_BYTES_MAX {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

pub(super) async fn record_equivocation(
    state: &NodeState,
    origin: &str,
    seq: u64,
    ours: Hash32,
    theirs: &Chunk,
) {
    // Our side: the stored chunk holding `seq` (its signed head vouches for
    // it), or only the hash when our copy was not durable yet.
    let ours_bytes = state
        .store
        .read_origin(origin, seq.saturating_sub(1), 1)
        .ok()
        .and_then(|mut v| v.pop())
        .filter(|sc| sc.chunk.event(seq).is_some())
        .map(|sc| sc.chunk.encode())
        .unwrap_or_else(|| ours.to_vec());
    match state
        .store
        .record_evidence(origin, seq, ours_bytes, theirs, system_now_ms())
        .await
    {
        Ok(true) => {
            metrics::counter!("gridsync_sync_equivocations_total", "node" => state.config.id.clone())
                .increment(1);
            tracing::error!(
                origin,
                seq,
                ours = %hex::encode(ours),
                "EQUIVOCATION: origin signed a different event at a seq this node already holds; both kept as evidence"
            );
        }
        Ok(false) => tracing::debug!(origin, seq, "equivocation offered again; already recorded"),
        Err(e) => tracing::error!(error = %e, "could not record equivocation evidence"),
    }
}
