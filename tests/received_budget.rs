//! Real processes: a street whose received-bytes budget
//! (`sync.received_bytes_max`) holds only a few batch frames still takes
//! everything four children send at once after an outage — each frame
//! waits for its share, and shares come back as imports commit, whatever
//! the sessions holding them are doing.
//!
//! The budget is the smallest the node allows (one whole frame: 320 KiB
//! with `frame_bytes_max` at 320 KiB), the street's welcome asks for
//! batches of it shared by its four connection slots (80 KiB), and each
//! child holds ~1.1 MiB of events, so sessions wait for shares many times
//! (18–43 of ~52 frames in four runs; the test requires at least four,
//! read from `gridsync_sync_received_budget_waits_total`, or it would prove
//! nothing). Three children send each batch in 8 KiB websocket frames
//! (the default), one in a single frame: the parent takes both. Control
//! (run by hand, recorded in BENCHMARKS.md): with each share given back
//! only when its session handles the import's answer, the four sessions
//! each hold a share of a committed import while waiting for another, and
//! the street stalls with the budget used up — this test then fails at
//! its deadline.

use std::time::Duration;

use gridsync_suite::{get_json, metric, post_events, provision, sample_event, set_sync, Server};
use serde_json::{json, Value};

const CHILDREN: [&str; 4] = ["c1", "c2", "c3", "c4"];
const EVENTS: u64 = 6_000;
const POST: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_received_budget_still_takes_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![("s1", None)];
    nodes.extend(CHILDREN.iter().map(|c| (*c, Some("s1"))));
    let tree = provision(dir.path(), &nodes);
    let s1 = &tree.nodes["s1"];
    // The smallest budget the street allows: one whole frame, here 320
    // KiB (a 256 KiB batch and its room). Its welcome asks for batches of
    // the budget shared by its four connection slots, 80 KiB, so the four
    // children's first frames fill it and every further frame waits for
    // an import to commit.
    set_sync(
        &s1.config,
        &[
            ("frame_bytes_max", 320 << 10),
            ("received_bytes_max", 320 << 10),
            ("connections_max", 4),
        ],
    );
    // Three children send each 80 KiB batch as 8 KiB websocket frames
    // (the default `send_fragment_bytes`), the fourth as one frame.
    set_sync(&tree.nodes["c4"].config, &[("send_fragment_bytes", 0)]);

    // The street is down while every child takes its events.
    let children: Vec<Server> = CHILDREN
        .iter()
        .map(|c| Server::start(&tree.nodes[*c].config, &[]))
        .collect();
    for (c, server) in CHILDREN.iter().zip(&children) {
        let token = &tree.nodes[*c].tokens.reporter;
        for from in (0..EVENTS).step_by(POST as usize) {
            let events: Vec<Value> = (from..from + POST)
                .map(|i| sample_event(i, &format!("{c}-{i}")))
                .collect();
            let (status, body) =
                post_events(&server.url, token, &json!({ "events": events })).await;
            assert_eq!(status, 200, "{c}: {body}");
        }
    }

    let street = Server::start(&s1.config, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = get_json(&format!("{}/v1/status", street.url), &s1.tokens.viewer).await;
        let held: Vec<Option<u64>> = CHILDREN
            .iter()
            .map(|c| st["heads"][*c]["seq"].as_u64())
            .collect();
        if held.iter().all(|h| *h == Some(EVENTS)) {
            assert_eq!(st["log"]["events"].as_u64(), Some(EVENTS * 4), "{st}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the street stalled: it holds {held:?} of {EVENTS} per child"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    } // Sessions did wait for shares: the budget was what held them back
      // (were the batches small enough for the budget to hold every
      // session's window, this test would prove nothing).
    let waits = metric(
        &street.url,
        &s1.tokens.viewer,
        "gridsync_sync_received_budget_waits_total",
    )
    .await
    .unwrap_or(0.0);
    eprintln!("sessions waited for shares {waits} times");
    assert!(waits >= 4.0, "sessions waited for shares {waits} times");
}
