//! Real processes: a parent that comes back nudges its children, so a child
//! waiting out a long retry delay comes back at once.
//!
//! The community's retry delays are all set to 30 s (`reconnect_min_ms` =
//! `reconnect_max_ms` = `reconnect_refused_max_ms`), so without a nudge it
//! retries exactly 30 s after its last attempt. The street starts 1.5 s
//! after the community's first (refused) attempt and must hold the
//! community's events within 10 s. Control, in the same run: the street is
//! stopped (the community's link drops: its next attempt is 30 s later),
//! restarted with `sync.nudge_children = false`, and must *not* hold the
//! newer events 10 s later. Also: nudges that are not the parent's are
//! refused with a reason, and change nothing; and a child that came back
//! on its own (its connection refused while the parent was down, so it
//! retried within a second) is not nudged by the second wave — the street
//! counts one nudge for two children.

use std::time::{Duration, Instant};

use gridsync_suite::{
    get_json, http_client, metric, now_ms, post_events, provision, sample_event, set_sync,
    set_sync_flag, wait_heads, Server,
};
use serde_json::{json, Value};

async fn post_n(url: &str, token: &str, from: u64, n: u64) {
    let events: Vec<Value> = (from..from + n)
        .map(|i| sample_event(i, &format!("n-{i}")))
        .collect();
    let (status, body) = post_events(url, token, &json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
}

/// Seconds until the street holds `seq` of c1, or `None` within `limit`.
async fn held_within(url: &str, viewer: &str, seq: u64, limit: Duration) -> Option<f64> {
    held_of_within(url, viewer, "c1", seq, limit).await
}

/// Seconds until the street holds `seq` of `origin`, or `None` within
/// `limit`.
async fn held_of_within(
    url: &str,
    viewer: &str,
    origin: &str,
    seq: u64,
    limit: Duration,
) -> Option<f64> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let st = get_json(&format!("{url}/v1/status"), viewer).await;
        if st["heads"][origin]["seq"].as_u64() == Some(seq) {
            return Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_comes_back_nudges_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("s1", None), ("c1", Some("s1"))]);
    let (c1, s1) = (&tree.nodes["c1"], &tree.nodes["s1"]);
    set_sync(
        &c1.config,
        &[
            ("reconnect_min_ms", 30_000),
            ("reconnect_max_ms", 30_000),
            ("reconnect_refused_max_ms", 30_000),
        ],
    );
    let community = Server::start(&c1.config, &[]);
    post_n(&community.url, &c1.tokens.reporter, 0, 50).await;
    // The first attempt was refused; the next is 30 s away.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut street = Server::start(&s1.config, &[]);
    let took = held_within(&street.url, &s1.tokens.viewer, 50, Duration::from_secs(10)).await;
    let took = took.expect("nudged: the community came back within 10 s, not 30");
    eprintln!("with the nudge: the street held the community's events after {took:.2} s");

    // Nudges that are not the street's are refused and change nothing.
    let http = http_client();
    let nudge = |url: &str, query: &str| http.post(format!("{url}/v1/sync/nudge?{query}")).send();
    let forged = format!("parent=s1&at_ms={}&signature={}", now_ms(), "00".repeat(64));
    for (url, query, status, code) in [
        (&community.url, forged.as_str(), 403, "bad_nudge"),
        (
            &community.url,
            "parent=d&at_ms=1&signature=00",
            403,
            "not_my_parent",
        ),
        (
            &community.url,
            "parent=s1&at_ms=1&signature=zz",
            400,
            "invalid_query",
        ),
        (&community.url, "parent=s1", 400, "invalid_query"),
        (&street.url, forged.as_str(), 409, "no_parent"),
    ] {
        let r = nudge(url, query).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }

    // Control: without the nudge the community keeps to its 30 s.
    assert!(street.terminate());
    post_n(&community.url, &c1.tokens.reporter, 50, 50).await;
    set_sync_flag(&s1.config, "nudge_children", false);
    let street = Server::start(&s1.config, &[]);
    let late = held_within(&street.url, &s1.tokens.viewer, 100, Duration::from_secs(10)).await;
    assert_eq!(
        late, None,
        "without a nudge the community came back before its 30 s delay: the test checks nothing"
    );
    wait_heads(&street.url, &s1.tokens.viewer, &[("c1", 50)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_back_on_their_own_are_not_nudged() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(
        dir.path(),
        &[("s1", None), ("c1", Some("s1")), ("c2", Some("s1"))],
    );
    let s1 = &tree.nodes["s1"];
    // The street takes one handshake at a time, so it nudges one child at
    // once (c1, first in the topology) and the other (c2) 2 × its own
    // refused-retry delay (3 s) later if c2 is still not connected then.
    // c1 retries only every 30 s, so only the nudge brings it back soon.
    // c2 comes back on its own, started once c1 is back: had it retried
    // while the street took c1's handshake, one of the two would have been
    // told busy — and c1, sent away for its 30 s, would have failed the
    // first check (seen once in a loaded CI run).
    set_sync(
        &s1.config,
        &[("handshakes_max", 1), ("reconnect_refused_max_ms", 3_000)],
    );
    set_sync(
        &tree.nodes["c1"].config,
        &[
            ("reconnect_min_ms", 30_000),
            ("reconnect_max_ms", 30_000),
            ("reconnect_refused_max_ms", 30_000),
        ],
    );
    set_sync(
        &tree.nodes["c2"].config,
        &[("reconnect_min_ms", 100), ("reconnect_refused_max_ms", 300)],
    );
    let c1_node = &tree.nodes["c1"];
    let c1_server = Server::start(&c1_node.config, &[]);
    post_n(&c1_server.url, &c1_node.tokens.reporter, 0, 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let street = Server::start(&s1.config, &[]);
    let started = Instant::now();
    let limit = Duration::from_secs(10);
    let c1 = held_of_within(&street.url, &s1.tokens.viewer, "c1", 20, limit).await;
    let c1 = c1.expect("c1, 30 s from its next attempt, came back: nudged at once");
    assert!(
        c1 < 2.0,
        "c1 was nudged in the first wave: back after {c1:.2} s"
    );
    let c2_node = &tree.nodes["c2"];
    let c2_server = Server::start(&c2_node.config, &[]);
    post_n(&c2_server.url, &c2_node.tokens.reporter, 0, 20).await;
    let c2 = held_of_within(&street.url, &s1.tokens.viewer, "c2", 20, limit).await;
    c2.expect("c2 came back on its own");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "c2 was back before the second wave (6 s after the street's start)"
    );
    // Past the second wave.
    let wave = Duration::from_millis(6_500);
    tokio::time::sleep(wave.saturating_sub(started.elapsed())).await;
    let sent = metric(
        &street.url,
        &s1.tokens.viewer,
        "gridsync_sync_nudges_sent_total",
    )
    .await;
    let _children = (c1_server, c2_server);
    assert_eq!(sent, Some(1.0), "c1 nudged, c2 (already connected) not");
}
