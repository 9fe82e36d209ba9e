//! Canonical msgpack encoding of JSON-like values.
//!
//! Rules (they make the encoding a function of the value, so equal values
//! always hash equal):
//!
//! * every length header and integer uses the shortest msgpack form
//!   (`rmp::encode::write_uint` / `write_sint` / `write_str_len` …);
//! * JSON integers stay integers (`u64` or negative `i64`), every other
//!   number is a float64 (always 9 bytes);
//! * maps are written with their keys sorted by their UTF-8 bytes, whatever
//!   order the source had;
//! * `null`, booleans, strings and arrays map one to one.
//!
//! Decoding checks canonicity by encoding the decoded value again and
//! comparing bytes, so two different byte strings never pass as one value.
//!
//! [`to_canonical_split`] (`canonical/typed.rs`) gives the same bytes
//! straight from a Rust value, without the JSON value in between: what
//! ingest encodes a posted event's `data` with.

use serde_json::Value;

mod typed;

pub use typed::{to_canonical_split, to_canonical_split_after, Unencodable};

/// Appends the canonical encoding of `value` to `out`.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    // Writes to a Vec cannot fail; the `expect`s document that.
    match value {
        Value::Null => rmp::encode::write_nil(out).expect("vec write"),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).expect("vec write"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(out, u).expect("vec write");
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(out, i).expect("vec write");
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                rmp::encode::write_f64(out, f).expect("vec write");
            }
        }
        Value::String(s) => rmp::encode::write_str(out, s).expect("vec write"),
        Value::Array(items) => {
            write_len(out, items.len(), rmp::encode::write_array_len);
            for item in items {
                encode_value(out, item);
            }
        }
        Value::Object(map) => {
            write_len(out, map.len(), rmp::encode::write_map_len);
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (k, v) in entries {
                rmp::encode::write_str(out, k).expect("vec write");
                encode_value(out, v);
            }
        }
    }
}

fn write_len(
    out: &mut Vec<u8>,
    len: usize,
    f: fn(&mut Vec<u8>, u32) -> Result<rmp::Marker, rmp::encode::ValueWriteError>,
) {
    let len = u32::try_from(len).expect("collections are far below 2^32 items");
    f(out, len).expect("vec write");
}

/// Canonical bytes of `value`.
pub fn to_canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_value(&mut out, value);
    out
}

/// Decodes canonical msgpack into a JSON value.
///
/// # Errors
/// When the bytes are not msgpack, hold a type JSON lacks (binary, non-string
/// map keys), or are msgpack but not in canonical form.
pub fn from_canonical(bytes: &[u8]) -> Result<Value, String> {
    let value: Value = rmp_serde::from_slice(bytes).map_err(|e| format!("not msgpack: {e}"))?;
    if to_canonical(&value) != bytes {
        return Err("msgpack is not in canonical form".to_owned());
    }
    Ok(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_ints_short() {
        let a = to_canonical(&json!({"b": 1, "a": [true, null, -3, 36.5, "x"]}));
        assert_eq!(
            hex::encode(&a),
            "82a16195c3c0fdcb4042400000000000a178a16201"
        );
        // The same value built in another key order encodes identically.
        let mut m = serde_json::Map::new();
        m.insert("a".into(), json!([true, null, -3, 36.5, "x"]));
        m.insert("b".into(), json!(1));
        assert_eq!(to_canonical(&Value::Object(m)), a);
    }

    #[test]
    fn rejects_non_canonical() {
        // 1 written as a uint16 instead of a positive fixint.
        assert!(from_canonical(&[0xcd, 0x00, 0x01]).is_err());
        assert_eq!(from_canonical(&[0x01]).unwrap(), json!(1));
        // Map keys out of order.
        let unsorted = [0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x02];
        assert!(from_canonical(&unsorted).is_err());
    }

    /// Any JSON value, nested a few levels (also the envelope check's).
    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(|u| json!(u)),
            any::<i64>().prop_map(|i| json!(i)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What ingest did before [`to_canonical_split`]: the JSON value of
    /// `value`, its personal fields split off, each part encoded.
    fn value_way<T: serde::Serialize>(value: &T) -> (Vec<u8>, Option<Vec<u8>>) {
        let Value::Object(mut data) = serde_json::to_value(value).unwrap() else {
            panic!("not an object")
        };
        let personal = crate::event::split_personal(&mut data);
        let personal = (!personal.is_empty()).then(|| to_canonical(&Value::Object(personal)));
        (to_canonical(&Value::Object(data)), personal)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Encoded straight from the kind types, the bytes are the JSON
        /// value's, byte for byte (the canonical bytes are hashed and
        /// signed: one byte off would fork the chain).
        #[test]
        fn the_kinds_encode_as_their_json_values(
            e in crate::kinds::arb::entry(),
            t in crate::kinds::arb::temperature(),
            v in crate::kinds::arb::visit(),
            d in crate::kinds::arb::delivery(),
        ) {
            prop_assert_eq!(to_canonical_split(&e).unwrap(), value_way(&e));
            prop_assert_eq!(to_canonical_split(&t).unwrap(), value_way(&t));
            prop_assert_eq!(to_canonical_split(&v).unwrap(), value_way(&v));
            prop_assert_eq!(to_canonical_split(&d).unwrap(), value_way(&d));
        }

        /// And any JSON object encodes as itself: nesting, key order,
        /// integers of both signs, floats, personal keys at the top.
        #[test]
        fn any_object_encodes_as_its_value(
            v in prop::collection::btree_map(
                prop_oneof![Just("person".to_owned()), Just("note".to_owned()), Just("plate".to_owned()), ".{0,8}"],
                arb_value(),
                0..8,
            )
        ) {
            let v = Value::Object(v.into_iter().collect());
            match to_canonical_split(&v) {
                Ok(split) => prop_assert_eq!(split, value_way(&v)),
                // The one object it leaves to the JSON value.
                Err(_) => prop_assert!(v.get("replacement").is_some()),
            }
        }
    }

    #[test]
    fn what_the_typed_encoding_refuses() {
        assert!(to_canonical_split(&json!([1, 2])).is_err());
        assert!(to_canonical_split(&json!("x")).is_err());
        assert!(to_canonical_split(&json!({"replacement": {"person": 1}})).is_err());
        let mut m = std::collections::BTreeMap::new();
        m.insert(1u8, 2u8);
        assert!(
            to_canonical_split(&m).is_err(),
            "a map key that is not a string"
        );
        // Non-finite floats are nil, as `to_value` makes them null.
        #[derive(serde::Serialize)]
        struct F {
            a: f64,
        }
        assert_eq!(
            to_canonical_split(&F { a: f64::NAN }).unwrap(),
            value_way(&F { a: f64::NAN })
        );
    }

    proptest! {
        #[test]
        fn round_trip(v in arb_value()) {
            let bytes = to_canonical(&v);
            let back = from_canonical(&bytes).unwrap();
            prop_assert_eq!(to_canonical(&back), bytes);
        }
    }
}
