//! The `/v1` HTTP API: the one place its routes are composed, admission
//! control (limits, timeouts, per-token slots, metrics), and the small
//! handlers (dashboard, health, metrics). `router(state)` is separate from
//! serving so tests can drive it without a socket; the events and status
//! handlers live in `events.rs` and `status.rs`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use gridsync_deploy::tokens::Role;
use gridsync_node::error::ApiError;

use gridsync_node::slots::Slot;

pub use gridsync_node::state::AppState;

/// The whole HTTP surface of a node.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    Router::new()
        .route(
            "/v1/events",
            post(crate::events::post_events).get(crate::events::get_events),
        )
        .route("/v1/status", get(crate::status::status))
        .route("/v1/sync", get(gridsync_node::sync::sync_endpoint))
        .route("/v1/sync/nudge", post(gridsync_node::sync::nudge_endpoint))
        .route("/v1/aggregates", get(crate::aggregates::get_aggregates))
        .route(
            "/v1/aggregates/stream",
            get(crate::aggregates::stream_aggregates),
        )
        .route("/healthz", get(healthz))
        .route("/", get(dashboard_page))
        .route("/assets/{file}", get(dashboard_asset))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.body_bytes_max))
        .layer(middleware::from_fn_with_state(
            (state.clone(), Arc::new(HttpMetrics::new(&state.config.id))),
            admission,
        ))
        .with_state(state)
}

/// The routes requests are counted by; the last stands for any other path.
const ROUTES: [&str; 9] = [
    "/v1/events",
    "/v1/status",
    "/v1/sync",
    "/v1/sync/nudge",
    "/v1/aggregates",
    "/v1/aggregates/stream",
    "/healthz",
    "/metrics",
    "other",
];

/// The request metrics' handles, looked up in the recorder once per route
/// and status instead of with three new label strings every request.
struct HttpMetrics {
    node: String,
    requests: std::sync::Mutex<HashMap<(usize, u16), metrics::Counter>>,
    seconds: [OnceLock<metrics::Histogram>; ROUTES.len()],
}

impl HttpMetrics {
    fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            requests: std::sync::Mutex::default(),
            seconds: Default::default(),
        }
    }

    /// `gridsync_http_requests_total{node, route, status}` + 1.
    fn count(&self, route: usize, status: StatusCode) {
        let status = status.as_u16();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests
            .entry((route, status))
            .or_insert_with(|| {
                let labels = [
                    ("node", self.node.clone()),
                    ("route", ROUTES[route].to_owned()),
                    ("status", status.to_string()),
                ];
                metrics::counter!("gridsync_http_requests_total", &labels)
            })
            .increment(1);
    }

    /// `gridsync_http_request_seconds{node, route}`.
    fn record(&self, route: usize, started: Instant) {
        self.seconds[route]
            .get_or_init(|| {
                metrics::histogram!("gridsync_http_request_seconds", "node" => self.node.clone(), "route" => ROUTES[route])
            })
            .record(started.elapsed().as_secs_f64());
    }
}

/// Bounds concurrent requests (a semaphore permit per request), applies the
/// request timeout, and counts requests by route and status.
async fn admission(
    State((state, m)): State<(AppState, Arc<HttpMetrics>)>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let path = req.uri().path();
    let route = ROUTES[..ROUTES.len() - 1]
        .iter()
        .position(|r| *r == path)
        .unwrap_or(ROUTES.len() - 1);
    let _token_slot = match screen(&state, &req, ROUTES[route]) {
        Ok(slot) => slot,
        Err(e) => {
            let resp = e.into_response();
            m.count(route, resp.status());
            return resp;
        }
    };
    let Ok(_permit) = state.http_permits.acquire().await else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        )
        .into_response();
    };
    let timeout = std::time::Duration::from_secs(state.config.limits.request_timeout_s);
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request took too long; retry it (event posts are idempotent by client_id)",
        )
        .into_response(),
    };
    m.count(route, resp.status());
    m.record(route, started);
    resp
}

/// What is refused from the headers alone, before a permit is taken or a
/// byte of the body read; otherwise the request's per-token slot.
fn screen(state: &AppState, req: &Request, route: &str) -> Result<Option<Slot<usize>>, ApiError> {
    // A body announced as too large is refused before a byte of it is read.
    let limit = state.config.limits.body_bytes_max;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over {limit} bytes; send fewer events per request"),
        ));
    }
    // The token is looked up once here (a digest of it), for both uses.
    let found = gridsync_node::auth::bearer(req.headers()).and_then(|t| state.tokens.token_of(t));
    // A body is read only for a client that may post one: a stranger
    // cannot make the node buffer megabytes.
    if req.method() == axum::http::Method::POST && route == "/v1/events" {
        gridsync_node::auth::allow(found.map(|(role, _)| role), &[Role::Reporter])?;
    }
    // One token may not hold every request slot.
    let Some((_, token)) = found else {
        return Ok(None);
    };
    let max = state.config.limits.requests_per_token_max;
    match state.token_slots.try_take(token, max) {
        Some(slot) => Ok(Some(slot)),
        None => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "this token already has {max} requests in flight \
                 (limits.requests_per_token_max); retry when they are answered"
            ),
        )),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /v1 (see README)",
    )
}

/// The leadership dashboard shell. It holds no data: every number comes
/// from the token-protected API.
async fn dashboard_page() -> Response {
    let mut resp = DASHBOARD_HTML.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../assets/vendor/uplot/uPlot.min.css"),
    ),
];

async fn dashboard_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, body)) => {
            let mut resp = (*body).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            resp
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.authorize(&headers, &Role::ALL)?;
    if let Some((held, file)) = state.store.body_reads() {
        let node = state.config.id.clone();
        metrics::counter!("gridsync_log_body_reads_total", "node" => node.clone(), "from" => "memory")
            .absolute(held);
        metrics::counter!("gridsync_log_body_reads_total", "node" => node, "from" => "file")
            .absolute(file);
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
