//! Ingest: posted JSON in, [`PreparedEvent`]s or a precise [`IngestError`] out.
//!
//! Pure: the caller passes the time, the randomness (for personal-field
//! salts) and a lookup for correction targets. A prepared event has its
//! `data` already in canonical bytes with personal fields split off, so the
//! single log writer only numbers, chains, hashes and signs.

use rand::RngCore;
use serde_json::Value;

use crate::api::EventInput;
use crate::canonical;
use crate::event::{split_personal, Hash32, OccurredAt, Personal};
use crate::kinds::{self, CorrectionAction, CorrectionV1, EventRef, WithinSchema};
use crate::schema;

/// Limits on what one request may carry.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Events in one `{"events": [...]}` batch.
    pub batch_events_max: usize,
    /// Canonical size of one event (envelope plus personal part).
    pub event_bytes_max: usize,
    /// How far `occurred_at` may lie in the future of the node's clock.
    pub future_skew_ms: i64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            batch_events_max: 1000,
            event_bytes_max: 64 * 1024,
            future_skew_ms: 10 * 60 * 1000,
        }
    }
}

/// An event ready to be numbered and chained by the log writer.
///
/// Made on a request's thread and consumed on the log writer's, which
/// frees what it does not keep: so it holds few allocations — the kind is
/// the build's own name for it, and `grid`, `recorded_by` and the data's
/// canonical bytes share one vector ([`PreparedEvent::grid`],
/// [`PreparedEvent::recorded_by`], [`PreparedEvent::data`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedEvent {
    /// One of [`kinds::KINDS`].
    pub kind: &'static str,
    pub schema: u32,
    pub occurred_at: OccurredAt,
    pub client_id: String,
    /// `grid`, then `recorded_by` (each a whole UTF-8 string), then the
    /// canonical msgpack of `data` without personal fields.
    fields: Vec<u8>,
    /// Where `grid` ends and `recorded_by` ends in `fields`.
    grid_end: usize,
    recorded_by_end: usize,
    /// Its personal fields, salted once the event is prepared
    /// ([`PreparedEvent::personal`]).
    personal: Option<Personal>,
    /// [`Personal::digest`] of `personal`, worked out when it is salted —
    /// on the request's thread, not the log writer's.
    personal_digest: Option<Hash32>,
    /// [`client_key`] of `client_id`, worked out where the event is
    /// prepared (on the request's thread) rather than by the log writer,
    /// whose thread every event passes through one at a time.
    pub client_key: u64,
}

/// The key of a client id in the origin's client-id index: the first 8
/// bytes of BLAKE3(client id), big-endian.
pub fn client_key(client_id: &str) -> u64 {
    let d = blake3::hash(client_id.as_bytes());
    u64::from_be_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl PreparedEvent {
    /// The personal fields, salted.
    pub fn personal(&self) -> Option<&Personal> {
        self.personal.as_ref()
    }

    /// [`Personal::digest`] of [`PreparedEvent::personal`].
    pub fn personal_digest(&self) -> Option<&Hash32> {
        self.personal_digest.as_ref()
    }

    /// Takes the personal fields out (the log writer keeps them beside the
    /// envelope, whose digest of them it has already written).
    pub fn take_personal(&mut self) -> Option<Personal> {
        self.personal_digest = None;
        self.personal.take()
    }

    /// Digest of the event's content (not its salt), so a reused
    /// `client_id` with different content can be told from a retry; equal
    /// to [`content_fingerprint`] (and [`stored_fingerprint`]) of the event
    /// once stored. Worked out when
    /// asked, not when the event is prepared: only a post whose client id
    /// is already held needs it (hashing every event's content for it was
    /// ~4 % of a community's CPU at batched ingest, BENCHMARKS.md).
    pub fn fingerprint(&self) -> Hash32 {
        fingerprint(
            self.kind,
            self.schema,
            self.occurred_at,
            self.grid(),
            self.recorded_by(),
            self.data(),
            self.personal.as_ref(),
        )
    }

    /// The grid the event was recorded in.
    pub fn grid(&self) -> &str {
        std::str::from_utf8(&self.fields[..self.grid_end]).expect("written from a str")
    }

    /// Who recorded the event.
    pub fn recorded_by(&self) -> &str {
        std::str::from_utf8(&self.fields[self.grid_end..self.recorded_by_end])
            .expect("written from a str")
    }

    /// Canonical msgpack of `data` without personal fields.
    pub fn data(&self) -> &[u8] {
        &self.fields[self.recorded_by_end..]
    }

    /// Upper bound on the stored size of this event.
    pub fn stored_bytes_estimate(&self) -> usize {
        160 + self.kind.len()
            + self.fields.len()
            + self.client_id.len()
            + self.personal.as_ref().map_or(0, |p| p.bytes.len() + 20)
    }
}

/// Why a posted event was refused. `code` is stable; see README "Errors".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestError {
    pub code: &'static str,
    pub message: String,
    pub index: Option<usize>,
    pub field: Option<String>,
}

impl IngestError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            index: None,
            field: None,
        }
    }

    fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error, said of event `index` of the body.
    fn for_event(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    fn violation(v: schema::Violation) -> Self {
        let field = v.field.clone();
        let message = if field.is_empty() {
            format!("{} (rule: {})", v.message, v.rule)
        } else {
            format!("{field}: {} (rule: {})", v.message, v.rule)
        };
        Self::new("schema_violation", message).at(field)
    }
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Splits a `POST /v1/events` body into its event objects.
///
/// # Errors
/// Malformed JSON, a body that is neither an event nor `{"events": [...]}`,
/// an empty batch or one over the limit.
pub fn parse_body(body: &[u8], limits: &IngestLimits) -> Result<Vec<Value>, IngestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        IngestError::new(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(IngestError::new(
            "invalid_body",
            "request body must be one event object or {\"events\": [...]}",
        ));
    };
    if !map.contains_key("events") {
        return Ok(vec![Value::Object(map)]);
    }
    if map.len() != 1 {
        return Err(IngestError::new(
            "invalid_body",
            "a batch body must have only the field \"events\"",
        ));
    }
    let Some(Value::Array(events)) = map.remove("events") else {
        return Err(IngestError::new(
            "invalid_body",
            "\"events\" must be an array of event objects",
        )
        .at("events"));
    };
    if events.is_empty() {
        return Err(IngestError::new(
            "empty_batch",
            "\"events\" is empty; send at least one event",
        )
        .at("events"));
    }
    if events.len() > limits.batch_events_max {
        return Err(IngestError::new(
            "batch_too_large",
            format!(
                "batch holds {} events; the limit is {}: split it into smaller batches",
                events.len(),
                limits.batch_events_max
            ),
        )
        .at("events"));
    }
    Ok(events)
}

/// What a correction's target is, as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    pub kind: String,
    pub schema: u32,
}

/// Everything [`prepare`] needs besides the event.
pub struct IngestContext<'a> {
    /// This node's id: the origin of every event it accepts.
    pub node_id: &'a str,
    pub now_ms: i64,
    pub limits: &'a IngestLimits,
}

/// Validates and normalises one posted event (given as a JSON value).
///
/// `lookup_target` answers what the event `(origin, seq)` is, or `None` if
/// the store does not hold it.
///
/// # Errors
/// The first problem found, naming the field.
pub fn prepare(
    value: Value,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
    rng: &mut dyn RngCore,
) -> Result<PreparedEvent, IngestError> {
    let mut event = prepare_value(value, ctx, lookup_target)?;
    salt(std::slice::from_mut(&mut event), rng);
    Ok(event)
}

/// Validates and normalises a whole `POST /v1/events` body: what
/// [`parse_body`] and [`prepare`] on each event give, with each error's
/// `index` naming the event.
///
/// Most bodies are read straight into the kind types ([`typed`]); a body
/// that path does not accept outright is read again the general way, which
/// is what decides — and words — every refusal.
///
/// # Errors
/// As [`parse_body`] and [`prepare`].
pub fn prepare_body(
    body: &[u8],
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
    rng: &mut dyn RngCore,
) -> Result<Vec<PreparedEvent>, IngestError> {
    let mut events = match typed::prepare_body(body, ctx, lookup_target) {
        Some(result) => result?,
        None => prepare_body_values(body, ctx, lookup_target)?,
    };
    salt(&mut events, rng);
    Ok(events)
}

/// [`prepare_body`] the general way: the body as JSON values, each event
/// checked against the JSON Schemas before it is read into its type.
fn prepare_body_values(
    body: &[u8],
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Result<Vec<PreparedEvent>, IngestError> {
    parse_body(body, ctx.limits)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| prepare_value(v, ctx, lookup_target).map_err(|e| e.for_event(i)))
        .collect()
}

/// Gives every event's personal part its random salt, in order, and its
/// digest. Salts are drawn last so that both ways of preparing a body draw
/// the same ones.
fn salt(events: &mut [PreparedEvent], rng: &mut dyn RngCore) {
    for e in events {
        if let Some(p) = e.personal.as_mut() {
            rng.fill_bytes(&mut p.salt);
            e.personal_digest = Some(p.digest());
        }
    }
}

/// [`prepare`] without the salt.
fn prepare_value(
    value: Value,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Result<PreparedEvent, IngestError> {
    if !value.is_object() {
        return Err(IngestError::new(
            "invalid_body",
            "each event must be a JSON object",
        ));
    }
    if let Some(v) = schema::validate_event_input(&value).into_iter().next() {
        return Err(IngestError::violation(v));
    }
    let input: EventInput = serde_json::from_value(value).map_err(|e| {
        IngestError::new(
            "schema_violation",
            format!("event does not match event-input.json: {e}"),
        )
    })?;
    let (kind, occurred_at) = check_envelope(
        input.origin.as_deref(),
        &input.kind,
        input.schema,
        &input.occurred_at,
        ctx,
    )?;
    let data = Value::Object(input.data);
    let typed = Data::read_value(&input.kind, input.schema, &data, "data")?;
    let head = Head {
        kind,
        schema: input.schema,
        occurred_at,
        grid: &input.grid,
        recorded_by: &input.recorded_by,
        client_id: input.client_id,
    };
    finish(head, typed, ctx, lookup_target)
}

/// A posted event's envelope fields, checked.
struct Head<'a> {
    kind: &'static str,
    schema: u32,
    occurred_at: OccurredAt,
    grid: &'a str,
    recorded_by: &'a str,
    client_id: String,
}

/// The part of preparing an event shared by both ways of reading it: from
/// its checked envelope and its `data` read into its type, the event ready
/// for the log — correction checked, personal fields split off, canonical
/// bytes, fingerprint, size limit. The personal part is not salted yet.
fn finish(
    head: Head<'_>,
    data: Data<'_>,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Result<PreparedEvent, IngestError> {
    let lead = [head.grid, head.recorded_by];
    let (fields, personal_bytes) = match data {
        Data::Correction(c) => {
            let (data, personal) = split_canonical(check_correction(c, ctx, lookup_target)?);
            (after(&lead, &data), personal)
        }
        data => data.to_canonical_split_after(&lead),
    };
    let grid_end = head.grid.len();
    let recorded_by_end = grid_end + head.recorded_by.len();
    let personal = personal_bytes.map(|bytes| Personal {
        salt: [0; 16],
        bytes,
    });
    let client_key = client_key(&head.client_id);
    let event = PreparedEvent {
        kind: head.kind,
        schema: head.schema,
        occurred_at: head.occurred_at,
        client_id: head.client_id,
        fields,
        grid_end,
        recorded_by_end,
        personal,
        personal_digest: None,
        client_key,
    };
    if event.stored_bytes_estimate() > ctx.limits.event_bytes_max {
        return Err(IngestError::new(
            "event_too_large",
            format!(
                "event is about {} bytes encoded; the limit is {} bytes: shorten its text fields",
                event.stored_bytes_estimate(),
                ctx.limits.event_bytes_max
            ),
        ));
    }
    Ok(event)
}

/// `bytes` written after the bytes of `lead`, in one vector.
fn after(lead: &[&str], bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(lead.iter().map(|l| l.len()).sum::<usize>() + bytes.len());
    for l in lead {
        v.extend_from_slice(l.as_bytes());
    }
    v.extend_from_slice(bytes);
    v
}

/// The canonical bytes of `data` (a JSON object) without its personal
/// fields, and of those fields if it has any.
fn split_canonical(data: Value) -> (Vec<u8>, Option<Vec<u8>>) {
    let Value::Object(mut data_map) = data else {
        unreachable!("the kind types are structs")
    };
    let personal_map = split_personal(&mut data_map);
    let personal =
        (!personal_map.is_empty()).then(|| canonical::to_canonical(&Value::Object(personal_map)));
    (canonical::to_canonical(&Value::Object(data_map)), personal)
}

/// The envelope fields of a posted event: its origin (if named) is this
/// node, its kind and schema version are known, and it did not occur in
/// the future (beyond the allowed skew). Returns the kind as this build
/// names it, and when the event occurred.
fn check_envelope(
    origin: Option<&str>,
    kind: &str,
    schema: u32,
    occurred_at: &str,
    ctx: &IngestContext<'_>,
) -> Result<(&'static str, OccurredAt), IngestError> {
    if let Some(origin) = origin {
        if origin != ctx.node_id {
            return Err(IngestError::new(
                "origin_mismatch",
                format!("event names origin {origin:?} but this node is {:?}; omit origin or post to that node", ctx.node_id),
            )
            .at("origin"));
        }
    }
    let Some(&(known_kind, versions)) = kinds::KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<&str> = kinds::KINDS.iter().map(|(k, _)| *k).collect();
        return Err(IngestError::new(
            "unknown_kind",
            format!(
                "kind {kind:?} is not known; expected one of {}",
                known.join(", ")
            ),
        )
        .at("kind"));
    };
    if !versions.contains(&schema) {
        return Err(IngestError::new(
            "unsupported_schema",
            format!(
                "{kind} schema version {schema} is not supported; this node reads {versions:?}"
            ),
        )
        .at("schema"));
    }
    let (unix_ms, offset_min) = crate::time_fmt::parse_rfc3339_ms(occurred_at).map_err(|m| {
        IngestError::new("invalid_timestamp", format!("occurred_at: {m}")).at("occurred_at")
    })?;
    if unix_ms > ctx.now_ms.saturating_add(ctx.limits.future_skew_ms) {
        return Err(IngestError::new(
            "future_timestamp",
            format!(
                "occurred_at {occurred_at} is more than {} s ahead of this node's clock; check the device's clock",
                ctx.limits.future_skew_ms / 1000
            ),
        )
        .at("occurred_at"));
    }
    Ok((
        known_kind,
        OccurredAt {
            unix_ms,
            offset_min,
        },
    ))
}

/// The content fingerprint of a stored event worked out from its decoded
/// envelope and personal part: equal to the posted event's
/// ([`PreparedEvent::fingerprint`]). The store compares retries by
/// [`content_fingerprint`], which reads the same fields in place; this
/// decoded form is the reference the tests hold it to.
pub fn stored_fingerprint(env: &crate::Envelope, personal: Option<&Personal>) -> Hash32 {
    fingerprint(
        &env.kind,
        env.schema,
        env.occurred_at,
        &env.grid,
        &env.recorded_by,
        &canonical::to_canonical(&env.data),
        personal,
    )
}

/// The content fingerprint of a stored event read from its envelope's
/// bytes ([`crate::event::read_content`]), without decoding `data`: equal
/// to [`stored_fingerprint`] for an envelope whose `data` is canonical, as
/// every stored one is.
pub fn content_fingerprint(
    c: &crate::event::EnvelopeContent<'_>,
    personal: Option<&Personal>,
) -> Hash32 {
    fingerprint(
        c.kind,
        c.schema,
        c.occurred_at,
        c.grid,
        c.recorded_by,
        c.data,
        personal,
    )
}

fn fingerprint(
    kind: &str,
    schema: u32,
    occurred_at: OccurredAt,
    grid: &str,
    recorded_by: &str,
    data: &[u8],
    personal: Option<&Personal>,
) -> Hash32 {
    // The same bytes as a stream of updates, gathered and hashed in one
    // call: an update costs more than its few bytes.
    const DOMAIN: &[u8] = b"gridsync/fingerprint/v1\0";
    let parts = [
        kind.as_bytes(),
        grid.as_bytes(),
        recorded_by.as_bytes(),
        data,
    ];
    let len = DOMAIN.len()
        + parts.iter().map(|p| 8 + p.len()).sum::<usize>()
        + 4
        + 8
        + 2
        + personal.map_or(0, |p| p.bytes.len());
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(DOMAIN);
    for part in parts {
        b.extend_from_slice(&(part.len() as u64).to_be_bytes());
        b.extend_from_slice(part);
    }
    b.extend_from_slice(&schema.to_be_bytes());
    b.extend_from_slice(&occurred_at.unix_ms.to_be_bytes());
    b.extend_from_slice(&occurred_at.offset_min.to_be_bytes());
    if let Some(p) = personal {
        b.extend_from_slice(&p.bytes);
    }
    debug_assert_eq!(b.len(), len);
    *blake3::hash(&b).as_bytes()
}

/// A posted event's `data` read into the Rust type of its kind and schema
/// version. Written back out ([`Data::to_value`], [`Data::to_canonical_split_after`])
/// equal content always has the same form (e.g. `37` and `37.0` both become
/// the float 37.0), so the canonical bytes and the fingerprint depend on
/// the content only.
/// Its text borrows from what it was read from where it can (`'a`).
enum Data<'a> {
    Entry(kinds::EntryV1<'a>),
    Temperature(kinds::TemperatureV1<'a>),
    Visit(kinds::VisitV1<'a>),
    Delivery(kinds::DeliveryV1<'a>),
    Correction(CorrectionV1),
}

/// Where `data` is read from: a JSON value (after the schema check) or the
/// posted text itself ([`typed`]).
trait DataSource<'de> {
    fn read<T: serde::Deserialize<'de>>(self) -> Result<T, String>;
}

impl<'de> DataSource<'de> for &'de Value {
    fn read<T: serde::Deserialize<'de>>(self) -> Result<T, String> {
        T::deserialize(self).map_err(|e| e.to_string())
    }
}

impl<'a> Data<'a> {
    /// Whether this build has a type for `kind` v`schema`: whether
    /// [`Data::read`] reads it.
    fn has_type(kind: &str, schema: u32) -> bool {
        matches!(
            (kind, schema),
            (
                "entry" | "temperature" | "visit" | "delivery" | "correction",
                1
            )
        )
    }

    /// `None` when this build has no type for `kind` v`schema`.
    fn read(kind: &str, schema: u32, source: impl DataSource<'a>) -> Option<Result<Self, String>> {
        if !Data::has_type(kind, schema) {
            return None;
        }
        Some(match (kind, schema) {
            ("entry", 1) => source.read().map(Data::Entry),
            ("temperature", 1) => source.read().map(Data::Temperature),
            ("visit", 1) => source.read().map(Data::Visit),
            ("delivery", 1) => source.read().map(Data::Delivery),
            ("correction", 1) => source.read().map(Data::Correction),
            _ => unreachable!("has_type lists the types read here"),
        })
    }

    /// [`Data::read`] from a JSON value, after checking it against the
    /// kind's JSON Schema (which words the error); any failure a
    /// `schema_violation` of `field`.
    fn read_value(
        kind: &str,
        schema: u32,
        data: &'a Value,
        field: &str,
    ) -> Result<Self, IngestError> {
        let violations = schema::validate_data(kind, schema, data, field).unwrap_or_default();
        if let Some(v) = violations.into_iter().next() {
            return Err(IngestError::violation(v));
        }
        Data::read(kind, schema, data)
            .unwrap_or_else(|| Err(format!("no type for {kind} v{schema}")))
            .map_err(|m| IngestError::new("schema_violation", format!("{field}: {m}")).at(field))
    }

    /// Whether the data keeps its kind's JSON Schema: the bounds checked
    /// on the typed value ([`kinds::WithinSchema`]); a correction (rare)
    /// is written back and run through its schema.
    fn within_schema(&self) -> bool {
        match self {
            Data::Entry(d) => d.within_schema(),
            Data::Temperature(d) => d.within_schema(),
            Data::Visit(d) => d.within_schema(),
            Data::Delivery(d) => d.within_schema(),
            Data::Correction(_) => schema::validate_data("correction", 1, &self.to_value(), "data")
                .is_some_and(|v| v.is_empty()),
        }
    }

    /// The canonical bytes of the data without its personal fields, and of
    /// those if it has any: what [`split_canonical`] makes of
    /// [`Data::to_value`], encoded straight from the type.
    fn to_canonical_split_after(&self, lead: &[&str]) -> (Vec<u8>, Option<Vec<u8>>) {
        let split = match self {
            Data::Entry(d) => canonical::to_canonical_split_after(d, lead),
            Data::Temperature(d) => canonical::to_canonical_split_after(d, lead),
            Data::Visit(d) => canonical::to_canonical_split_after(d, lead),
            Data::Delivery(d) => canonical::to_canonical_split_after(d, lead),
            // Its replacement's personal fields are split inside it.
            Data::Correction(_) => {
                let (data, personal) = split_canonical(self.to_value());
                return (after(lead, &data), personal);
            }
        };
        split.expect("the kind types encode canonically")
    }

    fn to_value(&self) -> Value {
        let written = match self {
            Data::Entry(d) => serde_json::to_value(d),
            Data::Temperature(d) => serde_json::to_value(d),
            Data::Visit(d) => serde_json::to_value(d),
            Data::Delivery(d) => serde_json::to_value(d),
            Data::Correction(d) => serde_json::to_value(d),
        };
        written.expect("the kind types serialize to JSON")
    }
}

/// A correction's target exists, is of this origin and is not itself a
/// correction; a replacement is present exactly when the action needs one
/// and is valid data of the target's kind. Returns the correction's data
/// with the replacement normalised.
fn check_correction(
    mut c: CorrectionV1,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Result<Value, IngestError> {
    if c.target.origin != ctx.node_id {
        return Err(IngestError::new(
            "invalid_target",
            format!(
                "a correction must target an event of its own origin {:?}, not {:?}",
                ctx.node_id, c.target.origin
            ),
        )
        .at("data.target.origin"));
    }
    let Some(target) = lookup_target(&c.target) else {
        return Err(IngestError::new(
            "unknown_target",
            format!(
                "no event {}/{} exists to correct",
                c.target.origin, c.target.seq
            ),
        )
        .at("data.target"));
    };
    if target.kind == "correction" {
        return Err(IngestError::new(
            "invalid_target",
            "a correction cannot target another correction; correct the original event".to_owned(),
        )
        .at("data.target"));
    }
    match (c.action, c.replacement.take()) {
        (CorrectionAction::Void, None) => {}
        (CorrectionAction::Void, Some(_)) => {
            return Err(IngestError::new(
                "schema_violation",
                "data.replacement: must be absent when action is void",
            )
            .at("data.replacement"));
        }
        (CorrectionAction::Replace, None) => {
            return Err(IngestError::new(
                "schema_violation",
                "data.replacement: required when action is replace (the corrected data of the target's kind)",
            )
            .at("data.replacement"));
        }
        (CorrectionAction::Replace, Some(r)) => {
            let r = Value::Object(r);
            let typed = Data::read_value(&target.kind, target.schema, &r, "data.replacement")?;
            let Value::Object(r) = typed.to_value() else {
                unreachable!("the kind types are structs")
            };
            c.replacement = Some(r);
        }
    }
    Ok(Data::Correction(c).to_value())
}

mod typed;

#[cfg(test)]
mod agreement;
#[cfg(test)]
mod tests;
