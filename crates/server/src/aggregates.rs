//! The aggregates API (`/v1/aggregates` and its SSE stream) and the task
//! that keeps the node's projection (`projector.rs`) up to date.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use gridsync_deploy::tokens::Role;
use gridsync_projections::rollup::{self, AggregatesResponse, RangeQuery};
use serde::Deserialize;
use tokio::sync::watch;

use gridsync_node::error::ApiError;
use gridsync_node::state::NodeState;

/// Keeps the projection up to date with the log: woken by every commit
/// (once the start's fold, if it left any, is done).
/// Saves it beside the log at most every `projections.snapshot_interval_s`,
/// and once more when the node stops.
pub async fn run_projector(state: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut committed = state.store.subscribe();
    let interval = Duration::from_secs(state.config.projections.snapshot_interval_s);
    loop {
        // While the start's fold is pending its own thread folds the log
        // (`Projector::finish_start`, run before the whole-log check).
        if !state.projector.start_pending() {
            let s = state.clone();
            let r = tokio::task::spawn_blocking(move || {
                let r = s.projector.catch_up(&s.store);
                s.projector.save_if_due(&s.store, interval, false);
                r
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "projection could not advance");
            }
        }
        tokio::select! {
            c = committed.changed() => if c.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        // A start's fold still pending stops at its next page: what it
        // folded is saved (the next start resumes from it), not finished
        // here.
        if s.projector.start_pending() || s.projector.catch_up(&s.store).is_ok() {
            s.projector.save_if_due(&s.store, interval, true);
        }
    })
    .await;
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

impl AggregatesQuery {
    /// The question without the token.
    pub fn range(&self) -> RangeQuery {
        RangeQuery {
            node: self.node.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            depth: self.depth,
            days: self.days,
        }
    }
}

/// Computes the aggregates answer.
///
/// # Errors
/// Unknown node, a node outside this node's subtree, bad dates.
pub fn aggregates(state: &NodeState, q: &AggregatesQuery) -> Result<AggregatesResponse, ApiError> {
    let p = state.projector.projection.read().expect("lock");
    Ok(rollup::answer(
        &state.topology,
        &state.config.id,
        &p,
        &q.range(),
        state.now_ms(),
        state.config.projections.query_days_max,
    )?)
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
    gridsync_node::auth::authorize_with(
        &state.tokens,
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
    gridsync_node::auth::authorize_with(
        &state.tokens,
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
