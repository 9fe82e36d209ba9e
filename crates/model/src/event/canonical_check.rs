//! Whether envelope bytes are in canonical form, decided by walking them
//! once without building their values — the audit's check of every stored
//! envelope. [`Envelope::decode`](super::Envelope::decode) decides the same
//! by decoding into a JSON value and encoding it again (two allocations per
//! string, one per map and array), several times the cost.
//!
//! Sound, not complete: [`surely_canonical`] answers `true` only for bytes
//! `Envelope::decode` accepts; `false` means "not shown here" (malformed,
//! not canonical, or merely unusual: an integer field in another msgpack
//! form, nesting deeper than [`DEPTH_MAX`]) and the caller decodes to know.
//! Every header field and every `data` value is held to the form rmp
//! writes for it — its shortest length within its family of markers (the
//! rules of [`crate::canonical`]) — so nothing is re-encoded to compare.

use rmp::Marker;

use super::light::{self, R};
use super::{EnvelopeLinks, Hash32};

/// Deepest nesting of `data` checked here (deeper: left to the decoder).
pub const DEPTH_MAX: u32 = 32;

/// `true` only if `bytes` are a format-1 envelope in canonical form (what
/// `Envelope::decode` accepts); `false` when that is not shown.
pub fn surely_canonical(bytes: &[u8]) -> bool {
    check(bytes).is_some()
}

/// The envelope's links, read by the same walk that shows it canonical:
/// `Some` only where [`surely_canonical`] is `true`, and then the very
/// links [`super::read_links`] reads — one pass over an envelope where an
/// audit made three (its first `prev`, its links, its form).
pub fn canonical_links(bytes: &[u8]) -> Option<EnvelopeLinks<'_>> {
    check(bytes)
}

fn check(bytes: &[u8]) -> Option<EnvelopeLinks<'_>> {
    // Every header field in its shortest form, in order: each held to the
    // length rmp writes for its value (as `data`'s values are, below).
    let mut rd: R<'_> = bytes;
    if light::marker(&mut rd)? != Marker::FixArray(14)
        || shortest_uint(&mut rd)? != u64::from(super::ENVELOPE_FORMAT)
    {
        return None;
    }
    let origin = shortest_str(&mut rd)?;
    let seq = shortest_uint(&mut rd)?;
    let kind = shortest_str(&mut rd)?;
    let schema = u32::try_from(shortest_uint(&mut rd)?).ok()?;
    shortest_int(&mut rd)?; // occurred_at.unix_ms
    i16::try_from(shortest_int(&mut rd)?).ok()?; // occurred_at.offset_min
    shortest_int(&mut rd)?; // recorded_at_ms
    shortest_str(&mut rd)?; // grid
    shortest_str(&mut rd)?; // recorded_by
    shortest_str(&mut rd)?; // client_id
                            // bin 8 of 32 bytes: the one form `light::bin32` reads.
    let prev: Hash32 = light::bin32(&mut rd)??;
    if !matches!(
        Marker::from_u8(*rd.first()?),
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32
    ) {
        return None;
    }
    value(&mut rd, 0)?;
    // bin 8 of 32 bytes or nil, as written.
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

/// An unsigned integer in its shortest form.
fn shortest_uint(rd: &mut R<'_>) -> Option<u64> {
    let before = *rd;
    let v = light::uint(rd)?;
    consumed_is(before, rd, uint_len(v))?;
    Some(v)
}

/// An integer as rmp's `write_sint` writes it: a non-negative one in the
/// unsigned forms (an int 16 may hold 30,000 in as many bytes as a uint 16,
/// so the family is checked, not only the length), a negative one in the
/// shortest signed form.
fn shortest_int(rd: &mut R<'_>) -> Option<i64> {
    let before = *rd;
    let v = light::int(rd)?;
    let len = match u64::try_from(v) {
        Ok(u) => {
            let unsigned = matches!(
                Marker::from_u8(*before.first()?),
                Marker::FixPos(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64
            );
            unsigned.then(|| uint_len(u))?
        }
        Err(_) => negative_len(v),
    };
    consumed_is(before, rd, len)?;
    Some(v)
}

/// A string with its header in its shortest form.
fn shortest_str<'a>(rd: &mut R<'a>) -> Option<&'a str> {
    let before = *rd;
    let s = light::str(rd)?;
    let header = before.len() - rd.len() - s.len();
    consumed_is(before, &before[header..], str_header_len(s.len()))?;
    Some(s)
}

/// Whether the bytes consumed between `before` and `after` are `len` long.
///
/// Enough to show a header canonical: within one family of markers
/// (unsigned, negative, string, array, map) each length of the encoding
/// belongs to one marker, and the decoded value fills it — so a value read
/// in its shortest length is in the very bytes rmp writes for it.
fn consumed_is(before: R<'_>, after: R<'_>, len: Option<usize>) -> Option<()> {
    (Some(before.len() - after.len()) == len).then_some(())
}

/// The length of rmp's `write_uint(v)`: fixint, uint 8, 16, 32, 64.
fn uint_len(v: u64) -> Option<usize> {
    Some(match v {
        0..0x80 => 1,
        0x80..0x100 => 2,
        0x100..0x1_0000 => 3,
        0x1_0000..0x1_0000_0000 => 5,
        _ => 9,
    })
}

/// The length of rmp's `write_sint(v)` for a negative `v`: negative
/// fixint, int 8, 16, 32, 64.
fn negative_len(v: i64) -> Option<usize> {
    Some(match v {
        -32..0 => 1,
        -128..-32 => 2,
        -32_768..-128 => 3,
        -2_147_483_648..-32_768 => 5,
        i64::MIN..-2_147_483_648 => 9,
        0.. => return None,
    })
}

/// The length of rmp's `write_str_len(len)`: fixstr, str 8, 16, 32.
fn str_header_len(len: usize) -> Option<usize> {
    Some(match u32::try_from(len).ok()? {
        0..32 => 1,
        32..0x100 => 2,
        0x100..0x1_0000 => 3,
        _ => 5,
    })
}

/// The length of rmp's `write_array_len` and `write_map_len`: fix, 16, 32.
fn container_header_len(n: usize) -> Option<usize> {
    Some(match u32::try_from(n).ok()? {
        0..16 => 1,
        16..0x1_0000 => 3,
        _ => 5,
    })
}

/// One value of `data` in canonical form (see [`crate::canonical`]).
fn value(rd: &mut R<'_>, depth: u32) -> Option<()> {
    if depth > DEPTH_MAX {
        return None;
    }
    let before = *rd;
    match Marker::from_u8(*rd.first()?) {
        Marker::Null | Marker::True | Marker::False => {
            *rd = &rd[1..];
        }
        Marker::FixPos(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => {
            let v = light::uint(rd)?;
            consumed_is(before, rd, uint_len(v))?;
        }
        Marker::FixNeg(_) | Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
            // A non-negative value is canonical only as an unsigned form.
            let v = light::int(rd).filter(|v| *v < 0)?;
            consumed_is(before, rd, negative_len(v))?;
        }
        Marker::F64 => {
            // JSON has no NaN or infinity (they decode to null).
            light::float(rd).filter(|f| f.is_finite())?;
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            let s = light::str(rd)?;
            let header = before.len() - rd.len() - s.len();
            consumed_is(before, &before[header..], str_header_len(s.len()))?;
        }
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let n = light::array_len(rd)?;
            consumed_is(before, rd, container_header_len(n))?;
            for _ in 0..n {
                value(rd, depth + 1)?;
            }
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let n = light::map_len(rd)?;
            consumed_is(before, rd, container_header_len(n))?;
            let mut last: Option<&[u8]> = None;
            for _ in 0..n {
                let key_start = *rd;
                let key = light::str(rd)?.as_bytes();
                let header = key_start.len() - rd.len() - key.len();
                consumed_is(key_start, &key_start[header..], str_header_len(key.len()))?;
                // Sorted by bytes, each key once.
                if last.is_some_and(|l| l >= key) {
                    return None;
                }
                last = Some(key);
                value(rd, depth + 1)?;
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, OccurredAt};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn envelope(data: Value) -> Envelope {
        Envelope {
            origin: "c1".into(),
            seq: 300,
            kind: "visit".into(),
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: 1_580_000_000_000,
                offset_min: -480,
            },
            recorded_at_ms: -5,
            grid: "g-7".into(),
            recorded_by: "王".into(),
            client_id: "x".repeat(40),
            prev: [3; 32],
            data,
            personal_digest: Some([9; 32]),
        }
    }

    fn arb_data() -> impl Strategy<Value = Value> {
        use crate::canonical::tests::arb_value;
        prop::collection::btree_map(".{0,8}", arb_value(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Every canonical envelope is shown canonical; with bytes
        /// flipped, cut or added, `true` only where the decoder agrees.
        #[test]
        fn agrees_with_the_decoder(
            data in arb_data(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..4),
        ) {
            let good = envelope(data).encode();
            prop_assert!(surely_canonical(&good));
            let mut bytes = good.clone();
            for (at, byte, how) in edits {
                let i = at.index(bytes.len().max(1));
                match how {
                    0 | 1 if !bytes.is_empty() => bytes[i] ^= byte.max(1),
                    2 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            if surely_canonical(&bytes) {
                prop_assert!(Envelope::decode(&bytes).is_ok(), "fast check accepted {}", hex::encode(&bytes));
            }
            // The walk's links are the plain reading's, where it gives any.
            let links = canonical_links(&bytes);
            prop_assert_eq!(links.is_some(), surely_canonical(&bytes));
            if let Some(l) = links {
                prop_assert_eq!(Ok(l), crate::event::read_links(&bytes).map_err(|e| e.to_string()));
            }
        }
    }

    /// The lengths the walk holds headers to are rmp's own, at every
    /// boundary between two forms (and one past each).
    #[test]
    fn shortest_lengths_are_what_rmp_writes() {
        let len = |write: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            write(&mut v);
            Some(v.len())
        };
        let edges = [0u64, 0x7f, 0xff, 0xffff, 0xffff_ffff, u64::MAX];
        for v in edges
            .into_iter()
            .flat_map(|e| [e, e.wrapping_add(1), e.wrapping_sub(1)])
        {
            let want = len(&|w| {
                rmp::encode::write_uint(w, v).unwrap();
            });
            assert_eq!(uint_len(v), want, "uint {v}");
            let Ok(n) = u32::try_from(v) else { continue };
            let n_usize = n as usize;
            let want = len(&|w| {
                rmp::encode::write_str_len(w, n).unwrap();
            });
            assert_eq!(str_header_len(n_usize), want, "str of {n}");
            let want = len(&|w| {
                rmp::encode::write_array_len(w, n).unwrap();
            });
            assert_eq!(container_header_len(n_usize), want, "array of {n}");
            let want = len(&|w| {
                rmp::encode::write_map_len(w, n).unwrap();
            });
            assert_eq!(container_header_len(n_usize), want, "map of {n}");
        }
        let edges = [-1i64, -32, -128, -32_768, -2_147_483_648, i64::MIN];
        let around = edges
            .into_iter()
            .flat_map(|e| [e, e.saturating_add(1), e.saturating_sub(1)]);
        for v in around.filter(|v| *v < 0) {
            let want = len(&|w| {
                rmp::encode::write_sint(w, v).unwrap();
            });
            assert_eq!(negative_len(v), want, "int {v}");
        }
        assert_eq!(negative_len(0), None);
        assert_eq!(str_header_len(1 << 32), None);
        assert_eq!(container_header_len(1 << 32), None);
    }

    /// Each rule on its own: `data` forms the decoder refuses are refused
    /// here too, and the header's fields must be in their shortest form.
    #[test]
    fn refuses_what_is_not_canonical() {
        let with_data = |data: &[u8]| {
            let e = envelope(json!({}));
            e.header().encode_with_data(data)
        };
        let cases: &[(&str, &[u8])] = &[
            ("1 as a uint16", &[0x81, 0xa1, b'a', 0xcd, 0x00, 0x01]),
            ("5 as an int8", &[0x81, 0xa1, b'a', 0xd0, 0x05]),
            ("-1 as an int16", &[0x81, 0xa1, b'a', 0xd1, 0xff, 0xff]),
            ("a float32", &[0x81, 0xa1, b'a', 0xca, 0x3f, 0x80, 0, 0]),
            (
                "NaN",
                &[0x81, 0xa1, b'a', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
            ),
            (
                "keys out of order",
                &[0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x02],
            ),
            ("a key twice", &[0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02]),
            (
                "a str8 for a short string",
                &[0x81, 0xa1, b'a', 0xd9, 0x01, b'x'],
            ),
            (
                "a map16 for one entry",
                &[0xde, 0x00, 0x01, 0xa1, b'a', 0x01],
            ),
            ("binary", &[0x81, 0xa1, b'a', 0xc4, 0x01, 0x00]),
            ("not UTF-8", &[0x81, 0xa1, b'a', 0xa1, 0xff]),
            ("a non-string key", &[0x81, 0x01, 0x01]),
            ("not a map", &[0x91, 0x01]),
        ];
        for (what, data) in cases {
            let bytes = with_data(data);
            assert!(
                Envelope::decode(&bytes).is_err(),
                "{what}: the decoder accepts it"
            );
            assert!(!surely_canonical(&bytes), "{what}: accepted");
        }
        // The same envelope in canonical form passes both.
        let ok = with_data(&[
            0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0xcb, 0x40, 0x42, 0x40, 0, 0, 0, 0, 0,
        ]);
        assert!(Envelope::decode(&ok).is_ok());
        assert!(surely_canonical(&ok));
        // The header: seq 300 written as a uint32 instead of a uint16.
        let mut long_seq = vec![0x9e, 0x01, 0xa2, b'c', b'1', 0xce, 0, 0, 0x01, 0x2c];
        let good = envelope(json!({})).encode();
        let after_seq = 1 + 1 + 3 + 3;
        long_seq.extend_from_slice(&good[after_seq..]);
        assert!(Envelope::decode(&long_seq).is_err());
        assert!(!surely_canonical(&long_seq));
        assert!(surely_canonical(&good));
        // Each header field in a longer form than rmp writes (the decoder
        // refuses every one): the walk refuses them too.
        let e = envelope(json!({}));
        let field = |w: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            w(&mut v);
            v
        };
        use rmp::encode as enc;
        let canonical: Vec<Vec<u8>> = vec![
            field(&|w| drop(enc::write_uint(w, 1))),
            field(&|w| enc::write_str(w, &e.origin).unwrap()),
            field(&|w| drop(enc::write_uint(w, e.seq))),
            field(&|w| enc::write_str(w, &e.kind).unwrap()),
            field(&|w| drop(enc::write_uint(w, 1))),
            field(&|w| drop(enc::write_sint(w, e.occurred_at.unix_ms))),
            field(&|w| drop(enc::write_sint(w, e.occurred_at.offset_min.into()))),
            field(&|w| drop(enc::write_sint(w, e.recorded_at_ms))),
            field(&|w| enc::write_str(w, &e.grid).unwrap()),
            field(&|w| enc::write_str(w, &e.recorded_by).unwrap()),
            field(&|w| enc::write_str(w, &e.client_id).unwrap()),
        ];
        let with_field = |i: usize, bytes: Vec<u8>| {
            let mut v = vec![0x9e];
            for (j, f) in canonical.iter().enumerate() {
                v.extend_from_slice(if i == j { &bytes } else { f });
            }
            enc::write_bin(&mut v, &e.prev).unwrap();
            v.push(0x80);
            enc::write_bin(&mut v, e.personal_digest.as_ref().unwrap()).unwrap();
            v
        };
        assert!(surely_canonical(&with_field(usize::MAX, Vec::new())));
        let longer: &[(usize, &str, Vec<u8>)] = &[
            (0, "format 1 as a uint8", vec![0xcc, 1]),
            (
                1,
                "origin as a str8",
                field(&|w| {
                    w.extend_from_slice(&[0xd9, 2]);
                    w.extend_from_slice(b"c1");
                }),
            ),
            (4, "schema 1 as a uint16", vec![0xcd, 0, 1]),
            // As long as the uint 64 it should be: only the family tells.
            (5, "unix_ms as an int64", {
                let mut v = vec![0xd3];
                v.extend_from_slice(&e.occurred_at.unix_ms.to_be_bytes());
                v
            }),
            (6, "offset_min -480 as an int32", {
                let mut v = vec![0xd2];
                v.extend_from_slice(&(-480i32).to_be_bytes());
                v
            }),
            (
                7,
                "recorded_at_ms -5 as an int8",
                vec![0xd0, (-5i8).to_be_bytes()[0]],
            ),
            (
                10,
                "client_id as a str16",
                field(&|w| {
                    w.extend_from_slice(&[0xda, 0, 40]);
                    w.extend_from_slice(e.client_id.as_bytes());
                }),
            ),
        ];
        for (i, what, bytes) in longer {
            let v = with_field(*i, bytes.clone());
            assert!(
                Envelope::decode(&v).is_err(),
                "{what}: the decoder accepts it"
            );
            assert!(!surely_canonical(&v), "{what}: accepted");
        }
        // Nesting deeper than the walk goes: left to the decoder.
        let mut deep = vec![0x81, 0xa1, b'a'];
        deep.extend(std::iter::repeat_n(0x91, DEPTH_MAX as usize + 1));
        deep.push(0x01);
        let bytes = with_data(&deep);
        assert!(Envelope::decode(&bytes).is_ok());
        assert!(!surely_canonical(&bytes));
    }
}
