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
use crate::kinds::{self, CorrectionAction, CorrectionV1, EventRef};
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
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedEvent {
    pub kind: String,
    pub schema: u32,
    pub occurred_at: OccurredAt,
    pub grid: String,
    pub recorded_by: String,
    pub client_id: String,
    /// Canonical msgpack of `data` without personal fields.
    pub data: Vec<u8>,
    pub personal: Option<Personal>,
    /// Digest of the event's content (not its salt), so a reused
    /// `client_id` with different content can be told from a retry.
    pub fingerprint: Hash32,
}

impl PreparedEvent {
    /// Upper bound on the stored size of this event.
    pub fn stored_bytes_estimate(&self) -> usize {
        160 + self.kind.len()
            + self.grid.len()
            + self.recorded_by.len()
            + self.client_id.len()
            + self.data.len()
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

/// Validates and normalises one posted event.
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
    let occurred_at = check_envelope(&input, ctx)?;
    let mut data = Value::Object(input.data);
    if let Some(v) = schema::validate_data(&input.kind, input.schema, &data, "data")
        .unwrap_or_default()
        .into_iter()
        .next()
    {
        return Err(IngestError::violation(v));
    }
    data = normalize(&input.kind, input.schema, data, "data")?;
    if input.kind == "correction" {
        data = check_correction(data, ctx, lookup_target)?;
    }
    let Value::Object(mut data_map) = data else {
        unreachable!("normalize keeps objects")
    };
    let personal_map = split_personal(&mut data_map);
    let data_bytes = canonical::to_canonical(&Value::Object(data_map));
    let personal = (!personal_map.is_empty()).then(|| {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        Personal {
            salt,
            bytes: canonical::to_canonical(&Value::Object(personal_map)),
        }
    });
    let fingerprint = fingerprint(
        &input.kind,
        input.schema,
        occurred_at,
        &input.grid,
        &input.recorded_by,
        &data_bytes,
        personal.as_ref(),
    );
    let event = PreparedEvent {
        kind: input.kind,
        schema: input.schema,
        occurred_at,
        grid: input.grid,
        recorded_by: input.recorded_by,
        client_id: input.client_id,
        data: data_bytes,
        personal,
        fingerprint,
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

/// The envelope fields of a posted event: its origin (if named) is this
/// node, its kind and schema version are known, and it did not occur in
/// the future (beyond the allowed skew). Returns when it occurred.
fn check_envelope(input: &EventInput, ctx: &IngestContext<'_>) -> Result<OccurredAt, IngestError> {
    if let Some(origin) = &input.origin {
        if origin != ctx.node_id {
            return Err(IngestError::new(
                "origin_mismatch",
                format!("event names origin {origin:?} but this node is {:?}; omit origin or post to that node", ctx.node_id),
            )
            .at("origin"));
        }
    }
    let Some((_, versions)) = kinds::KINDS.iter().find(|(k, _)| *k == input.kind) else {
        let known: Vec<&str> = kinds::KINDS.iter().map(|(k, _)| *k).collect();
        return Err(IngestError::new(
            "unknown_kind",
            format!(
                "kind {:?} is not known; expected one of {}",
                input.kind,
                known.join(", ")
            ),
        )
        .at("kind"));
    };
    if !versions.contains(&input.schema) {
        return Err(IngestError::new(
            "unsupported_schema",
            format!(
                "{} schema version {} is not supported; this node reads {versions:?}",
                input.kind, input.schema
            ),
        )
        .at("schema"));
    }
    let (unix_ms, offset_min) =
        crate::time_fmt::parse_rfc3339_ms(&input.occurred_at).map_err(|m| {
            IngestError::new("invalid_timestamp", format!("occurred_at: {m}")).at("occurred_at")
        })?;
    if unix_ms > ctx.now_ms.saturating_add(ctx.limits.future_skew_ms) {
        return Err(IngestError::new(
            "future_timestamp",
            format!(
                "occurred_at {} is more than {} s ahead of this node's clock; check the device's clock",
                input.occurred_at,
                ctx.limits.future_skew_ms / 1000
            ),
        )
        .at("occurred_at"));
    }
    Ok(OccurredAt {
        unix_ms,
        offset_min,
    })
}

/// The content fingerprint of a stored event (what `client_id` idempotency
/// compares), recomputed from its envelope and personal part: equal to the
/// one [`prepare`] gave the posted event.
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

fn fingerprint(
    kind: &str,
    schema: u32,
    occurred_at: OccurredAt,
    grid: &str,
    recorded_by: &str,
    data: &[u8],
    personal: Option<&Personal>,
) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"gridsync/fingerprint/v1\0");
    for part in [
        kind.as_bytes(),
        grid.as_bytes(),
        recorded_by.as_bytes(),
        data,
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(&schema.to_be_bytes());
    h.update(&occurred_at.unix_ms.to_be_bytes());
    h.update(&occurred_at.offset_min.to_be_bytes());
    if let Some(p) = personal {
        h.update(&p.bytes);
    }
    *h.finalize().as_bytes()
}

/// Round-trips `data` through its Rust type so equal content always has the
/// same canonical form (e.g. `37` and `37.0` both become the float 37.0).
fn normalize(kind: &str, schema: u32, data: Value, field: &str) -> Result<Value, IngestError> {
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(
        data: Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(data).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    let result = match (kind, schema) {
        ("entry", 1) => via::<kinds::EntryV1>(data),
        ("temperature", 1) => via::<kinds::TemperatureV1>(data),
        ("visit", 1) => via::<kinds::VisitV1>(data),
        ("delivery", 1) => via::<kinds::DeliveryV1>(data),
        ("correction", 1) => via::<CorrectionV1>(data),
        _ => Err(format!("no type for {kind} v{schema}")),
    };
    result.map_err(|m| IngestError::new("schema_violation", format!("{field}: {m}")).at(field))
}

fn check_correction(
    data: Value,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Result<Value, IngestError> {
    let mut c: CorrectionV1 = serde_json::from_value(data)
        .map_err(|e| IngestError::new("schema_violation", format!("data: {e}")).at("data"))?;
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
            if let Some(v) =
                schema::validate_data(&target.kind, target.schema, &r, "data.replacement")
                    .unwrap_or_default()
                    .into_iter()
                    .next()
            {
                return Err(IngestError::violation(v));
            }
            let Value::Object(r) = normalize(&target.kind, target.schema, r, "data.replacement")?
            else {
                unreachable!("normalize keeps objects")
            };
            c.replacement = Some(r);
        }
    }
    serde_json::to_value(c).map_err(|e| IngestError::new("schema_violation", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> IngestContext<'static> {
        static LIMITS: std::sync::OnceLock<IngestLimits> = std::sync::OnceLock::new();
        IngestContext {
            node_id: "c1",
            now_ms: 1_580_200_000_000,
            limits: LIMITS.get_or_init(IngestLimits::default),
        }
    }

    fn temp(celsius: Value) -> Value {
        json!({
            "kind": "temperature", "occurred_at": "2020-01-28T09:30:00+08:00",
            "grid": "g1", "recorded_by": "w1", "client_id": "k1",
            "data": {"person": {"name": "张三"}, "celsius": celsius, "site": "checkpoint"}
        })
    }

    fn run(v: Value) -> Result<PreparedEvent, IngestError> {
        let lookup = |r: &EventRef| {
            (r.seq == 1).then(|| TargetInfo {
                kind: "temperature".into(),
                schema: 1,
            })
        };
        prepare(
            v,
            &ctx(),
            &lookup,
            &mut rand::rngs::mock::StepRng::new(1, 1),
        )
    }

    #[test]
    fn integer_and_float_normalise_equal() {
        let a = run(temp(json!(37))).unwrap();
        let b = run(temp(json!(37.0))).unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(a.personal.is_some());
    }

    #[test]
    fn errors_are_precise() {
        let e = run(temp(json!(45.5))).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("schema_violation", Some("data.celsius"))
        );
        let mut v = temp(json!(36.6));
        v["kind"] = json!("weather");
        assert_eq!(run(v).unwrap_err().code, "unknown_kind");
        let mut v = temp(json!(36.6));
        v["occurred_at"] = json!("2031-01-01T00:00:00+08:00");
        assert_eq!(run(v).unwrap_err().code, "future_timestamp");
        let mut v = temp(json!(36.6));
        v["origin"] = json!("c2");
        assert_eq!(run(v).unwrap_err().code, "origin_mismatch");
        let mut v = temp(json!(36.6));
        v.as_object_mut().unwrap().remove("client_id");
        let e = run(v).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("schema_violation", Some("client_id"))
        );
    }

    #[test]
    fn corrections_check_target_and_replacement() {
        let corr = |target_seq: u64, data_extra: Value| {
            let mut d = json!({"target": {"origin": "c1", "seq": target_seq}, "action": "replace", "reason": "typo"});
            d.as_object_mut()
                .unwrap()
                .extend(data_extra.as_object().unwrap().clone());
            json!({"kind": "correction", "occurred_at": "2020-01-28T09:30:00+08:00",
                   "grid": "g1", "recorded_by": "w1", "client_id": "k2", "data": d})
        };
        let ok = corr(
            1,
            json!({"replacement": {"person": {"name": "李四"}, "celsius": 36.6, "site": "home"}}),
        );
        let p = run(ok).unwrap();
        // The replacement's person is personal data too.
        assert!(p
            .personal
            .unwrap()
            .fields()
            .unwrap()
            .contains_key("replacement.person"));
        assert_eq!(run(corr(9, json!({}))).unwrap_err().code, "unknown_target");
        let bad = corr(1, json!({"replacement": {"celsius": 36.6, "site": "home"}}));
        assert_eq!(
            run(bad).unwrap_err().field.as_deref(),
            Some("data.replacement.person")
        );
        assert_eq!(
            run(corr(1, json!({}))).unwrap_err().field.as_deref(),
            Some("data.replacement")
        );
    }

    #[test]
    fn body_shapes() {
        let l = IngestLimits {
            batch_events_max: 2,
            ..IngestLimits::default()
        };
        assert_eq!(parse_body(b"{", &l).unwrap_err().code, "malformed_json");
        assert_eq!(parse_body(b"[1]", &l).unwrap_err().code, "invalid_body");
        assert_eq!(
            parse_body(br#"{"events": []}"#, &l).unwrap_err().code,
            "empty_batch"
        );
        assert_eq!(
            parse_body(br#"{"events": [{}, {}, {}]}"#, &l)
                .unwrap_err()
                .code,
            "batch_too_large"
        );
        assert_eq!(parse_body(br#"{"events": [{}, {}]}"#, &l).unwrap().len(), 2);
        assert_eq!(parse_body(br#"{"kind": "x"}"#, &l).unwrap().len(), 1);
    }
}
