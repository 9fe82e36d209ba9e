//! Child side: [`run_upstream`] keeps one connection to the parent and
//! runs a [`ChildSession`] on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use gridsync_protocol::{ChildConfig, ChildSession, Frame, Output, OwnChain};
use gridsync_store::{PostingHold, StoreError};
use rand::Rng;
use tokio::sync::watch;

use super::parent::record_equivocation;
use super::random_nonce;
use super::views::upward_view;
use crate::state::{system_now_ms, NodeState};
use crate::sync_state::BlockedOrigin;

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
            Ok(Err(e)) => Err(connect_failed(&url, &e)),
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

/// Why connecting to the parent failed: TLS (tungstenite reports rustls
/// errors as I/O errors wrapping them), nothing listening (retried
/// quickly), or anything else.
fn connect_failed(url: &str, e: &tokio_tungstenite::tungstenite::Error) -> SessionEnd {
    use tokio_tungstenite::tungstenite::Error;
    let tls = match e {
        Error::Tls(t) => Some(t.to_string()),
        Error::Io(io) => io
            .get_ref()
            .filter(|i| i.is::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    };
    match (tls, e) {
        (Some(cause), _) => SessionEnd::Early(format!(
            "TLS with {url} failed: {cause}; the parent's certificate must be issued by the \
             deployment CA (the topology's ca_file) for the address in its URL"
        )),
        (None, Error::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            SessionEnd::Refused(format!(
                "cannot connect to {url}: {io} (the parent is not listening)"
            ))
        }
        (None, _) => SessionEnd::Early(format!("cannot connect to {url}: {e}")),
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
