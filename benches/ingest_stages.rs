//! What one batched post costs, stage by stage, for a batch of 250 sample
//! events (the realistic mix of `gridsync_suite::sample_event`): parsing
//! the JSON body, JSON-Schema validation alone, the whole preparation
//! (validation, normalisation, canonical encoding, fingerprint) — the
//! general way (a JSON value tree, then the schemas) and the body as the
//! server prepares it (`ingest::prepare_body`: the typed way; with each
//! event's keys sorted, `data` before `kind`, and as a client serialising
//! `EventInput` writes them, `kind` first), the log
//! writer without storage (numbering, chaining, hashing, signing, client-id
//! index — over an in-memory store), the same over sled without the final
//! `fsync`, with it (a durable commit), and the JSON reply.
//!
//! `cargo bench --bench ingest_stages`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use gridsync_model::api::{AppendedEvent, EventBatchInput, EventInput, PostEventsResponse};
use gridsync_model::ingest::{
    parse_body, prepare, prepare_body, IngestContext, IngestLimits, PreparedEvent,
};
use gridsync_model::kinds::EventRef;
use gridsync_model::schema;
use gridsync_store::{Kv, MemKv, OriginIdentity, SledKv, Store, StoreConfig};

const BATCH: usize = 250;
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn body() -> Vec<u8> {
    let events: Vec<serde_json::Value> = (0..BATCH)
        .map(|_| {
            let i = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            gridsync_suite::sample_event(i, &format!("stage-{i}"))
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

/// The same events as a client serialising `EventInput` writes them:
/// fields in declared order, `kind` before `data` (`body`'s JSON values
/// write their keys sorted, `data` first).
fn body_kind_first() -> Vec<u8> {
    let events: Vec<EventInput> = (0..BATCH)
        .map(|_| {
            let i = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            serde_json::from_value(gridsync_suite::sample_event(i, &format!("stage-{i}"))).unwrap()
        })
        .collect();
    serde_json::to_vec(&EventBatchInput { events }).unwrap()
}

fn prepared(limits: &IngestLimits) -> Vec<PreparedEvent> {
    let ctx = IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits,
    };
    parse_body(&body(), limits)
        .unwrap()
        .into_iter()
        .map(|v| prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).unwrap())
        .collect()
}

fn store(kv: Arc<dyn Kv>) -> Store {
    let key = SigningKey::from_bytes(&[5; 32]);
    let vk = key.verifying_key();
    Store::open(
        kv,
        StoreConfig::default(),
        Some(OriginIdentity {
            node_id: "c1".into(),
            key,
        }),
        Arc::new(move |_: &str, _: u64| Some(vk)),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let limits = IngestLimits::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("ingest_stages");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1_parse_json", |b| {
        b.iter_batched(
            body,
            |body| parse_body(&body, &limits).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("2_json_schema_only", |b| {
        b.iter_batched(
            || parse_body(&body(), &limits).unwrap(),
            |values| {
                for v in &values {
                    assert!(schema::validate_event_input(v).is_empty());
                    let kind = v["kind"].as_str().unwrap();
                    let version = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(1);
                    let data = &v["data"];
                    assert!(schema::validate_data(kind, version as u32, data, "data")
                        .unwrap()
                        .is_empty());
                }
            },
            BatchSize::PerIteration,
        )
    });
    let ctx = IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits: &limits,
    };
    group.bench_function("3_prepare_validate_normalise_encode", |b| {
        b.iter_batched(
            || parse_body(&body(), &limits).unwrap(),
            |values| {
                values
                    .into_iter()
                    .map(|v| prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("3a_parse_and_prepare_general_way", |b| {
        b.iter_batched(
            body,
            |body| {
                parse_body(&body, &limits)
                    .unwrap()
                    .into_iter()
                    .map(|v| prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    for (name, make) in [
        (
            "3b_parse_and_prepare_body_typed_way",
            body as fn() -> Vec<u8>,
        ),
        (
            "3c_parse_and_prepare_body_typed_way_kind_first",
            body_kind_first,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                make,
                |body| {
                    prepare_body(&body, &ctx, &|_: &EventRef| None, &mut rand::thread_rng())
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    for (name, st) in [
        ("4_log_writer_in_memory", store(Arc::new(MemKv::new()))),
        (
            "5_log_writer_sled_no_fsync",
            store(Arc::new(
                SledKv::open(&dir.path().join("nofsync"), 64 << 20)
                    .unwrap()
                    .unsafe_skip_fsync(),
            )),
        ),
        (
            "6_log_writer_sled_durable",
            store(Arc::new(
                SledKv::open(&dir.path().join("durable"), 64 << 20).unwrap(),
            )),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || prepared(&limits),
                |evs| rt.block_on(st.append(evs, 1)).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    let results: Vec<AppendedEvent> = (0..BATCH as u64)
        .map(|seq| AppendedEvent {
            origin: "c1".into(),
            seq,
            hash: hex::encode([7u8; 32]),
            duplicate: false,
        })
        .collect();
    group.bench_function("7_reply_json", |b| {
        b.iter(|| {
            serde_json::to_vec(&PostEventsResponse {
                results: results.clone(),
            })
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
