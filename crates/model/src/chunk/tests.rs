//! Chunk encoding, verification and single-event reads.

use super::*;
use crate::event::{EnvelopeHeader, OccurredAt, ZERO_HASH};

fn build(key: &SigningKey, n: u64) -> Chunk {
    let mut prev = ZERO_HASH;
    let mut events = Vec::new();
    for seq in 1..=n {
        let header = EnvelopeHeader {
            origin: "c1",
            seq,
            kind: "visit",
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: 1_000 * seq as i64,
                offset_min: 480,
            },
            recorded_at_ms: 2_000,
            grid: "g",
            recorded_by: "w",
            client_id: &format!("k{seq}"),
            prev: &prev,
            personal_digest: None,
        };
        let bytes = header.encode_with_data(&crate::canonical::to_canonical(
            &serde_json::json!({"household": "h", "method": "phone", "quarantine": "none"}),
        ));
        prev = event_hash(&bytes);
        events.push(EventRecord {
            envelope: bytes,
            personal: None,
        });
    }
    Chunk {
        origin: "c1".into(),
        events,
        head: SignedHead::sign_after(key, ("c1", n, prev), 5, [9; 32]),
    }
}

#[test]
fn verifies_and_round_trips() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let c = build(&key, 5);
    let back = Chunk::decode(&c.encode()).unwrap();
    assert_eq!(back, c);
    assert_eq!(
        back.verify(1, &ZERO_HASH, &key.verifying_key())
            .unwrap()
            .len(),
        5
    );
    // A suffix verifies against the hash of the event before it.
    let suffix = Chunk {
        origin: c.origin.clone(),
        events: c.events[2..].to_vec(),
        head: c.head.clone(),
    };
    let prev = event_hash(&c.events[1].envelope);
    assert_eq!(
        suffix.verify(3, &prev, &key.verifying_key()).unwrap().len(),
        3
    );
    // The wrong key, the wrong start or a missing event fail.
    let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
    assert!(matches!(
        c.verify(1, &ZERO_HASH, &other),
        Err(ChunkError::BadSignature { .. })
    ));
    assert!(matches!(
        suffix.verify(3, &ZERO_HASH, &key.verifying_key()),
        Err(ChunkError::BrokenChain { .. })
    ));
    let mut gap = c.clone();
    gap.events.remove(2);
    assert!(gap.verify(1, &ZERO_HASH, &key.verifying_key()).is_err());
}

#[test]
fn any_flipped_byte_fails_verification() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let v2 = build(&key, 3);
    let mut v1 = v2.clone();
    v1.head = SignedHead::sign(&key, "c1", 3, v2.head.hash, 5);
    for c in [v2, v1] {
        flips_fail(&key, &c.encode());
    }
}

fn flips_fail(key: &SigningKey, bytes: &[u8]) {
    for i in 0..bytes.len() {
        let mut m = bytes.to_vec();
        m[i] ^= 0x01;
        if let Ok(c) = Chunk::decode(&m) {
            assert!(
                c.verify(1, &ZERO_HASH, &key.verifying_key()).is_err(),
                "flip at byte {i} passed"
            );
        }
    }
}

/// A chunk whose events alternate with and without personal parts.
fn with_personal(key: &SigningKey, n: u64) -> Chunk {
    let mut c = build(key, n);
    for (i, e) in c.events.iter_mut().enumerate() {
        if i % 2 == 1 {
            e.personal = Some(Personal {
                salt: [i as u8; 16],
                bytes: vec![0x90 + i as u8; 3 + i],
            });
        }
    }
    c
}

#[test]
fn record_at_is_the_decoded_event() {
    let key = SigningKey::from_bytes(&[3; 32]);
    // A chunk holding seqs 5..=9 (a suffix, as stored after a merge).
    let full = with_personal(&key, 9);
    let c = Chunk {
        origin: full.origin.clone(),
        events: full.events[4..].to_vec(),
        head: full.head.clone(),
    };
    let bytes = c.encode();
    for seq in 0..=11 {
        let want = (5..=9)
            .contains(&seq)
            .then(|| c.events[seq as usize - 5].clone());
        assert_eq!(Chunk::record_at(&bytes, seq).unwrap(), want, "seq {seq}");
    }
    // Whatever `decode` refuses, `record_at` refuses; what it takes, they
    // read alike (every truncation and every flipped bit of one byte).
    let mut variants: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut m = bytes.clone();
            m[i] ^= bit;
            variants.push(m);
        }
    }
    for m in &variants {
        match Chunk::decode(m) {
            Err(_) => assert!((0..=11).all(|s| Chunk::record_at(m, s).is_err())),
            Ok(d) => {
                for seq in 0..=11 {
                    let want = (d.first_seq() <= seq && seq <= d.last_seq())
                        .then(|| d.events[(seq - d.first_seq()) as usize].clone());
                    assert_eq!(Chunk::record_at(m, seq).unwrap(), want);
                }
            }
        }
    }
}

/// A linked chunk and every suffix of it carry exactly the `prev` and
/// hashes that checking the (suffix) chunk's links from scratch gives, and
/// linking refuses whatever `check_links` refuses — so the store's writer,
/// trusting them, links to its heads exactly as if it had read the events.
#[test]
fn a_linked_chunk_and_its_suffixes_carry_their_own_links() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let c = build(&key, 7);
    let hashes: Vec<Hash32> = c.events.iter().map(|r| event_hash(&r.envelope)).collect();
    let linked = c.clone().linked().unwrap();
    assert_eq!(linked.prev(), ZERO_HASH);
    assert_eq!(linked.hashes(), &hashes[..]);
    assert_eq!(linked.chunk(), &c);
    for after in 0..=8u64 {
        let Some(s) = linked.clone().into_suffix_after(after) else {
            assert!(after >= 7, "a suffix after {after} exists");
            continue;
        };
        let plain = c.suffix_after(after).unwrap();
        let prev = plain.first_prev().unwrap();
        assert_eq!(s.prev(), prev, "prev after {after}");
        assert_eq!(
            s.hashes(),
            &plain.check_links(after + 1, &prev).unwrap()[..]
        );
        assert_eq!(s.chunk(), &plain);
        assert_eq!(
            s.prev(),
            if after == 0 {
                ZERO_HASH
            } else {
                hashes[after as usize - 1]
            }
        );
    }
    // Every single-bit flip of every envelope byte: refused by one exactly
    // when by the other.
    for e in 0..c.events.len() {
        for i in 0..c.events[e].envelope.len() {
            let mut m = c.clone();
            m.events[e].envelope[i] ^= 0x01;
            let plain = m
                .first_prev()
                .and_then(|p| m.check_links(m.first_seq(), &p));
            match (plain, m.clone().linked()) {
                (Ok(h), Ok(l)) => assert_eq!(l.hashes(), &h[..]),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("event {e} byte {i}: check_links {a:?}, linked {b:?}"),
            }
        }
    }
}

#[test]
fn encoded_has_personal_reads_the_records_without_decoding() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let plain = build(&key, 5);
    assert_eq!(Chunk::encoded_has_personal(&plain.encode()), Some(false));
    let mixed = with_personal(&key, 5);
    assert!(mixed.events.iter().any(|e| e.personal.is_some()));
    assert_eq!(Chunk::encoded_has_personal(&mixed.encode()), Some(true));
    // Not a chunk: a prefix, trailing bytes, an empty input.
    let bytes = plain.encode();
    assert_eq!(Chunk::encoded_has_personal(&bytes[..bytes.len() - 1]), None);
    let mut longer = bytes.clone();
    longer.push(0xc0);
    assert_eq!(Chunk::encoded_has_personal(&longer), None);
    assert_eq!(Chunk::encoded_has_personal(&[]), None);
}

/// `chunk` with the personal parts `parts` says (index `i` for event `i`;
/// `None` leaves none, `Some(n)`: `n` bytes).
fn with_parts(chunk: &Chunk, parts: &[Option<usize>]) -> Chunk {
    let mut c = chunk.clone();
    for (i, e) in c.events.iter_mut().enumerate() {
        e.personal = parts.get(i).copied().flatten().map(|n| Personal {
            salt: [i as u8; 16],
            bytes: vec![0xa0 ^ i as u8; n],
        });
    }
    c
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Withholding on the bytes is the encoding of the chunk with its
    /// personal parts dropped, for any mix of events with and without
    /// them and of sizes across msgpack's length widths.
    #[test]
    fn without_personal_on_the_bytes_is_the_stripped_encoding(
        parts in proptest::collection::vec(
            proptest::option::of(proptest::prop_oneof![0usize..40, 200usize..300, 65_530usize..65_540]),
            1..9,
        ),
    ) {
        let key = SigningKey::from_bytes(&[11; 32]);
        let c = with_parts(&build(&key, parts.len() as u64), &parts);
        let mut want = c.clone();
        for e in &mut want.events {
            e.personal = None;
        }
        let got = Chunk::encoded_without_personal(c.encode());
        proptest::prop_assert_eq!(got, Ok(want.encode()));
        proptest::prop_assert_eq!(
            Chunk::encoded_has_personal(&c.encode()),
            Some(parts.iter().any(Option::is_some))
        );
    }
}

#[test]
fn without_personal_refuses_what_is_not_a_chunk() {
    let key = SigningKey::from_bytes(&[12; 32]);
    let c = with_personal(&key, 4);
    let bytes = c.encode();
    for cut in 0..bytes.len() {
        let prefix = bytes[..cut].to_vec();
        assert_eq!(
            Chunk::encoded_without_personal(prefix.clone()),
            Err(prefix),
            "prefix of {cut} bytes"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0xc0);
    assert_eq!(Chunk::encoded_without_personal(longer.clone()), Err(longer));
    // Nothing to withhold: the same bytes back.
    let plain = build(&key, 4).encode();
    assert_eq!(Chunk::encoded_without_personal(plain.clone()), Ok(plain));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Consecutive chunks joined on the bytes are the encoding of one
    /// chunk of all their events closed by the last one's head — across
    /// the event count's width (15/16 events: fixarray to array16), with
    /// and without personal parts — and it decodes and verifies under the
    /// origin's key.
    #[test]
    fn joined_on_the_bytes_is_the_chunk_of_both(
        parts in proptest::collection::vec(
            proptest::option::of(proptest::prop_oneof![0usize..40, 200usize..300]),
            2..40,
        ),
        cuts in proptest::collection::btree_set(1usize..39, 1..4),
    ) {
        let key = SigningKey::from_bytes(&[13; 32]);
        let n = parts.len();
        let whole = with_parts(&build(&key, n as u64), &parts);
        let hashes: Vec<Hash32> = whole.events.iter().map(|e| event_hash(&e.envelope)).collect();
        // Pieces ending at each cut (within the chunk) and at its end.
        let mut ends: Vec<usize> = cuts.into_iter().filter(|&c| c < n).collect();
        ends.push(n);
        let mut from = 0;
        let pieces: Vec<Vec<u8>> = ends
            .iter()
            .map(|&end| {
                let head = if end == n {
                    whole.head.clone()
                } else {
                    SignedHead::sign(&key, "c1", end as u64, hashes[end - 1], 4)
                };
                let piece = Chunk {
                    origin: whole.origin.clone(),
                    events: whole.events[from..end].to_vec(),
                    head,
                };
                from = end;
                piece.encode()
            })
            .collect();
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let joined = Chunk::encoded_joined(&pieces);
        proptest::prop_assert_eq!(joined.as_ref(), Some(&whole.encode()));
        // (`with_parts`' personal parts match no digest: verified without.)
        let mut back = Chunk::decode(&joined.unwrap()).unwrap();
        for e in &mut back.events {
            e.personal = None;
        }
        proptest::prop_assert!(back.verify(1, &ZERO_HASH, &key.verifying_key()).is_ok());
    }
}

#[test]
fn joining_refuses_what_is_not_a_chunk_or_another_origin() {
    let key = SigningKey::from_bytes(&[14; 32]);
    let a = build(&key, 3).encode();
    let mut other = build(&key, 3);
    other.origin = "c2".into();
    assert_eq!(Chunk::encoded_joined(&[&a, &other.encode()]), None);
    for cut in 0..a.len() {
        assert_eq!(
            Chunk::encoded_joined(&[&a[..cut], &a]),
            None,
            "prefix {cut}"
        );
        assert_eq!(
            Chunk::encoded_joined(&[&a, &a[..cut]]),
            None,
            "prefix {cut}"
        );
    }
    let mut longer = a.clone();
    longer.push(0xc0);
    assert_eq!(Chunk::encoded_joined(&[&longer, &a]), None);
}

/// A chunk read in place ([`ChunkView`]) is the decoded chunk: the same
/// bytes decode or are refused by both, with the same origin, head,
/// envelopes, personal parts, first `prev` and link check (hashes or
/// error, the links read plainly or by the canonical walk) — for chunks with and without personal parts and every
/// one-bit change of their bytes.
#[test]
fn a_chunk_read_in_place_is_the_decoded_chunk() {
    let key = SigningKey::from_bytes(&[8; 32]);
    for chunk in [build(&key, 3), with_personal(&key, 4)] {
        let bytes = chunk.encode();
        let mut variants = vec![bytes.clone()];
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[i] ^= 1 << bit;
                variants.push(m);
            }
        }
        // The plain reading takes the chunk as written; wherever it takes
        // a variant, it reads what serde reads.
        assert!(ChunkView::read_plain(&bytes).is_some());
        let mut plain = 0;
        let (mut both, mut neither) = (0, 0);
        for m in &variants {
            if let Some(p) = ChunkView::read_plain(m) {
                plain += 1;
                let by_serde = ChunkView::decode_by_serde(m);
                assert_eq!(
                    format!("{:?}", Ok::<_, ChunkError>(p)),
                    format!("{by_serde:?}")
                );
            }
            let (decoded, view) = (Chunk::decode(m), ChunkView::decode(m));
            match (&decoded, &view) {
                (Ok(c), Ok(v)) => {
                    both += 1;
                    assert_eq!(c.origin, v.origin);
                    assert_eq!(c.head, v.head);
                    assert_eq!(c.events.len(), v.events.len());
                    for (r, rv) in c.events.iter().zip(&v.events) {
                        assert_eq!(r.envelope, rv.envelope);
                        let p = r.personal.as_ref().map(|p| (&p.salt, &p.bytes[..]));
                        assert_eq!(p, rv.personal);
                    }
                    assert_eq!(c.first_seq(), v.first_seq());
                    // The links from the first event's own `prev`, read
                    // plainly or by the walk that also checks the form.
                    let decoded = c
                        .first_prev()
                        .and_then(|p| c.check_links(c.first_seq(), &p).map(|h| (p, h)));
                    let plain = v.check_own_links(crate::event::read_links);
                    let walked = v.check_own_links(|e| {
                        crate::event::canonical_check::canonical_links(e)
                            .map_or_else(|| crate::event::read_links(e), Ok)
                    });
                    assert_eq!(format!("{decoded:?}"), format!("{plain:?}"));
                    assert_eq!(format!("{decoded:?}"), format!("{walked:?}"));
                }
                (Err(a), Err(b)) => {
                    neither += 1;
                    assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b));
                }
                _ => panic!("decode {decoded:?} but in place {view:?}"),
            }
        }
        assert!(both > 1 && neither > 1, "{both} / {neither}");
        assert!(plain > 1 && plain <= both, "{plain} read plainly of {both}");
    }
}

/// Where reading in place is stricter: a container whose envelope is
/// written as an array of integers (no store writes one) is taken by
/// `Chunk::decode` and refused by `ChunkView::decode`.
#[test]
fn an_envelope_written_as_integers_is_refused_in_place() {
    let key = SigningKey::from_bytes(&[8; 32]);
    let c = build(&key, 1);
    let h = &c.head;
    let head = (
        &h.origin,
        h.seq,
        serde_bytes::ByteBuf::from(h.hash.to_vec()),
        h.signed_at_ms,
        serde_bytes::ByteBuf::from(h.signature.to_vec()),
        serde_bytes::ByteBuf::from(h.after.expect("a v2 head").to_vec()),
    );
    let envelope: Vec<u8> = c.events[0].envelope.clone();
    let bytes = rmp_serde::to_vec(&(1u8, "c1", vec![(envelope, None::<()>)], head)).unwrap();
    assert_eq!(Chunk::decode(&bytes).unwrap(), c);
    assert!(ChunkView::decode(&bytes).is_err());
}

#[test]
fn v1_and_v2_heads_are_read_side_by_side() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let v2 = build(&key, 2).head;
    let v1 = SignedHead::sign(&key, "c1", 2, v2.hash, 5);
    for h in [&v1, &v2] {
        let back = SignedHead::decode(&h.encode()).unwrap();
        assert_eq!(&back, h);
        back.verify(&key.verifying_key()).unwrap();
    }
    assert_eq!((v1.after, v2.after), (None, Some([9; 32])));
    assert_eq!(v1.encode()[0], 0x95, "a v1 head is five fields");
    assert_eq!(v2.encode()[0], 0x96, "a v2 head is six fields");
    // Neither passes for the other: `after` cannot be dropped or added.
    let stripped = SignedHead {
        after: None,
        ..v2.clone()
    };
    assert!(stripped.verify(&key.verifying_key()).is_err());
    let added = SignedHead {
        after: Some([0; 32]),
        ..v1
    };
    assert!(added.verify(&key.verifying_key()).is_err());
    let short = {
        let mut b = v2.encode();
        // `after` as a bin 8 of 31 bytes, where 32 belong.
        let n = b.len() - 1;
        b.truncate(n);
        assert_eq!(b[n - 33], 0xc4);
        b[n - 32] = 31;
        b
    };
    assert!(SignedHead::decode(&short).is_err());
}

#[test]
fn a_head_digest_covers_every_byte_of_the_head() {
    let key = SigningKey::from_bytes(&[3; 32]);
    let h = build(&key, 2).head;
    let next = SignedHead::sign_after(&key, ("c1", 3, [4; 32]), 6, h.digest());
    assert!(next.follows(&h));
    assert!(!h.follows(&next));
    let bytes = h.encode();
    for i in 0..bytes.len() {
        let mut m = bytes.clone();
        m[i] ^= 0x01;
        if let Ok(altered) = SignedHead::decode(&m) {
            assert!(!next.follows(&altered), "flip at byte {i} still linked");
        }
    }
    // A v1 head is linked by its five fields' encoding.
    let v1 = SignedHead::sign(&key, "c1", 2, h.hash, 5);
    let after_v1 = SignedHead::sign_after(&key, ("c1", 3, [4; 32]), 6, v1.digest());
    assert!(after_v1.follows(&v1) && !after_v1.follows(&h));
    // The digest is BLAKE3 of the domain and the head's encoding whatever
    // the origin's length (written on the stack up to 64-byte ids and
    // beyond, streamed past what the stack holds).
    for len in [1, 64, 76, 77, 78, 79, 200, 5000] {
        let origin = "o".repeat(len);
        for head in [
            SignedHead::sign(&key, &origin, 7, [1; 32], -9),
            SignedHead::sign_after(&key, (&origin, u64::MAX, [2; 32]), i64::MIN, [3; 32]),
        ] {
            let mut plain = HEAD_DIGEST_DOMAIN.to_vec();
            plain.extend_from_slice(&head.encode());
            assert_eq!(head.digest(), *blake3::hash(&plain).as_bytes(), "{len}");
        }
    }
}
