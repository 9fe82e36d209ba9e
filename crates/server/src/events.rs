//! `POST /v1/events` (ingest at a community) and `GET /v1/events` (the
//! log as JSON pages, for auditors).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridsync_model::api::{self, EventView, EventsPage};
use gridsync_model::ingest::{self, IngestContext, TargetInfo};
use gridsync_model::kinds::EventRef;
use serde::Deserialize;

use gridsync_deploy::tokens::Role;
use gridsync_node::error::ApiError;
use gridsync_node::state::AppState;
use gridsync_node::state::NodeState;

pub(crate) async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
    // Validation is CPU work (JSON Schema, canonical encoding): a batch
    // goes to the blocking pool; a phone's single event (tens of µs) is
    // prepared in place, where the hand-off would cost more than the work.
    let prepared = if body.len() <= INLINE_BODY_BYTES_MAX {
        prepare_body(&state, &body, now_ms)?
    } else {
        let st = state.clone();
        tokio::task::spawn_blocking(move || prepare_body(&st, &body, now_ms))
            .await
            .map_err(|e| ApiError::internal("validation task failed", &e))??
    };
    let results = state.store.append(prepared, now_ms).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        reply_json(&results),
    )
        .into_response())
}

/// The reply to a post: the bytes `serde_json` gives for its
/// [`PostEventsResponse`], written directly. Each event's origin (all the
/// node's own id) is escaped once, not once per event, and no hex string
/// is made for a hash: serde_json's string escaping and the per-event
/// strings were ~2 % of a node's CPU at batched ingest.
fn reply_json(results: &[gridsync_store::Appended]) -> Vec<u8> {
    // ~120 bytes an event with a short origin.
    let mut out = Vec::with_capacity(16 + results.len() * 128);
    out.extend_from_slice(br#"{"results":["#);
    let mut origin: Option<(&str, Vec<u8>)> = None;
    let mut seq = itoa::Buffer::new();
    for (i, a) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"origin":"#);
        match &origin {
            Some((o, json)) if *o == &*a.origin => out.extend_from_slice(json),
            _ => {
                let json = serde_json::to_vec(&*a.origin).expect("a string serialises");
                out.extend_from_slice(&json);
                origin = Some((&*a.origin, json));
            }
        }
        out.extend_from_slice(br#","seq":"#);
        out.extend_from_slice(seq.format(a.seq).as_bytes());
        out.extend_from_slice(br#","hash":""#);
        let mut hex = [0u8; 64];
        hex::encode_to_slice(a.hash, &mut hex).expect("64 bytes for 32");
        out.extend_from_slice(&hex);
        out.extend_from_slice(if a.duplicate {
            br#"","duplicate":true}"#
        } else {
            br#"","duplicate":false}"#
        });
    }
    out.extend_from_slice(b"]}");
    out
}

/// Bodies up to this size are validated on the async worker.
const INLINE_BODY_BYTES_MAX: usize = 4096;

/// Parses and validates a posted body into events ready for the log.
fn prepare_body(
    st: &NodeState,
    body: &[u8],
    now_ms: i64,
) -> Result<Vec<ingest::PreparedEvent>, ingest::IngestError> {
    let ctx = IngestContext {
        node_id: &st.config.id,
        now_ms,
        limits: &st.ingest_limits,
    };
    let lookup = |r: &EventRef| -> Option<TargetInfo> {
        st.store
            .kind_of(r)
            .ok()
            .flatten()
            .map(|(kind, schema)| TargetInfo { kind, schema })
    };
    // Salts from the thread's CSPRNG (ChaCha12, seeded and reseeded from
    // the OS), not a getrandom system call per event.
    ingest::prepare_body(body, &ctx, &lookup, &mut rand::thread_rng())
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
    let (filter, start, limit) = parse_events_query(&q, state.config.limits.page_events_max)?;
    let jsonl = match q.format.as_deref() {
        None | Some("json") => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-ndjson")),
        Some("jsonl") => true,
        Some(f) => {
            let m = format!("format={f:?}: use json or jsonl");
            return Err(ApiError::bad_request("invalid_query", m));
        }
    };
    let st = state.clone();
    let origin = q.origin.clone();
    let (events, next) = tokio::task::spawn_blocking(move || {
        let mut page = Page {
            out: Vec::new(),
            scanned: 0,
            limit,
            filter: &filter,
        };
        let next = match (origin.as_deref(), start) {
            (Some(origin), Cursor::Seq(after)) => page.read_origin(&st, origin, after)?,
            (None, Cursor::Log { offset, index }) => page.read_log(&st, offset, index)?,
            _ => unreachable!("start cursor matches the query kind"),
        };
        Ok::<_, ApiError>((page.out, next))
    })
    .await
    .map_err(|e| ApiError::internal("read task failed", &e))??;
    if !jsonl {
        return Ok(Json(EventsPage { events, next }).into_response());
    }
    let mut body = Vec::with_capacity(events.len() * 400);
    for e in &events {
        serde_json::to_writer(&mut body, e).map_err(|e| ApiError::internal("encode", &e))?;
        body.push(b'\n');
    }
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(v) = next.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
        h.insert("x-next-cursor", v);
    }
    Ok(resp)
}

/// The filter, where to start and how many events, from the query.
fn parse_events_query(
    q: &EventsQuery,
    page_max: usize,
) -> Result<(EventFilter, Cursor, usize), ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_query", m);
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > page_max {
        return Err(invalid(format!("limit must be 1 to {page_max}")));
    }
    let parse_time = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                gridsync_model::time_fmt::parse_rfc3339_ms(s)
                    .map(|(ms, _)| ms)
                    .map_err(|m| invalid(format!("{name}: {m}")))
            })
            .transpose()
    };
    let include_personal = match q.personal.as_deref() {
        None | Some("withhold") => false,
        Some("include") => true,
        Some(other) => {
            return Err(invalid(format!(
                "personal={other:?}: use include or withhold"
            )))
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
        Some(c) => Some(
            Cursor::parse(c)
                .ok_or_else(|| invalid(format!("cursor {c:?} is not one this node issued")))?,
        ),
    };
    let start = match (&q.origin, q.after_seq, cursor) {
        (None, Some(_), _) => {
            return Err(invalid(
                "after_seq needs origin (seqs are per origin)".into(),
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
            return Err(invalid(
                "cursor does not fit this query; repeat the query that issued it".into(),
            ))
        }
    };
    Ok((filter, start, limit))
}

/// A page of events being filled, by either cursor.
struct Page<'a> {
    out: Vec<EventView>,
    scanned: usize,
    limit: usize,
    filter: &'a EventFilter,
}

impl Page<'_> {
    /// Looks at one event; `true` once the page is full (or has looked at
    /// as many events as one request may).
    fn take(
        &mut self,
        ev: &gridsync_model::VerifiedEvent,
        rec: &gridsync_model::EventRecord,
    ) -> bool {
        self.scanned += 1;
        if self.filter.keep(&ev.envelope) {
            self.out
                .push(api::event_view(ev, rec, self.filter.include_personal));
        }
        self.out.len() >= self.limit || self.scanned >= EVENTS_SCANNED_MAX
    }

    /// One origin's events after seq `after`; returns the next cursor.
    fn read_origin(
        &mut self,
        state: &NodeState,
        origin: &str,
        mut after: u64,
    ) -> Result<Option<String>, ApiError> {
        let head = state.store.head(origin).map_or(0, |h| h.seq);
        loop {
            let chunks = state.store.read_origin(origin, after, 64)?;
            if chunks.is_empty() {
                return Ok(None);
            }
            for sc in chunks {
                let verified = decode(&sc.chunk)?;
                for (ev, rec) in verified.iter().zip(&sc.chunk.events) {
                    if ev.envelope.seq <= after {
                        continue;
                    }
                    after = ev.envelope.seq;
                    if self.take(ev, rec) {
                        return Ok((after < head).then(|| Cursor::Seq(after).render()));
                    }
                }
            }
        }
    }

    /// The log from entry `offset`, event `index` of it; returns the next
    /// cursor.
    fn read_log(
        &mut self,
        state: &NodeState,
        mut offset: u64,
        mut skip: usize,
    ) -> Result<Option<String>, ApiError> {
        loop {
            let chunks = state.store.read_log(offset, 64)?;
            if chunks.is_empty() {
                return Ok(None);
            }
            for sc in chunks {
                let verified = decode(&sc.chunk)?;
                let n = verified.len();
                let events = verified.iter().zip(&sc.chunk.events).enumerate();
                for (i, (ev, rec)) in events.skip(skip) {
                    if !self.take(ev, rec) {
                        continue;
                    }
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
                    return Ok(more.then(|| next.render()));
                }
                skip = 0;
                offset = sc.offset + 1;
            }
        }
    }
}

fn decode(chunk: &gridsync_model::Chunk) -> Result<Vec<gridsync_model::VerifiedEvent>, ApiError> {
    chunk
        .decode_events()
        .map_err(|e| ApiError::internal("decode", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridsync_model::api::{AppendedEvent, PostEventsResponse};
    use proptest::prelude::*;

    fn appended() -> impl Strategy<Value = gridsync_store::Appended> {
        // Origins with quotes, backslashes, control and non-ASCII
        // characters (which serde_json escapes or keeps), from a few so
        // consecutive results share one or differ.
        let origin = prop_oneof![
            Just("c1".to_string()),
            Just("社区-1".to_string()),
            "[a\\\"\\\\\u{0}-\u{1f}\u{7f}é中]{0,6}",
        ];
        (origin, any::<u64>(), any::<[u8; 32]>(), any::<bool>()).prop_map(
            |(origin, seq, hash, duplicate)| gridsync_store::Appended {
                origin: origin.into(),
                seq,
                hash,
                duplicate,
            },
        )
    }

    proptest! {
        /// The reply written by hand is, byte for byte, what serde_json
        /// writes for the API type (and so what clients parse).
        #[test]
        fn the_reply_is_what_serde_json_writes(results in proptest::collection::vec(appended(), 0..12)) {
            let want = serde_json::to_vec(&PostEventsResponse {
                results: results
                    .iter()
                    .map(|a| AppendedEvent {
                        origin: a.origin.to_string(),
                        seq: a.seq,
                        hash: gridsync_model::event::hash_hex(&a.hash),
                        duplicate: a.duplicate,
                    })
                    .collect(),
            })
            .unwrap();
            let got = reply_json(&results);
            prop_assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
        }
    }
}
