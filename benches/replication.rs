//! Replication benchmarks on a real in-process tree (1 district, 2 streets,
//! 4 communities; every node its own sled store, HTTP server and websocket
//! links on 127.0.0.1, all sharing this machine's 2 cores):
//!
//! 1. **Catch-up**: the communities hold N events collected while the upper
//!    tiers were offline; the streets and the district start, and we time
//!    until the district holds all N (every event verified at the street and
//!    again at the district).
//! 2. **Live latency**: at a steady load, the time from an event's commit at
//!    its community to its commit at the district (p50/p99).
//!
//! `cargo bench --bench replication` (set `GRIDSYNC_BENCH_EVENTS`, default
//! 200000; `GRIDSYNC_BENCH_RATE`, events/s of the live phase, default 2000).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use gridsync_node::node::{open_node, system_now_ms, NodeState, OpenOptions};
use gridsync_ops::provision::{provision_nodes, PlannedNode};
use gridsync_server::serve;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prepared(origin: &str, from: u64, n: u64) -> Vec<PreparedEvent> {
    let limits = IngestLimits::default();
    let ctx = IngestContext {
        node_id: origin,
        now_ms: system_now_ms(),
        limits: &limits,
    };
    (from..from + n)
        .map(|i| {
            let v = gridsync_suite::sample_event(i, &format!("{origin}-{i}"));
            prepare(v, &ctx, &|_: &EventRef| None, &mut rand::thread_rng()).unwrap()
        })
        .collect()
}

async fn start(dir: &std::path::Path, id: &str) -> Arc<NodeState> {
    let mut config =
        gridsync_deploy::config::NodeConfig::load(&dir.join(id).join("config.toml")).unwrap();
    config.sync.reconnect_min_ms = 20;
    config.sync.reconnect_max_ms = 200;
    config.store.cache_bytes = 128 << 20;
    let listen = config.listen.clone();
    let state = open_node(config, &OpenOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    tokio::spawn(serve(state.clone(), listener, std::future::pending()));
    state
}

fn total(state: &NodeState) -> u64 {
    state.store.heads().values().map(|h| h.seq).sum()
}

fn main() {
    let n_events: u64 = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 200_000);
    let rate: u64 = gridsync_suite::env_u64("GRIDSYNC_BENCH_RATE", 2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan: Vec<PlannedNode> = [
        ("district", None),
        ("s1", Some("district")),
        ("s2", Some("district")),
        ("s1-c1", Some("s1")),
        ("s1-c2", Some("s1")),
        ("s2-c1", Some("s2")),
        ("s2-c2", Some("s2")),
    ]
    .iter()
    .map(|(id, p)| PlannedNode {
        id: (*id).into(),
        name: (*id).into(),
        parent: p.map(Into::into),
        listen: format!("127.0.0.1:{}", free_port()),
        public_key: None,
        forward_personal: false,
    })
    .collect();
    provision_nodes("Asia/Shanghai", &plan, dir.path(), Default::default()).unwrap();
    let communities = ["s1-c1", "s1-c2", "s2-c1", "s2-c2"];
    let per_community = n_events / communities.len() as u64;

    // Phase 0: communities collect events while the tiers above are offline.
    // Their stores are filled directly (prepared events, batches of 1000).
    let load_started = Instant::now();
    for c in communities {
        let config =
            gridsync_deploy::config::NodeConfig::load(&dir.path().join(c).join("config.toml"))
                .unwrap();
        let state = open_node(config, &OpenOptions::default()).unwrap();
        let mut i = 0;
        while i < per_community {
            let n = 1000.min(per_community - i);
            let evs = prepared(c, i, n);
            rt.block_on(state.store.append(evs, system_now_ms()))
                .unwrap();
            i += n;
        }
        let store = state.store.clone();
        drop(state);
        store.close();
    }
    eprintln!(
        "loaded {} events into 4 communities in {:.1} s",
        per_community * 4,
        load_started.elapsed().as_secs_f64()
    );

    rt.block_on(async {
        // Phase 1: catch-up. The communities are up (their parents are not);
        // the clock starts when the streets and the district start.
        let mut nodes = BTreeMap::new();
        for id in communities {
            nodes.insert(id, start(dir.path(), id).await);
        }
        let started = Instant::now();
        let district = start(dir.path(), "district").await;
        for id in ["s1", "s2"] {
            nodes.insert(id, start(dir.path(), id).await);
        }
        let want = per_community * 4;
        let mut changes = district.store.subscribe();
        while total(&district) < want {
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            assert!(started.elapsed() < Duration::from_secs(600), "catch-up did not finish in 10 minutes");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "catch-up: {want} events reached the district in {secs:.2} s = {:.0} events/s (3 levels, 4 communities)",
            want as f64 / secs
        );

        // Phase 2: live latency at a steady rate.
        let commit_ms: Arc<Mutex<HashMap<(String, u64), i64>>> = Arc::new(Mutex::new(HashMap::new()));
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
        let watcher = {
            let district = district.clone();
            let commit_ms = commit_ms.clone();
            let latencies = latencies.clone();
            tokio::spawn(async move {
                let mut seen: HashMap<String, u64> = district.store.heads().into_iter().map(|(o, h)| (o, h.seq)).collect();
                let mut rx = district.store.subscribe();
                while rx.changed().await.is_ok() {
                    let now = Instant::now();
                    let now_ms = system_now_ms();
                    let _ = now;
                    for (o, h) in district.store.heads() {
                        let from = seen.get(&o).copied().unwrap_or(0);
                        let commits = commit_ms.lock().unwrap();
                        let mut l = latencies.lock().unwrap();
                        for s in from + 1..=h.seq {
                            if let Some(t) = commits.get(&(o.clone(), s)) {
                                l.push((now_ms - t) as f64);
                            }
                        }
                        seen.insert(o, h.seq);
                    }
                }
            })
        };
        let batch = 10u64;
        let interval = Duration::from_secs_f64(batch as f64 * communities.len() as f64 / rate as f64);
        let live_secs = 10;
        let mut next = per_community;
        let mut tick = tokio::time::interval(interval);
        let live_started = Instant::now();
        while live_started.elapsed() < Duration::from_secs(live_secs) {
            tick.tick().await;
            for c in communities {
                let evs = prepared(c, next, batch);
                let r = nodes[c].store.append(evs, system_now_ms()).await.unwrap();
                let t = system_now_ms();
                let mut m = commit_ms.lock().unwrap();
                for a in r {
                    m.insert((a.origin.to_string(), a.seq), t);
                }
            }
            next += batch;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        watcher.abort();
        let mut l = latencies.lock().unwrap().clone();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| l[((l.len() as f64 - 1.0) * p) as usize];
        println!(
            "live: {} events at {rate} events/s, community commit -> district commit: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            l.len(),
            pct(0.5),
            pct(0.99),
            l[l.len() - 1]
        );
    });
}
