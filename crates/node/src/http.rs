//! The `/v1` HTTP API. `router(state)` is separate from serving so tests can
//! drive it without a socket.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gridsync_model::api::{
    self, AppendedEvent, EventView, EventsPage, HeadView, LogStats, PostEventsResponse,
    StatusResponse,
};
use gridsync_model::ingest::{self, IngestContext, TargetInfo};
use gridsync_model::kinds::EventRef;
use serde::Deserialize;

use crate::auth::{role_of, Role};
use crate::error::ApiError;
use crate::node::NodeState;

pub type AppState = Arc<NodeState>;

/// The whole HTTP surface of a node.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    Router::new()
        .route("/v1/events", post(post_events).get(get_events))
        .route("/v1/status", get(status))
        .route("/v1/sync", get(crate::sync::sync_endpoint))
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
        .layer(middleware::from_fn_with_state(state.clone(), admission))
        .with_state(state)
}

/// Bounds concurrent requests (a semaphore permit per request), applies the
/// request timeout, and counts requests by route and status.
async fn admission(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route: &'static str = match req.uri().path() {
        "/v1/events" => "/v1/events",
        "/v1/status" => "/v1/status",
        "/v1/sync" => "/v1/sync",
        "/v1/aggregates" => "/v1/aggregates",
        "/v1/aggregates/stream" => "/v1/aggregates/stream",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    // A body announced as too large is refused before a byte of it is read.
    let limit = state.config.limits.body_bytes_max;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        metrics::counter!("gridsync_http_requests_total", "node" => state.config.id.clone(), "route" => route, "status" => "413")
            .increment(1);
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over {limit} bytes; send fewer events per request"),
        )
        .into_response();
    }
    // A body is read only for a client that may post one: an unknown token
    // is answered from the headers, before a permit is taken or a byte of
    // the body read (a stranger cannot make the node buffer megabytes).
    if req.method() == axum::http::Method::POST && route == "/v1/events" {
        if let Err(e) = authorize(&state, req.headers(), &[Role::Reporter]) {
            let resp = e.into_response();
            metrics::counter!("gridsync_http_requests_total", "node" => state.config.id.clone(), "route" => route, "status" => resp.status().as_u16().to_string())
                .increment(1);
            return resp;
        }
    }
    // One token may not hold every request slot.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let _token_slot = match bearer.and_then(|t| crate::auth::token_of(&state.config.token, t)) {
        Some((_, token)) => {
            let max = state.config.limits.requests_per_token_max;
            let Some(slot) = state.token_slots.try_take(token, max) else {
                metrics::counter!("gridsync_http_requests_total", "node" => state.config.id.clone(), "route" => route, "status" => "429")
                    .increment(1);
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    format!(
                        "this token already has {max} requests in flight \
                         (limits.requests_per_token_max); retry when they are answered"
                    ),
                )
                .into_response();
            };
            Some(slot)
        }
        None => None,
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
    let labels = [
        ("node", state.config.id.clone()),
        ("route", route.to_owned()),
        ("status", resp.status().as_u16().to_string()),
    ];
    metrics::counter!("gridsync_http_requests_total", &labels).increment(1);
    metrics::histogram!("gridsync_http_request_seconds", "node" => state.config.id.clone(), "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /v1 (see README)",
    )
}

/// The role of the bearer token, if it is one of `allowed`.
fn authorize(state: &NodeState, headers: &HeaderMap, allowed: &[Role]) -> Result<Role, ApiError> {
    authorize_with(state, headers, None, allowed)
}

/// Like [`authorize`], also accepting the token as a `token=` query
/// parameter (for links and `EventSource`, which cannot set headers). Only
/// read-only endpoints take it.
pub fn authorize_with(
    state: &NodeState,
    headers: &HeaderMap,
    query_token: Option<&str>,
    allowed: &[Role],
) -> Result<Role, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
        .ok_or_else(ApiError::unauthorized)?;
    let role = role_of(&state.config.token, token).ok_or_else(ApiError::unauthorized)?;
    if role == Role::Admin || allowed.contains(&role) {
        return Ok(role);
    }
    let needs: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(ApiError::forbidden(
        role.as_str(),
        &format!("one of: {}, admin", needs.join(", ")),
    ))
}

async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PostEventsResponse>, ApiError> {
    authorize(&state, &headers, &[Role::Reporter])?;
    if !state.is_origin {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_an_origin",
            format!(
                "node {} is an aggregator (it has children); post events to a community node",
                state.config.id
            ),
        ));
    }
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is over {} bytes; send fewer events per request",
                    state.config.limits.body_bytes_max
                ),
            )
        } else {
            ApiError::bad_request("unreadable_body", rej.body_text())
        }
    })?;
    let now_ms = state.now_ms();
    let st = state.clone();
    // Validation is CPU work (JSON Schema, canonical encoding): keep it off
    // the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        let values = ingest::parse_body(&body, &st.ingest_limits)?;
        let ctx = IngestContext {
            node_id: &st.config.id,
            now_ms,
            limits: &st.ingest_limits,
        };
        let lookup = |r: &EventRef| -> Option<TargetInfo> {
            st.store
                .find_event(r)
                .ok()
                .flatten()
                .map(|(e, _)| TargetInfo {
                    kind: e.envelope.kind,
                    schema: e.envelope.schema,
                })
        };
        let mut rng = rand::rngs::OsRng;
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            out.push(
                ingest::prepare(v, &ctx, &lookup, &mut rng).map_err(|mut e| {
                    e.index = Some(i);
                    e
                })?,
            );
        }
        Ok::<_, ingest::IngestError>(out)
    })
    .await
    .map_err(|e| ApiError::internal("validation task failed", &e))??;
    let results = state.store.append(prepared, now_ms).await?;
    Ok(Json(PostEventsResponse {
        results: results
            .into_iter()
            .map(|a| AppendedEvent {
                origin: a.origin,
                seq: a.seq,
                hash: hex::encode(a.hash),
                duplicate: a.duplicate,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    origin: Option<String>,
    after_seq: Option<u64>,
    limit: Option<usize>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    personal: Option<String>,
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Log order: entry offset and event index within it.
    Log { offset: u64, index: usize },
    /// One origin: seqs after this one.
    Seq(u64),
}

impl Cursor {
    fn parse(s: &str) -> Option<Self> {
        if let Some(rest) = s.strip_prefix('l') {
            let (o, i) = rest.split_once('.')?;
            return Some(Cursor::Log {
                offset: o.parse().ok()?,
                index: i.parse().ok()?,
            });
        }
        s.strip_prefix('s')?.parse().ok().map(Cursor::Seq)
    }

    fn render(self) -> String {
        match self {
            Cursor::Log { offset, index } => format!("l{offset}.{index}"),
            Cursor::Seq(s) => format!("s{s}"),
        }
    }
}

/// Filters of one events query, parsed.
struct EventFilter {
    kind: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    include_personal: bool,
}

impl EventFilter {
    fn keep(&self, e: &gridsync_model::Envelope) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == e.kind)
            && self.from_ms.is_none_or(|f| e.occurred_at.unix_ms >= f)
            && self.to_ms.is_none_or(|t| e.occurred_at.unix_ms < t)
    }
}

/// Events looked at per request at most, matching or not, so a sparse
/// filter over a long log answers with a cursor instead of scanning it all.
const EVENTS_SCANNED_MAX: usize = 200_000;

async fn get_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &[Role::Auditor])?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    let page_max = state.config.limits.page_events_max;
    if limit == 0 || limit > page_max {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {page_max}"),
        ));
    }
    let parse_time = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                gridsync_model::time_fmt::parse_rfc3339_ms(s)
                    .map(|(ms, _)| ms)
                    .map_err(|m| ApiError::bad_request("invalid_query", format!("{name}: {m}")))
            })
            .transpose()
    };
    let include_personal = match q.personal.as_deref() {
        None | Some("withhold") => false,
        Some("include") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("personal={other:?}: use include or withhold"),
            ))
        }
    };
    let filter = EventFilter {
        kind: q.kind.clone(),
        from_ms: parse_time("from", &q.from)?,
        to_ms: parse_time("to", &q.to)?,
        include_personal,
    };
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(Cursor::parse(c).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("cursor {c:?} is not one this node issued"),
            )
        })?),
    };
    let start = match (&q.origin, q.after_seq, cursor) {
        (None, Some(_), _) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "after_seq needs origin (seqs are per origin)",
            ))
        }
        (Some(_), after, Some(Cursor::Seq(s))) => Cursor::Seq(s.max(after.unwrap_or(0))),
        (Some(_), after, None) => Cursor::Seq(after.unwrap_or(0)),
        (None, None, Some(c @ Cursor::Log { .. })) => c,
        (None, None, None) => Cursor::Log {
            offset: 0,
            index: 0,
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "cursor does not fit this query; repeat the query that issued it",
            ))
        }
    };
    let jsonl = q.format.as_deref() == Some("jsonl")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-ndjson"));
    if let Some(f) = q.format.as_deref() {
        if f != "jsonl" && f != "json" {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("format={f:?}: use json or jsonl"),
            ));
        }
    }
    let st = state.clone();
    let origin = q.origin.clone();
    let (events, next) = tokio::task::spawn_blocking(move || {
        read_events(&st, origin.as_deref(), start, limit, &filter)
    })
    .await
    .map_err(|e| ApiError::internal("read task failed", &e))??;
    if jsonl {
        let mut body = Vec::with_capacity(events.len() * 400);
        for e in &events {
            serde_json::to_writer(&mut body, e).map_err(|e| ApiError::internal("encode", &e))?;
            body.push(b'\n');
        }
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if let Some(n) = &next {
            if let Ok(v) = HeaderValue::from_str(n) {
                resp.headers_mut().insert("x-next-cursor", v);
            }
        }
        return Ok(resp);
    }
    Ok(Json(EventsPage { events, next }).into_response())
}

fn read_events(
    state: &NodeState,
    origin: Option<&str>,
    start: Cursor,
    limit: usize,
    filter: &EventFilter,
) -> Result<(Vec<EventView>, Option<String>), ApiError> {
    let mut out = Vec::new();
    let mut scanned = 0usize;
    match (origin, start) {
        (Some(origin), Cursor::Seq(after)) => {
            let mut after = after;
            let head = state.store.head(origin).map_or(0, |h| h.seq);
            loop {
                let chunks = state.store.read_origin(origin, after, 64)?;
                if chunks.is_empty() {
                    return Ok((out, None));
                }
                for sc in chunks {
                    let verified = sc
                        .chunk
                        .decode_events()
                        .map_err(|e| ApiError::internal("decode", &e))?;
                    for (ev, rec) in verified.iter().zip(&sc.chunk.events) {
                        if ev.envelope.seq <= after {
                            continue;
                        }
                        scanned += 1;
                        after = ev.envelope.seq;
                        if filter.keep(&ev.envelope) {
                            out.push(api::event_view(ev, rec, filter.include_personal));
                        }
                        if out.len() >= limit || scanned >= EVENTS_SCANNED_MAX {
                            let next = (after < head).then(|| Cursor::Seq(after).render());
                            return Ok((out, next));
                        }
                    }
                }
            }
        }
        (None, Cursor::Log { mut offset, index }) => {
            let mut skip = index;
            loop {
                let chunks = state.store.read_log(offset, 64)?;
                if chunks.is_empty() {
                    return Ok((out, None));
                }
                for sc in chunks {
                    let verified = sc
                        .chunk
                        .decode_events()
                        .map_err(|e| ApiError::internal("decode", &e))?;
                    let n = verified.len();
                    for (i, (ev, rec)) in
                        verified.iter().zip(&sc.chunk.events).enumerate().skip(skip)
                    {
                        scanned += 1;
                        if filter.keep(&ev.envelope) {
                            out.push(api::event_view(ev, rec, filter.include_personal));
                        }
                        if out.len() >= limit || scanned >= EVENTS_SCANNED_MAX {
                            let next = if i + 1 < n {
                                Cursor::Log {
                                    offset: sc.offset,
                                    index: i + 1,
                                }
                            } else {
                                Cursor::Log {
                                    offset: sc.offset + 1,
                                    index: 0,
                                }
                            };
                            let more = i + 1 < n || sc.offset + 1 < state.store.counts().chunks;
                            return Ok((out, more.then(|| next.render())));
                        }
                    }
                    skip = 0;
                    offset = sc.offset + 1;
                }
            }
        }
        _ => unreachable!("start cursor matches the query kind"),
    }
}

/// Equivocation records listed by `/v1/status` at most.
const EVIDENCE_LISTED_MAX: usize = 1000;

async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusResponse>, ApiError> {
    let role = authorize(&state, &headers, &Role::ALL)?;
    Ok(Json(status_view(&state, role)?))
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
    authorize(&state, &headers, &Role::ALL)?;
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
