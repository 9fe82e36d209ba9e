//! Replication transport: the websocket shell around the sans-IO protocol.
//!
//! * Parent side: `GET /v1/sync` upgrades to a websocket and runs a
//!   [`ParentSession`]; verified chunks go to the store in order, acks go out
//!   once the store reports them durable. One session per child: a newer one
//!   replaces the older.
//! * Child side: [`run_upstream`] keeps one connection to the parent,
//!   reconnecting with exponential backoff and jitter, and streams what the
//!   parent lacks, woken by the store's commit notifications (no polling).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use gridsync_model::{Chunk, Hash32};
use gridsync_protocol::{
    ChildConfig, ChildSession, Frame, LagReport, LocalLog, Output, OwnChain, ParentConfig,
    ParentSession, StoredLog, TopologyView,
};
use gridsync_store::{PostingHold, Store, StoreError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};

use crate::error::ApiError;
use crate::node::{system_now_ms, NodeState};
use crate::topology::Topology;

/// Replication limits and timers. Names end in their unit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Largest websocket message (and frame) accepted.
    pub frame_bytes_max: usize,
    /// Bytes of chunks per batch.
    pub batch_bytes_max: usize,
    /// Unacknowledged batches in flight per connection.
    pub window_batches: usize,
    /// Bytes buffered for writing to one peer before sends wait.
    pub write_buffer_bytes_max: usize,
    pub heartbeat_ms: i64,
    pub idle_timeout_ms: i64,
    /// Handshake and oldest-batch answer deadline.
    pub ack_timeout_ms: i64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// While the parent's host refuses connections (its node is not
    /// listening: restarting, or stopped), retry within this long (full
    /// jitter from `reconnect_min_ms`) instead of backing off further: a
    /// refused connect costs both ends next to nothing, and a restarted
    /// parent is reached within this delay, not after `reconnect_max_ms`.
    pub reconnect_refused_max_ms: u64,
    /// Authenticated sync connections this node keeps at once (at least
    /// the number of its children in the topology, whatever is set here).
    pub connections_max: usize,
    /// Sockets still in the handshake at once; they hold no connection
    /// slot, and are dropped after `handshake_timeout_ms`.
    pub handshakes_max: usize,
    /// How long an unauthenticated socket may take to prove its key.
    pub handshake_timeout_ms: i64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            frame_bytes_max: 1024 * 1024,
            batch_bytes_max: 256 * 1024,
            window_batches: 4,
            write_buffer_bytes_max: 4 * 1024 * 1024,
            heartbeat_ms: 5_000,
            idle_timeout_ms: 20_000,
            ack_timeout_ms: 30_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            reconnect_refused_max_ms: 1_000,
            connections_max: 64,
            handshakes_max: 256,
            handshake_timeout_ms: 5_000,
        }
    }
}

impl SyncSettings {
    /// Settings that would make links fail for ever are refused at start
    /// (review F24).
    ///
    /// # Errors
    /// What is wrong and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        if self.window_batches == 0 || self.connections_max == 0 || self.handshakes_max == 0 {
            return Err(
                "window_batches, connections_max and handshakes_max must be at least 1".into(),
            );
        }
        if self.batch_bytes_max + 64 * 1024 > self.frame_bytes_max {
            return Err(format!(
                "batch_bytes_max ({}) must leave 64 KiB of room below frame_bytes_max ({}), or every batch is refused",
                self.batch_bytes_max, self.frame_bytes_max
            ));
        }
        if self.heartbeat_ms <= 0 || self.heartbeat_ms >= self.idle_timeout_ms {
            return Err(format!(
                "heartbeat_ms ({}) must be positive and below idle_timeout_ms ({}), or links flap",
                self.heartbeat_ms, self.idle_timeout_ms
            ));
        }
        if self.handshake_timeout_ms <= 0
            || self.ack_timeout_ms <= 0
            || self.reconnect_min_ms == 0
            || self.reconnect_min_ms > self.reconnect_max_ms
            || self.reconnect_min_ms > self.reconnect_refused_max_ms
        {
            return Err(
                "timeouts must be positive, and reconnect_min_ms at most reconnect_max_ms and \
                 reconnect_refused_max_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
pub struct ChildLink {
    pub connected: bool,
    pub last_contact_ms: Option<i64>,
    pub lag: Vec<LagReport>,
    session: u64,
    cancel: Option<Arc<Notify>>,
}

#[derive(Clone, Debug, Default)]
pub struct ParentLink {
    pub connected: bool,
    pub last_ack_ms: Option<i64>,
    pub acked: BTreeMap<String, u64>,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Origins the parent refuses (kept across reconnects until the parent
    /// acknowledges that origin again).
    pub blocked: BTreeMap<String, BlockedOrigin>,
}

#[derive(Clone, Debug)]
pub struct BlockedOrigin {
    pub code: String,
    pub message: String,
    pub since_ms: i64,
}

/// Replication state shown by `/v1/status`.
pub struct SyncState {
    pub children: Mutex<BTreeMap<String, ChildLink>>,
    pub parent: Mutex<ParentLink>,
    /// Authenticated connections.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Sockets in the handshake (unauthenticated).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    next_session: std::sync::atomic::AtomicU64,
    /// Set to true when the node shuts down: every sync session ends.
    pub stop: watch::Sender<bool>,
    /// While true the upward link stays down (the demo's `--chaos` uses it
    /// to take a community offline).
    pub paused: watch::Sender<bool>,
}

impl SyncState {
    /// `children`: how many children the topology gives this node (each
    /// always has a connection slot).
    pub fn new(settings: &SyncSettings, children: usize) -> Self {
        Self {
            children: Mutex::new(BTreeMap::new()),
            parent: Mutex::new(ParentLink::default()),
            permits: Arc::new(tokio::sync::Semaphore::new(
                settings.connections_max.max(children),
            )),
            handshakes: Arc::new(tokio::sync::Semaphore::new(settings.handshakes_max)),
            next_session: std::sync::atomic::AtomicU64::new(1),
            stop: watch::channel(false).0,
            paused: watch::channel(false).0,
        }
    }
}

struct TopoView<'a>(&'a Topology);

impl TopologyView for TopoView<'_> {
    fn parent_of(&self, id: &str) -> Option<String> {
        self.0.node(id).and_then(|n| n.parent.clone())
    }
    fn key(&self, id: &str) -> Option<VerifyingKey> {
        self.0.key(id)
    }
    fn key_at(&self, origin: &str, head_seq: u64) -> Option<VerifyingKey> {
        self.0.key_at(origin, head_seq)
    }
    fn is_retired(&self, id: &str) -> bool {
        self.0.is_retired(id)
    }
    fn in_subtree(&self, root: &str, node: &str) -> bool {
        let mut at = node.to_owned();
        for _ in 0..1024 {
            if at == root {
                return true;
            }
            match self.0.node(&at).and_then(|n| n.parent.clone()) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }
}

struct StoreView<'a>(&'a Store);

/// What a child sends up: its log, less origins no longer in its subtree
/// (a community moved to another street: its new street forwards it, and
/// this node keeps its history without offering it upward).
struct UpwardView<'a> {
    log: StoreView<'a>,
    topology: &'a Topology,
    me: &'a str,
}

impl LocalLog for UpwardView<'_> {
    fn heads(&self) -> Vec<(String, u64)> {
        let mut heads = LocalLog::heads(&self.log);
        heads.retain(|(o, _)| TopoView(self.topology).in_subtree(self.me, o));
        heads
    }
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        LocalLog::chunks_after(&self.log, origin, after_seq, bytes_max)
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        self.log.received_at(origin, seq)
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        LocalLog::hash_at(&self.log, origin, seq)
    }
}

impl StoreView<'_> {
    /// Durable chunks of `origin` after `after_seq`, about `bytes_max` bytes.
    fn read_chunks(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        let max_chunks = bytes_max / 4096 + 1;
        match self.0.read_origin(origin, after_seq, max_chunks) {
            Ok(v) => v.into_iter().map(|c| c.chunk).collect(),
            Err(e) => {
                tracing::error!(error = %e, origin, "cannot read the log to forward it");
                Vec::new()
            }
        }
    }
}

impl StoredLog for StoreView<'_> {
    fn heads(&self) -> Vec<(String, u64, Hash32)> {
        self.0
            .heads()
            .into_iter()
            .map(|(o, h)| (o, h.seq, h.hash))
            .collect()
    }
    fn head(&self, origin: &str) -> Option<(u64, Hash32)> {
        self.0.head(origin).map(|h| (h.seq, h.hash))
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        self.0.hash_at(origin, seq).ok().flatten()
    }
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        self.read_chunks(origin, after_seq, bytes_max)
    }
}

impl LocalLog for StoreView<'_> {
    fn heads(&self) -> Vec<(String, u64)> {
        self.0.readable_heads().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the heads to forward the log");
            Vec::new()
        })
    }
    fn chunks_after(&self, origin: &str, after_seq: u64, bytes_max: usize) -> Vec<Chunk> {
        self.read_chunks(origin, after_seq, bytes_max)
    }
    fn received_at(&self, origin: &str, seq: u64) -> Option<i64> {
        self.0
            .read_origin(origin, seq.saturating_sub(1), 1)
            .ok()
            .and_then(|v| v.first().map(|c| c.received_at_ms))
    }
    fn hash_at(&self, origin: &str, seq: u64) -> Option<Hash32> {
        if seq == 0 {
            return Some(gridsync_model::ZERO_HASH);
        }
        self.0.hash_at(origin, seq).ok().flatten()
    }
}

fn random_nonce() -> [u8; 32] {
    rand::rngs::OsRng.gen()
}

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
        .read_buffer_size(16 * 1024)
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
        bug_ack_before_durable: false,
    }
}

type PendingImport = (u64, oneshot::Receiver<Result<u64, StoreError>>);

async fn parent_session(
    state: Arc<NodeState>,
    mut socket: WebSocket,
    handshake: tokio::sync::OwnedSemaphorePermit,
    channel_binding: Vec<u8>,
) {
    let mut handshake = Some(handshake);
    let mut connection: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let node = state.config.id.clone();
    let session_id = state
        .sync
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cancel = Arc::new(Notify::new());
    let mut session = ParentSession::new(
        parent_cfg(&state, channel_binding),
        random_nonce(),
        system_now_ms(),
    );
    let mut pending: VecDeque<PendingImport> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let opened = tokio::time::Instant::now();
    let handshake_deadline =
        Duration::from_millis(state.config.sync.handshake_timeout_ms.max(100) as u64);
    let mut child: Option<String> = None;
    let mut stop = state.sync.stop.subscribe();
    let reason: String = 'session: loop {
        let outs = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    match Frame::decode(&bytes, state.config.sync.frame_bytes_max) {
                        Ok(frame) => session.on_frame(frame, &TopoView(&state.topology), &StoreView(&state.store), system_now_ms()),
                        Err(e) => {
                            metrics::counter!("gridsync_sync_rejections_total", "node" => node.clone(), "code" => "malformed").increment(1);
                            let f = Frame::Refused { code: "malformed".into(), message: e.to_string() };
                            let _ = socket.send(Message::Binary(f.encode().into())).await;
                            break 'session format!("malformed frame: {e}");
                        }
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    let f = Frame::Refused { code: "malformed".into(), message: "text frames are not part of the protocol".into() };
                    let _ = socket.send(Message::Binary(f.encode().into())).await;
                    break 'session "text frame".into();
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break 'session format!("websocket error: {e}"),
                None => break 'session "connection closed by the child".into(),
            },
            done = async { (&mut pending.front_mut().expect("guarded").1).await }, if !pending.is_empty() => {
                let (batch, _) = pending.pop_front().expect("guarded");
                match done {
                    Ok(Ok(n_new)) => {
                        if n_new == 0 {
                            metrics::counter!("gridsync_sync_duplicate_batches_total", "node" => node.clone()).increment(1);
                        }
                        metrics::counter!("gridsync_sync_events_received_total", "node" => node.clone()).increment(n_new);
                        metrics::counter!("gridsync_sync_batches_received_total", "node" => node.clone()).increment(1);
                        session.on_persisted(batch, &StoreView(&state.store), system_now_ms())
                    }
                    Ok(Err(e)) => session.on_persist_failed(&e.to_string()),
                    Err(_) => session.on_persist_failed("store closed"),
                }
            }
            _ = tick.tick() => {
                if child.is_none() && opened.elapsed() > handshake_deadline {
                    break 'session "handshake timed out".into();
                }
                session.on_tick(system_now_ms())
            }
            () = cancel.notified() => break 'session "replaced by a newer session of the same child".into(),
            _ = stop.changed() => break 'session "this node is shutting down".into(),
        };
        if child.is_none() {
            if let Some(c) = session.child() {
                // Authenticated: trade the handshake slot for a connection
                // slot (before the welcome goes out).
                match state.sync.permits.clone().try_acquire_owned() {
                    Ok(p) => {
                        connection = Some(p);
                        drop(handshake.take());
                    }
                    Err(_) => {
                        let f = Frame::Refused {
                            code: "too_many_connections".into(),
                            message:
                                "this node has as many sync connections as it accepts; retry later"
                                    .into(),
                        };
                        let _ = socket.send(Message::Binary(f.encode().into())).await;
                        break 'session "no connection slot left".into();
                    }
                }
                child = Some(c.to_owned());
                let mut children = state.sync.children.lock().expect("lock");
                let link = children.entry(c.to_owned()).or_default();
                if let Some(old) = link.cancel.replace(cancel.clone()) {
                    old.notify_one();
                }
                link.session = session_id;
                link.connected = true;
                tracing::debug!(child = c, "child connected");
            }
        }
        if let Some(c) = &child {
            let mut children = state.sync.children.lock().expect("lock");
            if let Some(link) = children.get_mut(c) {
                if link.session == session_id {
                    link.last_contact_ms = Some(session.last_rx_ms());
                    if link.lag.as_slice() != session.lag() {
                        link.lag = session.lag().to_vec();
                        let lag: u64 = link
                            .lag
                            .iter()
                            .map(|l| {
                                l.seq.saturating_sub(
                                    state.store.head(&l.origin).map_or(0, |h| h.seq),
                                )
                            })
                            .sum();
                        metrics::gauge!("gridsync_sync_child_lag_events", "node" => node.clone(), "child" => c.clone())
                            .set(lag as f64);
                    }
                }
            }
        }
        for o in outs {
            match o {
                Output::Send(f) => {
                    if let Err(e) = socket.send(Message::Binary(f.encode().into())).await {
                        break 'session format!("send failed: {e}");
                    }
                }
                Output::Persist { batch, chunks } => {
                    match state.store.submit_import(chunks, system_now_ms()).await {
                        Ok(rx) => pending.push_back((batch, rx)),
                        Err(e) => break 'session format!("store: {e}"),
                    }
                }
                Output::Equivocation {
                    origin,
                    seq,
                    ours,
                    theirs,
                } => {
                    record_equivocation(&state, &origin, seq, ours, &theirs).await;
                }
                Output::Rejected { code, message } => {
                    metrics::counter!("gridsync_sync_rejections_total", "node" => node.clone(), "code" => code.as_str())
                        .increment(1);
                    tracing::warn!(child = child.as_deref().unwrap_or("?"), code = code.as_str(), %message, "refused");
                }
                Output::Close { reason } => break 'session reason,
                Output::Import { .. } | Output::OriginBlocked { .. } | Output::OwnChain(_) => {}
            }
        }
    };
    let _ = socket.send(Message::Close(None)).await;
    drop((handshake, connection));
    if let Some(c) = &child {
        let mut children = state.sync.children.lock().expect("lock");
        if let Some(link) = children.get_mut(c) {
            if link.session == session_id {
                link.connected = false;
                link.cancel = None;
            }
        }
        tracing::debug!(child = c, %reason, "child disconnected");
    } else {
        tracing::debug!(%reason, "sync connection closed before authentication");
    }
}

async fn record_equivocation(
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
        .filter(|sc| sc.chunk.first_seq() <= seq && seq <= sc.chunk.last_seq())
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

fn upward_view(state: &NodeState) -> UpwardView<'_> {
    UpwardView {
        log: StoreView(&state.store),
        topology: &state.topology,
        me: &state.config.id,
    }
}

fn child_cfg(state: &NodeState, parent: &str, parent_key: VerifyingKey) -> ChildConfig {
    let s = &state.config.sync;
    ChildConfig {
        own_previous_keys: state
            .topology
            .keys(&state.config.id)
            .map(|k| k.previous.clone())
            .unwrap_or_default(),
        node_id: state.config.id.clone(),
        parent_id: parent.to_owned(),
        parent_key,
        key: state.key.clone(),
        window_batches: s.window_batches,
        batch_bytes_max: s.batch_bytes_max,
        heartbeat_ms: s.heartbeat_ms,
        idle_timeout_ms: s.idle_timeout_ms,
        ack_timeout_ms: s.ack_timeout_ms,
        forward_personal: state.config.privacy.forward_personal,
        bug_resume_from_memory: false,
    }
}

/// Keeps this node's events flowing to its parent until `shutdown` turns
/// true. Returns at once for the root.
pub async fn run_upstream(state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let Some(parent) = state
        .topology
        .node(&state.config.id)
        .and_then(|n| n.parent.clone())
    else {
        return;
    };
    let (Some(parent_node), Some(parent_key)) =
        (state.topology.node(&parent), state.topology.key(&parent))
    else {
        tracing::error!(parent, "parent is not in the topology; not replicating");
        return;
    };
    let url = format!(
        "{}/v1/sync",
        parent_node
            .url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let s = state.config.sync.clone();
    let mut backoff_ms = s.reconnect_min_ms;
    let mut paused = state.sync.paused.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        while *paused.borrow_and_update() {
            tokio::select! {
                c = paused.changed() => if c.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(s.frame_bytes_max))
            .max_frame_size(Some(s.frame_bytes_max))
            .max_write_buffer_size(s.write_buffer_bytes_max);
        let connector = state
            .tls_client
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(ws_config),
            false,
            connector,
        );
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_millis(s.ack_timeout_ms.max(1000) as u64), connect) => r,
            _ = shutdown.changed() => return,
        };
        let outcome = match result {
            Ok(Ok((ws, _))) => {
                state.sync.parent.lock().expect("lock").connects += 1;
                metrics::counter!("gridsync_sync_connects_total", "node" => state.config.id.clone()).increment(1);
                child_session(&state, &parent, parent_key, ws, &mut shutdown).await
            }
            Ok(Err(e)) if is_tls_failure(&e) => Err(SessionEnd::Early(format!(
                "TLS with {url} failed: {}; the parent's certificate must be issued by the \
                 deployment CA (the topology's ca_file) for the address in its URL",
                tls_cause(&e)
            ))),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Err(SessionEnd::Refused(format!(
                    "cannot connect to {url}: {e} (the parent is not listening)"
                )))
            }
            Ok(Err(e)) => Err(SessionEnd::Early(format!("cannot connect to {url}: {e}"))),
            Err(_) => Err(SessionEnd::Early(format!("connecting to {url} timed out"))),
        };
        {
            let mut link = state.sync.parent.lock().expect("lock");
            link.connected = false;
            match &outcome {
                Ok(()) | Err(SessionEnd::Streamed(_)) => backoff_ms = s.reconnect_min_ms,
                Err(_) => {}
            }
            if let Err(e) = &outcome {
                link.last_error = Some(e.to_string());
            }
        }
        if let Err(e) = &outcome {
            tracing::info!(parent, reason = %e, retry_in_ms = backoff_ms, "parent link down");
        }
        if *shutdown.borrow() {
            return;
        }
        // Full jitter between the minimum and the current backoff, so the
        // children of a restarted parent do not all come back at once; while
        // the parent refuses connections, never longer than
        // reconnect_refused_max_ms (it is restarting, or down: probing is
        // nearly free, and its return is noticed at once).
        let cap = if matches!(outcome, Err(SessionEnd::Refused(_))) {
            backoff_ms.min(s.reconnect_refused_max_ms)
        } else {
            backoff_ms
        };
        let delay = rand::rngs::OsRng.gen_range(s.reconnect_min_ms.min(cap)..=cap);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = shutdown.changed() => return,
        }
        backoff_ms = (backoff_ms * 2).min(s.reconnect_max_ms);
    }
}

/// Whether connecting failed in TLS (tungstenite reports rustls errors as
/// I/O errors wrapping them).
fn is_tls_failure(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Tls(_) => true,
        Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
        _ => false,
    }
}

fn tls_cause(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => io
            .get_ref()
            .map_or_else(|| io.to_string(), ToString::to_string),
        other => other.to_string(),
    }
}

/// How a child session ended.
#[derive(Debug)]
enum SessionEnd {
    /// It had reached streaming (the link worked): reconnect quickly.
    Streamed(String),
    /// The parent's host refused the connection (nothing listening).
    Refused(String),
    Early(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Streamed(s) | SessionEnd::Refused(s) | SessionEnd::Early(s) => {
                f.write_str(s)
            }
        }
    }
}

impl From<String> for SessionEnd {
    fn from(s: String) -> Self {
        SessionEnd::Early(s)
    }
}

type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn child_session(
    state: &Arc<NodeState>,
    parent: &str,
    parent_key: VerifyingKey,
    mut ws: ClientWs,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let node = state.config.id.clone();
    let mut session = ChildSession::new(child_cfg(state, parent, parent_key));
    let mut appended = state.store.subscribe();
    let mut paused = state.sync.paused.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Both proofs sign the TLS session's exported keying material: relayed
    // through a man in the middle (two sessions), they fail.
    let binding = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(tls) => {
            crate::tls::exporter(tls.get_ref().1).map(|b| b.to_vec())
        }
        _ => None,
    }
    .filter(|_| !state.unsafe_no_channel_binding)
    .unwrap_or_default();
    let mut outs = session.on_open(random_nonce(), &binding, system_now_ms());
    let mut acked_before: HashMap<String, u64> = HashMap::new();
    loop {
        let mut queue: VecDeque<Output> = std::mem::take(&mut outs).into();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send(f) => {
                    if let Err(e) = ws.send(WsMessage::Binary(f.encode().into())).await {
                        return Err(end(&session, format!("send failed: {e}")));
                    }
                }
                Output::Close { reason } => {
                    let _ = ws.close(None).await;
                    return Err(end(&session, reason));
                }
                Output::Import { chunks } => {
                    let n = chunks.iter().map(|c| c.events.len() as u64).sum::<u64>();
                    match state.store.import(chunks, system_now_ms()).await {
                        Ok(_) => {
                            metrics::counter!("gridsync_own_chain_repaired_events_total", "node" => node.clone())
                                .increment(n);
                            let view = upward_view(state);
                            queue.extend(session.on_repaired(&view, system_now_ms()));
                        }
                        Err(StoreError::Diverged { seq, .. }) => {
                            let found = OwnChain::Diverged {
                                seq,
                                ours: [0; 32],
                                theirs: [0; 32],
                                evidence: None,
                            };
                            own_chain(state, found).await;
                            let _ = ws.close(None).await;
                            return Err(end(
                                &session,
                                format!("own chain differs from the parent's at seq {seq}"),
                            ));
                        }
                        Err(e) => {
                            let _ = ws.close(None).await;
                            return Err(end(
                                &session,
                                format!("cannot import own chain pulled back from the parent: {e}"),
                            ));
                        }
                    }
                }
                Output::OwnChain(c) => own_chain(state, c).await,
                Output::OriginBlocked {
                    origin,
                    code,
                    message,
                } => {
                    tracing::warn!(parent, origin, code, %message, "the parent refuses this origin; the others keep flowing");
                    let mut link = state.sync.parent.lock().expect("lock");
                    link.blocked.entry(origin).or_insert(BlockedOrigin {
                        code,
                        message,
                        since_ms: system_now_ms(),
                    });
                    metrics::gauge!("gridsync_sync_blocked_origins", "node" => node.clone())
                        .set(link.blocked.len() as f64);
                }
                Output::Persist { .. } | Output::Equivocation { .. } | Output::Rejected { .. } => {}
            }
        }
        {
            let mut link = state.sync.parent.lock().expect("lock");
            link.connected = session.is_streaming();
            let acked = session.acked();
            if acked.iter().any(|(o, s)| acked_before.get(o) != Some(s)) {
                let mut forwarded = 0;
                for (o, s) in acked {
                    let before = acked_before.insert(o.clone(), *s).unwrap_or(*s);
                    forwarded += s.saturating_sub(before);
                    if *s > before && !session.blocked().contains_key(o) {
                        link.blocked.remove(o);
                    }
                }
                metrics::counter!("gridsync_sync_events_forwarded_total", "node" => node.clone())
                    .increment(forwarded);
                metrics::gauge!("gridsync_sync_blocked_origins", "node" => node.clone())
                    .set(link.blocked.len() as f64);
                link.last_ack_ms = Some(system_now_ms());
                link.acked = acked.clone();
            }
        }
        let view = upward_view(state);
        outs = tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(WsMessage::Binary(bytes))) => match Frame::decode(&bytes, state.config.sync.frame_bytes_max) {
                    Ok(frame) => session.on_frame(frame, &view, system_now_ms()),
                    Err(e) => return Err(end(&session, format!("malformed frame from the parent: {e}"))),
                },
                Some(Ok(WsMessage::Close(_))) | None => return Err(end(&session, "connection closed by the parent".into())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(end(&session, format!("websocket error: {e}"))),
            },
            changed = appended.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                session.on_local_append(&view, system_now_ms())
            }
            _ = tick.tick() => session.on_tick(&view, system_now_ms()),
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = paused.changed() => {
                if *paused.borrow() {
                    let _ = ws.close(None).await;
                    return Err(end(&session, "link paused".into()));
                }
                continue;
            }
        };
    }
}

/// Acts on what the handshake found about this community's own chain:
/// refuse posts while the parent holds more of it (and pull it back), or
/// for good when the two copies differ; take posts again once confirmed.
async fn own_chain(state: &NodeState, found: OwnChain) {
    if !state.is_origin {
        return;
    }
    let node = state.config.id.clone();
    let parent = state.config.parent.clone().unwrap_or_default();
    let hold = match found {
        OwnChain::Agrees | OwnChain::Repaired { .. } => {
            if let OwnChain::Repaired { seq } = found {
                tracing::warn!(
                    seq,
                    "own chain pulled back from the parent up to seq {seq}; posts resume after it"
                );
            }
            if let Some(h) = state.store.posting_hold() {
                tracing::info!(code = %h.code, "the parent confirmed this community's chain; posts are taken again");
            }
            None
        }
        OwnChain::Behind {
            local,
            parent: theirs,
        } => {
            metrics::counter!("gridsync_log_behind_parent_total", "node" => node.clone())
                .increment(1);
            let message = format!(
                "this community holds its own events up to seq {local} but its parent {parent} holds them up to seq {theirs} \
                 (restored from an older backup, or a lost tail): posts are refused until the missing events are pulled \
                 back from the parent, which happens by itself while the link is up"
            );
            tracing::error!(local, parent_seq = theirs, "LOG BEHIND PARENT: {message}");
            Some(("log_behind_parent", message))
        }
        OwnChain::Diverged {
            seq,
            ours,
            evidence,
            ..
        } => {
            metrics::counter!("gridsync_log_diverged_total", "node" => node.clone()).increment(1);
            if let Some(theirs) = evidence {
                record_equivocation(state, &node, seq, ours, &theirs).await;
            }
            let message = format!(
                "this community's log and its parent {parent}'s copy of it differ at seq {seq}: two histories signed with \
                 this node's key. Nothing was overwritten and posts are refused. Keep this data directory for the \
                 auditors; to take events again, stop the node, move its data directory aside and start it on an empty \
                 one with --after-restore: it pulls its whole history back from the parent and continues after it"
            );
            tracing::error!(seq, "LOG DIVERGED FROM PARENT: {message}");
            Some(("log_diverged", message))
        }
    };
    let hold = hold.map(|(code, message)| PostingHold {
        code: code.into(),
        message,
        since_ms: system_now_ms(),
    });
    // A diverged log stays held until a parent confirms it again.
    let keep = hold.is_some()
        && state
            .store
            .posting_hold()
            .is_some_and(|h| h.code == "log_diverged");
    if keep {
        return;
    }
    metrics::gauge!("gridsync_posting_held", "node" => node).set(if hold.is_some() {
        1.0
    } else {
        0.0
    });
    if let Err(e) = state.store.set_posting_hold(hold).await {
        tracing::error!(error = %e, "cannot record the posting hold");
    }
}

fn end(session: &ChildSession, reason: String) -> SessionEnd {
    if session.made_progress() {
        SessionEnd::Streamed(reason)
    } else {
        SessionEnd::Early(reason)
    }
}
