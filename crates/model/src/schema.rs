//! The JSON Schema files of `schemas/`: generated from the Rust types,
//! embedded in the binary, and compiled once for ingest validation.

use std::sync::OnceLock;

use serde_json::Value;

use crate::{api, kinds};

/// `(file name, generated schema)` for every file this crate owns in
/// `schemas/`. The test `schema_files_match_types` keeps the files equal to
/// this list.
pub fn generated() -> Vec<(&'static str, Value)> {
    fn gen<T: schemars::JsonSchema>() -> Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("schema serializes")
    }
    vec![
        ("entry.v1.json", gen::<kinds::EntryV1>()),
        ("temperature.v1.json", gen::<kinds::TemperatureV1>()),
        ("visit.v1.json", gen::<kinds::VisitV1>()),
        ("delivery.v1.json", gen::<kinds::DeliveryV1>()),
        ("correction.v1.json", gen::<kinds::CorrectionV1>()),
        ("event-input.json", gen::<api::EventInput>()),
        ("post-events-request.json", gen::<api::PostEventsRequest>()),
        (
            "post-events-response.json",
            gen::<api::PostEventsResponse>(),
        ),
        ("error-response.json", gen::<api::ErrorResponse>()),
        ("event.json", gen::<api::EventView>()),
        ("events-page.json", gen::<api::EventsPage>()),
        ("status-response.json", gen::<api::StatusResponse>()),
    ]
}

/// The checked-in files, embedded at build time; ingest validates against
/// these exact texts.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "entry.v1.json",
        include_str!("../../../schemas/entry.v1.json"),
    ),
    (
        "temperature.v1.json",
        include_str!("../../../schemas/temperature.v1.json"),
    ),
    (
        "visit.v1.json",
        include_str!("../../../schemas/visit.v1.json"),
    ),
    (
        "delivery.v1.json",
        include_str!("../../../schemas/delivery.v1.json"),
    ),
    (
        "correction.v1.json",
        include_str!("../../../schemas/correction.v1.json"),
    ),
    (
        "event-input.json",
        include_str!("../../../schemas/event-input.json"),
    ),
];

struct Validators {
    event_input: jsonschema::Validator,
    data: Vec<((String, u32), jsonschema::Validator)>,
}

fn compile(name: &str) -> jsonschema::Validator {
    let text = EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .expect("schema embedded");
    let value: Value = serde_json::from_str(text).expect("embedded schema is JSON");
    jsonschema::validator_for(&value).expect("embedded schema compiles")
}

fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(|| {
        let mut data = Vec::new();
        for (kind, versions) in kinds::KINDS {
            for v in *versions {
                data.push((
                    ((*kind).to_owned(), *v),
                    compile(&format!("{kind}.v{v}.json")),
                ));
            }
        }
        Validators {
            event_input: compile("event-input.json"),
            data,
        }
    })
}

/// A schema violation: where and which rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the offending field (`data.person.name`), empty for
    /// the whole value.
    pub field: String,
    /// The JSON Schema keyword broken (`required`, `maximum`, `enum` …).
    pub rule: String,
    pub message: String,
}

fn violations(validator: &jsonschema::Validator, instance: &Value, prefix: &str) -> Vec<Violation> {
    // Most posted events are valid: `is_valid` stops at nothing and builds
    // no error (with paths and messages) on the way; only an invalid
    // instance is walked again to name every violation.
    if validator.is_valid(instance) {
        return Vec::new();
    }
    validator
        .iter_errors(instance)
        .map(|e| {
            let mut field: Vec<String> = Vec::new();
            if !prefix.is_empty() {
                field.push(prefix.to_owned());
            }
            field.extend(
                e.instance_path()
                    .as_str()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace("~1", "/").replace("~0", "~")),
            );
            match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    field.push(property.as_str().unwrap_or_default().to_owned());
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    if let Some(first) = unexpected.first() {
                        field.push(first.clone());
                    }
                }
                _ => {}
            }
            let mut message = e.to_string();
            if message.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|i| message.is_char_boundary(*i))
                    .unwrap_or(0);
                message.truncate(cut);
                message.push('…');
            }
            Violation {
                field: field.join("."),
                rule: e.kind().keyword().to_owned(),
                message,
            }
        })
        .collect()
}

/// Validates a posted event's envelope against `event-input.json`.
pub fn validate_event_input(instance: &Value) -> Vec<Violation> {
    violations(&validators().event_input, instance, "")
}

/// Validates `data` of `kind` at schema version `schema`. `None` when this
/// build has no such kind/version.
pub fn validate_data(
    kind: &str,
    schema: u32,
    data: &Value,
    prefix: &str,
) -> Option<Vec<Violation>> {
    let v = validators()
        .data
        .iter()
        .find(|((k, s), _)| k == kind && *s == schema)
        .map(|(_, v)| v)?;
    Some(violations(v, data, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    /// The checked-in schema files equal what the Rust types generate. Run
    /// with `GRIDSYNC_BLESS=1` to rewrite them after changing a type.
    #[test]
    fn schema_files_match_types() {
        let bless = std::env::var_os("GRIDSYNC_BLESS").is_some();
        let mut stale = Vec::new();
        for (name, value) in generated() {
            let path = schemas_dir().join(name);
            let want = serde_json::to_string_pretty(&value).unwrap() + "\n";
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                if bless {
                    std::fs::write(&path, &want).unwrap();
                } else {
                    stale.push(name);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "schemas/ disagrees with the Rust types for {stale:?}; \
             run `GRIDSYNC_BLESS=1 cargo test -p gridsync-model schema` and review the diff"
        );
    }

    #[test]
    fn embedded_files_are_the_checked_in_ones() {
        for (name, text) in EMBEDDED {
            let on_disk = std::fs::read_to_string(schemas_dir().join(name)).unwrap();
            assert_eq!(&on_disk, text, "{name}: rebuild after blessing");
        }
    }

    #[test]
    fn violations_name_field_and_rule() {
        let data = serde_json::json!({"person": {"name": "x"}, "celsius": 50.0, "site": "home", "extra": 1});
        let v = validate_data("temperature", 1, &data, "data").unwrap();
        let fields: Vec<_> = v
            .iter()
            .map(|v| (v.field.as_str(), v.rule.as_str()))
            .collect();
        assert!(fields.contains(&("data.celsius", "maximum")), "{v:?}");
        assert!(
            fields.contains(&("data.extra", "additionalProperties")),
            "{v:?}"
        );
        let missing = validate_data(
            "temperature",
            1,
            &serde_json::json!({"celsius": 36.5, "site": "home"}),
            "data",
        )
        .unwrap();
        assert_eq!(missing[0].field, "data.person");
        assert_eq!(missing[0].rule, "required");
        assert!(validate_data("nope", 1, &data, "data").is_none());
    }
}
