//! The aggregates API (`/v1/aggregates` and its SSE stream) and the task
//! that keeps the node's projection (`projector.rs`) up to date.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use gridsync_projections::{format_day, parse_day, Counts, Day, Projection, METRICS};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::Role;
use crate::error::ApiError;
use crate::state::NodeState;
use crate::topology::Topology;

pub use crate::projector::{fold_as_of, Projector};

/// Keeps the projection up to date with the log: woken by every commit.
pub async fn run_projector(state: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut committed = state.store.subscribe();
    loop {
        let s = state.clone();
        let r = tokio::task::spawn_blocking(move || s.projector.catch_up(&s.store)).await;
        if let Ok(Err(e)) = r {
            tracing::error!(error = %e, "projection could not advance");
        }
        tokio::select! {
            c = committed.changed() => if c.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatesQuery {
    pub node: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Levels of children to include (1 = direct children; at most 3).
    pub depth: Option<u8>,
    /// Without `from`: the last `days` days up to `to` (default 1).
    pub days: Option<i32>,
    /// Only `/v1/aggregates/stream` takes it (EventSource cannot set a
    /// header); elsewhere it is refused.
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayMetrics {
    pub date: String,
    pub metrics: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAggregates {
    pub node: String,
    pub name: String,
    pub days: Vec<DayMetrics>,
    /// Flow metrics summed over the range; `households_quarantined` (a
    /// state) as of the last day; `households_visited` summed per day.
    pub totals: BTreeMap<String, i64>,
    /// With `depth` > 1: this node's children, the same way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<NodeAggregates>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub origin: String,
    pub name: String,
    /// Highest seq of the origin the numbers include.
    pub seq: u64,
    /// Seconds since the newest included event was recorded at its origin.
    pub newest_event_age_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregatesResponse {
    pub node: String,
    pub name: String,
    pub timezone: String,
    pub from: String,
    pub to: String,
    pub days: Vec<DayMetrics>,
    pub totals: BTreeMap<String, i64>,
    pub children: Vec<NodeAggregates>,
    pub coverage: Vec<Coverage>,
    /// Digest of every number above for this node (see `audit project`).
    pub state_hash: String,
}

fn to_map(c: &Counts) -> BTreeMap<String, i64> {
    METRICS
        .iter()
        .zip(c)
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect()
}

fn node_aggregates(
    topo: &Topology,
    p: &Projection,
    node: &str,
    from: Day,
    to: Day,
) -> (NodeAggregates, Vec<String>) {
    let origins: Vec<String> = topo
        .subtree(node)
        .into_iter()
        .filter(|o| topo.is_origin(o))
        .collect();
    let rows = p.query(&origins, from, to);
    let mut totals: Counts = [0; 16];
    for (_, c) in &rows {
        for (i, v) in c.iter().enumerate() {
            totals[i] += v;
        }
    }
    if let Some((_, last)) = rows.last() {
        totals[gridsync_projections::HOUSEHOLDS_QUARANTINED] =
            last[gridsync_projections::HOUSEHOLDS_QUARANTINED];
    }
    let agg = NodeAggregates {
        node: node.to_owned(),
        name: topo.node(node).map(|n| n.name.clone()).unwrap_or_default(),
        days: rows
            .iter()
            .map(|(d, c)| DayMetrics {
                date: format_day(*d),
                metrics: to_map(c),
            })
            .collect(),
        totals: to_map(&totals),
        children: Vec::new(),
    };
    (agg, origins)
}

fn children_of(
    topo: &Topology,
    p: &Projection,
    node: &str,
    from: Day,
    to: Day,
    depth: u8,
) -> Vec<NodeAggregates> {
    topo.children(node)
        .iter()
        .map(|c| {
            let mut a = node_aggregates(topo, p, c, from, to).0;
            if depth > 1 {
                a.children = children_of(topo, p, c, from, to, depth - 1);
            }
            a
        })
        .collect()
}

/// Computes the aggregates answer.
///
/// # Errors
/// Unknown node, a node outside this node's subtree, bad dates.
pub fn aggregates(state: &NodeState, q: &AggregatesQuery) -> Result<AggregatesResponse, ApiError> {
    let p = state.projector.projection.read().expect("lock");
    answer(
        &state.topology,
        &state.config.id,
        &p,
        q,
        state.now_ms(),
        state.config.projections.query_days_max,
    )
}

/// The aggregates answer from any projection (a node's live one, or one an
/// auditor folded as of some moment): `root` is the node asking, `now_ms`
/// what "today" and ages are measured against.
///
/// # Errors
/// Unknown node, a node outside `root`'s subtree, bad dates.
pub fn answer(
    topo: &Topology,
    root: &str,
    p: &Projection,
    q: &AggregatesQuery,
    now_ms: i64,
    days_max: i32,
) -> Result<AggregatesResponse, ApiError> {
    let node = q.node.clone().unwrap_or_else(|| root.to_owned());
    if topo.node(&node).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("node {node:?} is not in the topology"),
        ));
    }
    if !topo.subtree(root).contains(&node) {
        return Err(ApiError::bad_request(
            "outside_subtree",
            format!(
                "node {node} is not in the subtree of {}; ask a node above it",
                root
            ),
        ));
    }
    let today = p.config().day_of(now_ms);
    let parse = |name: &str, v: &Option<String>| -> Result<Day, ApiError> {
        v.as_deref()
            .map(|s| {
                parse_day(s)
                    .map_err(|m| ApiError::bad_request("invalid_query", format!("{name}: {m}")))
            })
            .transpose()
            .map(|d| d.unwrap_or(today))
    };
    let to = parse("to", &q.to)?;
    let from = match (&q.from, q.days) {
        (Some(_), _) => parse("from", &q.from)?,
        (None, Some(n)) if n >= 1 => to.saturating_sub(n - 1),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "days must be at least 1",
            ))
        }
        (None, None) => to,
    };
    if from > to || to.saturating_sub(from) >= days_max {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("from must not be after to, and the range may span at most {days_max} days"),
        ));
    }
    let (me, origins) = node_aggregates(topo, p, &node, from, to);
    let depth = q.depth.unwrap_or(1).clamp(1, 3);
    let children = children_of(topo, p, &node, from, to, depth);
    let now = now_ms;
    let cov = p.coverage();
    let coverage = origins
        .iter()
        .map(|o| {
            let (seq, newest) = cov.get(o).copied().unwrap_or((0, 0));
            Coverage {
                origin: o.clone(),
                name: topo.node(o).map(|n| n.name.clone()).unwrap_or_default(),
                seq,
                newest_event_age_s: (seq > 0).then(|| (now - newest).max(0) as f64 / 1000.0),
            }
        })
        .collect();
    let state_hash = p.state_hash(&origins, from, to);
    Ok(AggregatesResponse {
        name: me.name.clone(),
        node: me.node,
        timezone: topo.timezone.clone(),
        from: format_day(from),
        to: format_day(to),
        days: me.days,
        totals: me.totals,
        children,
        coverage,
        state_hash,
    })
}

pub async fn get_aggregates(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    query: Result<Query<AggregatesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AggregatesResponse>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if q.token.is_some() {
        // A token in a URL lands in histories, proxies and logs: only the
        // stream takes one (EventSource cannot set a header).
        return Err(ApiError::bad_request(
            "invalid_query",
            "send the token as `Authorization: Bearer <token>`; only /v1/aggregates/stream (for EventSource) takes ?token=",
        ));
    }
    crate::auth::authorize_with(
        &state.config.token,
        &headers,
        None,
        &[Role::Viewer, Role::Auditor],
    )?;
    // Rolling up many origins over many days is CPU work: off the async
    // workers.
    let answer = tokio::task::spawn_blocking(move || aggregates(&state, &q))
        .await
        .map_err(|e| ApiError::internal("aggregates task failed", &e))??;
    Ok(Json(answer))
}

/// `GET /v1/aggregates/stream`: server-sent events, one `aggregates` event
/// with the full answer now and after every change (at most every 500 ms).
pub async fn stream_aggregates(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    query: Result<Query<AggregatesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    crate::auth::authorize_with(
        &state.config.token,
        &headers,
        q.token.as_deref(),
        &[Role::Viewer, Role::Auditor],
    )?;
    aggregates(&state, &q)?; // refuse a bad query up front
    let mut applied = state.projector.applied.subscribe();
    let mut stop = state.sync.stop.subscribe();
    let stream = async_stream_from(move |tx: tokio::sync::mpsc::Sender<Event>| async move {
        loop {
            let answer = aggregates(&state, &q).ok();
            let body = serde_json::json!({"applied": *state.projector.applied.borrow(), "aggregates": answer});
            if tx
                .send(Event::default().event("aggregates").data(body.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                c = applied.changed() => if c.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.changed() => return,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A stream fed by a task through a bounded channel (one event buffered).
fn async_stream_from<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
