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
                    // Decoding and verifying a batch (hashes, signatures)
                    // is CPU work: done in place of this worker, so the
                    // runtime hands other tasks to another one meanwhile.
                    let decoded = cpu_work(bytes.len(), || Frame::decode(&bytes, state.config.sync.frame_bytes_max).map(|frame| {
                        session.on_frame(frame, &TopoView(&state.topology), &StoreView(&state.store), system_now_ms())
                    }));
                    match decoded {
                        Ok(outs) => outs,
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

/// Runs `f` (CPU-heavy: `bytes` of input) so that it does not stall the
/// other tasks of this async worker: on a multi-threaded runtime the
/// worker is handed over (`block_in_place`) for inputs over 16 KiB; small
/// inputs and single-threaded runtimes (tests) run it inline.
fn cpu_work<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi && bytes > 16 * 1024 {
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
