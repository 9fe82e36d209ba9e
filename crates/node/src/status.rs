//! `GET /v1/status`: heads, log, links, equivocations, posting hold.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use gridsync_model::api::{HeadView, LogStats, StatusResponse};

use crate::error::ApiError;
use crate::state::AppState;
use crate::state::NodeState;
use gridsync_deploy::tokens::Role;

/// Equivocation records listed by `/v1/status` at most.
const EVIDENCE_LISTED_MAX: usize = 1000;

pub(crate) async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusResponse>, ApiError> {
    let role = state.authorize(&headers, &Role::ALL)?;
    // A scan of every origin's head and link: off the async workers.
    let view = tokio::task::spawn_blocking(move || status_view(&state, role))
        .await
        .map_err(|e| ApiError::internal("status task failed", &e))??;
    Ok(Json(view))
}

/// The body of `GET /v1/status` (also pushed by the aggregates stream).
///
/// # Errors
/// Storage errors reading the evidence table.
pub fn status_view(state: &NodeState, role: Role) -> Result<StatusResponse, ApiError> {
    let node = state.topology.node(&state.config.id);
    let heads = state
        .store
        .heads()
        .into_iter()
        .map(|(origin, h)| {
            (
                origin,
                HeadView {
                    seq: h.seq,
                    hash: hex::encode(h.hash),
                    signed_at: gridsync_model::time_fmt::format_rfc3339_ms(
                        h.signed.signed_at_ms,
                        0,
                    ),
                    signed_at_ms: h.signed.signed_at_ms,
                    signature: hex::encode(h.signed.signature),
                },
            )
        })
        .collect();
    let counts = state.store.counts();
    let now = state.now_ms();
    let fmt = |ms: i64| gridsync_model::time_fmt::format_rfc3339_ms(ms, 0);
    let ours = state.store.heads();
    let children_status = {
        let links = state.sync.children.lock().expect("lock").clone();
        state
            .topology
            .children(&state.config.id)
            .iter()
            .map(|id| {
                let link = links.get(id).cloned().unwrap_or_default();
                let heads: std::collections::BTreeMap<String, u64> =
                    link.lag.iter().map(|l| (l.origin.clone(), l.seq)).collect();
                let mut lag_events = 0;
                let mut oldest: Option<i64> = None;
                for l in &link.lag {
                    let have = ours.get(&l.origin).map_or(0, |h| h.seq);
                    if l.seq > have {
                        lag_events += l.seq - have;
                        if let Some(t) = l.oldest_missing_ms {
                            oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
                        }
                    }
                }
                gridsync_model::api::ChildStatus {
                    id: id.clone(),
                    connected: link.connected,
                    last_contact: link.last_contact_ms.map(fmt),
                    heads,
                    lag_events,
                    lag_seconds: oldest.map(|t| (now - t).max(0) as f64 / 1000.0),
                }
            })
            .collect()
    };
    let parent_link = node.and_then(|n| n.parent.clone()).map(|parent| {
        let link = state.sync.parent.lock().expect("lock").clone();
        // Origins no longer below this node (moved away) are not owed
        // upward: their new parent forwards them.
        let mine: std::collections::BTreeSet<String> = state
            .topology
            .subtree(&state.config.id)
            .into_iter()
            .collect();
        let lag_events = ours
            .iter()
            .filter(|(o, _)| mine.contains(o.as_str()))
            .map(|(o, h)| {
                h.seq
                    .saturating_sub(link.acked.get(o).copied().unwrap_or(0))
            })
            .sum();
        gridsync_model::api::ParentLinkView {
            parent,
            connected: link.connected,
            last_ack: link.last_ack_ms.map(fmt),
            acked: link.acked.clone(),
            lag_events,
            connects: link.connects,
            last_error: link.last_error.clone(),
            blocked: link
                .blocked
                .iter()
                .map(|(origin, b)| gridsync_model::api::BlockedOriginView {
                    origin: origin.clone(),
                    code: b.code.clone(),
                    message: b.message.clone(),
                    since: fmt(b.since_ms),
                })
                .collect(),
        }
    });
    let equivocations = state
        .store
        .evidence(EVIDENCE_LISTED_MAX)
        .map_err(ApiError::from)?
        .into_iter()
        .map(|(origin, seq, at)| gridsync_model::api::EquivocationView {
            origin,
            seq,
            detected_at: fmt(at),
        })
        .collect();
    let posting = state.is_origin.then(|| {
        let hold = state.store.posting_hold();
        gridsync_model::api::PostingView {
            accepting: hold.is_none() && state.store.health().is_ok(),
            hold: hold.map(|h| gridsync_model::api::HoldView {
                code: h.code,
                message: h.message,
                since: fmt(h.since_ms),
            }),
        }
    });
    Ok(StatusResponse {
        posting,
        children_status,
        parent_link,
        equivocations,
        node: state.config.id.clone(),
        name: node.map(|n| n.name.clone()).unwrap_or_default(),
        role: if state.is_origin {
            "community"
        } else {
            "aggregator"
        }
        .to_owned(),
        token_role: role.as_str().to_owned(),
        parent: node.and_then(|n| n.parent.clone()),
        children: state.topology.children(&state.config.id).to_vec(),
        heads,
        log: LogStats {
            chunks: counts.chunks,
            events: counts.events,
        },
    })
}
