//! A parent that has just started tells its children to retry now.
//!
//! While a parent is down its children wait between attempts: up to
//! `reconnect_refused_max_ms` while its host refuses connections, up to
//! the full backoff (`reconnect_max_ms`) after other failures (a host that
//! does not answer at all, a timeout). When the parent is back it knows
//! its children from the topology, so it sends each one a nudge —
//! `POST /v1/sync/nudge?parent=…&at_ms=…&signature=…`, no body, signed with
//! its key over (parent, child, time) — and a child waiting to retry
//! retries at once (never sooner than `reconnect_min_ms` after its last
//! attempt). A child the parent cannot reach (behind NAT, offline) still
//! comes back on its own delay: the nudge only moves a retry earlier.
//!
//! It nudges at once only as many children as it takes handshakes at
//! once (`sync.handshakes_max`, 1,024): a child nudged beyond that would
//! be told 503 and retry within its refused-retry delay anyway — while
//! the parent was down its host refused their connections, so they retry
//! within `reconnect_refused_max_ms` whatever happens. The rest are
//! nudged twice the parent's own `reconnect_refused_max_ms` later
//! (children of one deployment share the setting), and only those still
//! not connected then — the ones in a long backoff. A street with 1,000
//! children nudges them all at once: measured against nudging the first
//! 256 only, the catch-up was faster in each of three pairs
//! (BENCHMARKS.md, "1,000 communities on one street").

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::ApiError;
use crate::state::{system_now_ms, AppState, NodeState};

/// How far a nudge's time may lie from the child's clock: as much as a
/// posted event's may (a community box's clock is often some minutes
/// off); a replay within it only moves a retry earlier.
const NUDGE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Children nudged at once.
const NUDGES_IN_FLIGHT: usize = 32;
/// One nudge's deadline (connect, TLS, request, answer).
const NUDGE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NudgeQuery {
    parent: String,
    at_ms: i64,
    signature: String,
}

/// `POST /v1/sync/nudge`: the parent says it is back. 204 when the nudge
/// is the parent's (the link retries now if it is waiting), 403 when it is
/// not, 409 on a node without a parent.
///
/// # Errors
/// The refusals above, with what was wrong.
pub async fn nudge_endpoint(
    State(state): State<AppState>,
    query: Result<Query<NudgeQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let me = &state.config.id;
    let Some(parent) = state.topology.node(me).and_then(|n| n.parent.clone()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_parent",
            format!("node {me} has no parent in the topology; nothing to retry"),
        ));
    };
    if q.parent != parent {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_my_parent",
            format!("node {me}'s parent is {parent}, not {:?}", q.parent),
        ));
    }
    let signature = hex::decode(&q.signature)
        .map_err(|_| ApiError::bad_request("invalid_query", "signature must be 128 hex digits"))?;
    let verified = state.topology.key(&parent).is_some_and(|key| {
        gridsync_protocol::auth::check_nudge(
            &key,
            &parent,
            me,
            q.at_ms,
            &signature,
            system_now_ms(),
            NUDGE_WINDOW_MS,
        )
    });
    if !verified {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_nudge",
            format!(
                "the nudge does not verify with {parent}'s key from the topology, or at_ms is \
                 more than {} min from this node's clock (check both machines' clocks)",
                NUDGE_WINDOW_MS / 60_000
            ),
        ));
    }
    state.sync.nudge.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

/// Nudges this node's children in the topology that are not connected
/// (when `sync.nudge_children` is set), a few at a time, in two waves: at
/// once as many as it takes handshakes at once (`sync.handshakes_max` —
/// more would only be told 503 and retry within their refused-retry delay
/// anyway), then, twice `reconnect_refused_max_ms` later, those of the
/// rest that have not come back on their own. A child that cannot be
/// reached is left to its own retry.
pub async fn nudge_children(state: Arc<NodeState>) {
    let s = &state.config.sync;
    if !s.nudge_children {
        return;
    }
    let all = state.topology.children(&state.config.id);
    let (now, later) = all.split_at(all.len().min(s.handshakes_max));
    nudge_wave(&state, now).await;
    if later.is_empty() {
        return;
    }
    let wait = s.reconnect_refused_max_ms.saturating_mul(2);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    nudge_wave(&state, later).await;
}

/// Nudges those of `children` not connected now.
async fn nudge_wave(state: &Arc<NodeState>, children: &[String]) {
    let children: Vec<String> = {
        let links = state.sync.children.lock().expect("lock");
        children
            .iter()
            .filter(|c| !links.get(*c).is_some_and(|l| l.connected))
            .cloned()
            .collect()
    };
    metrics::counter!("gridsync_sync_nudges_sent_total", "node" => state.config.id.clone())
        .increment(children.len() as u64);
    futures_util::stream::iter(children)
        .for_each_concurrent(NUDGES_IN_FLIGHT, |child| {
            let state = state.clone();
            async move {
                match tokio::time::timeout(NUDGE_TIMEOUT, send_nudge(&state, &child)).await {
                    Ok(Ok(204)) => tracing::debug!(child, "nudged"),
                    // Reached but refused: a clock far off, or a key that
                    // differs from the topology's — worth an operator's look.
                    Ok(Ok(status)) => tracing::info!(
                        child,
                        status,
                        "child refused the nudge (its clock more than 10 min off, or \
                         another key for this node in its topology?)"
                    ),
                    Ok(Err(why)) => tracing::debug!(child, why, "nudge not delivered"),
                    Err(_) => tracing::debug!(child, "nudge timed out"),
                }
            }
        })
        .await;
}

/// Sends the nudge; the status of the child's answer.
async fn send_nudge(state: &NodeState, child: &str) -> Result<u16, String> {
    let url = &state.topology.node(child).ok_or("not in the topology")?.url;
    let uri: Uri = url.parse().map_err(|e| format!("url {url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("url {url} has no host"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("url {url}: expected http or https")),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let me = &state.config.id;
    let at_ms = system_now_ms();
    let signature = gridsync_protocol::auth::sign_nudge(&state.key, me, child, at_ms);
    let request = format!(
        "POST {}/v1/sync/nudge?parent={me}&at_ms={at_ms}&signature={} HTTP/1.1\r\n\
         Host: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        uri.path().trim_end_matches('/'),
        hex::encode(signature),
        uri.authority().map_or(host, |a| a.as_str()),
    );
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    if tls {
        let config = state
            .tls_client
            .clone()
            .ok_or("no TLS client configuration")?;
        let name =
            rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        exchange(stream, request.as_bytes()).await
    } else {
        exchange(tcp, request.as_bytes()).await
    }
}

/// Sends `request` and reads the status code of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<u16, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    // "HTTP/1.1 204 …"
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|h| h.get(9..12))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "no HTTP status line in the answer".to_owned())
}
