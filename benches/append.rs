//! Durable append throughput of the sled log at commit sizes 1, 10, 100 and
//! 1,000 events, beside the raw limit of this disk measured in the same
//! run: appending the same number of bytes to a plain file and fsyncing.
//! Also the cost of the heads record kept beside the data directory: the
//! default (written at most every 200 ms, off the acknowledgement path)
//! and written inside every commit (`heads_interval_ms = 0`). And the cost
//! of packs (small entries several to a sled value, the newest rewritten
//! by each commit): `no_packs` writes every entry under its own key.
//!
//! And a phone's retry: `retry_1000_held` posts again 1,000 events the
//! log already holds (each a duplicate: looked up, its content compared,
//! nothing written).
//!
//! `cargo bench --bench append`

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use gridsync_store::{OriginIdentity, SledKv, Store, StoreConfig};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn events(n: usize) -> Vec<PreparedEvent> {
    let limits = IngestLimits::default();
    let ctx = IngestContext {
        node_id: "c1",
        now_ms: 1_580_200_000_000,
        limits: &limits,
    };
    (0..n)
        .map(|_| {
            let i = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let v = gridsync_suite::sample_event(i, &format!("bench-{i}"));
            prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, heads: Option<u64>, pack_entry_bytes_max: usize| {
        let key = SigningKey::from_bytes(&[5; 32]);
        let vk = key.verifying_key();
        let data = dir.path().join(name);
        Store::open(
            Arc::new(SledKv::open(&data, 64 << 20).unwrap()),
            StoreConfig {
                heads_record: heads.map(|_| data.clone()),
                heads_interval_ms: heads.unwrap_or(0),
                pack_entry_bytes_max,
                ..StoreConfig::default()
            },
            Some(OriginIdentity {
                node_id: "c1".into(),
                key,
            }),
            Arc::new(move |_: &str, _: u64| Some(vk)),
        )
        .unwrap()
    };
    let packs = StoreConfig::default().pack_entry_bytes_max;
    let store = open("db", None, packs);
    let no_packs = open("db-no-packs", None, 0);
    let with_record = open("db-record", Some(200), packs);
    let record_every_commit = open("db-record-every", Some(0), packs);
    let sample_bytes: usize = events(100)
        .iter()
        .map(PreparedEvent::stored_bytes_estimate)
        .sum::<usize>()
        / 100;
    let mut raw = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw.log"))
        .unwrap();

    let mut group = c.benchmark_group("durable_append");
    group.sample_size(20);
    for n in [1usize, 10, 100, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("sled_log/commit_{n}"), |b| {
            b.iter_batched(
                || events(n),
                |evs| rt.block_on(store.append(evs, 1)).unwrap(),
                BatchSize::PerIteration,
            )
        });
        for (name, st) in [
            ("no_packs", &no_packs),
            ("heads_record_200ms", &with_record),
            ("heads_record_every_commit", &record_every_commit),
        ] {
            group.bench_function(format!("{name}/commit_{n}"), |b| {
                b.iter_batched(
                    || events(n),
                    |evs| rt.block_on(st.append(evs, 1)).unwrap(),
                    BatchSize::PerIteration,
                )
            });
        }
        let buf = vec![0x5au8; n * sample_bytes];
        group.bench_function(format!("raw_file_append_fsync/commit_{n}"), |b| {
            b.iter(|| {
                raw.write_all(&buf).unwrap();
                raw.sync_all().unwrap();
            })
        });
    }
    group.finish();

    // A retry of a whole post: every event found held and compared.
    let retried = events(1000);
    rt.block_on(store.append(retried.clone(), 1)).unwrap();
    let mut group = c.benchmark_group("durable_append");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1000));
    bench_retry(&mut group, &rt, &store, "retry_1000_held", &retried);

    // A retry of a whole post whose events are older than the index's
    // recent entries (a phone back after many newer events): each id is
    // found through a run and its event read back from the log.
    let old_post = events(1000);
    rt.block_on(store.append(old_post.clone(), 1)).unwrap();
    let flush = gridsync_store::ClientIndexConfig::default().flush_entries;
    for _ in 0..flush.div_ceil(1000) + 1 {
        rt.block_on(store.append(events(1000), 1)).unwrap();
    }
    bench_retry(&mut group, &rt, &store, "retry_1000_indexed", &old_post);
    group.finish();
}

/// `post` posted again, every event answered as a duplicate.
fn bench_retry(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    name: &str,
    post: &[PreparedEvent],
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || post.to_vec(),
            |evs| {
                let r = rt.block_on(store.append(evs, 2)).unwrap();
                assert!(r.iter().all(|a| a.duplicate));
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
