//! 1,000 communities on one street, a district above it. The street and
//! the district are real `gridsync serve` processes; of the communities,
//! `GRIDSYNC_BENCH_PROCESSES` are real processes too and the rest are
//! in-process nodes hosted by this benchmark (each its own log — in memory
//! —, HTTP listener on 127.0.0.1 and websocket link to the street: the
//! street sees 1,000 separate peers). Measured at the street: RSS and CPU
//! with every link idle; then the street is stopped, every community takes
//! `GRIDSYNC_BENCH_EVENTS_PER_CHILD` events, the street restarts and we
//! time its catch-up from the moment it listens; finally every event must
//! be at the district exactly once (each origin's head equal to what was
//! posted, the district's event count equal to their sum).
//!
//! `cargo build --release -p gridsync && cargo bench --bench thousand_communities`
//! (`GRIDSYNC_BENCH_CHILDREN`, default 1000; `GRIDSYNC_BENCH_PROCESSES`,
//! default 100; `GRIDSYNC_BENCH_EVENTS_PER_CHILD`, default 200;
//! `GRIDSYNC_BENCH_IDLE_S`, default 10; `GRIDSYNC_BENCH_NUDGE=0`: the
//! restarted street does not nudge its children; `GRIDSYNC_BENCH_TRACE=1`:
//! every status poll of the catch-up on stderr — events held, children
//! connected; `GRIDSYNC_BENCH_STREET_CACHE_MB`: the street's
//! `store.cache_bytes`, default the node's; `GRIDSYNC_BENCH_FRAGMENT_BYTES`:
//! the communities' `sync.send_fragment_bytes`, default the node's;
//! `GRIDSYNC_BENCH_SMAPS=FILE`: the street's `/proc/PID/smaps` right after
//! the catch-up, copied to FILE; `GRIDSYNC_BENCH_REFUSED_MAX_MS`: the
//! communities' `sync.reconnect_refused_max_ms`, and
//! `GRIDSYNC_BENCH_STREET_HANDSHAKES`: the street's `sync.handshakes_max`,
//! and `GRIDSYNC_BENCH_STREET_RECEIVED_MB`: its `sync.received_bytes_max`,
//! each default the node's; `GRIDSYNC_BENCH_FULL_STATUS=1`: the catch-up
//! is watched through the full `/v1/status`, as before the brief one).
//! Besides the table it prints the CPU each party spent
//! during the catch-up and what the street wrote, then idles again and
//! prints what the district received from the street meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gridsync_suite::{get_json, post_events, provision, sample_event, Server};
use serde_json::json;

/// Polls `/v1/status` of `url` until `done` says so (at most `limit`);
/// `log_only`: `done` reads only the log's counters.
async fn wait_status(
    url: &str,
    token: &str,
    limit: Duration,
    log_only: bool,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let t0 = Instant::now();
    let trace = std::env::var_os("GRIDSYNC_BENCH_TRACE").is_some();
    // The brief status (~8 KB) when `done` reads only the log's counters
    // and no trace counts the children: the full one of a street of
    // 1,000 is ~0.5 MB. Measured against polling the full one, four
    // pairs: no difference the catch-up shows (BENCHMARKS.md, "Issue 9's
    // goals measured together on one build (2026-12-06, 09:29–09:44)").
    let full = !log_only || trace || std::env::var_os("GRIDSYNC_BENCH_FULL_STATUS").is_some();
    let brief = if full { "" } else { "?brief=true" };
    loop {
        let st = get_json(&format!("{url}/v1/status{brief}"), token).await;
        if trace {
            let connected = st["children_status"]
                .as_array()
                .map(|c| c.iter().filter(|c| c["connected"] == true).count());
            eprintln!(
                "{:>6} ms: {} events, {connected:?} children connected",
                t0.elapsed().as_millis(),
                st["log"]["events"]
            );
        }
        if done(&st) {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "not reached in {limit:?}: {}",
            st["log"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    // 900 hosted nodes' sockets and files in this process.
    gridsync_node::open_files::raise();
    let n = usize::try_from(gridsync_suite::env_u64("GRIDSYNC_BENCH_CHILDREN", 1000)).unwrap();
    let processes = usize::try_from(gridsync_suite::env_u64("GRIDSYNC_BENCH_PROCESSES", 100))
        .unwrap()
        .min(n);
    let per_child = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS_PER_CHILD", 200);
    let idle = Duration::from_secs(gridsync_suite::env_u64("GRIDSYNC_BENCH_IDLE_S", 10));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("c{i:04}")).collect();
    let mut nodes: Vec<(&str, Option<&str>)> = vec![("d", None), ("s", Some("d"))];
    nodes.extend(ids.iter().map(|id| (id.as_str(), Some("s"))));
    let tree = provision(dir.path(), &nodes);
    // Every child connects from 127.0.0.1.
    let cfg = &tree.nodes["s"].config;
    gridsync_suite::allow_children_from_one_ip(cfg, n);
    let nudge = gridsync_suite::env_u64("GRIDSYNC_BENCH_NUDGE", 1) != 0;
    gridsync_suite::set_sync_flag(cfg, "nudge_children", nudge);
    let cache_mb = gridsync_suite::env_u64("GRIDSYNC_BENCH_STREET_CACHE_MB", 0);
    if cache_mb > 0 {
        let bytes = i64::try_from(cache_mb << 20).expect("a cache size in MiB");
        gridsync_suite::set_store(cfg, &[("cache_bytes", bytes)]);
        println!("street's sled cache: {cache_mb} MiB");
    }
    println!("street nudges its children when it starts: {nudge}");
    // The street's `sync.received_bytes_max` (default the node's).
    let received_mb = gridsync_suite::env_u64("GRIDSYNC_BENCH_STREET_RECEIVED_MB", 0);
    if received_mb > 0 {
        let bytes = i64::try_from(received_mb << 20).expect("a budget in MiB");
        gridsync_suite::set_sync(cfg, &[("received_bytes_max", bytes)]);
        println!("the street takes children's frames within {received_mb} MiB");
    }
    // The street's `sync.handshakes_max` (default the node's).
    if let Ok(v) = std::env::var("GRIDSYNC_BENCH_STREET_HANDSHAKES") {
        let n: i64 = v
            .parse()
            .expect("GRIDSYNC_BENCH_STREET_HANDSHAKES: a count");
        gridsync_suite::set_sync(cfg, &[("handshakes_max", n)]);
        println!("the street takes {n} handshakes at once");
    }
    // The communities' refused-connection retry cap
    // (`sync.reconnect_refused_max_ms`; default the node's).
    if let Ok(v) = std::env::var("GRIDSYNC_BENCH_REFUSED_MAX_MS") {
        let ms: i64 = v
            .parse()
            .expect("GRIDSYNC_BENCH_REFUSED_MAX_MS: milliseconds");
        for id in &ids {
            gridsync_suite::set_sync(&tree.nodes[id].config, &[("reconnect_refused_max_ms", ms)]);
        }
        println!("communities retry a refused connection within {ms} ms");
    }
    // The communities' websocket frame size (`sync.send_fragment_bytes`).
    if let Ok(v) = std::env::var("GRIDSYNC_BENCH_FRAGMENT_BYTES") {
        let bytes: i64 = v.parse().expect("GRIDSYNC_BENCH_FRAGMENT_BYTES: bytes");
        for id in &ids {
            gridsync_suite::set_sync(&tree.nodes[id].config, &[("send_fragment_bytes", bytes)]);
        }
        println!("communities send frames of at most {bytes} bytes (0: whole messages)");
    }

    let district = Server::start(&tree.nodes["d"].config, &[]);
    let mut street = Server::start(cfg, &[]);
    let (rss_alone, _) = gridsync_suite::proc_usage(street.child.id());
    let started = Instant::now();
    let real: Vec<Server> = ids[..processes]
        .iter()
        .map(|id| Server::start(&tree.nodes[id].config, &[]))
        .collect();
    // The rest in this process, each with its own listener and link.
    let hosted: Vec<tokio::sync::oneshot::Sender<()>> = rt.block_on(async {
        let mut stops = Vec::new();
        for id in &ids[processes..] {
            let config = gridsync_deploy::config::NodeConfig::load(&tree.nodes[id].config).unwrap();
            let listen = config.listen.clone();
            let state = gridsync_node::node::open_node(
                config,
                &gridsync_node::node::OpenOptions {
                    in_memory: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(gridsync_server::serve(state, listener, async {
                let _ = rx.await;
            }));
            stops.push(tx);
        }
        stops
    });
    let url_of = |i: usize| -> String {
        if i < processes {
            real[i].url.clone()
        } else {
            format!("http://{}", tree.nodes[&ids[i]].listen)
        }
    };
    let viewer = tree.nodes["s"].tokens.viewer.clone();
    rt.block_on(wait_status(
        &street.url,
        &viewer,
        Duration::from_secs(900),
        false,
        |st| {
            st["children_status"]
                .as_array()
                .is_some_and(|c| c.iter().filter(|c| c["connected"] == true).count() == n)
        },
    ));
    let connected_after = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (rss_connected, ticks0) = gridsync_suite::proc_usage(street.child.id());
    std::thread::sleep(idle);
    let (_, ticks1) = gridsync_suite::proc_usage(street.child.id());
    let idle_cpu = (ticks1 - ticks0) as f64 / 100.0 / idle.as_secs_f64() * 100.0;

    // Outage: the street stops; every community takes its events.
    assert!(street.terminate(), "the street stops cleanly");
    let t_post = Instant::now();
    rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut posts = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let url = url_of(i);
            let token = tree.nodes[id].tokens.reporter.clone();
            let id = id.clone();
            let gate = gate.clone();
            posts.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let events: Vec<_> = (0..per_child)
                    .map(|k| sample_event(k, &format!("{id}-{k}")))
                    .collect();
                let (code, body) = post_events(&url, &token, &json!({ "events": events })).await;
                assert_eq!(code, 200, "{id}: {body}");
            }));
        }
        for p in posts {
            p.await.unwrap();
        }
    });
    let posted = t_post.elapsed();
    let total = per_child * n as u64;
    // The street comes back; its children find it within their
    // refused-connection retry (1 s).
    // CPU seconds of each party (clock ticks): the street, the district,
    // this process (the hosted communities), the community processes.
    let cpu = |street: &Server| {
        let ticks = |pid: u32| gridsync_suite::proc_usage(pid).1;
        [
            ticks(street.child.id()),
            ticks(district.child.id()),
            ticks(std::process::id()),
            real.iter().map(|p| ticks(p.child.id())).sum(),
        ]
    };
    street = Server::start(cfg, &[]);
    let (cpu0, written0) = (cpu(&street), io_bytes(street.child.id(), "wchar"));
    let t0 = Instant::now();
    rt.block_on(wait_status(
        &street.url,
        &viewer,
        Duration::from_secs(900),
        true,
        |st| st["log"]["events"].as_u64() == Some(total),
    ));
    let catch_up = t0.elapsed();
    let (cpu1, written1) = (cpu(&street), io_bytes(street.child.id(), "wchar"));
    let (rss_after, _) = gridsync_suite::proc_usage(street.child.id());
    // Where that memory is: the street's mappings, for a look by hand.
    if let Some(path) = std::env::var_os("GRIDSYNC_BENCH_SMAPS") {
        let smaps = format!("/proc/{}/smaps", street.child.id());
        std::fs::copy(&smaps, &path).expect("copy the street's smaps");
    }
    // Exactly once at the district: every origin's head is what it
    // posted, and the log holds their sum — no event twice, none missing.
    let d_viewer = tree.nodes["d"].tokens.viewer.clone();
    rt.block_on(wait_status(
        &district.url,
        &d_viewer,
        Duration::from_secs(900),
        true,
        |st| st["log"]["events"].as_u64() == Some(total),
    ));
    let st = rt.block_on(get_json(&format!("{}/v1/status", district.url), &d_viewer));
    for id in &ids {
        assert_eq!(
            st["heads"][id]["seq"].as_u64(),
            Some(per_child),
            "{id} at the district"
        );
    }
    let district_done = t0.elapsed();
    // What one poll of the street's status weighs, full and brief.
    let status_bytes = |query: &str| {
        let url = format!("{}/v1/status{query}", street.url);
        rt.block_on(gridsync_suite::get_text(&url, &viewer)).len()
    };
    let (full_bytes, brief_bytes) = (status_bytes(""), status_bytes("?brief=true"));
    println!("| children (real processes + in-process) | all connected after | street RSS alone | connected | idle CPU ({idle:?}) | events posted in the outage | catch-up from listening | events/s | street RSS after | at the district, exactly once |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} ({processes} + {}) | {:.1} s | {:.1} MB | {:.1} MB | {idle_cpu:.2} % of a core | {total} in {:.1} s | {:.2} s | {:.0} | {:.1} MB | all {total} after {:.2} s |",
        n - processes,
        connected_after.as_secs_f64(),
        rss_alone as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        posted.as_secs_f64(),
        catch_up.as_secs_f64(),
        total as f64 / catch_up.as_secs_f64(),
        rss_after as f64 / 1024.0,
        district_done.as_secs_f64(),
    );
    println!(
        "the street's /v1/status: {full_bytes} bytes, {brief_bytes} with ?brief=true (the catch-up watched through the {} one every 50 ms)",
        if std::env::var_os("GRIDSYNC_BENCH_FULL_STATUS").is_some()
            || std::env::var_os("GRIDSYNC_BENCH_TRACE").is_some()
        {
            "full"
        } else {
            "brief"
        }
    );
    let s = |i: usize| (cpu1[i] - cpu0[i]) as f64 / 100.0;
    println!(
        "CPU during the catch-up: street {:.2} s, district {:.2} s, hosted communities (this process) {:.2} s, community processes {:.2} s; the street wrote {:.1} MB",
        s(0),
        s(1),
        s(2),
        s(3),
        written1.saturating_sub(written0) as f64 / 1e6,
    );
    // Whether the street's readers (projector, sender to the district)
    // kept within the bodies it holds in memory.
    let street_metrics = rt.block_on(gridsync_suite::get_text(
        &format!("{}/metrics", street.url),
        &viewer,
    ));
    let body_reads: Vec<&str> = street_metrics
        .lines()
        .filter(|l| l.starts_with("gridsync_log_body_reads_total"))
        .collect();
    println!("the street's log body reads since its start: {body_reads:?}");
    // How the street's writer grouped the children's batches.
    let commits: Vec<&str> = street_metrics
        .lines()
        .filter(|l| {
            l.starts_with("gridsync_commit_seconds_count")
                || l.starts_with("gridsync_commit_seconds_sum")
                || l.starts_with("gridsync_sync_batches_received_total")
        })
        .collect();
    println!("the street's commits and batches received since its start: {commits:?}");
    // The links idle again, the street now holding 1,000 origins: what
    // its link up costs (heartbeats, with their lag reports), as the
    // district counts what it received.
    let received = || {
        let text = rt.block_on(gridsync_suite::get_text(
            &format!("{}/metrics", district.url),
            &d_viewer,
        ));
        text.lines()
            .find(|l| l.starts_with("gridsync_sync_bytes_received_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .expect("gridsync_sync_bytes_received_total at the district")
    };
    let received0 = received();
    std::thread::sleep(idle);
    let idle_bytes = received() - received0;
    println!(
        "idle after the catch-up ({idle:?}): the district received {idle_bytes} bytes from the street ({:.0} bytes/s)",
        idle_bytes / idle.as_secs_f64()
    );
    for stop in hosted {
        let _ = stop.send(());
    }
    drop(real);
    drop(street);
    drop(district);
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// `/proc/PID/io`'s `field` of `pid`: `wchar`, the bytes passed to
/// `write` and its kin so far (what sled wrote, before the page cache), or
/// `rchar`, those read (sockets included).
fn io_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
