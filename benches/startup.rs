//! Opening a large log: the store's open-time verification over N
//! one-event chunks (phones posting one event at a time: the worst case,
//! one signed head per event), 4 origins, sled on disk. Three ways in the
//! same run, alternating: the default (at the checkpoint: the heads'
//! signatures and the log's last entry), the whole log (every event's
//! chain link recomputed, each origin's newest head signature verified,
//! the chunk index compared a page at a time: the default before the
//! checkpoint) and `--verify-all` (every chunk's signature too). Also the
//! whole-log check a node runs after an open at the checkpoint.
//!
//! `cargo bench --bench startup` (`GRIDSYNC_BENCH_CHUNKS`, default 400000;
//! `GRIDSYNC_BENCH_RUNS`, default 3).

use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use gridsync_model::ZERO_HASH;
use gridsync_store::{SledKv, Store, StoreConfig};

const ORIGINS: [&str; 4] = ["c1", "c2", "c3", "c4"];

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(i + 1).unwrap(); 32])
}

fn open(dir: &std::path::Path, verify_all: bool, verify_whole_log: bool) -> Store {
    let vks: Vec<_> = (0..ORIGINS.len()).map(|i| key(i).verifying_key()).collect();
    Store::open(
        Arc::new(SledKv::open(dir, 64 << 20).unwrap()),
        StoreConfig {
            verify_all_signatures: verify_all,
            verify_whole_log,
            ..StoreConfig::default()
        },
        None,
        Arc::new(move |o: &str, _: u64| ORIGINS.iter().position(|x| *x == o).map(|i| vks[i])),
    )
    .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let chunks = gridsync_suite::env_u64("GRIDSYNC_BENCH_CHUNKS", 400_000);
    let runs = gridsync_suite::env_u64("GRIDSYNC_BENCH_RUNS", 3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let store = open(&data, false, false);
        let per_origin = chunks / ORIGINS.len() as u64;
        let mut prev = [ZERO_HASH; 4];
        let started = Instant::now();
        let mut seq = 1;
        while seq <= per_origin {
            let mut batch = Vec::new();
            for _ in 0..250 {
                if seq > per_origin {
                    break;
                }
                for (i, o) in ORIGINS.iter().enumerate() {
                    let c = gridsync_suite::visit_chunk(o, &key(i), seq, seq, prev[i], "");
                    prev[i] = c.head.hash;
                    batch.push(c);
                }
                seq += 1;
            }
            rt.block_on(store.import(batch, 0)).unwrap();
        }
        store.close();
        eprintln!(
            "wrote {chunks} one-event chunks in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    println!("open of {chunks} one-event chunks (4 origins), sled on disk");
    println!("| mode | run | open | chunks/s |");
    println!("| --- | --- | --- | --- |");
    let modes = [
        ("default (checkpoint)", false, false),
        ("whole log", false, true),
        ("--verify-all", true, true),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len() + 1];
    for run in 1..=runs {
        for (m, (name, verify_all, whole)) in modes.iter().enumerate() {
            let started = Instant::now();
            let store = open(&data, *verify_all, *whole);
            let t = started.elapsed().as_secs_f64();
            assert_eq!(store.counts().chunks, chunks);
            println!("| {name} | {run} | {t:.3} s | {:.0} |", chunks as f64 / t);
            times[m].push(t);
            if m == 0 {
                // What a node then runs beside itself, after listening.
                let started = Instant::now();
                let counts = store.verify_log(false, &|| false).unwrap();
                let t = started.elapsed().as_secs_f64();
                assert_eq!(counts.chunks, chunks);
                println!(
                    "| whole-log check after the open | {run} | {t:.2} s | {:.0} |",
                    chunks as f64 / t
                );
                times[modes.len()].push(t);
            }
            store.close();
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let m: Vec<f64> = times.iter_mut().map(median).collect();
    println!(
        "median: checkpoint {:.3} s, whole log {:.2} s ({:.0}× the checkpoint), --verify-all {:.2} s; \
         the whole-log check after the open {:.2} s",
        m[0],
        m[1],
        m[1] / m[0],
        m[2],
        m[3]
    );
}
