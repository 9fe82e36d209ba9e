//! The typed way of reading a body ([`super::typed`]) agrees with the
//! general way ([`super::prepare_body_values`]): over many mutated bodies,
//! whenever the typed way answers, its answer is the general way's; and it
//! does answer for ordinary bodies of every kind.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

fn ctx(limits: &IngestLimits) -> IngestContext<'_> {
    IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits,
    }
}

fn lookup(r: &EventRef) -> Option<TargetInfo> {
    let kind = match (r.origin.as_str(), r.seq) {
        ("c1", 1) => "temperature",
        ("c1", 2) => "visit",
        ("c1", 3) => "correction",
        ("c1", 4) => "delivery",
        ("c1", 5) => "entry",
        _ => return None,
    };
    Some(TargetInfo {
        kind: kind.into(),
        schema: 1,
    })
}

/// One ordinary event of every kind (and both kinds of correction).
fn bases() -> Vec<Value> {
    let env = |kind: &str, data: Value| {
        json!({"kind": kind, "occurred_at": "2020-01-28T09:30:00.250+08:00", "grid": "g1",
               "recorded_by": "w1", "client_id": format!("k-{kind}"), "data": data})
    };
    let person = json!({"name": "张三", "phone": "13800000000", "id_number": "370202"});
    vec![
        env(
            "entry",
            json!({"checkpoint": "cp1", "direction": "in", "subject": "resident",
                   "person": person, "plate": "鲁B12345", "from_region": "湖北省武汉市",
                   "purpose": "返乡", "decision": "referred", "celsius": 37}),
        ),
        env(
            "temperature",
            json!({"person": {"name": "李四"}, "celsius": 36.6, "site": "home", "action": "recheck"}),
        ),
        env(
            "visit",
            json!({"household": "h1", "method": "in_person", "residents": 3, "symptoms": false,
                   "travel_regions": ["湖北省"], "quarantine": "ongoing", "note": "正常"}),
        ),
        env(
            "delivery",
            json!({"household": "h2", "items": [{"item": "大米", "qty": 2}, {"item": "牛奶", "qty": 6}],
                   "quarantined": true, "note": null}),
        ),
        env(
            "correction",
            json!({"target": {"origin": "c1", "seq": 1}, "action": "replace", "reason": "录入有误",
                   "replacement": {"person": {"name": "李四"}, "celsius": 36, "site": "home"}}),
        ),
        env(
            "correction",
            json!({"target": {"origin": "c1", "seq": 2}, "action": "void", "reason": "重复"}),
        ),
    ]
}

/// Values that sit on or just past the bounds the schemas state, and of
/// every JSON type.
fn replacement(rng: &mut StdRng) -> Value {
    let lengths = [
        0, 1, 2, 7, 16, 19, 20, 21, 32, 33, 40, 41, 64, 65, 128, 129, 256, 257, 500, 501, 2000,
        2001,
    ];
    // Lists on and past the item bounds (travel_regions ≤ 32, items 1–64).
    let items = [0, 1, 32, 33, 64, 65][rng.gen_range(0..6)];
    match rng.gen_range(0..16) {
        13 => json!(vec!["湖北省"; items]),
        14 => json!(vec![json!({"item": "面", "qty": 1}); items]),
        0 => Value::Null,
        1 => json!(rng.gen_bool(0.5)),
        2 => json!([0, 1, 3, 100, 101, 100_000, 100_001, 4_294_967_296u64][rng.gen_range(0..8)]),
        3 => json!([-1, 0, 1][rng.gen_range(0..3)]),
        4 => json!([29.99, 30.0, 45.0, 45.01, 5.0, 1.5, 1e3][rng.gen_range(0..7)]),
        5 => json!("x".repeat(lengths[rng.gen_range(0..lengths.len())])),
        // Multi-byte: the schemas count characters, not bytes.
        6 => json!("湖".repeat(lengths[rng.gen_range(0..lengths.len())])),
        7 => json!(
            ["in", "out", "home", "void", "replace", "phone", "none", "referred"]
                [rng.gen_range(0..8)]
        ),
        8 => json!([]),
        9 => json!([{"item": "面", "qty": 1}]),
        10 => json!({}),
        11 => json!({"name": "王五"}),
        12 => json!("2020-01-28T09:30:00Z"),
        _ => json!(["a", "b"]),
    }
}

/// Every path to a value inside `v`.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(json!(k));
                out.push(at.clone());
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(json!(i));
                out.push(at.clone());
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'v>(v: &'v mut Value, path: &[Value]) -> &'v mut Value {
    path.iter().fold(v, |v, seg| match seg {
        Value::String(k) => &mut v[k.as_str()],
        seg => &mut v[seg.as_u64().unwrap() as usize],
    })
}

/// One to three random changes to an event.
fn mutate(event: &mut Value, rng: &mut StdRng) {
    for _ in 0..rng.gen_range(1..=3) {
        let mut all = Vec::new();
        paths(event, &mut Vec::new(), &mut all);
        let path = all[rng.gen_range(0..all.len())].clone();
        let (last, parent) = path.split_last().unwrap();
        match rng.gen_range(0..5) {
            // Remove the field (or array item).
            0 => match at_mut(event, parent) {
                Value::Object(m) => {
                    m.remove(last.as_str().unwrap());
                }
                Value::Array(a) => {
                    a.remove(last.as_u64().unwrap() as usize);
                }
                _ => {}
            },
            // An unknown field beside it.
            1 => {
                if let Value::Object(m) = at_mut(event, parent) {
                    m.insert("extra".into(), json!(1));
                }
            }
            // An object given as the array of its values.
            2 => {
                let v = at_mut(event, &path);
                if let Value::Object(m) = v {
                    *v = Value::Array(m.values().cloned().collect());
                }
            }
            _ => *at_mut(event, &path) = replacement(rng),
        }
    }
}

/// JSON text of `v`, now and then with a key repeated (the general way
/// keeps the last, the typed way refuses) or a character escaped.
fn write(v: &Value, rng: &mut StdRng, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            // Keys in their sorted order (an event's `data` before its
            // `kind`: read as text, then as its type) or shuffled (often
            // `kind` first: `data` read as its type in place).
            if rng.gen_bool(0.5) {
                entries.shuffle(rng);
            }
            if !entries.is_empty() && rng.gen_ratio(1, 40) {
                entries.insert(0, entries[rng.gen_range(0..entries.len())]);
            }
            for (i, (k, c)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                write(c, rng, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, c) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(c, rng, out);
            }
            out.push(']');
        }
        Value::String(s) if rng.gen_ratio(1, 20) => {
            out.push('"');
            for ch in s.chars() {
                let mut buf = [0u16; 2];
                for unit in ch.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            out.push('"');
        }
        v => out.push_str(&v.to_string()),
    }
}

/// A body: one event or a batch of some, sometimes the batch itself bent.
fn body(rng: &mut StdRng, bases: &[Value], mutate_p: f64) -> String {
    let pick = |rng: &mut StdRng| {
        let mut e = bases[rng.gen_range(0..bases.len())].clone();
        if rng.gen_bool(mutate_p) {
            mutate(&mut e, rng);
        }
        e
    };
    let shape = rng.gen_range(0..10);
    let v = if shape < 4 {
        pick(rng)
    } else {
        let events: Vec<Value> = (0..rng.gen_range(1..=4)).map(|_| pick(rng)).collect();
        match shape {
            // An unknown key before and after `events` (the typed way
            // picks what to try first by the first key).
            4 if rng.gen_bool(0.5) => json!({"a": 1, "events": events}),
            4 => json!({"events": events, "extra": 1}),
            5 if rng.gen_bool(0.3) => json!({"events": []}),
            5 => Value::Array(events),
            _ => json!({ "events": events }),
        }
    };
    let mut text = String::new();
    if rng.gen_ratio(1, 10) {
        // Whitespace before the body (and so before its first key).
        text.push_str(" \n\t");
    }
    write(&v, rng, &mut text);
    text
}

type Answer = Result<Vec<PreparedEvent>, IngestError>;

/// What both ways say about `body`; `None` from the typed way is "ask the
/// general way".
fn both(body: &str, limits: &IngestLimits) -> (Option<Answer>, Answer) {
    let ctx = ctx(limits);
    (
        typed::prepare_body(body.as_bytes(), &ctx, &lookup),
        prepare_body_values(body.as_bytes(), &ctx, &lookup),
    )
}

#[test]
fn the_typed_way_agrees_with_the_general_way() {
    // A batch limit of 3 so that "too many events" is probed too.
    let limits = IngestLimits {
        batch_events_max: 3,
        ..IngestLimits::default()
    };
    let bases = bases();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut typed_accepted, mut accepted, mut refused) = (0, 0, 0);
    for round in 0..30_000 {
        let text = body(&mut rng, &bases, 0.6);
        let (typed, general) = both(&text, &limits);
        if let Some(typed) = typed {
            assert_eq!(typed, general, "round {round}: {text}");
            typed_accepted += usize::from(typed.is_ok());
        }
        match general {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // The probes reach both sides of the schemas, and the typed way is
    // taken for most bodies the general way accepts.
    eprintln!("accepted {accepted}, refused {refused}, typed accepted {typed_accepted}");
    assert!(accepted > 5_000 && refused > 10_000, "{accepted} {refused}");
    assert!(
        typed_accepted * 10 >= accepted * 8,
        "the typed way accepted {typed_accepted} of the {accepted} bodies accepted"
    );
}

#[test]
fn the_typed_way_takes_ordinary_bodies_of_every_kind() {
    let limits = IngestLimits::default();
    for base in bases() {
        let one = base.to_string();
        let batch = json!({"events": [base.clone(), base.clone()]}).to_string();
        // As a client writes `EventInput` (its fields in declared order:
        // `kind` before `data`), and with `data` first (`Value`'s sorted
        // keys), so both ways of meeting `data` are taken.
        let declared = serde_json::to_string(
            &serde_json::from_value::<crate::api::EventInput>(base.clone()).unwrap(),
        )
        .unwrap();
        assert!(declared.find("\"kind\"") < declared.find("\"data\""));
        assert!(one.find("\"kind\"") > one.find("\"data\""));
        for text in [one, batch, declared] {
            let (typed, general) = both(&text, &limits);
            let typed = typed.unwrap_or_else(|| panic!("typed way declined {text}"));
            assert!(general.is_ok(), "{general:?}");
            assert_eq!(typed, general);
        }
    }
    // And the whole entry point draws the same salts either way.
    let mut a = rand::rngs::mock::StepRng::new(9, 3);
    let mut b = rand::rngs::mock::StepRng::new(9, 3);
    let text = json!({"events": bases()}).to_string();
    let ctx = ctx(&limits);
    let typed = prepare_body(text.as_bytes(), &ctx, &lookup, &mut a).unwrap();
    let values = parse_body(text.as_bytes(), &limits).unwrap();
    let general: Vec<PreparedEvent> = values
        .into_iter()
        .map(|v| prepare(v, &ctx, &lookup, &mut b).unwrap())
        .collect();
    assert_eq!(typed, general);
    assert!(typed.iter().any(|e| e.personal().is_some()));
}

#[test]
fn every_kind_and_version_this_build_knows_has_a_type() {
    for (kind, versions) in crate::kinds::KINDS {
        for &v in *versions {
            assert!(Data::has_type(kind, v), "{kind} v{v}");
        }
    }
    assert!(!Data::has_type("entry", 2));
    assert!(!Data::has_type("inspection", 1));
}
