//! Field-event kinds and their `data` (schema version 1).
//!
//! These types are the source of truth for `schemas/<kind>.v1.json`: the
//! files are generated from them (`GRIDSYNC_BLESS=1 cargo test -p
//! gridsync-model schema`) and a test fails when the two disagree.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::strict::{opt_text, opt_texts};

/// The kinds this build understands, with the schema versions of each.
pub const KINDS: &[(&str, &[u32])] = &[
    ("entry", &[1]),
    ("temperature", &[1]),
    ("visit", &[1]),
    ("delivery", &[1]),
    ("correction", &[1]),
];

/// The person an entry or a temperature reading is about. Personal data:
/// kept at the community, withholdable above it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Person<'a> {
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 64))]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub id_number: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub phone: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Resident,
    Visitor,
    Vehicle,
}

/// What the checkpoint did: let in, turned back (劝返), or referred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryDecision {
    Admitted,
    TurnedBack,
    Referred,
}

/// `entry` v1: a person or vehicle registered at a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "entry.v1")]
pub struct EntryV1<'a> {
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 64))]
    pub checkpoint: Cow<'a, str>,
    pub direction: Direction,
    pub subject: Subject,
    #[serde(borrow, deserialize_with = "crate::strict::object")]
    pub person: Person<'a>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub plate: Option<Cow<'a, str>>,
    /// Where the person comes from, e.g. "湖北省武汉市".
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 128))]
    pub from_region: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub purpose: Option<Cow<'a, str>>,
    pub decision: EntryDecision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30.0, max = 45.0))]
    pub celsius: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    Checkpoint,
    Home,
    Clinic,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TemperatureAction {
    None,
    Recheck,
    Referred,
}

/// `temperature` v1: a body-temperature reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "temperature.v1")]
pub struct TemperatureV1<'a> {
    #[serde(borrow, deserialize_with = "crate::strict::object")]
    pub person: Person<'a>,
    #[schemars(range(min = 30.0, max = 45.0))]
    pub celsius: f64,
    pub site: Site,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<TemperatureAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VisitMethod {
    InPerson,
    Phone,
}

/// Home-quarantine status (居家隔离) found at a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quarantine {
    None,
    Started,
    Ongoing,
    Ended,
}

/// `visit` v1: a household visit, in person or by phone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "visit.v1")]
pub struct VisitV1<'a> {
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 64))]
    pub household: Cow<'a, str>,
    pub method: VisitMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub residents: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symptoms: Option<bool>,
    #[serde(borrow, default, deserialize_with = "opt_texts")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub travel_regions: Option<Vec<Cow<'a, str>>>,
    pub quarantine: Quarantine,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub note: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Item<'a> {
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 64))]
    pub item: Cow<'a, str>,
    #[schemars(range(min = 1, max = 100000))]
    pub qty: u32,
}

/// `delivery` v1: supplies delivered to a household.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "delivery.v1")]
pub struct DeliveryV1<'a> {
    #[serde(borrow)]
    #[schemars(length(min = 1, max = 64))]
    pub household: Cow<'a, str>,
    #[schemars(length(min = 1, max = 64))]
    #[serde(borrow, deserialize_with = "crate::strict::objects")]
    pub items: Vec<Item<'a>>,
    pub quarantined: bool,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub note: Option<Cow<'a, str>>,
}

/// The event a correction applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRef {
    #[schemars(length(min = 1, max = 64))]
    pub origin: String,
    #[schemars(range(min = 1))]
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionAction {
    Void,
    Replace,
}

/// `correction` v1: voids or replaces an earlier event of the same origin.
/// `replacement` is the corrected `data`, validated against the schema of the
/// target's kind; it is required for `replace` and forbidden for `void`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "correction.v1")]
pub struct CorrectionV1 {
    #[serde(deserialize_with = "crate::strict::object")]
    pub target: EventRef,
    pub action: CorrectionAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<serde_json::Map<String, serde_json::Value>>,
    #[schemars(length(min = 1, max = 500))]
    pub reason: String,
}

/// Characters (not bytes: JSON Schema counts code points) within bounds.
pub(crate) fn chars_within(s: &str, min: usize, max: usize) -> bool {
    // A char is 1–4 bytes, so chars <= bytes <= 4 * chars: most strings
    // are decided without counting.
    if s.len() < min {
        return false;
    }
    if s.len() <= max && s.len() >= 4 * min {
        return true;
    }
    (min..=max).contains(&s.chars().count())
}

fn opt_chars_within(s: Option<&Cow<'_, str>>, min: usize, max: usize) -> bool {
    s.is_none_or(|s| chars_within(s, min, max))
}

/// The bounds the `schemars` attributes above state (lengths, ranges, item
/// counts), checked on a value of the kind's type: what its JSON Schema
/// adds to the type itself. Ingest's typed path checks a posted event's
/// data with this instead of running the schema over it; the agreement
/// test in `ingest` and `bounds_agree_with_the_schemas` below hold the two
/// together.
pub(crate) trait WithinSchema {
    fn within_schema(&self) -> bool;
}

impl WithinSchema for Person<'_> {
    fn within_schema(&self) -> bool {
        chars_within(&self.name, 1, 64)
            && opt_chars_within(self.id_number.as_ref(), 1, 32)
            && opt_chars_within(self.phone.as_ref(), 1, 32)
    }
}

fn celsius_within(c: f64) -> bool {
    (30.0..=45.0).contains(&c)
}

impl WithinSchema for EntryV1<'_> {
    fn within_schema(&self) -> bool {
        chars_within(&self.checkpoint, 1, 64)
            && self.person.within_schema()
            && opt_chars_within(self.plate.as_ref(), 1, 16)
            && chars_within(&self.from_region, 1, 128)
            && opt_chars_within(self.purpose.as_ref(), 1, 256)
            && self.celsius.is_none_or(celsius_within)
    }
}

impl WithinSchema for TemperatureV1<'_> {
    fn within_schema(&self) -> bool {
        self.person.within_schema() && celsius_within(self.celsius)
    }
}

impl WithinSchema for VisitV1<'_> {
    fn within_schema(&self) -> bool {
        chars_within(&self.household, 1, 64)
            && self.residents.is_none_or(|r| r <= 100)
            && self
                .travel_regions
                .as_ref()
                .is_none_or(|t| t.len() <= 32 && t.iter().all(|r| chars_within(r, 1, 128)))
            && opt_chars_within(self.note.as_ref(), 0, 2000)
    }
}

impl WithinSchema for DeliveryV1<'_> {
    fn within_schema(&self) -> bool {
        chars_within(&self.household, 1, 64)
            && (1..=64).contains(&self.items.len())
            && self
                .items
                .iter()
                .all(|i| chars_within(&i.item, 1, 64) && (1..=100_000).contains(&i.qty))
            && opt_chars_within(self.note.as_ref(), 0, 2000)
    }
}

#[cfg(test)]
pub(crate) mod arb {
    //! Values of the kind types, on and just past every bound their
    //! schemas state.
    use super::*;
    use proptest::prelude::*;

    /// Lengths on and beside every bound of the schemas.
    const LENGTHS: &[usize] = &[
        0, 1, 2, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 2000, 2001,
    ];

    /// A string of a bound-ish length, of one- or three-byte characters
    /// (schemas count characters), or any short string.
    pub(crate) fn text() -> BoxedStrategy<String> {
        prop_oneof![
            (
                prop::sample::select(LENGTHS),
                prop::sample::select(vec!["x", "湖", "é"])
            )
                .prop_map(|(n, c)| c.repeat(n)),
            ".{0,12}",
        ]
        .boxed()
    }

    /// [`text`] as a kind type's field holds it.
    fn cow() -> BoxedStrategy<Cow<'static, str>> {
        text().prop_map(Cow::Owned).boxed()
    }

    pub(crate) fn celsius() -> impl Strategy<Value = f64> {
        prop_oneof![
            prop::sample::select(vec![29.99, 30.0, 36.6, 37.0, 45.0, 45.01, -0.0, 0.0, 1e300]),
            any::<f64>(),
        ]
    }

    fn count() -> BoxedStrategy<u32> {
        prop_oneof![
            prop::sample::select(vec![0u32, 1, 99, 100, 101, 100_000, 100_001, u32::MAX]),
            any::<u32>(),
        ]
        .boxed()
    }

    /// A list of a bound-ish length.
    fn list<T: std::fmt::Debug + Clone>(
        item: impl Strategy<Value = T> + Clone,
    ) -> impl Strategy<Value = Vec<T>> {
        prop::sample::select(vec![0usize, 1, 2, 32, 33, 64, 65])
            .prop_flat_map(move |n| prop::collection::vec(item.clone(), n))
    }

    fn person() -> impl Strategy<Value = Person<'static>> {
        (cow(), prop::option::of(cow()), prop::option::of(cow())).prop_map(
            |(name, id_number, phone)| Person {
                name,
                id_number,
                phone,
            },
        )
    }

    pub(crate) fn entry() -> impl Strategy<Value = EntryV1<'static>> {
        (
            (
                cow(),
                prop::sample::select(vec![Direction::In, Direction::Out]),
            ),
            prop::sample::select(vec![Subject::Resident, Subject::Visitor, Subject::Vehicle]),
            person(),
            (prop::option::of(cow()), cow(), prop::option::of(cow())),
            prop::sample::select(vec![
                EntryDecision::Admitted,
                EntryDecision::TurnedBack,
                EntryDecision::Referred,
            ]),
            prop::option::of(celsius()),
        )
            .prop_map(
                |(
                    (checkpoint, direction),
                    subject,
                    person,
                    (plate, from_region, purpose),
                    decision,
                    celsius,
                )| {
                    EntryV1 {
                        checkpoint,
                        direction,
                        subject,
                        person,
                        plate,
                        from_region,
                        purpose,
                        decision,
                        celsius,
                    }
                },
            )
    }

    pub(crate) fn temperature() -> impl Strategy<Value = TemperatureV1<'static>> {
        (
            person(),
            celsius(),
            prop::sample::select(vec![
                Site::Checkpoint,
                Site::Home,
                Site::Clinic,
                Site::Other,
            ]),
            prop::option::of(prop::sample::select(vec![
                TemperatureAction::None,
                TemperatureAction::Recheck,
                TemperatureAction::Referred,
            ])),
        )
            .prop_map(|(person, celsius, site, action)| TemperatureV1 {
                person,
                celsius,
                site,
                action,
            })
    }

    pub(crate) fn visit() -> impl Strategy<Value = VisitV1<'static>> {
        (
            cow(),
            prop::sample::select(vec![VisitMethod::InPerson, VisitMethod::Phone]),
            prop::option::of(count()),
            prop::option::of(any::<bool>()),
            prop::option::of(list(cow())),
            prop::sample::select(vec![
                Quarantine::None,
                Quarantine::Started,
                Quarantine::Ongoing,
                Quarantine::Ended,
            ]),
            prop::option::of(cow()),
        )
            .prop_map(
                |(household, method, residents, symptoms, travel_regions, quarantine, note)| {
                    VisitV1 {
                        household,
                        method,
                        residents,
                        symptoms,
                        travel_regions,
                        quarantine,
                        note,
                    }
                },
            )
    }

    pub(crate) fn delivery() -> impl Strategy<Value = DeliveryV1<'static>> {
        (
            cow(),
            list(
                (cow(), count())
                    .prop_map(|(item, qty)| Item { item, qty })
                    .boxed(),
            ),
            any::<bool>(),
            prop::option::of(cow()),
        )
            .prop_map(|(household, items, quarantined, note)| DeliveryV1 {
                household,
                items,
                quarantined,
                note,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the JSON Schema says of the value written back as JSON.
    fn schema_says<T: Serialize>(kind: &str, value: &T) -> bool {
        let v = serde_json::to_value(value).unwrap();
        crate::schema::validate_data(kind, 1, &v, "data")
            .unwrap()
            .is_empty()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// `WithinSchema` says what the kind's JSON Schema says, on both
        /// sides of every bound.
        #[test]
        fn bounds_agree_with_the_schemas(
            e in arb::entry(),
            t in arb::temperature(),
            v in arb::visit(),
            d in arb::delivery(),
        ) {
            prop_assert_eq!(e.within_schema(), schema_says("entry", &e), "{:?}", e);
            prop_assert_eq!(t.within_schema(), schema_says("temperature", &t), "{:?}", t);
            prop_assert_eq!(v.within_schema(), schema_says("visit", &v), "{:?}", v);
            prop_assert_eq!(d.within_schema(), schema_says("delivery", &d), "{:?}", d);
        }
    }

    /// Every bound any kind's schema states, probed at every field of the
    /// matching type: the base values carry every optional field, and each
    /// string, number and list is set in turn to each bound the schema
    /// files name, one below and one above it. A limit added to a kind
    /// type (its `schemars` attribute, so its schema) and not to
    /// `WithinSchema` fails here whatever its value.
    #[test]
    fn within_schema_follows_every_bound_the_schemas_name() {
        use serde_json::{json, Value};
        let person = json!({"name": "张三", "id_number": "370202", "phone": "13800000000"});
        let bases = [
            (
                "entry",
                json!({"checkpoint": "cp1", "direction": "in", "subject": "resident",
                "person": person, "plate": "鲁B12345", "from_region": "湖北省武汉市",
                "purpose": "返乡", "decision": "referred", "celsius": 37.0}),
            ),
            (
                "temperature",
                json!({"person": person, "celsius": 36.6, "site": "home", "action": "recheck"}),
            ),
            (
                "visit",
                json!({"household": "h1", "method": "in_person", "residents": 3,
                "symptoms": false, "travel_regions": ["湖北省"], "quarantine": "ongoing", "note": "正常"}),
            ),
            (
                "delivery",
                json!({"household": "h2", "items": [{"item": "大米", "qty": 2}],
                "quarantined": true, "note": "门口"}),
            ),
        ];
        // Every number a bound keyword names in the kinds' schema files.
        let mut bounds: Vec<f64> = Vec::new();
        fn collect(v: &Value, out: &mut Vec<f64>) {
            match v {
                Value::Object(m) => {
                    for (k, c) in m {
                        let keyword = [
                            "minLength",
                            "maxLength",
                            "minItems",
                            "maxItems",
                            "minimum",
                            "maximum",
                            "exclusiveMinimum",
                            "exclusiveMaximum",
                        ];
                        match c.as_f64() {
                            Some(b) if keyword.contains(&k.as_str()) => out.push(b),
                            _ => collect(c, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
                _ => {}
            }
        }
        for (name, schema) in crate::schema::generated() {
            if bases.iter().any(|(k, _)| name == format!("{k}.v1.json")) {
                collect(&schema, &mut bounds);
            }
        }
        assert!(bounds.len() >= 10, "bounds found: {bounds:?}");
        let mut probes: Vec<f64> = bounds
            .iter()
            .flat_map(|b| [b - 1.0, b - 0.01, *b, b + 0.01, b + 1.0])
            .filter(|p| *p >= 0.0)
            .collect();
        probes.sort_by(f64::total_cmp);
        probes.dedup();
        // Every path to a value inside `v`.
        fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
            let children: Vec<(Value, &Value)> = match v {
                Value::Object(m) => m.iter().map(|(k, c)| (json!(k), c)).collect(),
                Value::Array(a) => a.iter().enumerate().map(|(i, c)| (json!(i), c)).collect(),
                _ => return,
            };
            for (seg, c) in children {
                at.push(seg);
                out.push(at.clone());
                paths(c, at, out);
                at.pop();
            }
        }
        let (mut checked, mut refused) = (0, 0);
        for (kind, base) in &bases {
            let mut all = Vec::new();
            paths(base, &mut Vec::new(), &mut all);
            for path in all {
                for probe in &probes {
                    let mut v = base.clone();
                    let slot = path.iter().fold(&mut v, |v, seg| match seg {
                        Value::String(k) => &mut v[k.as_str()],
                        seg => &mut v[seg.as_u64().unwrap() as usize],
                    });
                    let n = *probe as usize;
                    *slot = match slot {
                        Value::String(_) if probe.fract() == 0.0 => json!("湖".repeat(n)),
                        // Whole probes as integers: the integer fields'
                        // types refuse a float.
                        Value::Number(_) if probe.fract() == 0.0 => json!(n),
                        Value::Number(_) => json!(probe),
                        Value::Array(a) if probe.fract() == 0.0 && n <= 100 => {
                            Value::Array(vec![a[0].clone(); n])
                        }
                        _ => continue,
                    };
                    let says = crate::schema::validate_data(kind, 1, &v, "data")
                        .unwrap()
                        .is_empty();
                    let within = match *kind {
                        "entry" => EntryV1::deserialize(&v).map(|d| d.within_schema()),
                        "temperature" => TemperatureV1::deserialize(&v).map(|d| d.within_schema()),
                        "visit" => VisitV1::deserialize(&v).map(|d| d.within_schema()),
                        _ => DeliveryV1::deserialize(&v).map(|d| d.within_schema()),
                    };
                    // A value the type itself refuses (a fraction where an
                    // integer belongs) never reaches `WithinSchema`.
                    let Ok(within) = within else { continue };
                    assert_eq!(within, says, "{kind} {path:?} = {probe}: {v}");
                    checked += 1;
                    refused += usize::from(!says);
                }
            }
        }
        assert!(
            checked > 500 && refused > 100,
            "{checked} probes, {refused} refused"
        );
    }

    /// The generators reach both sides: a check that always said yes (or
    /// no) would not pass the test above by agreeing with a schema that
    /// refuses everything.
    #[test]
    fn the_bound_probes_reach_both_sides() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut yes, mut no) = (0, 0);
        for _ in 0..2000 {
            let t = arb::temperature().new_tree(&mut runner).unwrap().current();
            let d = arb::delivery().new_tree(&mut runner).unwrap().current();
            for ok in [t.within_schema(), d.within_schema()] {
                if ok {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
        }
        assert!(yes > 200 && no > 200, "within {yes}, outside {no}");
    }
}
