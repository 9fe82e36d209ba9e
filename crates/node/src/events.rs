//! `POST /v1/events` (ingest at a community) and `GET /v1/events` (the
//! log as JSON pages, for auditors).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridsync_model::api::{self, AppendedEvent, EventView, EventsPage, PostEventsResponse};
use gridsync_model::ingest::{self, IngestContext, TargetInfo};
use gridsync_model::kinds::EventRef;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;
use crate::state::NodeState;
use gridsync_deploy::tokens::Role;

pub(crate) async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PostEventsResponse>, ApiError> {
    state.authorize(&headers, &[Role::Reporter])?;
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
pub(crate) struct EventsQuery {
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

pub(crate) async fn get_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, &[Role::Auditor])?;
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
