//! Typed JSON reading that refuses what the JSON Schemas refuse about shape.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON *array*
//! of the fields in declaration order (`"person": ["张三"]`), which the
//! schemas (`"type": "object"`) refuse. Ingest's typed path
//! ([`crate::ingest`]) reads posted JSON straight into the kind types, so
//! every struct-typed position is read through [`MapOnly`], which asks the
//! JSON reader for a map and nothing else: the top level by [`from_str`],
//! nested struct fields by `#[serde(deserialize_with = "strict::object")]`
//! (or [`objects`] for a list of them) in [`crate::kinds`].

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// A deserializer that reads a struct only from a map.
///
/// Only `deserialize_struct` is changed; the helpers below wrap struct
/// types only, so the other entry points are never reached with a type
/// that would mind being forwarded to `deserialize_any`.
pub struct MapOnly<D>(pub D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Reads a struct field that must be a JSON object.
///
/// # Errors
/// Whatever the inner deserializer says, including "invalid type: sequence"
/// for an array.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(MapOnly(d))
}

/// Reads a list field whose items must each be a JSON object.
///
/// # Errors
/// As [`object`], for any item.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let mut items = Vec::new();
    EachObject::new(usize::MAX, |item| items.push(item)).deserialize(d)?;
    Ok(items)
}

/// A list whose items must each be a JSON object (as [`objects`]), each
/// handed to `each` as it is read — a batch's events are prepared one by
/// one as the reader meets them, not gathered into a vector of their own
/// first (one more allocation of tens of KiB a request, and a copy of
/// every event, both ~1 % of a node's CPU) — and refused past `max`
/// items without reading the rest. Its value is how many items it read.
pub struct EachObject<T, F> {
    max: usize,
    each: F,
    item: PhantomData<T>,
}

impl<T, F: FnMut(T)> EachObject<T, F> {
    pub fn new(max: usize, each: F) -> Self {
        Self {
            max,
            each,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for EachObject<T, F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for EachObject<T, F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {} objects", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        struct Object<T>(T);
        impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                object(d).map(Object)
            }
        }
        let mut n = 0;
        while let Some(Object(item)) = seq.next_element::<Object<T>>()? {
            if n == self.max {
                return Err(serde::de::Error::invalid_length(n + 1, &self));
            }
            n += 1;
            (self.each)(item);
        }
        Ok(n)
    }
}

/// A string borrowed from the text when it has no escapes (an escaped one
/// is unescaped into its own allocation): the kind types hold their text
/// this way, so most of a posted event's strings are never copied before
/// they are written into its canonical bytes.
#[derive(serde::Deserialize)]
#[serde(transparent)]
pub struct Borrowed<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// An optional string field read as [`Borrowed`] (serde borrows a `Cow`
/// only when it is the field's whole type).
///
/// # Errors
/// Anything but a string or `null`.
pub fn opt_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// An optional list of strings read as [`Borrowed`].
///
/// # Errors
/// Anything but a list of strings or `null`.
pub fn opt_texts<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Cow<'a, str>>>, D::Error> {
    Ok(Option::<Vec<Borrowed<'a>>>::deserialize(d)?.map(|v| v.into_iter().map(|b| b.0).collect()))
}

/// Reads a whole JSON text as the struct `T`, which must be an object.
///
/// # Errors
/// Malformed JSON, trailing characters, or anything `T` refuses.
pub fn from_str<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = T::deserialize(MapOnly(&mut de))?;
    de.end()?;
    Ok(value)
}

/// [`from_str`] for a seed: reads a whole JSON text with `seed`, which
/// must read a map.
///
/// # Errors
/// Malformed JSON, trailing characters, or anything `seed` refuses.
pub fn from_str_seed<'a, S: DeserializeSeed<'a>>(
    text: &'a str,
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(MapOnly(&mut de))?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(deserialize_with = "object")]
        one: Inner,
        #[serde(deserialize_with = "objects")]
        many: Vec<Inner>,
    }

    #[test]
    fn arrays_in_place_of_objects_are_refused() {
        let ok: Outer = from_str(r#"{"one": {"a": 1}, "many": [{"a": 2}]}"#).unwrap();
        assert_eq!(ok.many, vec![Inner { a: 2 }]);
        // What serde alone accepts, positionally:
        assert_eq!(
            serde_json::from_str::<Inner>("[1]").unwrap(),
            Inner { a: 1 }
        );
        assert!(from_str::<Inner>("[1]").is_err());
        for text in [
            r#"[{"a": 1}, []]"#,
            r#"{"one": [1], "many": []}"#,
            r#"{"one": {"a": 1}, "many": [[2]]}"#,
            r#"{"one": {"a": 1}, "many": []} x"#,
        ] {
            assert!(from_str::<Outer>(text).is_err(), "{text}");
        }
    }

    /// The kind types' text borrows from the posted text, unless it holds
    /// an escape (then it is unescaped into its own string), in every
    /// position: a field, an optional field, a list, a nested object.
    #[test]
    fn kind_text_borrows_from_the_posted_text_unless_escaped() {
        use crate::kinds::{DeliveryV1, EntryV1, VisitV1};
        let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
        let e: EntryV1<'_> = from_str(
            r#"{"checkpoint": "cp1", "direction": "in", "subject": "resident",
                "person": {"name": "张三", "id_number": "37\u0030202"},
                "from_region": "湖北\"省\"", "purpose": "返乡", "decision": "admitted"}"#,
        )
        .unwrap();
        assert!(borrowed(&e.checkpoint) && borrowed(&e.person.name));
        assert!(borrowed(e.purpose.as_ref().unwrap()));
        assert_eq!(e.person.id_number.as_deref(), Some("370202"));
        assert!(!borrowed(e.person.id_number.as_ref().unwrap()));
        assert_eq!(e.from_region, "湖北\"省\"");
        assert!(!borrowed(&e.from_region));
        let v: VisitV1<'_> = from_str(
            r#"{"household": "h1", "method": "phone", "quarantine": "none",
                "travel_regions": ["湖北省", "a\nb"], "note": null}"#,
        )
        .unwrap();
        let regions = v.travel_regions.unwrap();
        assert!(borrowed(&regions[0]) && !borrowed(&regions[1]));
        assert_eq!(regions[1], "a\nb");
        assert_eq!(v.note, None);
        let d: DeliveryV1<'_> = from_str(
            r#"{"household": "h2", "items": [{"item": "大米", "qty": 2}], "quarantined": true}"#,
        )
        .unwrap();
        assert!(borrowed(&d.household) && borrowed(&d.items[0].item));
    }
}
