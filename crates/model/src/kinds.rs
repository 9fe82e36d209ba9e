//! Field-event kinds and their `data` (schema version 1).
//!
//! These types are the source of truth for `schemas/<kind>.v1.json`: the
//! files are generated from them (`GRIDSYNC_BLESS=1 cargo test -p
//! gridsync-model schema`) and a test fails when the two disagree.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
pub struct Person {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub id_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub phone: Option<String>,
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
pub struct EntryV1 {
    #[schemars(length(min = 1, max = 64))]
    pub checkpoint: String,
    pub direction: Direction,
    pub subject: Subject,
    #[serde(deserialize_with = "crate::strict::object")]
    pub person: Person,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub plate: Option<String>,
    /// Where the person comes from, e.g. "湖北省武汉市".
    #[schemars(length(min = 1, max = 128))]
    pub from_region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub purpose: Option<String>,
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
pub struct TemperatureV1 {
    #[serde(deserialize_with = "crate::strict::object")]
    pub person: Person,
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
pub struct VisitV1 {
    #[schemars(length(min = 1, max = 64))]
    pub household: String,
    pub method: VisitMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub residents: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symptoms: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub travel_regions: Option<Vec<String>>,
    pub quarantine: Quarantine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    #[schemars(length(min = 1, max = 64))]
    pub item: String,
    #[schemars(range(min = 1, max = 100000))]
    pub qty: u32,
}

/// `delivery` v1: supplies delivered to a household.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "delivery.v1")]
pub struct DeliveryV1 {
    #[schemars(length(min = 1, max = 64))]
    pub household: String,
    #[schemars(length(min = 1, max = 64))]
    #[serde(deserialize_with = "crate::strict::objects")]
    pub items: Vec<Item>,
    pub quarantined: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub note: Option<String>,
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
