//! `audit replay --url`: a running node's log streamed over its API and
//! proved on this side — every chain gap-free from seq 1, linked, with each
//! event's hash recomputed from its fields, up to the origin's head, whose
//! signature is checked with the topology. The node is not trusted.

use std::collections::BTreeMap;

use gridsync_deploy::topology::Topology;
use gridsync_model::api::{EventView, EventsPage, PersonalState, StatusResponse};
use gridsync_model::event::{event_hash, split_personal, EnvelopeHeader};
use gridsync_model::time_fmt::parse_rfc3339_ms;
use gridsync_model::{OccurredAt, ZERO_HASH};

use crate::reference::ReferenceHead;
use crate::replay::EventFilter;

/// Events asked for per page.
const PAGE: u32 = 1000;

/// What a remote replay found.
#[derive(Debug, Default)]
pub struct RemoteReport {
    /// Each naming origin and seq.
    pub problems: Vec<String>,
    /// Whether the heads were checked against the origins' signatures (only
    /// with the topology; without it a node could serve a fabricated,
    /// self-consistent chain).
    pub heads_verified: bool,
}

/// Per origin, the chain as streamed so far (or a head).
#[derive(Clone, Debug, Default)]
struct Streamed {
    seq: u64,
    hash: String,
}

/// Streams `url`'s log, hands the events `filter` keeps to `sink` (which
/// returns `false` to stop), and checks every chain.
///
/// # Errors
/// The node could not be reached or answered something else than the API.
pub async fn replay_remote(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    filter: &EventFilter,
    with_personal: bool,
    topology: Option<&Topology>,
    sink: &mut dyn FnMut(&EventView) -> bool,
) -> Result<RemoteReport, String> {
    let status: StatusResponse = get_json(http, &format!("{url}/v1/status"), token).await?;
    let mut report = RemoteReport {
        heads_verified: topology.is_some(),
        ..RemoteReport::default()
    };
    let heads = status_heads(&status, topology, &mut report.problems);
    let mut chains: BTreeMap<String, Streamed> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = page_query(filter.origin.as_deref(), with_personal, cursor.as_deref());
        let page: EventsPage = get_json(http, &format!("{url}/v1/events?{q}"), token).await?;
        for v in &page.events {
            let head = heads.get(&v.origin);
            if topology.is_some() && head.is_none_or(|h| v.seq > h.seq) {
                // Past the signed head (it grew meanwhile), or an origin
                // without one: not covered by this replay.
                if head.is_none() && !chains.contains_key(&v.origin) {
                    report.problems.push(format!(
                        "origin {}: served, but the node's verified heads do not list it",
                        v.origin
                    ));
                    chains.insert(v.origin.clone(), Streamed::default());
                }
                continue;
            }
            let chain = chains.entry(v.origin.clone()).or_default();
            report.problems.extend(check_streamed(v, chain, head));
            if filter.keep_view(v) && !sink(v) {
                return Ok(report); // the reader went away
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    // Every chain must reach its head.
    for (origin, h) in &heads {
        if filter.origin.as_ref().is_some_and(|o| o != origin) {
            continue;
        }
        let got = chains.get(origin).map_or(0, |c| c.seq);
        if got < h.seq {
            report.problems.push(format!(
                "origin {origin} seq {}: missing — the chain stops at seq {got}, short of its head at seq {}",
                got + 1,
                h.seq
            ));
        }
    }
    Ok(report)
}

/// Recomputes an event's hash from its JSON view: the canonical envelope
/// bytes are a function of its fields (personal fields split off again).
fn view_hash(v: &EventView) -> Result<[u8; 32], String> {
    let (occ_ms, occ_off) = parse_rfc3339_ms(&v.occurred_at)?;
    let (rec_ms, _) = parse_rfc3339_ms(&v.recorded_at)?;
    let prev: [u8; 32] = hex::decode(&v.prev)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("prev is not a 32-byte hex hash")?;
    let digest: Option<[u8; 32]> = match &v.personal_digest {
        None => None,
        Some(d) => Some(
            hex::decode(d)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or("personal_digest is not hex")?,
        ),
    };
    let mut data = v.data.clone();
    if v.personal == PersonalState::Included {
        split_personal(&mut data);
    }
    let bytes = EnvelopeHeader {
        origin: &v.origin,
        seq: v.seq,
        kind: &v.kind,
        schema: v.schema,
        occurred_at: OccurredAt {
            unix_ms: occ_ms,
            offset_min: occ_off,
        },
        recorded_at_ms: rec_ms,
        grid: &v.grid,
        recorded_by: &v.recorded_by,
        client_id: &v.client_id,
        prev: &prev,
        personal_digest: digest.as_ref(),
    }
    .encode_with_data(&gridsync_model::canonical::to_canonical(
        &serde_json::Value::Object(data),
    ));
    Ok(event_hash(&bytes))
}

/// The node's heads from its `/v1/status`: with the topology each must carry
/// its origin's valid signature (a problem otherwise).
fn status_heads(
    status: &StatusResponse,
    topology: Option<&Topology>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Streamed> {
    let mut heads = BTreeMap::new();
    let Some(listed) = &status.heads else {
        problems.push(
            "the node's /v1/status lists no heads (a brief status): nothing to check the events against"
                .to_owned(),
        );
        return heads;
    };
    for (origin, h) in listed {
        let signed = topology.map(|t| ReferenceHead::from(h).signed_by_origin(origin, t));
        if signed.is_some_and(|s| s != Some(true)) {
            problems.push(format!(
                "origin {origin} seq {}: the node's signed head does not verify with the origin's key",
                h.seq
            ));
            continue;
        }
        heads.insert(
            origin.clone(),
            Streamed {
                seq: h.seq,
                hash: h.hash.clone(),
            },
        );
    }
    heads
}

/// Checks one streamed event against its origin's chain so far: its hash
/// recomputed from its fields, seq `last + 1` (from 1), `prev` the last
/// hash (zero for seq 1), and the head hash at the head's seq. Returns the
/// problem, and resynchronises on the event either way.
fn check_streamed(v: &EventView, chain: &mut Streamed, head: Option<&Streamed>) -> Option<String> {
    let (origin, seq) = (&v.origin, v.seq);
    let problem = match view_hash(v) {
        Err(e) => Some(format!("origin {origin} seq {seq}: {e}")),
        Ok(h) if hex::encode(h) != v.hash => Some(format!(
            "origin {origin} seq {seq}: its fields do not hash to its hash (altered)"
        )),
        Ok(_) if seq != chain.seq + 1 => Some(if seq > chain.seq + 1 {
            format!(
                "origin {origin} seq {}: missing — the node served seq {seq} after seq {} (a gap of {} events)",
                chain.seq + 1,
                chain.seq,
                seq - chain.seq - 1
            )
        } else {
            format!("origin {origin} seq {seq}: served again or out of order after seq {}", chain.seq)
        }),
        Ok(_) if chain.seq == 0 && v.prev != hex::encode(ZERO_HASH) => Some(format!(
            "origin {origin} seq {seq}: the first event's prev is not zero"
        )),
        Ok(_) if chain.seq > 0 && v.prev != chain.hash => Some(format!(
            "origin {origin} seq {seq}: prev does not link to seq {}",
            chain.seq
        )),
        Ok(_) => head.and_then(|h| {
            (h.seq == seq && h.hash != v.hash).then(|| {
                format!("origin {origin} seq {seq}: differs from the origin's signed head (a fabricated chain)")
            })
        }),
    };
    chain.seq = seq;
    chain.hash.clone_from(&v.hash);
    problem
}

/// What one page request asks for: everything, in log order (or one
/// origin's chain); every other filter is applied here, after verification.
fn page_query(origin: Option<&str>, with_personal: bool, cursor: Option<&str>) -> String {
    let personal = if with_personal { "include" } else { "withhold" };
    let mut q = format!("limit={PAGE}&personal={personal}");
    // Values are ids and cursors: URL-safe.
    if let Some(o) = origin {
        q.push_str(&format!("&origin={o}"));
    }
    if let Some(c) = cursor {
        q.push_str(&format!("&cursor={c}"));
    }
    q
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<T, String> {
    let resp = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}"));
    }
    resp.json()
        .await
        .map_err(|e| format!("unexpected answer from {url}: {e}"))
}
