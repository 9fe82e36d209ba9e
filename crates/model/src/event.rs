//! The event envelope, its canonical bytes and its hash.
//!
//! An event is stored and forwarded as the exact canonical bytes its origin
//! produced (see [`Envelope::encode`]); nothing downstream re-encodes them
//! before verifying. The bytes are a msgpack array of 14 items, in this order:
//!
//! | # | field | msgpack type |
//! |---|---|---|
//! | 0 | envelope format, always `1` | uint |
//! | 1 | `origin` | str |
//! | 2 | `seq` | uint |
//! | 3 | `kind` | str |
//! | 4 | `schema` | uint |
//! | 5 | `occurred_at`, unix milliseconds | int |
//! | 6 | `occurred_at` UTC offset, minutes | int |
//! | 7 | `recorded_at`, unix milliseconds (UTC) | int |
//! | 8 | `grid` | str |
//! | 9 | `recorded_by` | str |
//! | 10 | `client_id` | str |
//! | 11 | `prev`, hash of the origin's previous event (32 zero bytes for seq 1) | bin 32 |
//! | 12 | `data` without its personal fields, canonical map | map |
//! | 13 | digest of the personal fields, or nil when there are none | bin 32 / nil |
//!
//! `hash = BLAKE3("gridsync/event/v1\0" ‖ bytes)`.
//!
//! Personal fields (`person`, `plate`, `note`, also inside a correction's
//! `replacement`) are taken out of `data` and kept beside the envelope as
//! [`Personal`]: a random 16-byte salt and the canonical map of the removed
//! fields keyed by their dotted path. The envelope holds only
//! `BLAKE3("gridsync/personal/v1\0" ‖ salt ‖ personal bytes)`, so a node may
//! withhold the personal part and the event still verifies; the salt stops
//! anyone from confirming a guessed name or ID number against the digest.

use serde::Deserialize;
use serde_json::Value;

use crate::canonical;

/// A BLAKE3 digest.
pub type Hash32 = [u8; 32];

/// `prev` of every origin's first event.
pub const ZERO_HASH: Hash32 = [0; 32];

/// A digest in lowercase hex, as the API writes it: `hex::encode`'s text
/// without its character-by-character iterator (which was ~2 % of a
/// node's CPU at batched ingest, one hash per acknowledged event).
pub fn hash_hex(h: &Hash32) -> String {
    let mut buf = [0u8; 64];
    hex::encode_to_slice(h, &mut buf).expect("64 bytes for 32");
    String::from_utf8(buf.to_vec()).expect("hex is ASCII")
}

/// Domain-separation prefix of an event hash.
pub const EVENT_HASH_DOMAIN: &[u8] = b"gridsync/event/v1\0";
/// Domain-separation prefix of a personal-fields digest.
pub const PERSONAL_DIGEST_DOMAIN: &[u8] = b"gridsync/personal/v1\0";
/// The only envelope format so far.
pub const ENVELOPE_FORMAT: u8 = 1;
/// Field names that hold personal data, wherever they occur in `data` and in
/// a correction's `replacement`.
pub const PERSONAL_KEYS: &[&str] = &["person", "plate", "note"];

/// When an event happened in the field, as the device said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OccurredAt {
    pub unix_ms: i64,
    /// The device's UTC offset in minutes, kept so the original wall-clock
    /// time can be shown.
    pub offset_min: i16,
}

impl OccurredAt {
    pub fn to_rfc3339(self) -> String {
        crate::time_fmt::format_rfc3339_ms(self.unix_ms, self.offset_min)
    }
}

/// A decoded event envelope. See the module docs for the byte layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub origin: String,
    pub seq: u64,
    pub kind: String,
    pub schema: u32,
    pub occurred_at: OccurredAt,
    pub recorded_at_ms: i64,
    pub grid: String,
    pub recorded_by: String,
    pub client_id: String,
    pub prev: Hash32,
    /// `data` without its personal fields.
    pub data: Value,
    pub personal_digest: Option<Hash32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is not decodable msgpack: {0}")]
    Decode(String),
    #[error("envelope format {0} is not supported (this build reads format 1)")]
    Format(u8),
    #[error("envelope bytes are not in canonical form")]
    NotCanonical,
    #[error("envelope field {0} is malformed")]
    Field(&'static str),
}

/// Serde shape of the 14-item array, used only for decoding.
#[derive(Deserialize)]
struct EnvelopeWire(
    u8,
    String,
    u64,
    String,
    u32,
    i64,
    i16,
    i64,
    String,
    String,
    String,
    serde_bytes::ByteBuf,
    Value,
    Option<serde_bytes::ByteBuf>,
);

/// Everything of an envelope but `data`, so a writer can splice in data
/// bytes that were canonicalised earlier (on another thread).
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeHeader<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub kind: &'a str,
    pub schema: u32,
    pub occurred_at: OccurredAt,
    pub recorded_at_ms: i64,
    pub grid: &'a str,
    pub recorded_by: &'a str,
    pub client_id: &'a str,
    pub prev: &'a Hash32,
    pub personal_digest: Option<&'a Hash32>,
}

impl EnvelopeHeader<'_> {
    /// Canonical envelope bytes with `data_canonical` (canonical map bytes)
    /// as item 12.
    pub fn encode_with_data(&self, data_canonical: &[u8]) -> Vec<u8> {
        // Every item's bound, so the buffer is never grown (a grow copies
        // what is written, most of it `data`): the fixed items' markers and
        // integers take at most 56 bytes, the two digests 68, the strings
        // their length and at most 5 bytes each.
        let strings = [
            self.origin,
            self.kind,
            self.grid,
            self.recorded_by,
            self.client_id,
        ];
        let mut out = Vec::with_capacity(
            56 + 68 + strings.iter().map(|s| s.len() + 5).sum::<usize>() + data_canonical.len(),
        );
        let w = &mut out;
        rmp::encode::write_array_len(w, 14).expect("vec write");
        rmp::encode::write_uint(w, u64::from(ENVELOPE_FORMAT)).expect("vec write");
        rmp::encode::write_str(w, self.origin).expect("vec write");
        rmp::encode::write_uint(w, self.seq).expect("vec write");
        rmp::encode::write_str(w, self.kind).expect("vec write");
        rmp::encode::write_uint(w, u64::from(self.schema)).expect("vec write");
        rmp::encode::write_sint(w, self.occurred_at.unix_ms).expect("vec write");
        rmp::encode::write_sint(w, i64::from(self.occurred_at.offset_min)).expect("vec write");
        rmp::encode::write_sint(w, self.recorded_at_ms).expect("vec write");
        rmp::encode::write_str(w, self.grid).expect("vec write");
        rmp::encode::write_str(w, self.recorded_by).expect("vec write");
        rmp::encode::write_str(w, self.client_id).expect("vec write");
        rmp::encode::write_bin(w, self.prev).expect("vec write");
        w.extend_from_slice(data_canonical);
        match self.personal_digest {
            Some(d) => rmp::encode::write_bin(w, d).expect("vec write"),
            None => rmp::encode::write_nil(w).expect("vec write"),
        };
        out
    }
}

impl Envelope {
    pub fn header(&self) -> EnvelopeHeader<'_> {
        EnvelopeHeader {
            origin: &self.origin,
            seq: self.seq,
            kind: &self.kind,
            schema: self.schema,
            occurred_at: self.occurred_at,
            recorded_at_ms: self.recorded_at_ms,
            grid: &self.grid,
            recorded_by: &self.recorded_by,
            client_id: &self.client_id,
            prev: &self.prev,
            personal_digest: self.personal_digest.as_ref(),
        }
    }

    /// The canonical bytes of this envelope.
    pub fn encode(&self) -> Vec<u8> {
        self.header()
            .encode_with_data(&canonical::to_canonical(&self.data))
    }

    /// Decodes canonical envelope bytes.
    ///
    /// # Errors
    /// When the bytes are not a format-1 envelope in canonical form.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let w: EnvelopeWire =
            rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        if w.0 != ENVELOPE_FORMAT {
            return Err(EnvelopeError::Format(w.0));
        }
        let prev: Hash32 =
            w.11.as_slice()
                .try_into()
                .map_err(|_| EnvelopeError::Field("prev"))?;
        let personal_digest = match w.13 {
            None => None,
            Some(b) => Some(
                Hash32::try_from(b.as_slice())
                    .map_err(|_| EnvelopeError::Field("personal_digest"))?,
            ),
        };
        if !w.12.is_object() {
            return Err(EnvelopeError::Field("data"));
        }
        let env = Envelope {
            origin: w.1,
            seq: w.2,
            kind: w.3,
            schema: w.4,
            occurred_at: OccurredAt {
                unix_ms: w.5,
                offset_min: w.6,
            },
            recorded_at_ms: w.7,
            grid: w.8,
            recorded_by: w.9,
            client_id: w.10,
            prev,
            data: w.12,
            personal_digest,
        };
        if env.encode() != bytes {
            return Err(EnvelopeError::NotCanonical);
        }
        Ok(env)
    }
}

/// `BLAKE3("gridsync/event/v1\0" ‖ envelope bytes)`.
pub fn event_hash(envelope_bytes: &[u8]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(EVENT_HASH_DOMAIN);
    h.update(envelope_bytes);
    *h.finalize().as_bytes()
}

/// The personal fields of one event, kept beside (not inside) its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Personal {
    pub salt: [u8; 16],
    /// Canonical map: dotted path (`person`, `replacement.plate` …) → value.
    pub bytes: Vec<u8>,
}

/// `BLAKE3("gridsync/personal/v1\0" ‖ salt ‖ bytes)`: the digest of a
/// personal part, held or borrowed.
pub fn personal_digest(salt: &[u8; 16], bytes: &[u8]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(PERSONAL_DIGEST_DOMAIN);
    h.update(salt);
    h.update(bytes);
    *h.finalize().as_bytes()
}

impl Personal {
    /// `BLAKE3("gridsync/personal/v1\0" ‖ salt ‖ bytes)`.
    pub fn digest(&self) -> Hash32 {
        personal_digest(&self.salt, &self.bytes)
    }

    /// The personal fields as a JSON map keyed by dotted path.
    ///
    /// # Errors
    /// When the bytes are not a canonical map.
    pub fn fields(&self) -> Result<serde_json::Map<String, Value>, String> {
        match canonical::from_canonical(&self.bytes)? {
            Value::Object(m) => Ok(m),
            _ => Err("personal fields are not a map".to_owned()),
        }
    }
}

/// Moves the personal fields out of `data` (and out of `data.replacement`)
/// into a map keyed by dotted path. Returns an empty map when there are none.
pub fn split_personal(data: &mut serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let mut personal = serde_json::Map::new();
    for key in PERSONAL_KEYS {
        if let Some(v) = data.remove(*key) {
            personal.insert((*key).to_owned(), v);
        }
    }
    if let Some(Value::Object(replacement)) = data.get_mut("replacement") {
        for key in PERSONAL_KEYS {
            if let Some(v) = replacement.remove(*key) {
                personal.insert(format!("replacement.{key}"), v);
            }
        }
    }
    personal
}

/// Puts personal fields (as produced by [`split_personal`]) back into `data`.
pub fn merge_personal(
    data: &mut serde_json::Map<String, Value>,
    personal: serde_json::Map<String, Value>,
) {
    for (path, v) in personal {
        match path.split_once('.') {
            Some((outer, inner)) => {
                if let Some(Value::Object(m)) = data.get_mut(outer) {
                    m.insert(inner.to_owned(), v);
                }
            }
            None => {
                data.insert(path, v);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn sample() -> Envelope {
        Envelope {
            origin: "shazikou-c01".into(),
            seq: 1,
            kind: "temperature".into(),
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: 1_580_175_000_000,
                offset_min: 480,
            },
            recorded_at_ms: 1_580_175_001_000,
            grid: "g03".into(),
            recorded_by: "w017".into(),
            client_id: "c-1".into(),
            prev: ZERO_HASH,
            data: json!({"celsius": 37.6, "site": "checkpoint", "action": "referred"}),
            personal_digest: Some([7; 32]),
        }
    }

    #[test]
    fn hash_hex_is_hex_encode() {
        let h: Hash32 = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(hash_hex(&h), hex::encode(h));
        assert_eq!(hash_hex(&ZERO_HASH), "0".repeat(64));
    }

    #[test]
    fn encode_decode_round_trip() {
        let env = sample();
        let bytes = env.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn every_single_byte_change_is_rejected_or_changes_the_hash() {
        let bytes = sample().encode();
        let h = event_hash(&bytes);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut m = bytes.clone();
                m[i] ^= bit;
                assert_ne!(event_hash(&m), h, "byte {i}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn random_envelopes_round_trip(
            seq in 1u64..u64::MAX, schema in 1u32..10, ms in proptest::num::i64::ANY,
            off in -840i16..840, rec in proptest::num::i64::ANY, grid in ".{0,20}", cid in ".{1,40}",
            prev in proptest::array::uniform32(0u8..), digest in proptest::option::of(proptest::array::uniform32(0u8..)),
            celsius in 30.0f64..45.0, n in proptest::num::u64::ANY,
        ) {
            let env = Envelope {
                origin: "c".into(), seq, kind: "k".into(), schema,
                occurred_at: OccurredAt { unix_ms: ms, offset_min: off }, recorded_at_ms: rec,
                grid, recorded_by: "w".into(), client_id: cid, prev,
                data: json!({"celsius": celsius, "n": n, "list": [n, -1, "x"]}), personal_digest: digest,
            };
            let bytes = env.encode();
            proptest::prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn split_and_merge_personal() {
        let mut data = json!({
            "household": "h1", "note": "n", "person": {"name": "张三"},
            "replacement": {"plate": "鲁B", "x": 1}
        });
        let original = data.clone();
        let m = data.as_object_mut().unwrap();
        let p = split_personal(m);
        assert_eq!(p.len(), 3);
        assert_eq!(
            Value::Object(m.clone()),
            json!({"household": "h1", "replacement": {"x": 1}})
        );
        merge_personal(m, p);
        assert_eq!(Value::Object(m.clone()), original);
    }
}

/// The chain-relevant fields of an envelope, read without decoding `data`:
/// what verification on the replication path needs (the full, canonical
/// decode happens where the content is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeLinks<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub kind: &'a str,
    pub schema: u32,
    pub prev: Hash32,
    pub personal_digest: Option<Hash32>,
}

pub mod canonical_check;
pub mod light;

/// The envelope's array header and format (14 items, format 1), then its
/// origin, seq, kind and schema.
fn read_first_fields<'a>(rd: &mut light::R<'a>) -> Option<(&'a str, u64, &'a str, u32)> {
    if light::marker(rd)? != rmp::Marker::FixArray(14)
        || light::uint(rd)? != u64::from(ENVELOPE_FORMAT)
    {
        return None;
    }
    let origin = light::str(rd)?;
    let seq = light::uint(rd)?;
    let kind = light::str(rd)?;
    let schema = u32::try_from(light::uint(rd)?).ok()?;
    Some((origin, seq, kind, schema))
}

/// The kind and schema version of envelope bytes, reading nothing after
/// them (not even the envelope's end: for bytes this node wrote, where
/// [`read_links`]'s walk over `data` would be wasted); `None` when the
/// envelope does not start as a format-1 one.
pub fn read_kind(bytes: &[u8]) -> Option<(&str, u32)> {
    let mut rd: light::R<'_> = bytes;
    read_first_fields(&mut rd).map(|(_, _, kind, schema)| (kind, schema))
}

/// Reads origin, seq, kind, schema, prev and the personal digest of
/// envelope bytes without decoding `data`. Checks the shape (14 items, format 1) only.
///
/// # Errors
/// [`EnvelopeError::Decode`] when the bytes are not a format-1 envelope.
pub fn read_links(bytes: &[u8]) -> Result<EnvelopeLinks<'_>, EnvelopeError> {
    fn inner(bytes: &[u8]) -> Option<EnvelopeLinks<'_>> {
        let mut rd: light::R<'_> = bytes;
        let (origin, seq, kind, schema) = read_first_fields(&mut rd)?;
        for _ in 0..6 {
            light::skip(&mut rd, 0)?; // occurred_at (2 items) … client_id
        }
        let prev = light::bin32(&mut rd)??;
        light::skip(&mut rd, 0)?; // data
        let personal_digest = light::bin32(&mut rd)?;
        rd.is_empty().then_some(EnvelopeLinks {
            origin,
            seq,
            kind,
            schema,
            prev,
            personal_digest,
        })
    }
    inner(bytes).ok_or_else(|| EnvelopeError::Decode("not a format-1 envelope".into()))
}

/// The seq and `client_id` of envelope bytes, read in place without
/// decoding the rest (what the client-id index keeps of a stored own
/// event); `None` when the bytes do not start as a format-1 envelope.
/// Checks the shape up to `client_id` only: for bytes a store holds,
/// checked when they were written.
pub fn read_client(bytes: &[u8]) -> Option<(u64, &str)> {
    let mut rd: light::R<'_> = bytes;
    let (_, seq, _, _) = read_first_fields(&mut rd)?;
    for _ in 0..5 {
        light::skip(&mut rd, 0)?; // occurred_at (2 items) … recorded_by
    }
    Some((seq, light::str(&mut rd)?))
}

/// What an event's content fingerprint covers
/// ([`crate::ingest::content_fingerprint`]), read from envelope bytes
/// without decoding `data`: its bytes as stored, canonical already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeContent<'a> {
    pub kind: &'a str,
    pub schema: u32,
    pub occurred_at: OccurredAt,
    pub grid: &'a str,
    pub recorded_by: &'a str,
    pub data: &'a [u8],
    /// The envelope names a personal part's digest.
    pub has_personal: bool,
}

/// Reads an envelope's [`EnvelopeContent`]; `None` when the bytes are not
/// a format-1 envelope. Checks the shape only.
pub fn read_content(bytes: &[u8]) -> Option<EnvelopeContent<'_>> {
    let mut rd: light::R<'_> = bytes;
    let (_, _, kind, schema) = read_first_fields(&mut rd)?;
    let occurred_at = OccurredAt {
        unix_ms: light::int(&mut rd)?,
        offset_min: i16::try_from(light::int(&mut rd)?).ok()?,
    };
    light::skip(&mut rd, 0)?; // recorded_at
    let grid = light::str(&mut rd)?;
    let recorded_by = light::str(&mut rd)?;
    light::skip(&mut rd, 0)?; // client_id
    light::bin32(&mut rd)??; // prev
    let before = rd;
    light::skip(&mut rd, 0)?;
    let data = &before[..before.len() - rd.len()];
    let has_personal = light::bin32(&mut rd)?.is_some();
    rd.is_empty().then_some(EnvelopeContent {
        kind,
        schema,
        occurred_at,
        grid,
        recorded_by,
        data,
        has_personal,
    })
}

#[cfg(test)]
mod light_tests {
    use super::*;

    #[test]
    fn links_match_the_full_decode() {
        let env = tests::sample();
        let bytes = env.encode();
        let l = read_links(&bytes).unwrap();
        assert_eq!(read_kind(&bytes), Some((l.kind, l.schema)));
        assert_eq!(read_kind(&bytes[1..]), None);
        assert_eq!(
            (l.origin, l.seq, l.kind, l.schema, l.prev, l.personal_digest),
            (
                env.origin.as_str(),
                env.seq,
                env.kind.as_str(),
                env.schema,
                env.prev,
                env.personal_digest
            )
        );
        for cut in 0..bytes.len() {
            assert!(read_links(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0xc0);
        assert!(read_links(&longer).is_err());
    }

    /// The client id and seq read in place equal the decoded ones, over
    /// the encodings' widths (a seq past one byte and past 32 bits, a
    /// client id past 31 bytes and past 255, non-ASCII, a negative UTC
    /// offset); bytes cut before the client id's end read as nothing.
    #[test]
    fn the_client_read_in_place_matches_the_full_decode() {
        for (seq, client_id, offset_min) in [
            (1, "c-1", 480),
            (300, "phone-7f3a9c2e-4b1d-4e8a-9f0c-1d2e3f4a5b6c", -300),
            (5_000_000_000, "网格员-手机-00017", 0),
            (70_000, &*"x".repeat(300), -720),
        ] {
            let mut env = tests::sample();
            env.seq = seq;
            env.client_id = client_id.to_owned();
            env.occurred_at.offset_min = offset_min;
            let bytes = env.encode();
            assert_eq!(Envelope::decode(&bytes).unwrap(), env);
            assert_eq!(read_client(&bytes), Some((seq, client_id)));
            let end = bytes
                .windows(client_id.len())
                .position(|w| w == client_id.as_bytes())
                .unwrap()
                + client_id.len();
            for cut in 0..end {
                assert_eq!(read_client(&bytes[..cut]), None, "truncated at {cut}");
            }
        }
        assert_eq!(read_client(&tests::sample().encode()[1..]), None);
    }
}
