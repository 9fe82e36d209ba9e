//! Child side: [`run_upstream`] keeps one connection to the parent and
//! runs a [`ChildSession`] on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use gridsync_deploy::config::SyncSettings;
use gridsync_model::Chunk;
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
        // What the parent's writer joins a received batch's chunks up to.
        join_bytes_max: gridsync_store::StoreConfig::default().chunk_bytes_target,
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
        while *paused.borrow_and_update() && !*shutdown.borrow() {
            tokio::select! {
                c = paused.changed() => if c.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        if *shutdown.borrow() {
            return;
        }
        let attempt = tokio::time::Instant::now();
        let outcome = tokio::select! {
            ws = connect(&state, &url) => match ws {
                Ok(ws) => {
                    state.sync.parent.lock().expect("lock").connects += 1;
                    metrics::counter!("gridsync_sync_connects_total", "node" => state.config.id.clone()).increment(1);
                    child_session(&state, &parent, parent_key, ws, &mut shutdown).await
                }
                Err(e) => Err(e),
            },
            _ = shutdown.changed() => return,
        };
        if matches!(outcome, Ok(()) | Err(SessionEnd::Streamed(_))) {
            backoff_ms = s.reconnect_min_ms;
        }
        // The delay drawn now, so the log says when the next try really
        // is (the backoff grown during an outage is capped while the
        // parent refuses connections).
        let delay = reconnect_delay(&s, backoff_ms, &outcome);
        {
            let mut link = state.sync.parent.lock().expect("lock");
            link.connected = false;
            if let Err(e) = &outcome {
                link.last_error = Some(e.to_string());
                tracing::info!(parent, reason = %e, retry_in_ms = delay, "parent link down");
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay)) => {}
            () = state.sync.nudge.notified() => {
                // The parent is back (it says so, signed): retry now, but
                // not sooner than NUDGE_GAP_MS (or reconnect_min_ms, if
                // smaller) after the last try, however many nudges come.
                tracing::info!(parent, "nudged by the parent; retrying now");
                let gap = s.reconnect_min_ms.min(NUDGE_GAP_MS);
                let earliest = attempt + Duration::from_millis(gap);
                tokio::select! {
                    () = tokio::time::sleep_until(earliest) => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ = shutdown.changed() => return,
        }
        backoff_ms = (backoff_ms * 2).min(s.reconnect_max_ms);
    }
}

/// The least time between two attempts when the second is a nudge's.
const NUDGE_GAP_MS: u64 = 250;

/// Full jitter between the minimum and the current backoff, so the
/// children of a restarted parent do not all come back at once; while the
/// parent refuses connections, never longer than reconnect_refused_max_ms
/// (it is restarting, or down: probing is nearly free, and its return is
/// noticed at once) — and likewise when it answers that it is busy with
/// other children's handshakes (a restarted street with a thousand
/// children: a 503 before any key work costs it nothing, and the backoff
/// grown during the outage would otherwise keep children away for up to
/// reconnect_max_ms).
fn reconnect_delay(s: &SyncSettings, backoff_ms: u64, outcome: &Result<(), SessionEnd>) -> u64 {
    let cap = if matches!(outcome, Err(SessionEnd::Refused(_) | SessionEnd::Busy(_))) {
        backoff_ms.min(s.reconnect_refused_max_ms)
    } else {
        backoff_ms
    };
    rand::thread_rng().gen_range(s.reconnect_min_ms.min(cap)..=cap)
}

/// Sends one protocol message as websocket frames of at most `limit`
/// payload bytes (one frame when it fits, or when `limit` is 0): a parent's
/// read buffer for this link grows to the largest frame it reads and keeps
/// that capacity while the link lives, so with a thousand children the
/// frame size, not the batch size, is what each link costs it after a
/// burst. The parent reassembles the message (tungstenite checks its
/// `frame_bytes_max` on the whole message as it grows).
async fn send_fragmented(
    ws: &mut ClientWs,
    bytes: tokio_tungstenite::tungstenite::Bytes,
    limit: usize,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    if limit == 0 || bytes.len() <= limit {
        return ws.send(WsMessage::Binary(bytes)).await;
    }
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + limit).min(bytes.len());
        let code = if at == 0 {
            Data::Binary
        } else {
            Data::Continue
        };
        let last = end == bytes.len();
        let frame = WsFrame::message(bytes.slice(at..end), OpCode::Data(code), last);
        ws.feed(WsMessage::Frame(frame)).await?;
        at = end;
    }
    ws.flush().await
}

/// Opens the websocket to the parent (TLS with the deployment CA when the
/// URL is `wss`), within the ack timeout (at least a second).
async fn connect(state: &NodeState, url: &str) -> Result<ClientWs, SessionEnd> {
    let s = &state.config.sync;
    // Small buffers (see `LINK_BUFFER_BYTES`): tungstenite's defaults,
    // 128 KiB each way, were fresh memory touched at every reconnect. A
    // batch goes out as fragments of `send_fragment_bytes`, each written
    // to the socket once the buffer holds it.
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(s.frame_bytes_max))
        .max_frame_size(Some(s.frame_bytes_max))
        .read_buffer_size(super::LINK_BUFFER_BYTES)
        .write_buffer_size(super::LINK_BUFFER_BYTES)
        .max_write_buffer_size(s.write_buffer_bytes_max);
    let connector = state
        .tls_client
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(url, Some(ws_config), false, connector);
    let limit = Duration::from_millis(s.ack_timeout_ms.max(1000) as u64);
    match tokio::time::timeout(limit, connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(connect_failed(url, &e)),
        Err(_) => Err(SessionEnd::Early(format!("connecting to {url} timed out"))),
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
        (None, Error::Http(resp))
            if resp.status()
                == tokio_tungstenite::tungstenite::http::StatusCode::SERVICE_UNAVAILABLE =>
        {
            SessionEnd::Busy(format!(
                "{url} answered 503: the parent is busy (e.g. other children's handshakes)"
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
    /// The parent answered 503 before the handshake (too many at once).
    Busy(String),
    Early(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Streamed(s)
            | SessionEnd::Refused(s)
            | SessionEnd::Busy(s)
            | SessionEnd::Early(s) => f.write_str(s),
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
    ws: ClientWs,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let mut c = ParentConnection {
        state,
        parent,
        session: ChildSession::new(child_cfg(state, parent, parent_key)),
        ws,
        acked_before: HashMap::new(),
    };
    c.run(shutdown).await
}

/// The connection to the parent: the sans-IO session and its socket.
struct ParentConnection<'a> {
    state: &'a Arc<NodeState>,
    parent: &'a str,
    session: ChildSession,
    ws: ClientWs,
    /// What the parent had acknowledged at the last status update.
    acked_before: HashMap<String, u64>,
}

impl ParentConnection<'_> {
    /// Runs the session until it ends: `Ok` when this node shuts down or
    /// its log closes.
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SessionEnd> {
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        let state = self.state;
        let mut appended = state.store.subscribe();
        let mut paused = state.sync.paused.subscribe();
        // Both proofs sign the TLS session's exported keying material:
        // relayed through a man in the middle (two sessions), they fail.
        let binding = match self.ws.get_ref() {
            tokio_tungstenite::MaybeTlsStream::Rustls(tls) => {
                crate::tls::exporter(tls.get_ref().1).map(|b| b.to_vec())
            }
            _ => None,
        }
        .filter(|_| !state.unsafe_no_channel_binding)
        .unwrap_or_default();
        let mut outs = self
            .session
            .on_open(random_nonce(), &binding, system_now_ms());
        loop {
            self.perform(outs).await?;
            self.update_link();
            let view = upward_view(state);
            let wake_at = super::wake_at(self.session.next_tick_ms());
            let session = &mut self.session;
            outs = tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(WsMessage::Binary(bytes))) => match Frame::decode(&bytes, state.config.sync.frame_bytes_max) {
                        Ok(frame) => session.on_frame(frame, &view, system_now_ms()),
                        Err(e) => return Err(self.end(format!("malformed frame from the parent: {e}"))),
                    },
                    Some(Ok(WsMessage::Close(_))) | None => return Err(self.end("connection closed by the parent".into())),
                    Some(Ok(_)) => Vec::new(),
                    Some(Err(e)) => return Err(self.end(format!("websocket error: {e}"))),
                },
                changed = appended.changed() => match changed {
                    Ok(()) => session.on_local_append(&view, system_now_ms()),
                    Err(_) => return Ok(()),
                },
                () = tokio::time::sleep_until(wake_at) => session.on_tick(&view, system_now_ms()),
                _ = shutdown.changed() => {
                    let _ = self.ws.close(None).await;
                    return Ok(());
                }
                _ = paused.changed() => {
                    let now_paused = *paused.borrow();
                    if now_paused {
                        return Err(self.close("link paused".into()).await);
                    }
                    Vec::new()
                }
            };
        }
    }

    /// Closes the socket and ends the session.
    async fn close(&mut self, reason: String) -> SessionEnd {
        let _ = self.ws.close(None).await;
        self.end(reason)
    }

    /// How the session ended, by whether it got anywhere.
    fn end(&self, reason: String) -> SessionEnd {
        if self.session.made_progress() {
            SessionEnd::Streamed(reason)
        } else {
            SessionEnd::Early(reason)
        }
    }

    /// Carries out what the session asked for (and what that leads to).
    async fn perform(&mut self, outs: Vec<Output>) -> Result<(), SessionEnd> {
        let mut queue: VecDeque<Output> = outs.into();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send(f) => {
                    let limit = self.state.config.sync.send_fragment_bytes;
                    let sent = send_fragmented(&mut self.ws, f.encode().into(), limit).await;
                    sent.map_err(|e| self.end(format!("send failed: {e}")))?;
                }
                Output::Close { reason } => return Err(self.close(reason).await),
                Output::Import { chunks } => queue.extend(self.import_own(chunks).await?),
                Output::OwnChain(c) => own_chain(self.state, c).await,
                Output::OriginBlocked {
                    origin,
                    code,
                    message,
                } => self.origin_blocked(origin, code, message),
                Output::Persist { .. } | Output::Equivocation { .. } | Output::Rejected { .. } => {}
            }
        }
        Ok(())
    }

    /// Stores this community's own events pulled back from the parent.
    async fn import_own(&mut self, chunks: Vec<Chunk>) -> Result<Vec<Output>, SessionEnd> {
        let state = self.state;
        let n = chunks.iter().map(|c| c.events.len() as u64).sum::<u64>();
        match state.store.import(chunks, system_now_ms()).await {
            Ok(_) => {
                metrics::counter!("gridsync_own_chain_repaired_events_total", "node" => state.config.id.clone())
                    .increment(n);
                let view = upward_view(state);
                Ok(self.session.on_repaired(&view, system_now_ms()))
            }
            Err(StoreError::Diverged { seq, .. }) => {
                let found = OwnChain::Diverged {
                    seq,
                    ours: [0; 32],
                    theirs: [0; 32],
                    evidence: None,
                };
                own_chain(state, found).await;
                Err(self
                    .close(format!("own chain differs from the parent's at seq {seq}"))
                    .await)
            }
            Err(e) => Err(self
                .close(format!(
                    "cannot import own chain pulled back from the parent: {e}"
                ))
                .await),
        }
    }

    fn origin_blocked(&self, origin: String, code: String, message: String) {
        let parent = self.parent;
        tracing::warn!(parent, origin, code, %message, "the parent refuses this origin; the others keep flowing");
        let mut link = self.state.sync.parent.lock().expect("lock");
        link.blocked.entry(origin).or_insert(BlockedOrigin {
            code,
            message,
            since_ms: system_now_ms(),
        });
        metrics::gauge!("gridsync_sync_blocked_origins", "node" => self.state.config.id.clone())
            .set(link.blocked.len() as f64);
    }

    /// The parent link as `/v1/status` shows it: streaming, acknowledged
    /// heads, origins no longer blocked once the parent acknowledges them.
    fn update_link(&mut self) {
        let node = self.state.config.id.clone();
        let mut link = self.state.sync.parent.lock().expect("lock");
        link.connected = self.session.is_streaming();
        // Only what moved since the last look (a street acknowledged for
        // 1,000 origins compared and copied them all per loop).
        let (reset, moved) = self.session.take_acked_moves();
        if reset {
            link.acked = self.session.acked().clone();
        }
        if moved.is_empty() && !reset {
            return;
        }
        let mut forwarded = 0;
        for (o, s) in moved {
            let before = self.acked_before.insert(o.clone(), s).unwrap_or(s);
            forwarded += s.saturating_sub(before);
            if s > before && !self.session.blocked().contains_key(&o) {
                link.blocked.remove(&o);
            }
            link.acked.insert(o, s);
        }
        if reset {
            // The welcome's heads: counted from here on.
            for (o, s) in self.session.acked() {
                self.acked_before.entry(o.clone()).or_insert(*s);
            }
        }
        metrics::counter!("gridsync_sync_events_forwarded_total", "node" => node.clone())
            .increment(forwarded);
        metrics::gauge!("gridsync_sync_blocked_origins", "node" => node)
            .set(link.blocked.len() as f64);
        link.last_ack_ms = Some(system_now_ms());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent that refuses connections or answers "busy" is retried
    /// within `reconnect_refused_max_ms` however far the backoff has grown;
    /// other failures wait up to the backoff (the control: the cap is not
    /// applied to everything).
    #[test]
    fn refused_and_busy_parents_are_retried_soon() {
        let s = SyncSettings::default();
        let grown = s.reconnect_max_ms;
        let max_of = |outcome: &Result<(), SessionEnd>| {
            (0..500)
                .map(|_| reconnect_delay(&s, grown, outcome))
                .max()
                .unwrap()
        };
        let refused = Err(SessionEnd::Refused("nothing listening".into()));
        let busy = Err(SessionEnd::Busy("503".into()));
        let other = Err(SessionEnd::Early("timed out".into()));
        assert!(max_of(&refused) <= s.reconnect_refused_max_ms);
        assert!(max_of(&busy) <= s.reconnect_refused_max_ms);
        assert!(max_of(&other) > s.reconnect_refused_max_ms);
        assert!((0..500).all(|_| reconnect_delay(&s, grown, &busy) >= s.reconnect_min_ms));
    }
}
