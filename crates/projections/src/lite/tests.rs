//! The reader against a serde decode of the same fields (what the
//! projection used before), over envelopes whose `data` mixes the fields
//! the metrics read with other keys, `nil`s and values of the wrong type.

use gridsync_model::event::{Envelope, OccurredAt};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{DataLite, EnvLite};

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
struct ItemRef {
    qty: u64,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
struct TargetRef<'a> {
    #[serde(borrow)]
    origin: &'a str,
    seq: u64,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
struct DataRef<'a> {
    #[serde(borrow)]
    decision: Option<&'a str>,
    #[serde(borrow)]
    from_region: Option<&'a str>,
    celsius: Option<f64>,
    #[serde(borrow)]
    action: Option<&'a str>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    household: Option<&'a str>,
    #[serde(borrow)]
    quarantine: Option<&'a str>,
    quarantined: Option<bool>,
    items: Option<Vec<ItemRef>>,
    #[serde(borrow)]
    target: Option<TargetRef<'a>>,
    #[serde(borrow)]
    replacement: Option<Box<DataRef<'a>>>,
}

#[allow(dead_code)]
#[derive(Deserialize)]
struct EnvRef<'a>(
    u8,
    #[serde(borrow)] &'a str,
    u64,
    #[serde(borrow)] &'a str,
    u32,
    i64,
    IgnoredAny,
    i64,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    #[serde(borrow)] DataRef<'a>,
    IgnoredAny,
);

fn same_data(a: &DataLite<'_>, b: &DataRef<'_>) -> bool {
    let items = |i: &Option<Vec<super::ItemLite>>| {
        i.as_ref()
            .map(|v| v.iter().map(|x| ItemRef { qty: x.qty }).collect::<Vec<_>>())
    };
    let ours = a.target.map(|t| (t.origin.to_owned(), t.seq));
    let theirs = b.target.as_ref().map(|t| (t.origin.to_owned(), t.seq));
    a.decision == b.decision
        && a.from_region == b.from_region
        && a.celsius.map(f64::to_bits) == b.celsius.map(f64::to_bits)
        && a.action == b.action
        && a.method == b.method
        && a.household == b.household
        && a.quarantine == b.quarantine
        && a.quarantined == b.quarantined
        && items(&a.items) == b.items
        && ours == theirs
        && match (&a.replacement, &b.replacement) {
            (None, None) => true,
            (Some(x), Some(y)) => same_data(x, y),
            _ => false,
        }
}

fn envelope(kind: &str, data: Value, occurred: i64, recorded: i64) -> Vec<u8> {
    Envelope {
        origin: "c1".into(),
        seq: 7,
        kind: kind.into(),
        schema: 1,
        occurred_at: OccurredAt {
            unix_ms: occurred,
            offset_min: 480,
        },
        recorded_at_ms: recorded,
        grid: "g".into(),
        recorded_by: "w".into(),
        client_id: "cid".into(),
        prev: [3; 32],
        data,
        personal_digest: Some([4; 32]),
    }
    .encode()
}

/// Checks the reader against the serde decode on `bytes`.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = EnvLite::read(bytes);
    let theirs = rmp_serde::from_slice::<EnvRef<'_>>(bytes);
    match (ours, theirs) {
        (None, Err(_)) => Ok(()),
        (Some(a), Ok(b)) => {
            prop_assert_eq!(a.origin, b.1);
            prop_assert_eq!(a.seq, b.2);
            prop_assert_eq!(a.kind, b.3);
            prop_assert_eq!(a.schema, b.4);
            prop_assert_eq!(a.occurred_ms, b.5);
            // The fold's cut by event time reads only that field.
            prop_assert_eq!(super::occurred_ms(bytes), Some(b.5));
            prop_assert_eq!(a.recorded_ms, b.7);
            prop_assert!(same_data(&a.data, &b.12), "data differs: {:?}", b.12);
            Ok(())
        }
        (a, b) => Err(TestCaseError::fail(format!(
            "reader decodes: {}, serde decodes: {:?}",
            a.is_some(),
            b.err()
        ))),
    }
}

const KEYS: &[&str] = &[
    "decision",
    "from_region",
    "celsius",
    "action",
    "method",
    "household",
    "quarantine",
    "quarantined",
    "items",
    "target",
    "replacement",
    "other",
    "note",
];

/// Integers of every msgpack width, negative ones included.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -40i64..200,
        -70_000i64..70_000,
        -3_000_000_000i64..3_000_000_000,
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        int().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-50.0f64..50.0).prop_map(Value::from),
        "[a-z湖北]{0,6}".prop_map(Value::from),
    ]
}

fn value(depth: u32) -> BoxedStrategy<Value> {
    let leaf = scalar().boxed();
    if depth == 0 {
        return leaf;
    }
    prop_oneof![
        4 => leaf,
        1 => prop::collection::vec(
            prop_oneof![
                (0u64..1000).prop_map(|q| json!({ "qty": q })),
                (-5i64..5).prop_map(|q| json!({ "qty": q, "name": "x" })),
                scalar(),
            ],
            0..4
        )
        .prop_map(Value::from),
        1 => (any::<u64>(), "[a-z0-9]{0,4}")
            .prop_map(|(seq, origin)| json!({ "origin": origin, "seq": seq })),
        1 => data(depth - 1),
    ]
    .boxed()
}

fn data(depth: u32) -> BoxedStrategy<Value> {
    prop::collection::vec((0..KEYS.len(), value(depth)), 0..8)
        .prop_map(|kv| {
            let mut m = Map::new();
            for (k, v) in kv {
                m.insert(KEYS[k].to_owned(), v);
            }
            Value::Object(m)
        })
        .boxed()
}

/// Whether a struct-shaped field (`target`, `replacement`, an item of
/// `items`) holds an array: serde reads that as the struct's fields by
/// position, the reader does not (canonical data never holds one: the
/// kinds' schemas take objects there).
fn positional_struct(d: &Value) -> bool {
    let Some(m) = d.as_object() else {
        return false;
    };
    m.get("target").is_some_and(Value::is_array)
        || m.get("replacement")
            .is_some_and(|r| r.is_array() || positional_struct(r))
        || m.get("items")
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(Value::is_array))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_reader_agrees_with_serde(
        d in data(2),
        kind in prop_oneof![Just("entry"), Just("visit"), Just("delivery"), Just("correction")],
        occurred in int(),
        recorded in int(),
    ) {
        prop_assume!(!positional_struct(&d));
        let bytes = envelope(kind, d, occurred, recorded);
        agree(&bytes)?;
        // Every strict prefix ends early: neither decodes.
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            agree(&bytes[..cut])?;
        }
    }
}

#[test]
fn sample_events_decode_and_agree() {
    let cases = [
        (
            "entry",
            json!({"decision": "admitted", "from_region": "湖北武汉", "plate_region": "鄂"}),
        ),
        (
            "temperature",
            json!({"celsius": 37.5, "action": "referred"}),
        ),
        ("temperature", json!({"celsius": 36})),
        (
            "visit",
            json!({"household": "h-1", "method": "phone", "quarantine": "started"}),
        ),
        (
            "delivery",
            json!({"quarantined": true, "items": [{"qty": 2, "name": "rice"}, {"qty": 3}]}),
        ),
        (
            "correction",
            json!({"target": {"origin": "c1", "seq": 3}, "replacement": {"celsius": 36.5}}),
        ),
    ];
    for (kind, d) in cases {
        let bytes = envelope(kind, d.clone(), 1_580_000_000_000, 1_580_000_000_100);
        assert!(EnvLite::read(&bytes).is_some(), "{kind} {d}");
        agree(&bytes).unwrap();
    }
    // A field the metrics read with the wrong type: neither decodes.
    let bytes = envelope("visit", json!({"household": 5}), 0, 0);
    assert!(EnvLite::read(&bytes).is_none());
    agree(&bytes).unwrap();
}

/// An envelope written field by field, `data` given as raw key/value
/// pairs (a canonical encoder cannot write a repeated key).
fn raw_envelope(pairs: &[(&str, &str)]) -> Vec<u8> {
    use rmp::encode as e;
    let mut w = Vec::new();
    e::write_array_len(&mut w, 14).unwrap();
    e::write_uint(&mut w, 1).unwrap();
    e::write_str(&mut w, "c1").unwrap();
    e::write_uint(&mut w, 7).unwrap();
    e::write_str(&mut w, "visit").unwrap();
    e::write_uint(&mut w, 1).unwrap();
    e::write_sint(&mut w, -5).unwrap();
    e::write_sint(&mut w, 480).unwrap();
    e::write_sint(&mut w, 1_580_000_000_000).unwrap();
    for s in ["g", "w", "cid"] {
        e::write_str(&mut w, s).unwrap();
    }
    e::write_bin(&mut w, &[3; 32]).unwrap();
    e::write_map_len(&mut w, u32::try_from(pairs.len()).unwrap()).unwrap();
    for (k, v) in pairs {
        e::write_str(&mut w, k).unwrap();
        e::write_str(&mut w, v).unwrap();
    }
    e::write_nil(&mut w).unwrap();
    w
}

#[test]
fn a_repeated_key_is_refused_like_serde_refuses_it() {
    let once = raw_envelope(&[("household", "a"), ("note", "x")]);
    let lite = EnvLite::read(&once).expect("decodes");
    assert_eq!(lite.data.household, Some("a"));
    assert_eq!(lite.occurred_ms, -5);
    agree(&once).unwrap();
    let twice = raw_envelope(&[("household", "a"), ("household", "b")]);
    assert!(EnvLite::read(&twice).is_none());
    agree(&twice).unwrap();
    // Unknown keys may repeat (both skip them).
    let unknown = raw_envelope(&[("note", "a"), ("note", "b")]);
    agree(&unknown).unwrap();
}
