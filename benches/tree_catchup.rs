//! Tree catch-up with real processes: 4 communities → 2 streets → a
//! district, each a `gridsync serve` process with the default sync timers.
//! The communities take N events (`gridsync load --tree`) while the streets
//! and the district are down, and stay up for an outage of at least 20 s
//! (their links back off meanwhile); then the upper tier starts, and we time
//! until the district holds all N — from the first upper node's start
//! (process start and store open included) and from the moment all three
//! are listening.
//!
//! Variants in the same run, alternating run by run: the default (the
//! upper nodes nudge their children when they start, `sync.nudge_children`;
//! `reconnect_refused_max_ms` = 1000: while the parent refuses connections,
//! children retry within a second), the same without the nudge, the
//! baseline without either (`reconnect_refused_max_ms` = `reconnect_max_ms`,
//! 30 s: only the exponential backoff with full jitter — what children of a
//! parent whose host does not answer at all meet), and that baseline with
//! the nudge.
//!
//! Each run also reports the log entries (chunks) at each tier: a child
//! joins consecutive small chunks of one origin in a batch before sending
//! (and an aggregator merges those of a child that did not), so with
//! phone-like posts (`GRIDSYNC_BENCH_BATCH=1`) the streets and the
//! district hold far fewer, larger chunks than the communities.
//!
//! `cargo build --release -p gridsync && cargo bench --bench tree_catchup`
//! (`GRIDSYNC_BENCH_EVENTS`, default 200000; `GRIDSYNC_BENCH_RUNS`, default
//! 3; `GRIDSYNC_BENCH_OUTAGE_S`, default 20; `GRIDSYNC_BENCH_CLIENTS`,
//! default 4, and `GRIDSYNC_BENCH_BATCH`, default 250, for the load;
//! `GRIDSYNC_BENCH_REFUSED_MS`, default 1000, the children's
//! `reconnect_refused_max_ms`; `GRIDSYNC_BENCH_BASELINE=0` skips the
//! backoff-only variant, `GRIDSYNC_BENCH_NO_NUDGE=0` the one without the
//! nudge; `GRIDSYNC_BENCH_CACHE_MB=64,32` runs the default variant once per
//! `store.cache_bytes` size, set at every node, instead of the others).

use std::process::Command;
use std::time::{Duration, Instant};

use gridsync_suite::{get_json, gridsync_bin, provision, set_sync, set_sync_flag, Server};

/// 4 communities → 2 streets → a district.
const NODES: &[(&str, Option<&str>)] = gridsync_suite::DISTRICT_OF_FOUR;

struct Run {
    from_start: Duration,
    from_listening: Duration,
    /// Log entries at the communities (sum), the streets (sum), the district.
    chunks: [u64; 3],
}

/// The load's shape: clients and events per post.
#[derive(Clone, Copy)]
struct Load {
    clients: u64,
    batch: u64,
}

async fn chunks_of(tree: &gridsync_suite::Tree, ids: &[&str]) -> u64 {
    let mut n = 0;
    for id in ids {
        let node = &tree.nodes[*id];
        let st = get_json(
            &format!("http://{}/v1/status", node.listen),
            &node.tokens.viewer,
        )
        .await;
        n += st["log"]["chunks"].as_u64().unwrap();
    }
    n
}

async fn one_run(events: u64, outage: Duration, variant: &Variant, load: Load) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), NODES);
    for n in tree.nodes.values() {
        set_sync(
            &n.config,
            &[("reconnect_refused_max_ms", variant.refused_max_ms)],
        );
        set_sync_flag(&n.config, "nudge_children", variant.nudge);
        if let Some(mb) = variant.cache_mb {
            let bytes = i64::try_from(mb << 20).expect("a cache size in MiB");
            gridsync_suite::set_store(&n.config, &[("cache_bytes", bytes)]);
        }
    }
    let started = Instant::now();
    let _communities: Vec<Server> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|id| Server::start(&tree.nodes[*id].config, &[]))
        .collect();
    let out = Command::new(gridsync_bin())
        .args(["load", "--tree"])
        .arg(&tree.dir)
        .args(["--clients", &load.clients.to_string()])
        .args(["--batch", &load.batch.to_string(), "--events"])
        .arg(events.to_string())
        .args(["--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(rest) = outage.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let t0 = Instant::now();
    let d = Server::start(&tree.nodes["d"].config, &[]);
    let _s1 = Server::start(&tree.nodes["s1"].config, &[]);
    let _s2 = Server::start(&tree.nodes["s2"].config, &[]);
    let listening = Instant::now();
    let viewer = &tree.nodes["d"].tokens.viewer;
    loop {
        let st = get_json(&format!("{}/v1/status", d.url), viewer).await;
        let held: u64 = ["c1", "c2", "c3", "c4"]
            .iter()
            .map(|o| st["heads"][*o]["seq"].as_u64().unwrap_or(0))
            .sum();
        if held >= events {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no catch-up: {st}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (from_start, from_listening) = (t0.elapsed(), listening.elapsed());
    // The streets acknowledged everything the district holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chunks = [
        chunks_of(&tree, &["c1", "c2", "c3", "c4"]).await,
        chunks_of(&tree, &["s1", "s2"]).await,
        chunks_of(&tree, &["d"]).await,
    ];
    Run {
        from_start,
        from_listening,
        chunks,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` / listing: nothing to run.
        return;
    }
    let events = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 200_000);
    let runs = gridsync_suite::env_u64("GRIDSYNC_BENCH_RUNS", 3);
    let outage = Duration::from_secs(gridsync_suite::env_u64("GRIDSYNC_BENCH_OUTAGE_S", 20));
    let load = Load {
        clients: gridsync_suite::env_u64("GRIDSYNC_BENCH_CLIENTS", 4),
        batch: gridsync_suite::env_u64("GRIDSYNC_BENCH_BATCH", 250),
    };
    let baseline = gridsync_suite::env_u64("GRIDSYNC_BENCH_BASELINE", 1) != 0;
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "tree catch-up: {events} events held by 4 communities ({} clients × {}-event posts), outage >= {outage:?}",
        load.clients, load.batch
    );
    println!(
        "| variant | run | from first start | from all listening | events/s (from listening) | chunks: communities / streets / district |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let refused_ms = gridsync_suite::env_u64("GRIDSYNC_BENCH_REFUSED_MS", 1_000) as i64;
    let mut variants = vec![Variant {
        name: format!("nudged; refused → retry within {refused_ms} ms"),
        refused_max_ms: refused_ms,
        nudge: true,
        cache_mb: None,
    }];
    // Every node's `store.cache_bytes`, one variant per size (the default
    // variant's timers; the other variants are left out).
    let caches = std::env::var("GRIDSYNC_BENCH_CACHE_MB").unwrap_or_default();
    if !caches.is_empty() {
        variants = caches
            .split(',')
            .map(|mb| {
                let mb: u64 = mb
                    .trim()
                    .parse()
                    .expect("GRIDSYNC_BENCH_CACHE_MB: MiB, comma-separated");
                Variant {
                    name: format!("nudged; store.cache_bytes {mb} MiB at every node"),
                    refused_max_ms: refused_ms,
                    nudge: true,
                    cache_mb: Some(mb),
                }
            })
            .collect();
    }
    if caches.is_empty() && gridsync_suite::env_u64("GRIDSYNC_BENCH_NO_NUDGE", 1) != 0 {
        variants.push(Variant {
            name: format!("no nudge; refused → retry within {refused_ms} ms"),
            refused_max_ms: refused_ms,
            nudge: false,
            cache_mb: None,
        });
    }
    if caches.is_empty() && baseline {
        variants.push(Variant {
            name: "baseline: backoff only".into(),
            refused_max_ms: 30_000,
            nudge: false,
            cache_mb: None,
        });
        // What a nudge does where children's delays have grown (a parent
        // whose host did not answer at all, not refused).
        variants.push(Variant {
            name: "backoff only, nudged".into(),
            refused_max_ms: 30_000,
            nudge: true,
            cache_mb: None,
        });
    }
    let mut rates = vec![Vec::new(); variants.len()];
    let mut starts = vec![Vec::new(); variants.len()];
    for i in 1..=runs {
        for (v, variant) in variants.iter().enumerate() {
            let r = rt.block_on(one_run(events, outage, variant, load));
            let rate = events as f64 / r.from_listening.as_secs_f64();
            println!(
                "| {} | {i} | {:.2} s | {:.2} s | {rate:.0} | {} / {} / {} |",
                variant.name,
                r.from_start.as_secs_f64(),
                r.from_listening.as_secs_f64(),
                r.chunks[0],
                r.chunks[1],
                r.chunks[2]
            );
            rates[v].push(rate);
            starts[v].push(r.from_start.as_secs_f64());
        }
    }
    for (v, variant) in variants.iter().enumerate() {
        println!(
            "| **{}** | median | {:.2} s | | **{:.0}** | |",
            variant.name,
            median(starts[v].clone()),
            median(rates[v].clone())
        );
    }
}

/// How the nodes of one run are set up.
struct Variant {
    name: String,
    refused_max_ms: i64,
    nudge: bool,
    /// Every node's `store.cache_bytes` in MiB (`None`: as provisioned).
    cache_mb: Option<u64>,
}
