//! `gridsync load` against real nodes: batched and phone-like single posts,
//! a rate, a whole provisioned tree, and a wrong token. Every event it
//! reports as acknowledged is in the log, once.

use std::process::Command;
use std::time::Instant;

use gridsync_suite::{get_json, gridsync_bin, provision, wait_status, Server};
use serde_json::Value;

fn load(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(gridsync_bin())
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_posts_what_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(
        dir.path(),
        &[("s1", None), ("c1", Some("s1")), ("c2", Some("s1"))],
    );
    let servers: Vec<Server> = ["s1", "c1", "c2"]
        .iter()
        .map(|id| Server::start(&tree.nodes[*id].config, &[]))
        .collect();
    let c1 = &tree.nodes["c1"];
    let url = &servers[1].url;

    // Batched.
    let (code, r, err) = load(&[
        "--url",
        url,
        "--token",
        &c1.tokens.reporter,
        "--events",
        "2000",
        "--clients",
        "4",
        "--batch",
        "50",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["events"], 2000, "{r}");
    assert_eq!(r["requests"], 40, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["ack_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["ack_ms"]["max"].as_f64() >= r["ack_ms"]["p99"].as_f64(),
        "{r}"
    );

    // Phone-like single posts, at a rate: it cannot finish faster than the
    // rate allows.
    let started = Instant::now();
    let (code, r, err) = load(&[
        "--url",
        url,
        "--token",
        &c1.tokens.reporter,
        "--events",
        "300",
        "--clients",
        "20",
        "--batch",
        "1",
        "--rate",
        "400",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (r["events"].as_u64(), r["requests"].as_u64()),
        (Some(300), Some(300)),
        "{r}"
    );
    assert!(
        started.elapsed().as_secs_f64() >= 0.7,
        "300 events at 400/s took {:?}",
        started.elapsed()
    );
    let st = get_json(&format!("{url}/v1/status"), &c1.tokens.viewer).await;
    assert_eq!(
        st["heads"]["c1"]["seq"], 2300,
        "every acknowledged event stored once: {st}"
    );

    // A whole provisioned tree: clients spread over its communities.
    let (code, r, err) = load(&[
        "--tree",
        tree.dir.to_str().unwrap(),
        "--events",
        "400",
        "--clients",
        "4",
        "--batch",
        "20",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["events"], 400, "{r}");
    assert_eq!(r["targets"].as_array().unwrap().len(), 2, "{r}");
    // The street holds everything the three runs acknowledged, once.
    wait_status(
        &servers[0].url,
        &tree.nodes["s1"].tokens.viewer,
        "all 2,700 events",
        |st| {
            let c1 = st["heads"]["c1"]["seq"].as_u64().unwrap_or(0);
            let c2 = st["heads"]["c2"]["seq"].as_u64().unwrap_or(0);
            c1 > 2300 && c2 > 0 && c1 + c2 == 2700 && st["log"]["events"] == 2700
        },
    )
    .await;

    // A wrong token: nothing acknowledged, the error named, exit 2 (the
    // target cannot be used).
    let (code, _, err) = load(&[
        "--url",
        url,
        "--token",
        "gs-reporter-wrong",
        "--events",
        "10",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
    // An aggregator is not a target.
    let (code, _, err) = load(&[
        "--url",
        &servers[0].url,
        "--token",
        &tree.nodes["s1"].tokens.reporter,
        "--events",
        "10",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a community"), "{err}");
}

/// A node closes a keep-alive connection idle past
/// `limits.header_read_timeout_s`; a client posting slower than that makes
/// its connection again before sending, so no event fails and none is
/// posted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_node_closed_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    gridsync_suite::set_limits(&c1.config, &[("header_read_timeout_s", 1)]);
    let server = Server::start(&c1.config, &[]);
    // One event every 1.6 s: the node has closed the connection before
    // each next post.
    let (code, r, err) = load(&[
        "--url",
        &server.url,
        "--token",
        &c1.tokens.reporter,
        "--events",
        "3",
        "--clients",
        "1",
        "--batch",
        "1",
        "--rate",
        "0.625",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["events"], 3, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let st = get_json(&format!("{}/v1/status", server.url), &c1.tokens.viewer).await;
    assert_eq!(st["heads"]["c1"]["seq"], 3, "each event stored once: {st}");
}
