//! The typed way of reading a posted body: straight from the JSON text into
//! the envelope and kind types, with no JSON value tree for the body and no
//! JSON Schema pass over the envelope.
//!
//! It only ever *accepts*. Anything it is not sure of — malformed JSON, an
//! unknown field, a duplicated key, a number where a string belongs, a
//! length out of bounds, an array where an object belongs, a value the
//! kind's JSON Schema refuses — makes it answer `None`, and the caller reads
//! the body the general way ([`super::prepare_body_values`]), which decides
//! and words the refusal. When it accepts, the result is the one the general
//! way gives (same events, same errors for the checks that follow the
//! schema: origin, timestamp, correction target, size), which
//! `ingest/agreement.rs` checks against mutated bodies.
//!
//! Why it agrees with the schemas:
//! * the envelope: `Posted` has the fields of [`crate::api::EventInput`]
//!   (unknown fields refused, `schema` defaulting to 1) and `fits` checks the
//!   lengths and bounds `event-input.json` states;
//! * `data`: read into its kind type through [`crate::strict`] (objects
//!   only, unknown and duplicated fields refused, like the schema's
//!   `additionalProperties: false` and types; enums to their listed
//!   values), then the typed value is checked against what the schema adds
//!   to the type — lengths, ranges, item counts — by
//!   [`crate::kinds::WithinSchema`], with no JSON value built (a correction,
//!   rare, is written back and run through its schema). The typed value
//!   differs from the posted one only by optional fields given as `null`
//!   (dropped; the schemas allow `null` there) and integers in float fields
//!   (read as floats; the schemas say `number`), neither of which changes
//!   what the schema says.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    check_envelope, finish, Data, DataSource, Head, IngestContext, IngestError, PreparedEvent,
    TargetInfo,
};
use crate::kinds::{chars_within, EventRef};
use crate::strict;

/// `{"events": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow, deserialize_with = "strict::objects")]
    events: Vec<Posted<'a>>,
}

/// One posted event: the fields of [`crate::api::EventInput`], with `data`
/// left as text until the kind is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted<'a> {
    #[serde(default)]
    origin: Option<String>,
    kind: String,
    #[serde(default = "crate::api::schema_one")]
    schema: u32,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    grid: String,
    recorded_by: String,
    client_id: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Posted<'_> {
    /// The bounds of `event-input.json` (the `schemars` attributes of
    /// [`crate::api::EventInput`]), and `data` is an object — checked here,
    /// not left to the read of its kind type, because the envelope checks
    /// that come first must only be reached when the schema holds.
    fn fits(&self) -> bool {
        self.origin
            .as_deref()
            .is_none_or(|o| chars_within(o, 1, 64))
            && chars_within(&self.kind, 1, 32)
            && self.schema >= 1
            && chars_within(&self.occurred_at, 20, 40)
            && chars_within(&self.grid, 1, 64)
            && chars_within(&self.recorded_by, 1, 64)
            && chars_within(&self.client_id, 1, 128)
            && self.data.get().starts_with('{')
    }
}

/// The posted text of `data`, read strictly.
struct Text<'a>(&'a str);

impl DataSource for Text<'_> {
    fn read<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        strict::from_str(self.0).map_err(|e| e.to_string())
    }
}

/// A whole body the typed way; `None` to read it the general way.
pub(super) fn prepare_body(
    body: &[u8],
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Option<Result<Vec<PreparedEvent>, IngestError>> {
    let text = std::str::from_utf8(body).ok()?;
    // Both types deny unknown fields, so at most one reads a body: the
    // order only decides which is tried first. A phone's single event
    // (no `events` key first) is not made to fail as a batch before it
    // is read — building that error cost more than the check.
    let batch_first = text
        .trim_start()
        .strip_prefix('{')
        .is_some_and(|t| t.trim_start().starts_with("\"events\""));
    let one = || strict::from_str::<Posted<'_>>(text).ok().map(|e| vec![e]);
    let batch = || strict::from_str::<Batch<'_>>(text).ok().map(|b| b.events);
    // Neither: a body for the general way.
    let events = if batch_first {
        batch().or_else(one)
    } else {
        one().or_else(batch)
    }?;
    if events.is_empty() || events.len() > ctx.limits.batch_events_max {
        return None;
    }
    let mut out = Vec::with_capacity(events.len());
    for (i, posted) in events.into_iter().enumerate() {
        match prepare(posted, ctx, lookup_target)? {
            Ok(event) => out.push(event),
            Err(e) => return Some(Err(e.for_event(i))),
        }
    }
    Some(Ok(out))
}

/// One event the typed way: `None` to read it the general way, else what
/// the general way gives (without the salt).
fn prepare(
    posted: Posted<'_>,
    ctx: &IngestContext<'_>,
    lookup_target: &dyn Fn(&EventRef) -> Option<TargetInfo>,
) -> Option<Result<PreparedEvent, IngestError>> {
    if !posted.fits() {
        return None;
    }
    let occurred_at = match check_envelope(
        posted.origin.as_deref(),
        &posted.kind,
        posted.schema,
        &posted.occurred_at,
        ctx,
    ) {
        Ok(at) => at,
        Err(e) => return Some(Err(e)),
    };
    let data = Data::read(&posted.kind, posted.schema, Text(posted.data.get()))?.ok()?;
    if !data.within_schema() {
        return None;
    }
    let head = Head {
        kind: posted.kind,
        schema: posted.schema,
        occurred_at,
        grid: posted.grid,
        recorded_by: posted.recorded_by,
        client_id: posted.client_id,
    };
    Some(finish(head, data, ctx, lookup_target))
}
