//! One street with many community children, each a real `gridsync serve`
//! process on loopback (default timers): the street's memory and idle CPU
//! once every child is connected, and how long the street takes to hold
//! events posted at every community.
//!
//! `cargo build --release -p gridsync && cargo bench --bench many_children`
//! (`GRIDSYNC_BENCH_CHILDREN`, default 200 — each process takes ~30 MB, so
//! this machine runs a few hundred, not 1,000; `GRIDSYNC_BENCH_IDLE_S`,
//! default 10).

use std::time::{Duration, Instant};

use gridsync_suite::{get_json, post_events, provision, sample_event, Server};
use serde_json::json;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n = usize::try_from(gridsync_suite::env_u64("GRIDSYNC_BENCH_CHILDREN", 200)).unwrap();
    let idle = Duration::from_secs(gridsync_suite::env_u64("GRIDSYNC_BENCH_IDLE_S", 10));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("c{i:04}")).collect();
    let mut nodes: Vec<(&str, Option<&str>)> = vec![("s", None)];
    nodes.extend(ids.iter().map(|id| (id.as_str(), Some("s"))));
    let tree = provision(dir.path(), &nodes);
    // Every child connects from 127.0.0.1.
    let cfg = &tree.nodes["s"].config;
    gridsync_suite::allow_children_from_one_ip(cfg, n);

    let street = Server::start(cfg, &[]);
    let pid = street.child.id();
    let (rss_alone, _) = gridsync_suite::proc_usage(pid);
    let started = Instant::now();
    let children: Vec<Server> = ids
        .iter()
        .map(|id| Server::start(&tree.nodes[id].config, &[]))
        .collect();
    let viewer = tree.nodes["s"].tokens.viewer.clone();
    rt.block_on(async {
        loop {
            let st = get_json(&format!("{}/v1/status", street.url), &viewer).await;
            let connected = st["children_status"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["connected"] == true).count());
            if connected == n {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{connected}/{n} connected"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let connected_after = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (rss_connected, ticks0) = gridsync_suite::proc_usage(pid);
    std::thread::sleep(idle);
    let (_, ticks1) = gridsync_suite::proc_usage(pid);
    let hz = 100.0; // USER_HZ on Linux
    let idle_cpu = (ticks1 - ticks0) as f64 / hz / idle.as_secs_f64() * 100.0;

    // 10 events at every community; time until the street holds them all.
    let t0 = Instant::now();
    rt.block_on(async {
        for (i, id) in ids.iter().enumerate() {
            let events: Vec<_> = (0..10)
                .map(|k| sample_event(k, &format!("{id}-{k}")))
                .collect();
            let (code, body) = post_events(
                &children[i].url,
                &tree.nodes[id].tokens.reporter,
                &json!({ "events": events }),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
    });
    let posted = t0.elapsed();
    rt.block_on(async {
        loop {
            let st = get_json(&format!("{}/v1/status", street.url), &viewer).await;
            if st["log"]["events"].as_u64() == Some(10 * n as u64) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let held = t0.elapsed();
    let (rss_after, _) = gridsync_suite::proc_usage(pid);
    println!("| children | all connected after | street RSS alone | connected | after 10 events each | idle CPU ({idle:?}) | posts done | street holds all |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} | {:.1} s | {:.1} MB | {:.1} MB | {:.1} MB | {idle_cpu:.2} % of a core | {:.2} s | {:.2} s |",
        connected_after.as_secs_f64(),
        rss_alone as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        posted.as_secs_f64(),
        held.as_secs_f64()
    );
    drop(children);
}
