//! A projection saved beside the log and folded on from there equals a
//! fresh fold of the whole log (DESIGN.md §3 invariant 5), at every cut;
//! a snapshot that does not belong to the log or the settings is refused;
//! and the offset it records is what keeps events from being counted twice
//! (control: a snapshot claiming an earlier offset fails the fold on).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, TargetInfo};
use gridsync_model::kinds::EventRef;
use gridsync_projections::fold::{fold_log, Cut};
use gridsync_projections::{snapshot, Projection, ProjectionConfig};
use gridsync_store::{MemKv, OriginIdentity, Store, StoreConfig};
use serde_json::json;

const ORIGIN: &str = "c1";

fn store(kv: &MemKv) -> Store {
    let key = SigningKey::from_bytes(&[5; 32]);
    let vk = key.verifying_key();
    Store::open(
        Arc::new(kv.clone()),
        StoreConfig::default(),
        Some(OriginIdentity {
            node_id: ORIGIN.into(),
            key,
        }),
        Arc::new(move |o: &str, _| (o == ORIGIN).then_some(vk)),
    )
    .unwrap()
}

/// A realistic mix: entries, fevers, visits (households revisited, so the
/// distinct and quarantine timelines matter) and a correction.
fn post(store: &Store, rt: &tokio::runtime::Runtime, i: u64) {
    let at = format!("2020-01-{:02}T09:{:02}:00+08:00", 26 + i % 3, i % 60);
    let household = format!("h{}", i % 5);
    let (kind, data) = match i % 4 {
        _ if i == 7 => (
            "correction",
            json!({"target": {"origin": ORIGIN, "seq": 2}, "action": "void", "reason": "typo"}),
        ),
        0 => (
            "entry",
            json!({"checkpoint": "cp1", "direction": "in", "subject": "resident",
                "person": {"name": "张三", "phone": "13800000000"},
                "from_region": if i.is_multiple_of(8) {"湖北省武汉市"} else {"浙江省杭州市"},
                "decision": "admitted", "celsius": 36.5}),
        ),
        1 => (
            "temperature",
            json!({"person": {"name": "李四"}, "celsius": 36.5 + (i % 3) as f64 * 0.6,
                "site": "checkpoint", "action": "none"}),
        ),
        2 => (
            "visit",
            json!({"household": household, "method": "in_person", "residents": 3,
                "quarantine": if i.is_multiple_of(3) {"started"} else {"ongoing"}}),
        ),
        _ => (
            "delivery",
            json!({"household": household, "items": [{"item": "面条", "qty": 2}], "quarantined": true}),
        ),
    };
    post_json(store, rt, kind, &at, data, i);
}

fn post_json(
    store: &Store,
    rt: &tokio::runtime::Runtime,
    kind: &str,
    at: &str,
    data: serde_json::Value,
    i: u64,
) {
    let ev = prepared(store, kind, at, data, i);
    rt.block_on(store.append(vec![ev], 1_580_300_000_000))
        .unwrap();
}

fn prepared(
    store: &Store,
    kind: &str,
    at: &str,
    data: serde_json::Value,
    i: u64,
) -> gridsync_model::ingest::PreparedEvent {
    let limits = IngestLimits::default();
    let ctx = IngestContext {
        node_id: ORIGIN,
        now_ms: 1_580_300_000_000,
        limits: &limits,
    };
    let v = json!({"kind": kind, "occurred_at": at, "grid": "g1", "recorded_by": "w1",
        "client_id": format!("k{i}"), "data": data});
    let lookup = |r: &EventRef| {
        store.find_event(r).ok().flatten().map(|(e, _)| TargetInfo {
            kind: e.envelope.kind,
            schema: e.envelope.schema,
        })
    };
    prepare(v, &ctx, &lookup, &mut rand::thread_rng()).expect("valid event")
}

fn cfg() -> ProjectionConfig {
    ProjectionConfig::new("Asia/Shanghai").unwrap()
}

fn fresh(store: &Store) -> Projection {
    let mut p = Projection::new(cfg());
    fold_log(store, &mut p, 0, Cut::Everything, &|_| {}).unwrap();
    p
}

#[test]
fn a_snapshot_folded_on_equals_a_fresh_fold_and_foreign_ones_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.projection");
    let kv = MemKv::new();
    let s = store(&kv);
    for cut in [0u64, 1, 5, 17, 40] {
        // Save at this point of the log ...
        while s.counts().events < cut {
            post(&s, &rt, s.counts().events);
        }
        let p = fresh(&s);
        let offset = *s.subscribe().borrow();
        snapshot::save(&p, offset, &s, &file).unwrap();
        // ... commit more, then resume from the snapshot.
        for _ in 0..7 {
            post(&s, &rt, s.counts().events);
        }
        let (mut resumed, from) = snapshot::load(&file, cfg(), &s).unwrap();
        assert_eq!(from, offset);
        fold_log(&s, &mut resumed, from, Cut::Everything, &|_| {}).unwrap();
        assert!(resumed.same_state(&fresh(&s)), "cut at {cut} events");
    }
    let offset = *s.subscribe().borrow();
    snapshot::save(&fresh(&s), offset, &s, &file).unwrap();
    assert!(snapshot::load(&file, cfg(), &s).is_ok());

    // Refused: other settings.
    let mut other = cfg();
    other.fever_celsius = 38.0;
    assert!(snapshot::load(&file, other, &s)
        .unwrap_err()
        .contains("settings"));
    // Refused: another log (a different event at the same place).
    let kv2 = MemKv::new();
    let s2 = store(&kv2);
    for i in 0..s.counts().events {
        post(&s2, &rt, i + 1000);
    }
    assert!(snapshot::load(&file, cfg(), &s2).is_err());
    // Refused: a log shorter than the snapshot (restored from a backup).
    let short = MemKv::new();
    let s3 = store(&short);
    post(&s3, &rt, 0);
    assert!(snapshot::load(&file, cfg(), &s3).is_err());
    // Refused: one flipped byte.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert!(snapshot::load(&file, cfg(), &s)
        .unwrap_err()
        .contains("intact"));

    // Control: the recorded offset must be where the state stops. A state
    // saved 3 entries before the offset it claims would miss them: the
    // fold on finds the origin's next seq out of order (the node then
    // folds the whole log instead). Claiming an earlier offset is harmless
    // (an origin's seqs already applied are skipped, never counted twice).
    let end = *s.subscribe().borrow();
    let mut behind = Projection::new(cfg());
    let behind_kv = MemKv::new();
    let sb = store(&behind_kv);
    for i in 0..s.counts().events - 3 {
        post(&sb, &rt, i);
    }
    fold_log(&sb, &mut behind, 0, Cut::Everything, &|_| {}).unwrap();
    snapshot::save(&behind, *sb.subscribe().borrow(), &sb, &file).unwrap();
    post(&sb, &rt, 1_000);
    post(&sb, &rt, 1_001);
    let (mut wrong, from) = snapshot::load(&file, cfg(), &sb).unwrap();
    let folded = fold_log(&sb, &mut wrong, from + 1, Cut::Everything, &|_| {});
    assert!(folded.is_err() || !wrong.same_state(&fresh(&sb)));
    snapshot::save(&fresh(&s), end - 3, &s, &file).unwrap();
    let (mut early, from) = snapshot::load(&file, cfg(), &s).unwrap();
    fold_log(&s, &mut early, from, Cut::Everything, &|_| {}).unwrap();
    assert!(early.same_state(&fresh(&s)));
}

/// A fold finds a correction's target in the log entries it has just read
/// (this page or the one before) instead of asking the store again; what
/// it finds must be what the store holds. Corrections here point 5, 9, 70
/// and 150 events back over 600 events in 3-event entries (pages of 64
/// entries), so all three places are used; the result must equal applying
/// every event with only the store's lookup.
#[test]
fn corrections_fold_the_same_wherever_their_target_is_found() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kv = MemKv::new();
    let s = store(&kv);
    let mut batch = Vec::new();
    for i in 0..600u64 {
        let at = format!("2020-01-{:02}T09:{:02}:00+08:00", 26 + i % 3, i % 60);
        let back = [5, 9, 70, 150][(i / 10 % 4) as usize];
        let ev = if i % 10 == 9 && i > back {
            // Voids or replaces a visit (every 4th event is one).
            let target = (i + 1 - back) / 4 * 4 - 1;
            let data = if i % 20 == 9 {
                json!({"target": {"origin": ORIGIN, "seq": target}, "action": "void", "reason": "r"})
            } else {
                json!({"target": {"origin": ORIGIN, "seq": target}, "action": "replace",
                    "reason": "r", "replacement": {"household": format!("h{}", i % 7),
                    "method": "phone", "residents": 2, "quarantine": "ended"}})
            };
            prepared(&s, "correction", &at, data, i)
        } else {
            let (kind, data) = match i % 4 {
                2 => (
                    "visit",
                    json!({"household": format!("h{}", i % 5), "method": "in_person",
                        "residents": 3, "quarantine": if i % 3 == 0 {"started"} else {"ongoing"}}),
                ),
                _ => (
                    "temperature",
                    json!({"person": {"name": "李四"}, "celsius": 36.5 + (i % 3) as f64 * 0.6,
                        "site": "checkpoint", "action": "none"}),
                ),
            };
            prepared(&s, kind, &at, data, i)
        };
        batch.push(ev);
        if batch.len() == 3 {
            rt.block_on(s.append(std::mem::take(&mut batch), 1_580_300_000_000))
                .unwrap();
        }
    }
    assert_eq!(s.counts().chunks, 200, "one entry per 3-event post");
    let folded = fresh(&s);
    let mut by_store = Projection::new(cfg());
    let lookup = |o: &str, seq: u64| {
        s.find_event(&EventRef {
            origin: o.to_owned(),
            seq,
        })
        .unwrap()
        .map(|(_, rec)| rec.envelope)
    };
    for e in s.read_log(0, 1_000).unwrap() {
        for rec in &e.chunk.events {
            by_store.apply(&rec.envelope, &lookup).unwrap();
        }
    }
    assert!(folded.same_state(&by_store));
    assert!(!folded.same_state(&Projection::new(cfg())));
}
