//! DESIGN.md §3 invariant 5 across crashes: a community is `kill -9`ed
//! repeatedly while events (late ones and corrections included) are posted;
//! once idle, the running node's `/v1/aggregates` equals an offline
//! `gridsync rebuild` of the same log — nothing double-counted or missed.
//! The control shows the comparison notices a single event.

use std::process::Command;
use std::time::Duration;

use gridsync_suite::{gridsync_bin, provision, sample_event, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const RANGE: &str = "from=2020-01-19&to=2020-01-29";

async fn aggregates(url: &str, token: &str) -> Value {
    gridsync_suite::http_client()
        .get(format!("{url}/v1/aggregates?{RANGE}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Drops what depends on the clock (ages), keeps every number and the hash.
fn comparable(mut v: Value) -> Value {
    for c in v["coverage"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("newest_event_age_s");
    }
    v
}

fn offline_rebuild(config: &std::path::Path) -> Value {
    let out = Command::new(gridsync_bin())
        .args(["rebuild", "--config"])
        .arg(config)
        .args(["--from", "2020-01-19", "--to", "2020-01-29"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn post(http: &reqwest::Client, url: &str, token: &str, events: Vec<Value>) -> bool {
    match http
        .post(format!("{url}/v1/events"))
        .bearer_auth(token)
        .json(&json!({"events": events}))
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_after_kill_9_equal_an_offline_rebuild() {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let files = &tree.nodes["c1"];
    let http = gridsync_suite::http_client();
    let mut n = 0u64;
    for cycle in 0..6 {
        let mut server = Server::start(&files.config, &[]);
        let url = server.url.clone();
        let token = files.tokens.reporter.clone();
        let base = n;
        let poster = tokio::spawn(async move {
            let http = gridsync_suite::http_client();
            let mut i = base;
            loop {
                let mut events: Vec<Value> = (0..15)
                    .map(|k| sample_event(i + k, &format!("p{}", i + k)))
                    .collect();
                // Corrections of earlier events: voids and replacements.
                if i > 20 {
                    events.push(json!({
                        "kind": "correction", "occurred_at": "2020-01-28T12:00:00+08:00", "grid": "g", "recorded_by": "w",
                        "client_id": format!("fix{i}"),
                        "data": {"target": {"origin": "c1", "seq": 1 + (i * 7) % 20}, "action": "void", "reason": "重复登记"}
                    }));
                }
                i += 15;
                if !post(&http, &url, &token, events).await {
                    return i;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        server.kill9();
        n = poster.await.unwrap();
        eprintln!("cycle {cycle}: killed");
    }
    // Restart, post a little more (the projection advances incrementally
    // from its start-up rebuild), then compare once idle.
    let mut server = Server::start(&files.config, &[]);
    assert!(
        post(
            &http,
            &server.url,
            &files.tokens.reporter,
            (0..30)
                .map(|k| sample_event(n + k, &format!("z{k}")))
                .collect()
        )
        .await
    );
    gridsync_suite::wait_projection_idle(&server.url, &files.tokens.viewer).await;
    let live = comparable(aggregates(&server.url, &files.tokens.viewer).await);
    assert!(live["totals"]["entries"].as_i64().unwrap() > 0);
    let config = files.config.clone();
    tokio::task::spawn_blocking(move || assert!(server.terminate()))
        .await
        .unwrap();
    let rebuilt = comparable(offline_rebuild(&config));
    assert_eq!(
        live, rebuilt,
        "the running node's projection differs from a fresh rebuild"
    );

    // Control: one more event makes the same comparison fail.
    let mut server2 = Server::start(&files.config, &[]);
    assert!(
        post(
            &http,
            &server2.url,
            &files.tokens.reporter,
            vec![sample_event(1, "control-one-more")]
        )
        .await
    );
    tokio::task::spawn_blocking(move || assert!(server2.terminate()))
        .await
        .unwrap();
    let after = comparable(offline_rebuild(&config));
    assert_ne!(live, after, "the comparison did not notice one extra event");
    assert_ne!(live["state_hash"], after["state_hash"]);
}
