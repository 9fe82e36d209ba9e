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
    Objects::<T>::new(0, usize::MAX).deserialize(d)
}

/// A list whose items must each be a JSON object (as [`objects`]), read
/// into a vector with room for `room` items made before the first (a batch
/// of a few hundred events grown one doubling at a time was copied about
/// twice over), and refused past `max` items without reading the rest.
pub struct Objects<T> {
    room: usize,
    max: usize,
    item: PhantomData<T>,
}

impl<T> Objects<T> {
    pub fn new(room: usize, max: usize) -> Self {
        Self {
            room,
            max,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Objects<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Objects<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {} objects", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        struct Object<T>(T);
        impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                object(d).map(Object)
            }
        }
        let mut items = Vec::with_capacity(self.room.min(self.max));
        while let Some(Object(item)) = seq.next_element::<Object<T>>()? {
            if items.len() == self.max {
                return Err(serde::de::Error::invalid_length(items.len() + 1, &self));
            }
            items.push(item);
        }
        Ok(items)
    }
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
}
