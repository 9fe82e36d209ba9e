//! Canonical msgpack straight from a Rust value (any `Serialize`), with the
//! personal fields split off: the bytes [`super::to_canonical`] gives for
//! the JSON value `serde_json::to_value` would make of it, split by
//! [`crate::event::split_personal`], without building that value.
//!
//! Ingest encodes every posted event's `data` this way: building the JSON
//! value tree (a map of owned keys per object), sorting it and dropping it
//! cost about a tenth of a node's CPU per event. The rules are those of
//! [`super`], applied to what `serde_json::to_value` would have made:
//!
//! * integers: `u64` or, when negative, `i64`, in their shortest form;
//! * floats: float64 when finite, `nil` otherwise (`to_value` makes a
//!   non-finite float `null`);
//! * a unit variant is its name; a newtype variant a one-key map; maps and
//!   structs are written with their keys sorted by UTF-8 bytes;
//! * `None`, `()` and unit structs are `nil`; bytes an array of integers.
//!
//! `canonical::tests` checks it against the JSON value's encoding for every
//! kind's data.

use serde::ser::{self, Serialize};

use crate::event::PERSONAL_KEYS;

/// Why a value could not be encoded canonically.
#[derive(Debug)]
pub struct Unencodable(String);

impl std::fmt::Display for Unencodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unencodable {}

impl ser::Error for Unencodable {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Unencodable>;

/// The canonical bytes of a struct `value` without its personal fields
/// ([`PERSONAL_KEYS`], at the top level), and of those fields as a map if
/// it has any.
///
/// # Errors
/// When `value` is not a struct or a map with string keys, or holds a
/// field named `replacement` (whose personal fields
/// [`crate::event::split_personal`] also moves: encode those through the
/// JSON value), or a key twice.
pub fn to_canonical_split<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    to_canonical_split_after(value, &[])
}

/// [`to_canonical_split`], the bytes without the personal fields written
/// after the bytes of `lead` in the same vector (ingest keeps an event's
/// short text fields and its data in one allocation).
///
/// # Errors
/// As [`to_canonical_split`].
pub fn to_canonical_split_after<T: Serialize + ?Sized>(
    value: &T,
    lead: &[&str],
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut fields = Fields::default();
    value.serialize(Top(&mut fields))?;
    let Fields {
        mut entries,
        scratch,
        ..
    } = fields;
    if entries.iter().any(|e| e.key == "replacement") {
        return Err(Unencodable(
            "a replacement's personal fields are split inside it".into(),
        ));
    }
    sort_unique(&mut entries)?;
    let is_personal = |e: &Entry| PERSONAL_KEYS.contains(&e.key.as_ref());
    let n_personal = entries.iter().filter(|e| is_personal(e)).count();
    let lead_len: usize = lead.iter().map(|l| l.len()).sum();
    let mut data = Vec::with_capacity(lead_len + scratch.len() + 64);
    for l in lead {
        data.extend_from_slice(l.as_bytes());
    }
    write_sorted(
        &mut data,
        entries.iter().filter(|e| !is_personal(e)),
        entries.len() - n_personal,
        &scratch,
    );
    let personal = (n_personal > 0).then(|| {
        let mut personal = Vec::with_capacity(scratch.len() + 32);
        write_sorted(
            &mut personal,
            entries.iter().filter(|e| is_personal(e)),
            n_personal,
            &scratch,
        );
        personal
    });
    Ok((data, personal))
}

/// A key and where its value's bytes lie in the scratch buffer.
struct Entry {
    key: std::borrow::Cow<'static, str>,
    at: std::ops::Range<usize>,
}

/// The entries of one map or struct, their values encoded into `scratch`.
struct Fields {
    entries: Vec<Entry>,
    scratch: Vec<u8>,
    /// A map's key, until its value comes.
    key: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        // Room for the kinds' structs without growing.
        Self {
            entries: Vec::with_capacity(12),
            scratch: Vec::with_capacity(256),
            key: None,
        }
    }
}

impl Fields {
    fn map_key(&mut self, key: &(impl Serialize + ?Sized)) -> Result<()> {
        self.key = Some(key.serialize(KeyCapture)?);
        Ok(())
    }

    fn map_value(&mut self, value: &(impl Serialize + ?Sized)) -> Result<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Unencodable("a map value without its key".into()))?;
        self.add(key.into(), value)
    }

    fn add(
        &mut self,
        key: std::borrow::Cow<'static, str>,
        value: &(impl Serialize + ?Sized),
    ) -> Result<()> {
        let start = self.scratch.len();
        value.serialize(Enc(&mut self.scratch))?;
        self.entries.push(Entry {
            key,
            at: start..self.scratch.len(),
        });
        Ok(())
    }
}

/// Sorts `entries` by their keys' bytes, refusing a key given twice.
fn sort_unique(entries: &mut [Entry]) -> Result<()> {
    entries.sort_unstable_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    if entries.windows(2).any(|w| w[0].key == w[1].key) {
        return Err(Unencodable("a key appears twice".into()));
    }
    Ok(())
}

/// Writes `n` sorted entries as a map.
fn write_sorted<'e>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = &'e Entry>,
    n: usize,
    scratch: &[u8],
) {
    write_len(out, n, rmp::encode::write_map_len);
    for e in entries {
        rmp::encode::write_str(out, &e.key).expect("vec write");
        out.extend_from_slice(&scratch[e.at.clone()]);
    }
}

/// Writes `entries` as a map, keys sorted by their bytes.
fn write_map(out: &mut Vec<u8>, mut entries: Vec<Entry>, scratch: &[u8]) -> Result<()> {
    sort_unique(&mut entries)?;
    write_sorted(out, entries.iter(), entries.len(), scratch);
    Ok(())
}

fn write_len(
    out: &mut Vec<u8>,
    len: usize,
    f: fn(&mut Vec<u8>, u32) -> std::result::Result<rmp::Marker, rmp::encode::ValueWriteError>,
) {
    super::write_len(out, len, f);
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(Unencodable(format!("{what} has no JSON form here")))
}

/// Serializes the top-level struct (or map) into [`Fields`] without
/// writing it, so its fields can be split.
struct Top<'a>(&'a mut Fields);

/// Serializer methods that refuse, saying `$what`.
macro_rules! refuse {
    ($what:literal; $($f:ident($($t:ty),*) -> $r:ty;)*) => {
        $(fn $f(self, $(_: $t),*) -> Result<$r> { unsupported($what) })*
    };
}

impl<'a> ser::Serializer for Top<'a> {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = ser::Impossible<(), Unencodable>;
    type SerializeTuple = ser::Impossible<(), Unencodable>;
    type SerializeTupleStruct = ser::Impossible<(), Unencodable>;
    type SerializeTupleVariant = ser::Impossible<(), Unencodable>;
    type SerializeMap = MapFields<'a>;
    type SerializeStruct = MapFields<'a>;
    type SerializeStructVariant = ser::Impossible<(), Unencodable>;

    refuse! { "a top-level scalar or list";
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<()> {
        unsupported("a top-level enum")
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<MapFields<'a>> {
        Ok(MapFields::new(self.0))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<MapFields<'a>> {
        Ok(MapFields::new(self.0))
    }
}

/// Collects a map's or struct's entries into [`Fields`].
struct MapFields<'a> {
    fields: &'a mut Fields,
}

impl<'a> MapFields<'a> {
    fn new(fields: &'a mut Fields) -> Self {
        Self { fields }
    }

    fn fields(&mut self) -> &mut Fields {
        self.fields
    }

    /// The entries stay in [`Fields`] for [`to_canonical_split`].
    fn finish(self) -> Result<()> {
        Ok(())
    }
}

/// `SerializeStruct` (and the other traits named) for a collector of
/// entries with `fields()` and `finish()`.
macro_rules! collect_impl {
    ($ty:ident: $($struct_trait:ident),*) => {
        $(
            impl ser::$struct_trait for $ty<'_> {
                type Ok = ();
                type Error = Unencodable;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<()> {
                    self.fields().add(key.into(), value)
                }

                fn end(self) -> Result<()> {
                    self.finish()
                }
            }
        )*

        impl ser::SerializeMap for $ty<'_> {
            type Ok = ();
            type Error = Unencodable;

            fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
                self.fields().map_key(key)
            }

            fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.fields().map_value(value)
            }

            fn end(self) -> Result<()> {
                self.finish()
            }
        }
    };
}

collect_impl!(MapFields: SerializeStruct);

/// Reads a map key that must be a string (what JSON allows).
struct KeyCapture;

impl ser::Serializer for KeyCapture {
    type Ok = String;
    type Error = Unencodable;
    type SerializeSeq = ser::Impossible<String, Unencodable>;
    type SerializeTuple = ser::Impossible<String, Unencodable>;
    type SerializeTupleStruct = ser::Impossible<String, Unencodable>;
    type SerializeTupleVariant = ser::Impossible<String, Unencodable>;
    type SerializeMap = ser::Impossible<String, Unencodable>;
    type SerializeStruct = ser::Impossible<String, Unencodable>;
    type SerializeStructVariant = ser::Impossible<String, Unencodable>;

    fn serialize_str(self, v: &str) -> Result<String> {
        Ok(v.to_owned())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String> {
        value.serialize(self)
    }

    refuse! { "a map key that is not a string";
        serialize_bool(bool) -> String;
        serialize_i8(i8) -> String;
        serialize_i16(i16) -> String;
        serialize_i32(i32) -> String;
        serialize_i64(i64) -> String;
        serialize_u8(u8) -> String;
        serialize_u16(u16) -> String;
        serialize_u32(u32) -> String;
        serialize_u64(u64) -> String;
        serialize_f32(f32) -> String;
        serialize_f64(f64) -> String;
        serialize_char(char) -> String;
        serialize_bytes(&[u8]) -> String;
        serialize_none() -> String;
        serialize_unit() -> String;
        serialize_unit_struct(&'static str) -> String;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String> {
        unsupported("a map key that is not a string")
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String> {
        unsupported("a map key that is not a string")
    }
}

/// Writes one value canonically at the end of the buffer.
struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn int(self, v: i64) -> Result<()> {
        match u64::try_from(v) {
            Ok(u) => rmp::encode::write_uint(self.0, u).map(drop),
            Err(_) => rmp::encode::write_sint(self.0, v).map(drop),
        }
        .expect("vec write");
        Ok(())
    }
}

impl<'a> ser::Serializer for Enc<'a> {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Nested<'a>;
    type SerializeStruct = Nested<'a>;
    type SerializeStructVariant = Nested<'a>;

    fn serialize_bool(self, v: bool) -> Result<()> {
        rmp::encode::write_bool(self.0, v).expect("vec write");
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<()> {
        self.int(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<()> {
        self.int(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<()> {
        self.int(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<()> {
        self.int(v)
    }

    fn serialize_u8(self, v: u8) -> Result<()> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<()> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<()> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<()> {
        rmp::encode::write_uint(self.0, v).expect("vec write");
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<()> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<()> {
        if v.is_finite() {
            rmp::encode::write_f64(self.0, v).expect("vec write");
        } else {
            rmp::encode::write_nil(self.0).expect("vec write");
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        rmp::encode::write_str(self.0, v).expect("vec write");
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        write_len(self.0, v.len(), rmp::encode::write_array_len);
        for b in v {
            rmp::encode::write_uint(self.0, u64::from(*b)).expect("vec write");
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<()> {
        rmp::encode::write_nil(self.0).expect("vec write");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<()> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        write_len(self.0, 1, rmp::encode::write_map_len);
        rmp::encode::write_str(self.0, variant).expect("vec write");
        value.serialize(self)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>> {
        Ok(Seq::new(self.0, None))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Seq<'a>> {
        Ok(Seq::new(self.0, None))
    }

    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Seq<'a>> {
        Ok(Seq::new(self.0, None))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>> {
        Ok(Seq::new(self.0, Some(variant)))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Nested<'a>> {
        Ok(Nested::new(self.0, None))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Nested<'a>> {
        Ok(Nested::new(self.0, None))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Nested<'a>> {
        Ok(Nested::new(self.0, Some(variant)))
    }
}

/// An array: its items encoded apart, then written after its length.
struct Seq<'a> {
    out: &'a mut Vec<u8>,
    /// The variant a tuple variant is written under (`{variant: [..]}`).
    variant: Option<&'static str>,
    items: Vec<u8>,
    n: usize,
}

impl<'a> Seq<'a> {
    fn new(out: &'a mut Vec<u8>, variant: Option<&'static str>) -> Self {
        Self {
            out,
            variant,
            items: Vec::new(),
            n: 0,
        }
    }

    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(Enc(&mut self.items))?;
        self.n += 1;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if let Some(variant) = self.variant {
            write_len(self.out, 1, rmp::encode::write_map_len);
            rmp::encode::write_str(self.out, variant).expect("vec write");
        }
        write_len(self.out, self.n, rmp::encode::write_array_len);
        self.out.extend_from_slice(&self.items);
        Ok(())
    }
}

macro_rules! seq_impl {
    ($($tr:ident :: $m:ident),*) => {$(
        impl ser::$tr for Seq<'_> {
            type Ok = ();
            type Error = Unencodable;
            fn $m<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.item(value)
            }
            fn end(self) -> Result<()> {
                self.finish()
            }
        }
    )*};
}

seq_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A nested map or struct: its entries collected, then written sorted.
struct Nested<'a> {
    out: &'a mut Vec<u8>,
    variant: Option<&'static str>,
    fields: Fields,
}

impl<'a> Nested<'a> {
    fn new(out: &'a mut Vec<u8>, variant: Option<&'static str>) -> Self {
        Self {
            out,
            variant,
            fields: Fields::default(),
        }
    }

    fn fields(&mut self) -> &mut Fields {
        &mut self.fields
    }

    fn finish(self) -> Result<()> {
        if let Some(variant) = self.variant {
            write_len(self.out, 1, rmp::encode::write_map_len);
            rmp::encode::write_str(self.out, variant).expect("vec write");
        }
        write_map(self.out, self.fields.entries, &self.fields.scratch)
    }
}

collect_impl!(Nested: SerializeStruct, SerializeStructVariant);
