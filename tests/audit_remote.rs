//! `gridsync audit replay --url` against a node that lies (review F5): a
//! fake node on 127.0.0.1 serves a real node's signed `/v1/status` with a
//! doctored event list. Dropping a seq, stopping short of the signed head,
//! or serving a fabricated (self-consistent) chain must each make the
//! replay exit 1 naming origin and seq; the real list exits 0 (the
//! control). Without `--topology` a fabricated chain cannot be told, and
//! the tool says so.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::{Json, Router};
use gridsync_model::ZERO_HASH;
use gridsync_suite::{
    get_json, gridsync_bin, post_events, provision, sample_event, visit_chunk, Server,
};
use serde_json::{json, Value};

/// A fake node answering `/v1/status` and `/v1/events` (one page) with
/// whatever the test put in.
async fn fake_node(status: Value, events: Arc<Mutex<Vec<Value>>>) -> String {
    let app = Router::new()
        .route(
            "/v1/status",
            get(move || async move { Json(status.clone()) }),
        )
        .route(
            "/v1/events",
            get(move || {
                let events = events.clone();
                async move { Json(json!({ "events": events.lock().unwrap().clone() })) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A chain of `n` events of `origin` that links and hashes correctly but
/// was never signed by the origin (signed by some other key).
fn fabricated(origin: &str, n: u64) -> Vec<Value> {
    let forger = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let chunk = visit_chunk(origin, &forger, 1, n, ZERO_HASH, "-forged");
    chunk
        .decode_events()
        .unwrap()
        .iter()
        .zip(&chunk.events)
        .map(|(ev, rec)| {
            serde_json::to_value(gridsync_model::api::event_view(ev, rec, false)).unwrap()
        })
        .collect()
}

fn replay(url: &str, topology: Option<&std::path::Path>) -> (i32, usize, String) {
    let mut cmd = Command::new(gridsync_bin());
    cmd.args(["audit", "replay", "--url", url, "--token", "any"]);
    if let Some(t) = topology {
        cmd.arg("--topology").arg(t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).lines().count(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_node_is_caught_by_remote_replay() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    let mut node = Server::start(&c1.config, &[]);
    let events: Vec<Value> = (0..5).map(|i| sample_event(i, &format!("k{i}"))).collect();
    let (code, body) =
        post_events(&node.url, &c1.tokens.reporter, &json!({ "events": events })).await;
    assert_eq!(code, 200, "{body}");
    let status = get_json(&format!("{}/v1/status", node.url), &c1.tokens.auditor).await;
    let real: Vec<Value> = get_json(
        &format!("{}/v1/events?limit=1000", node.url),
        &c1.tokens.auditor,
    )
    .await["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(real.len(), 5);
    assert!(node.terminate());

    let served = Arc::new(Mutex::new(real.clone()));
    let url = fake_node(status.clone(), served.clone()).await;
    let topo = Some(tree.topology.as_path());
    let check = |name: &str, events: Vec<Value>, want: Option<&str>| {
        *served.lock().unwrap() = events;
        let (code, lines, stderr) = replay(&url, topo);
        match want {
            None => assert_eq!((code, lines), (0, 5), "{name}: {stderr}"),
            Some(msg) => {
                assert_eq!(code, 1, "{name}: exit {code}: {stderr}");
                assert!(stderr.contains(msg), "{name}: {stderr}");
            }
        }
    };
    // The control: the real log replays cleanly.
    check("real", real.clone(), None);
    let mut dropped = real.clone();
    dropped.remove(2);
    check("seq 3 dropped", dropped, Some("origin c1 seq 3: missing"));
    check(
        "stops short",
        real[..3].to_vec(),
        Some("origin c1 seq 4: missing — the chain stops at seq 3, short of its head at seq 5"),
    );
    check(
        "fabricated",
        fabricated("c1", 5),
        Some("origin c1 seq 5: differs from the origin's signed head"),
    );
    let mut reordered = real.clone();
    reordered.swap(1, 2);
    check("reordered", reordered, Some("origin c1 seq 3: missing"));

    // A status whose head signature was tampered with.
    let mut bad = status.clone();
    let sig = bad["heads"]["c1"]["signature"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    bad["heads"]["c1"]["signature"] = json!(flipped);
    let bad_url = fake_node(bad, Arc::new(Mutex::new(real.clone()))).await;
    let (code, _, stderr) = replay(&bad_url, topo);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("origin c1 seq 5: the node's signed head does not verify"),
        "{stderr}"
    );

    // A consistent liar: a fabricated chain and a status whose head
    // matches it. Without the topology it cannot be told from a real one,
    // and the tool says what it did not check; with it, it is caught.
    let forged = fabricated("c1", 5);
    let mut liar = status.clone();
    liar["heads"]["c1"]["hash"] = forged[4]["hash"].clone();
    let liar_url = fake_node(liar, Arc::new(Mutex::new(forged))).await;
    let (code, _, stderr) = replay(&liar_url, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the heads are not verified: pass --topology"),
        "{stderr}"
    );
    let (code, _, stderr) = replay(&liar_url, topo);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the node's signed head does not verify"),
        "{stderr}"
    );
}
