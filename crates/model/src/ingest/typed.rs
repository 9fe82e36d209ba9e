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
//!   (unknown, duplicated and missing fields refused, `origin` absent or
//!   null, `schema` defaulting to 1) and `fits` checks the
//!   lengths and bounds `event-input.json` states;
//! * `data`: read into its kind type — where the reader meets it when the
//!   event named its `kind` first, else from its text once the kind is
//!   known — through [`crate::strict`] (objects only, unknown and
//!   duplicated fields refused, like the schema's
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

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    check_envelope, finish, Data, DataSource, Head, IngestContext, IngestError, PreparedEvent,
    TargetInfo,
};
use crate::kinds::{chars_within, EventRef};
use crate::strict;

/// `{"events": [...]}`, each event handed to `each` as it is read and the
/// array refused past `max` of them: a visitor rather than a derived
/// struct because a derived field cannot be given either. Its value is
/// how many events the array held.
struct Batch<F> {
    max: usize,
    each: F,
}

impl<'de, F: FnMut(Posted<'de>)> DeserializeSeed<'de> for Batch<F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Posted<'de>)> Visitor<'de> for Batch<F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"{"events": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let Batch { max, mut each } = self;
        let mut events = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "events" {
                return Err(de::Error::unknown_field(&key, &["events"]));
            }
            if events.is_some() {
                return Err(de::Error::duplicate_field("events"));
            }
            events = Some(map.next_value_seed(strict::EachObject::new(max, &mut each))?);
        }
        events.ok_or_else(|| de::Error::missing_field("events"))
    }
}

/// One posted event: the fields of [`crate::api::EventInput`].
/// Its text is borrowed from the body where it can be; `client_id` is
/// owned, as the log writer keeps it in the client-id index.
struct Posted<'a> {
    origin: Option<Cow<'a, str>>,
    kind: Cow<'a, str>,
    schema: u32,
    occurred_at: Cow<'a, str>,
    grid: Cow<'a, str>,
    recorded_by: Cow<'a, str>,
    client_id: String,
    data: PostedData<'a>,
}

/// A posted event's `data`: read into its kind's type as it is met when
/// the event named its kind before it (as clients write events), else
/// kept as text to be read once the kind is known. Read in place, the
/// text is scanned once instead of twice (once to find where it ends,
/// once to read it).
enum PostedData<'a> {
    /// Read as the kind's version 1, the version the event names unless it
    /// says otherwise after `data` (the read is then set aside).
    Read(Data<'a>),
    Raw(&'a RawValue),
}

/// The fields of an event, as [`crate::api::EventInput`] names them; any
/// other is refused.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Origin,
    Kind,
    Schema,
    OccurredAt,
    Grid,
    RecordedBy,
    ClientId,
    Data,
}

/// The schema version of a data read before the event named one.
const READ_AS_SCHEMA: u32 = 1;

/// `data` read as `kind`'s type, or kept as text when this build has no
/// type for it (the envelope check words that refusal).
struct DataSeed<'k> {
    kind: &'k str,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = PostedData<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PostedData<'de>, D::Error> {
        if !Data::has_type(self.kind, READ_AS_SCHEMA) {
            return <&RawValue>::deserialize(d).map(PostedData::Raw);
        }
        Data::read(self.kind, READ_AS_SCHEMA, Inline(d))
            .expect("a type for the kind")
            .map(PostedData::Read)
            .map_err(de::Error::custom)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Posted<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PostedVisitor(std::marker::PhantomData))
    }
}

struct PostedVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PostedVisitor<'a> {
    type Value = Posted<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    /// As serde's derive with `deny_unknown_fields` reads the fields
    /// (unknown, duplicated or missing ones refused; `origin` may be
    /// absent or null, `schema` absent means 1), with `data` read in place
    /// when the kind came first.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
            if slot.is_some() {
                return Err(E::duplicate_field(name));
            }
            *slot = Some(v);
            Ok(())
        }
        let mut origin: Option<Option<Cow<'a, str>>> = None;
        let mut kind: Option<Cow<'a, str>> = None;
        let mut schema: Option<u32> = None;
        let mut occurred_at: Option<Cow<'a, str>> = None;
        let (mut grid, mut recorded_by, mut client_id) = (None, None, None);
        let mut data: Option<PostedData<'a>> = None;
        /// The next value as a string borrowed from the body unless escaped.
        fn text<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Cow<'de, str>, A::Error> {
            Ok(map.next_value::<strict::Borrowed<'de>>()?.0)
        }
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Origin => once(
                    &mut origin,
                    "origin",
                    map.next_value::<Option<strict::Borrowed<'a>>>()?
                        .map(|b| b.0),
                )?,
                Field::Kind => once(&mut kind, "kind", text(&mut map)?)?,
                Field::Schema => once(&mut schema, "schema", map.next_value()?)?,
                Field::OccurredAt => once(&mut occurred_at, "occurred_at", text(&mut map)?)?,
                Field::Grid => once(&mut grid, "grid", text(&mut map)?)?,
                Field::RecordedBy => once(&mut recorded_by, "recorded_by", text(&mut map)?)?,
                Field::ClientId => once(&mut client_id, "client_id", map.next_value()?)?,
                Field::Data => {
                    let value = match kind.as_deref() {
                        Some(kind) => map.next_value_seed(DataSeed { kind })?,
                        None => PostedData::Raw(map.next_value()?),
                    };
                    once(&mut data, "data", value)?;
                }
            }
        }
        let missing = de::Error::missing_field;
        Ok(Posted {
            origin: origin.flatten(),
            kind: kind.ok_or_else(|| missing("kind"))?,
            schema: schema.unwrap_or(crate::api::schema_one()),
            occurred_at: occurred_at.ok_or_else(|| missing("occurred_at"))?,
            grid: grid.ok_or_else(|| missing("grid"))?,
            recorded_by: recorded_by.ok_or_else(|| missing("recorded_by"))?,
            client_id: client_id.ok_or_else(|| missing("client_id"))?,
            data: data.ok_or_else(|| missing("data"))?,
        })
    }
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
            && match &self.data {
                PostedData::Read(_) => true,
                PostedData::Raw(raw) => raw.get().starts_with('{'),
            }
    }
}

/// The posted text of `data`, read strictly.
struct Text<'a>(&'a str);

impl<'a> DataSource<'a> for Text<'a> {
    fn read<T: Deserialize<'a>>(self) -> Result<T, String> {
        strict::from_str(self.0).map_err(|e| e.to_string())
    }
}

/// `data` where the reader of the event stands, read strictly.
struct Inline<D>(D);

impl<'de, D: Deserializer<'de>> DataSource<'de> for Inline<D> {
    fn read<T: Deserialize<'de>>(self) -> Result<T, String> {
        strict::object(self.0).map_err(|e| e.to_string())
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
    let one = || {
        let mut events = Prepared::new(1, ctx, lookup_target);
        strict::from_str::<Posted<'_>>(text)
            .ok()
            .map(|posted| events.add(posted))?;
        Some(events)
    };
    // Each event prepared as it is read, into room for as many as the
    // body could hold at ~200 bytes each (the sample mix's are ~300), and
    // never more than the limit; past the limit the read stops (the
    // general way words the refusal).
    let max = ctx.limits.batch_events_max;
    let batch = || {
        let mut events = Prepared::new((text.len() / 200).min(max), ctx, lookup_target);
        let each = |posted| events.add(posted);
        strict::from_str_seed(text, Batch { max, each }).ok()?;
        Some(events)
    };
    // Neither: a body for the general way.
    let events = if batch_first {
        batch().or_else(one)
    } else {
        one().or_else(batch)
    }?;
    events.verdict()
}

/// A body's events prepared in the order they are read, until the first
/// that fails: with an error, or by needing the general way (which then
/// reads the whole body). Nothing after it is prepared, as when the
/// events were prepared after the whole body was read — only read, so
/// that a body that turns out malformed further on still goes the
/// general way.
struct Prepared<'c, 'x> {
    events: Vec<PreparedEvent>,
    /// Events read so far.
    read: usize,
    /// Why preparing stopped, if it did.
    stopped: Option<Stop>,
    ctx: &'c IngestContext<'x>,
    lookup_target: &'c dyn Fn(&EventRef) -> Option<TargetInfo>,
}

impl<'c, 'x> Prepared<'c, 'x> {
    fn new(
        room: usize,
        ctx: &'c IngestContext<'x>,
        lookup_target: &'c dyn Fn(&EventRef) -> Option<TargetInfo>,
    ) -> Self {
        Self {
            events: Vec::with_capacity(room),
            read: 0,
            stopped: None,
            ctx,
            lookup_target,
        }
    }

    fn add(&mut self, posted: Posted<'_>) {
        let index = self.read;
        self.read += 1;
        if self.stopped.is_some() {
            return;
        }
        match prepare(posted, self.ctx, self.lookup_target) {
            Some(Ok(event)) => self.events.push(event),
            Some(Err(e)) => self.stopped = Some(Stop::Refused(e.for_event(index))),
            None => self.stopped = Some(Stop::GeneralWay),
        }
    }

    /// What the body gives: its events, the first event's error, or `None`
    /// for the general way (also for an empty batch or one over the
    /// limit, which the general way words).
    fn verdict(self) -> Option<Result<Vec<PreparedEvent>, IngestError>> {
        if self.read == 0 || self.read > self.ctx.limits.batch_events_max {
            return None;
        }
        match self.stopped {
            None => Some(Ok(self.events)),
            Some(Stop::Refused(e)) => Some(Err(e)),
            Some(Stop::GeneralWay) => None,
        }
    }
}

/// Why [`Prepared`] stopped preparing a body's events.
enum Stop {
    /// An event was refused, with this error (its index set).
    Refused(IngestError),
    /// An event needs the general way, and so does the body.
    GeneralWay,
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
    let (kind, occurred_at) = match check_envelope(
        posted.origin.as_deref(),
        &posted.kind,
        posted.schema,
        &posted.occurred_at,
        ctx,
    ) {
        Ok(at) => at,
        Err(e) => return Some(Err(e)),
    };
    let data = match posted.data {
        PostedData::Read(data) if posted.schema == READ_AS_SCHEMA => data,
        // Read as a version the event then did not name: the general way.
        PostedData::Read(_) => return None,
        PostedData::Raw(raw) => Data::read(&posted.kind, posted.schema, Text(raw.get()))?.ok()?,
    };
    if !data.within_schema() {
        return None;
    }
    let head = Head {
        kind,
        schema: posted.schema,
        occurred_at,
        grid: &posted.grid,
        recorded_by: &posted.recorded_by,
        client_id: posted.client_id,
    };
    Some(finish(head, data, ctx, lookup_target))
}
