//! Live latency across a tree of real processes: 4 communities → 2 streets
//! → a district, each a `gridsync serve` process with the default sync
//! timers. The bench posts batches of 10 events to the 4 communities at a
//! steady total rate (default 2,000 events/s) for a while (default 10 s)
//! and polls `GET /v1/status` at one street and at the district every 2 ms.
//! For every batch it reports:
//!
//! - **ack**: post sent → durable acknowledgement from the community (the
//!   baseline: what a phone waits for);
//! - **street visible** / **district visible**: acknowledgement → the first
//!   status answer of that node whose head for the batch's origin has
//!   reached the batch's last seq (one and two verified, fsynced hops);
//! - **post sent → district visible**: the whole way, phone to dashboard.
//!
//! A visibility time is taken when the status answer *arrives*, so it is an
//! upper bound: it includes up to one poll interval and one status
//! round trip (both printed).
//!
//! `cargo build --release -p gridsync && cargo bench --bench live_tree`
//! (`GRIDSYNC_BENCH_RATE`, default 2000 events/s; `GRIDSYNC_BENCH_SECS`,
//! default 10; `GRIDSYNC_BENCH_RUNS`, default 3).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use gridsync_suite::{http_client, post_events, provision, sample_event, wait_heads, Server};

/// 4 communities → 2 streets → a district.
const NODES: &[(&str, Option<&str>)] = gridsync_suite::DISTRICT_OF_FOUR;
const COMMUNITIES: [&str; 4] = ["c1", "c2", "c3", "c4"];
const BATCH: u64 = 10;
const POLL: Duration = Duration::from_millis(2);

/// One acknowledged batch: its origin, last seq, when it was sent and acked.
#[derive(Clone, Copy)]
struct Batch {
    origin: usize,
    seq: u64,
    sent: Instant,
    acked: Instant,
}

/// When a node's status first showed each origin at or past a seq:
/// per origin, `(seq, instant)` in the order observed.
type Seen = Arc<Mutex<Vec<Vec<(u64, Instant)>>>>;

/// Polls `url`'s status every [`POLL`] until `stop`, recording heads of the
/// communities as they advance, and the round trips.
async fn poll_heads(
    url: String,
    viewer: String,
    seen: Seen,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    let client = http_client();
    let mut last = [0u64; 4];
    let mut round_trips = Vec::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let sent = Instant::now();
        let st: Value = client
            .get(format!("{url}/v1/status"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let at = Instant::now();
        round_trips.push(at - sent);
        let mut seen = seen.lock().unwrap();
        for (i, o) in COMMUNITIES.iter().enumerate() {
            let seq = st["heads"][*o]["seq"].as_u64().unwrap_or(0);
            if seq > last[i] {
                last[i] = seq;
                seen[i].push((seq, at));
            }
        }
    }
    round_trips
}

/// Posts batches to community `origin` at `per_s` batches per second until
/// `until`, returning every acknowledged batch.
async fn post_steady(
    url: String,
    token: String,
    origin: usize,
    per_s: f64,
    until: Instant,
) -> Vec<Batch> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut out = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let events: Vec<Value> = (0..BATCH)
            .map(|k| {
                n += 1;
                sample_event(n * 7 + k, &format!("live-{origin}-{n}"))
            })
            .collect();
        let sent = Instant::now();
        let (code, reply) = post_events(&url, &token, &json!({ "events": events })).await;
        let acked = Instant::now();
        assert_eq!(code, 200, "post refused: {reply}");
        let seq = reply["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .max()
            .unwrap();
        out.push(Batch {
            origin,
            seq,
            sent,
            acked,
        });
    }
    out
}

/// Acknowledgement → first observation at or past the batch's seq.
fn visible_after(batches: &[Batch], seen: &[Vec<(u64, Instant)>], from_sent: bool) -> Vec<f64> {
    batches
        .iter()
        .map(|b| {
            let (_, at) = seen[b.origin]
                .iter()
                .find(|(s, _)| *s >= b.seq)
                .expect("a batch never became visible");
            let from = if from_sent { b.sent } else { b.acked };
            at.saturating_duration_since(from).as_secs_f64() * 1000.0
        })
        .collect()
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn summary(v: &[f64]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        pct(v.to_vec(), 0.5),
        pct(v.to_vec(), 0.99),
        pct(v.to_vec(), 1.0)
    )
}

async fn one_run(rate: u64, secs: u64) -> (String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), NODES);
    let servers: BTreeMap<&str, Server> = NODES
        .iter()
        .map(|(id, _)| (*id, Server::start(&tree.nodes[*id].config, &[])))
        .collect();
    let d = &tree.nodes["d"];
    // Warm-up: one batch at each community, held by the district.
    for o in COMMUNITIES {
        let n = &tree.nodes[o];
        let events: Vec<Value> = (0..BATCH)
            .map(|k| sample_event(k, &format!("warm-{o}-{k}")))
            .collect();
        let (code, _) = post_events(
            &servers[o].url,
            &n.tokens.reporter,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(code, 200);
    }
    let want: Vec<(&str, u64)> = COMMUNITIES.iter().map(|o| (*o, BATCH)).collect();
    wait_heads(&servers["d"].url, &d.tokens.viewer, &want).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_d: Seen = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let seen_s: Seen = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let poll_d = tokio::spawn(poll_heads(
        servers["d"].url.clone(),
        d.tokens.viewer.clone(),
        seen_d.clone(),
        stop.clone(),
    ));
    let poll_s = tokio::spawn(poll_heads(
        servers["s1"].url.clone(),
        tree.nodes["s1"].tokens.viewer.clone(),
        seen_s.clone(),
        stop.clone(),
    ));
    let until = Instant::now() + Duration::from_secs(secs);
    let per_s = rate as f64 / BATCH as f64 / COMMUNITIES.len() as f64;
    let posters: Vec<_> = COMMUNITIES
        .iter()
        .enumerate()
        .map(|(i, o)| {
            tokio::spawn(post_steady(
                servers[o].url.clone(),
                tree.nodes[*o].tokens.reporter.clone(),
                i,
                per_s,
                until,
            ))
        })
        .collect();
    let mut batches = Vec::new();
    for p in posters {
        batches.extend(p.await.unwrap());
    }
    let want: Vec<(&str, u64)> = COMMUNITIES
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let top = batches.iter().filter(|b| b.origin == i).map(|b| b.seq);
            (*o, top.max().unwrap())
        })
        .collect();
    wait_heads(&servers["d"].url, &d.tokens.viewer, &want).await;
    // One more poll round so the last observations are in.
    tokio::time::sleep(POLL * 5).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rtt_d = poll_d.await.unwrap();
    let _ = poll_s.await.unwrap();
    let acks: Vec<f64> = batches
        .iter()
        .map(|b| (b.acked - b.sent).as_secs_f64() * 1000.0)
        .collect();
    // Street s1 sees c1 and c2 only.
    let s1_batches: Vec<Batch> = batches.iter().filter(|b| b.origin < 2).copied().collect();
    let street = visible_after(&s1_batches, &seen_s.lock().unwrap(), false);
    let district = visible_after(&batches, &seen_d.lock().unwrap(), false);
    let end_to_end = visible_after(&batches, &seen_d.lock().unwrap(), true);
    let rtt: Vec<f64> = rtt_d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let events = batches.len() as u64 * BATCH;
    let line = format!(
        "| {events} | {} | {} | {} | {} | {:.1} |",
        summary(&acks),
        summary(&street),
        summary(&district),
        summary(&end_to_end),
        pct(rtt, 0.5)
    );
    drop(servers);
    (line, pct(district, 0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` / listing: nothing to run.
        return;
    }
    let rate = gridsync_suite::env_u64("GRIDSYNC_BENCH_RATE", 2_000);
    let secs = gridsync_suite::env_u64("GRIDSYNC_BENCH_SECS", 10);
    let runs = gridsync_suite::env_u64("GRIDSYNC_BENCH_RUNS", 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "live across a tree of 7 processes: {rate} events/s in batches of {BATCH} for {secs} s; \
         p50 / p99 / max in ms; visibility polled every {POLL:?}"
    );
    println!(
        "| run | events | ack (baseline) | ack → street visible | ack → district visible | post sent → district visible | status round trip p50 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut p99s = Vec::new();
    for i in 1..=runs {
        let (line, p99) = rt.block_on(one_run(rate, secs));
        println!("| {i} {line}");
        p99s.push(p99);
    }
    p99s.sort_by(f64::total_cmp);
    println!(
        "median p99 ack → district visible: {:.1} ms",
        p99s[p99s.len() / 2]
    );
}
