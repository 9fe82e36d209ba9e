//! `GET /v1/status`: heads, log, links, equivocations, posting hold.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use gridsync_model::api::{self, ChildStatus, HeadView, LogStats, StatusResponse};
use gridsync_store::HeadState;

use gridsync_deploy::tokens::Role;
use gridsync_node::error::ApiError;
use gridsync_node::state::AppState;
use gridsync_node::state::NodeState;

/// Equivocation records listed by `/v1/status` at most.
const EVIDENCE_LISTED_MAX: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusQuery {
    /// Leave out `heads`, `children_status` and `parent_link.acked`.
    #[serde(default)]
    brief: bool,
}

pub(crate) async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let role = state.authorize(&headers, &Role::ALL)?;
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("{}; the one parameter is brief=true|false", e.body_text()),
        )
    })?;
    // A scan of every origin's head and link (the brief view still sums
    // the parent link's lag over them): off the async workers.
    let view = tokio::task::spawn_blocking(move || status_view(&state, role, q.brief))
        .await
        .map_err(|e| ApiError::internal("status task failed", &e))??;
    Ok(Json(view))
}

/// The body of `GET /v1/status`; `brief` leaves out the heads and the
/// children's links.
///
/// # Errors
/// Storage errors reading the evidence table.
pub fn status_view(state: &NodeState, role: Role, brief: bool) -> Result<StatusResponse, ApiError> {
    let node = state.topology.node(&state.config.id);
    let ours = state.store.heads();
    // Read before the counts, which only grow: never more than `chunks`.
    let projected_chunks = *state.projector.applied.borrow();
    let counts = state.store.counts();
    let equivocations = state
        .store
        .evidence(EVIDENCE_LISTED_MAX)
        .map_err(ApiError::from)?
        .into_iter()
        .map(|(origin, seq, at)| api::EquivocationView {
            origin,
            seq,
            detected_at: fmt(at),
        })
        .collect();
    Ok(StatusResponse {
        posting: posting_view(state),
        children_status: (!brief).then(|| children_status(state, &ours)),
        parent_link: node
            .and_then(|n| n.parent.clone())
            .map(|parent| parent_link_view(state, parent, &ours, brief)),
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
        heads: (!brief).then(|| {
            ours.iter()
                .map(|(o, h)| (o.clone(), head_view(h)))
                .collect()
        }),
        log: LogStats {
            chunks: counts.chunks,
            events: counts.events,
            projected_chunks,
        },
    })
}

fn fmt(ms: i64) -> String {
    gridsync_model::time_fmt::format_rfc3339_ms(ms, 0)
}

fn head_view(h: &HeadState) -> HeadView {
    HeadView {
        seq: h.seq,
        hash: hex::encode(h.hash),
        signed_at: fmt(h.signed.signed_at_ms),
        signed_at_ms: h.signed.signed_at_ms,
        signature: hex::encode(h.signed.signature),
        after: h.signed.after.map(hex::encode),
    }
}

/// Each child of the topology: its link, and how far behind this node is
/// of what the child says it holds.
fn children_status(state: &NodeState, ours: &BTreeMap<String, HeadState>) -> Vec<ChildStatus> {
    let now = state.now_ms();
    let links = state.sync.children.lock().expect("lock").clone();
    let child_status = |id: &String| {
        let link = links.get(id).cloned().unwrap_or_default();
        let heads: BTreeMap<String, u64> = link
            .lag
            .values()
            .map(|l| (l.origin.clone(), l.seq))
            .collect();
        let mut lag_events = 0;
        let mut oldest: Option<i64> = None;
        for l in link.lag.values() {
            let have = ours.get(&l.origin).map_or(0, |h| h.seq);
            if l.seq > have {
                lag_events += l.seq - have;
                if let Some(t) = l.oldest_missing_ms {
                    oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
                }
            }
        }
        ChildStatus {
            id: id.clone(),
            connected: link.connected,
            last_contact: link.last_contact_ms.map(fmt),
            heads,
            lag_events,
            lag_seconds: oldest.map(|t| (now - t).max(0) as f64 / 1000.0),
        }
    };
    let children = state.topology.children(&state.config.id);
    children.iter().map(child_status).collect()
}

/// The link up: what the parent acknowledged and what it still lacks.
fn parent_link_view(
    state: &NodeState,
    parent: String,
    ours: &BTreeMap<String, HeadState>,
    brief: bool,
) -> api::ParentLinkView {
    let link = state.sync.parent.lock().expect("lock").clone();
    // Origins no longer below this node (moved away) are not owed upward:
    // their new parent forwards them.
    let mine: BTreeSet<String> = state
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
    let blocked = link
        .blocked
        .iter()
        .map(|(origin, b)| api::BlockedOriginView {
            origin: origin.clone(),
            code: b.code.clone(),
            message: b.message.clone(),
            since: fmt(b.since_ms),
        });
    api::ParentLinkView {
        parent,
        connected: link.connected,
        last_ack: link.last_ack_ms.map(fmt),
        lag_events,
        connects: link.connects,
        last_error: link.last_error.clone(),
        blocked: blocked.collect(),
        acked: (!brief).then_some(link.acked),
    }
}

/// A community's posting state: taking events, or held and why.
fn posting_view(state: &NodeState) -> Option<api::PostingView> {
    state.is_origin.then(|| {
        let hold = state.store.posting_hold();
        api::PostingView {
            accepting: hold.is_none() && state.store.health().is_ok(),
            hold: hold.map(|h| api::HoldView {
                code: h.code,
                message: h.message,
                since: fmt(h.since_ms),
            }),
        }
    })
}
