//! HTTP request and response bodies (the `/v1` JSON contract).
//!
//! Like [`crate::kinds`], these types generate the files in `schemas/`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema version of a posted event that names none.
pub(crate) fn schema_one() -> u32 {
    1
}

/// One event as a device posts it. The node fills in `seq`, `prev`,
/// `recorded_at` and `hash`; `origin` may be given but must name this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "event-input")]
pub struct EventInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub origin: Option<String>,
    /// `entry`, `temperature`, `visit`, `delivery` or `correction`.
    #[schemars(length(min = 1, max = 32))]
    pub kind: String,
    /// Schema version of `data` for this kind (default 1).
    #[serde(default = "schema_one")]
    #[schemars(range(min = 1))]
    pub schema: u32,
    /// When it happened in the field: RFC 3339 with offset, e.g.
    /// `2020-01-28T09:30:00+08:00`. Kept to the millisecond.
    #[schemars(length(min = 20, max = 40))]
    pub occurred_at: String,
    #[schemars(length(min = 1, max = 64))]
    pub grid: String,
    #[schemars(length(min = 1, max = 64))]
    pub recorded_by: String,
    /// Idempotency key chosen by the device: a retried POST with the same
    /// key returns the original event instead of creating a second one.
    #[schemars(length(min = 1, max = 128))]
    pub client_id: String,
    /// Kind-specific fields; see `<kind>.v<schema>.json`.
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// A batch of events, appended all-or-nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "event-batch-input")]
pub struct EventBatchInput {
    #[schemars(length(min = 1))]
    pub events: Vec<EventInput>,
}

/// Body of `POST /v1/events`: one event, or `{"events": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "post-events-request")]
pub enum PostEventsRequest {
    Batch(EventBatchInput),
    One(Box<EventInput>),
}

/// What the node did with one posted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendedEvent {
    pub origin: String,
    pub seq: u64,
    /// BLAKE3 event hash, hex.
    pub hash: String,
    /// True when the `client_id` was seen before and nothing new was stored.
    pub duplicate: bool,
}

/// Reply to `POST /v1/events`, one result per posted event in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "post-events-response")]
pub struct PostEventsResponse {
    pub results: Vec<AppendedEvent>,
}

/// Every error reply carries one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `schema_violation`.
    pub code: String,
    /// What was wrong and what to do, for a person.
    pub message: String,
    /// Index of the offending event within a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Dotted path of the offending field, e.g. `data.celsius`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "error-response")]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// Whether an event's personal fields are in `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PersonalState {
    /// The event has no personal fields.
    None,
    /// Personal fields are merged into `data`.
    Included,
    /// The event has personal fields, not shown (withheld by this node or
    /// not held by it); `personal_digest` still lets the event verify.
    Withheld,
    /// Asked for with `personal=include`, but this node does not hold them:
    /// they stay at the community that recorded the event (its parent and
    /// above get only the digest).
    HeldAtOrigin,
}

/// One stored event as served by `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "event")]
pub struct EventView {
    pub origin: String,
    pub seq: u64,
    pub kind: String,
    pub schema: u32,
    pub occurred_at: String,
    pub recorded_at: String,
    pub grid: String,
    pub recorded_by: String,
    pub client_id: String,
    /// Hex hash of the previous event of the origin (zeros for seq 1).
    pub prev: String,
    pub hash: String,
    pub data: serde_json::Map<String, serde_json::Value>,
    pub personal: PersonalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_digest: Option<String>,
}

/// A page of `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "events-page")]
pub struct EventsPage {
    pub events: Vec<EventView>,
    /// Pass as `cursor=` to get the next page; absent at the end of the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An origin's chain head as held by a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadView {
    /// Highest contiguous seq held.
    pub seq: u64,
    pub hash: String,
    /// When the origin signed this head.
    pub signed_at: String,
    /// The same instant in unix ms, as signed.
    pub signed_at_ms: i64,
    /// The origin's ed25519 signature over this head (hex): anyone with the
    /// topology can check it, so a parent's status is a signed reference for
    /// `gridsync audit verify --reference`.
    pub signature: String,
    /// A v2 head's `after` (hex): the digest of the origin's previous
    /// signed head, signed with the rest. Absent for a v1 head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Size of a node's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogStats {
    pub chunks: u64,
    pub events: u64,
    /// Log entries (chunks) the node's projection — what `/v1/aggregates`
    /// counts — has folded: equal to `chunks` once it has caught up; less
    /// for a moment after commits, and for longer while a node started
    /// without a saved projection folds its log (it listens after
    /// `projections.fold_before_listen_s` and folds the rest while it
    /// serves).
    pub projected_chunks: u64,
}

/// `GET /v1/status`. With `?brief=true` the parts that grow with the
/// origins held (`heads`, `parent_link.acked`) and with the children's
/// links (`children_status`) are left out, so that a monitoring probe of
/// a large aggregator reads its counters without ~0.5 MB of JSON at
/// 1,000 children (the children's names stay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "status-response")]
pub struct StatusResponse {
    pub node: String,
    /// Display name from the topology.
    pub name: String,
    /// `community` (an origin: no children) or `aggregator`.
    pub role: String,
    /// Role of the token that asked.
    pub token_role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub children: Vec<String>,
    /// Per origin held: the version vector of this node (absent in a
    /// brief status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<BTreeMap<String, HeadView>>,
    pub log: LogStats,
    /// Each child's link and lag (empty at a community; absent in a brief
    /// status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children_status: Option<Vec<ChildStatus>>,
    /// Nodes with a parent: the upward link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_link: Option<ParentLinkView>,
    /// Equivocations detected (an origin signed two different events at one seq).
    pub equivocations: Vec<EquivocationView>,
    /// Communities: whether posts are taken, and if not, why and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posting: Option<PostingView>,
}

/// Whether a community takes posts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostingView {
    pub accepting: bool,
    /// Why posts are refused (`log_behind_parent`, `log_diverged`,
    /// `awaiting_parent_check`), with what the operator should do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldView {
    pub code: String,
    pub message: String,
    pub since: String,
}

/// An origin the parent refuses on this link (the others keep flowing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockedOriginView {
    pub origin: String,
    /// The parent's refusal code (`foreign_origin`, `bad_signature`,
    /// `broken_chain`, `equivocation`, …).
    pub code: String,
    pub message: String,
    pub since: String,
}

/// A child as its parent sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildStatus {
    pub id: String,
    pub connected: bool,
    /// Last frame received from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<String>,
    /// The child's heads as it last reported them.
    pub heads: BTreeMap<String, u64>,
    /// Events the child holds that this node does not.
    pub lag_events: u64,
    /// Age of the oldest event the child holds and this node does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

/// The upward link as the child sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParentLinkView {
    pub parent: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack: Option<String>,
    /// The parent's durable heads as last acknowledged (absent in a brief
    /// status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<BTreeMap<String, u64>>,
    /// Events held here that the parent has not acknowledged.
    pub lag_events: u64,
    pub connects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Origins the parent refuses; their events wait here, the others flow.
    #[serde(default)]
    pub blocked: Vec<BlockedOriginView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EquivocationView {
    pub origin: String,
    pub seq: u64,
    pub detected_at: String,
}

/// Builds the JSON view of a stored event. Personal fields are merged into
/// `data` only when `include_personal` and the record holds them.
pub fn event_view(
    event: &crate::VerifiedEvent,
    record: &crate::EventRecord,
    include_personal: bool,
) -> EventView {
    let env = &event.envelope;
    let mut data = env.data.as_object().cloned().unwrap_or_default();
    let personal = match (&env.personal_digest, &record.personal) {
        (None, _) => PersonalState::None,
        (Some(_), Some(p)) if include_personal => match p.fields() {
            Ok(fields) => {
                crate::event::merge_personal(&mut data, fields);
                PersonalState::Included
            }
            Err(_) => PersonalState::Withheld,
        },
        (Some(_), None) if include_personal => PersonalState::HeldAtOrigin,
        (Some(_), _) => PersonalState::Withheld,
    };
    EventView {
        origin: env.origin.clone(),
        seq: env.seq,
        kind: env.kind.clone(),
        schema: env.schema,
        occurred_at: env.occurred_at.to_rfc3339(),
        recorded_at: crate::time_fmt::format_rfc3339_ms(env.recorded_at_ms, 0),
        grid: env.grid.clone(),
        recorded_by: env.recorded_by.clone(),
        client_id: env.client_id.clone(),
        prev: crate::event::hash_hex(&env.prev),
        hash: crate::event::hash_hex(&event.hash),
        data,
        personal,
        personal_digest: env.personal_digest.map(hex::encode),
    }
}
