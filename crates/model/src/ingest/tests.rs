use super::*;
use serde_json::json;

fn ctx() -> IngestContext<'static> {
    static LIMITS: std::sync::OnceLock<IngestLimits> = std::sync::OnceLock::new();
    IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits: LIMITS.get_or_init(IngestLimits::default),
    }
}

fn temp(celsius: Value) -> Value {
    json!({
        "kind": "temperature", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g1", "recorded_by": "w1", "client_id": "k1",
        "data": {"person": {"name": "张三"}, "celsius": celsius, "site": "checkpoint"}
    })
}

fn run(v: Value) -> Result<PreparedEvent, IngestError> {
    let lookup = |r: &EventRef| {
        (r.seq == 1).then(|| TargetInfo {
            kind: "temperature".into(),
            schema: 1,
        })
    };
    prepare(
        v,
        &ctx(),
        &lookup,
        &mut rand::rngs::mock::StepRng::new(1, 1),
    )
}

#[test]
fn integer_and_float_normalise_equal() {
    let a = run(temp(json!(37))).unwrap();
    let b = run(temp(json!(37.0))).unwrap();
    assert_eq!(a.data(), b.data());
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert!(a.personal().is_some());
}

/// `grid`, `recorded_by` and the data's bytes share one vector: each reads
/// back whole, both ways of reading a body, a correction's too.
#[test]
fn the_fields_sharing_a_vector_read_back_apart() {
    let mut v = temp(json!(36.6));
    v["grid"] = json!("网格一");
    v["recorded_by"] = json!("w\"7");
    let data = canonical::to_canonical(&json!({"celsius": 36.6, "site": "checkpoint"}));
    let general = run(v.clone()).unwrap();
    let body = serde_json::to_vec(&v).unwrap();
    let typed = typed::prepare_body(&body, &ctx(), &|_: &EventRef| None)
        .expect("the typed way reads it")
        .unwrap()
        .remove(0);
    for e in [&general, &typed] {
        assert_eq!(
            (e.kind, e.grid(), e.recorded_by()),
            ("temperature", "网格一", "w\"7")
        );
        assert_eq!(e.data(), data.as_slice());
    }
    let c = run(json!({
        "kind": "correction", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g2", "recorded_by": "w2", "client_id": "k2",
        "data": {"target": {"origin": "c1", "seq": 1}, "action": "void", "reason": "typo"}
    }))
    .unwrap();
    assert_eq!(
        (c.kind, c.grid(), c.recorded_by()),
        ("correction", "g2", "w2")
    );
    let data = canonical::to_canonical(
        &json!({"target": {"origin": "c1", "seq": 1}, "action": "void", "reason": "typo"}),
    );
    assert_eq!(c.data(), data.as_slice());
}

#[test]
fn errors_are_precise() {
    let e = run(temp(json!(45.5))).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("schema_violation", Some("data.celsius"))
    );
    let mut v = temp(json!(36.6));
    v["kind"] = json!("weather");
    assert_eq!(run(v).unwrap_err().code, "unknown_kind");
    let mut v = temp(json!(36.6));
    v["occurred_at"] = json!("2031-01-01T00:00:00+08:00");
    assert_eq!(run(v).unwrap_err().code, "future_timestamp");
    let mut v = temp(json!(36.6));
    v["origin"] = json!("c2");
    assert_eq!(run(v).unwrap_err().code, "origin_mismatch");
    let mut v = temp(json!(36.6));
    v.as_object_mut().unwrap().remove("client_id");
    let e = run(v).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("schema_violation", Some("client_id"))
    );
}

#[test]
fn corrections_check_target_and_replacement() {
    let corr = |target_seq: u64, data_extra: Value| {
        let mut d = json!({"target": {"origin": "c1", "seq": target_seq}, "action": "replace", "reason": "typo"});
        d.as_object_mut()
            .unwrap()
            .extend(data_extra.as_object().unwrap().clone());
        json!({"kind": "correction", "occurred_at": "2020-01-28T09:30:00+08:00",
               "grid": "g1", "recorded_by": "w1", "client_id": "k2", "data": d})
    };
    let ok = corr(
        1,
        json!({"replacement": {"person": {"name": "李四"}, "celsius": 36.6, "site": "home"}}),
    );
    let p = run(ok).unwrap();
    // The replacement's person is personal data too.
    assert!(p
        .personal()
        .unwrap()
        .fields()
        .unwrap()
        .contains_key("replacement.person"));
    assert_eq!(run(corr(9, json!({}))).unwrap_err().code, "unknown_target");
    let bad = corr(1, json!({"replacement": {"celsius": 36.6, "site": "home"}}));
    assert_eq!(
        run(bad).unwrap_err().field.as_deref(),
        Some("data.replacement.person")
    );
    assert_eq!(
        run(corr(1, json!({}))).unwrap_err().field.as_deref(),
        Some("data.replacement")
    );
}

#[test]
fn body_shapes() {
    let l = IngestLimits {
        batch_events_max: 2,
        ..IngestLimits::default()
    };
    assert_eq!(parse_body(b"{", &l).unwrap_err().code, "malformed_json");
    assert_eq!(parse_body(b"[1]", &l).unwrap_err().code, "invalid_body");
    assert_eq!(
        parse_body(br#"{"events": []}"#, &l).unwrap_err().code,
        "empty_batch"
    );
    assert_eq!(
        parse_body(br#"{"events": [{}, {}, {}]}"#, &l)
            .unwrap_err()
            .code,
        "batch_too_large"
    );
    assert_eq!(parse_body(br#"{"events": [{}, {}]}"#, &l).unwrap().len(), 2);
    assert_eq!(parse_body(br#"{"kind": "x"}"#, &l).unwrap().len(), 1);
}

/// The fingerprint tells a retried post from a different one by comparing
/// a posted event's with a stored event's (`stored_fingerprint`, worked
/// out again from the log): hashed in one call, it must stay the hash of
/// the stream of fields it was defined as.
#[test]
fn the_fingerprint_is_the_hash_of_its_fields_in_order() {
    fn streamed(
        kind: &str,
        schema: u32,
        at: OccurredAt,
        grid: &str,
        by: &str,
        data: &[u8],
        personal: Option<&Personal>,
    ) -> Hash32 {
        let mut h = blake3::Hasher::new();
        h.update(b"gridsync/fingerprint/v1\0");
        for part in [kind.as_bytes(), grid.as_bytes(), by.as_bytes(), data] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(&schema.to_be_bytes());
        h.update(&at.unix_ms.to_be_bytes());
        h.update(&at.offset_min.to_be_bytes());
        if let Some(p) = personal {
            h.update(&p.bytes);
        }
        *h.finalize().as_bytes()
    }
    let at = OccurredAt {
        unix_ms: 1_580_175_000_123,
        offset_min: -330,
    };
    let personal = Personal {
        salt: [7; 16],
        bytes: vec![0x81, 0xa1, b'p', 0xa1, b'x'],
    };
    let long = vec![0xa5; 3000];
    for (data, p) in [
        (&b""[..], None),
        (&[0x80][..], Some(&personal)),
        (&long[..], Some(&personal)),
    ] {
        assert_eq!(
            fingerprint("temperature", 1, at, "g1", "w1", data, p),
            streamed("temperature", 1, at, "g1", "w1", data, p)
        );
    }
    assert_ne!(
        fingerprint("temperature", 1, at, "g1", "w1", b"", None),
        fingerprint("temperature", 2, at, "g1", "w1", b"", None)
    );
}

/// The client-id index key is pinned: stored index runs are sorted and
/// searched by it, so it may never change. Every prepared event carries
/// the key of its own id, whichever way its body was read.
#[test]
fn a_prepared_event_carries_its_client_ids_index_key() {
    // BLAKE3("abc") = 6437b3ac38465133…
    assert_eq!(client_key("abc"), 0x6437_b3ac_3846_5133);
    let mut one = temp(json!(36.6));
    one["client_id"] = json!("abc");
    assert_eq!(run(one).unwrap().client_key, 0x6437_b3ac_3846_5133);
    let body = json!({"events": [temp(json!(36.6)), {
        "kind": "visit", "occurred_at": "2020-01-28T09:30:00+08:00",
        "grid": "g1", "recorded_by": "w1", "client_id": "k2",
        "data": {"household": "h1", "method": "phone", "quarantine": "ongoing"}
    }]})
    .to_string();
    let events = prepare_body(
        body.as_bytes(),
        &ctx(),
        &|_: &EventRef| None,
        &mut rand::rngs::mock::StepRng::new(1, 1),
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    for e in events {
        assert_eq!(e.client_key, client_key(&e.client_id));
    }
}

/// A stored event's fingerprint read from its envelope's bytes in place
/// (`content_fingerprint`: what a retry is compared by) equals the posted
/// event's and the one worked out from the decoded envelope, with a
/// personal part and without.
#[test]
fn the_fingerprint_read_in_place_equals_the_posted_one() {
    let visit = json!({
        "kind": "visit", "occurred_at": "2020-01-27T09:30:00-03:30",
        "grid": "g1", "recorded_by": "w1", "client_id": "k2",
        "data": {"household": "h1", "method": "phone", "quarantine": "ongoing", "note": "门口"}
    });
    for v in [temp(json!(37)), temp(json!(36.55)), visit] {
        let ev = run(v).unwrap();
        let bytes = crate::event::EnvelopeHeader {
            origin: "c1",
            seq: 7,
            kind: ev.kind,
            schema: ev.schema,
            occurred_at: ev.occurred_at,
            recorded_at_ms: 1,
            grid: ev.grid(),
            recorded_by: ev.recorded_by(),
            client_id: &ev.client_id,
            prev: &[3; 32],
            personal_digest: ev.personal_digest(),
        }
        .encode_with_data(ev.data());
        let c = crate::event::read_content(&bytes).expect("a format-1 envelope");
        assert_eq!(c.has_personal, ev.personal().is_some());
        assert_eq!(content_fingerprint(&c, ev.personal()), ev.fingerprint());
        let env = crate::Envelope::decode(&bytes).unwrap();
        assert_eq!(stored_fingerprint(&env, ev.personal()), ev.fingerprint());
        assert!(crate::event::read_content(&bytes[..bytes.len() - 1]).is_none());
    }
}
