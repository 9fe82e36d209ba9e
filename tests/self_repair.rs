//! Real processes: what happens when a community's log falls behind what
//! its parent holds of it, and when a parent refuses one origin of a child.
//!
//! * A community restored from an older backup pulls its lost tail back
//!   from its street, answers phone retries of the lost events as
//!   duplicates, and numbers new events after them; they reach the district
//!   and the district's log verifies (review F2).
//! * With `--after-restore` it refuses posts until the street has
//!   confirmed its chain (tested with the street down).
//! * A restored community that took new posts while offline holds a second
//!   history: it stays stopped (`503 log_diverged`, persisted across a
//!   restart) with one evidence record at the street, however often it
//!   reconnects; the documented way out (start with an empty data
//!   directory) works.
//! * A community moved to another street: the district refuses only that
//!   origin from the old street; the street's other community keeps
//!   arriving (review F3).

use std::process::Command;
use std::time::Duration;

use gridsync_suite::{
    copy_dir, get_json, gridsync_bin, post_events, provision_fast, restore_dir, sample_event,
    wait_heads, wait_status, Server,
};
use serde_json::{json, Value};

async fn post_n(url: &str, token: &str, from: u64, n: u64, tag: &str) -> Vec<Value> {
    let events: Vec<Value> = (from..from + n)
        .map(|i| sample_event(i, &format!("{tag}-{i}")))
        .collect();
    let (status, body) = post_events(url, token, &json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

fn seqs(results: &[Value]) -> Vec<u64> {
    results.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

fn audit_verify(data: &std::path::Path, topology: &std::path::Path, node: &str) -> (i32, String) {
    let out = Command::new(gridsync_bin())
        .args(["audit", "verify", "--data"])
        .arg(data)
        .arg("--topology")
        .arg(topology)
        .args(["--node", node])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_community_pulls_its_tail_back_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[("d", None), ("s1", Some("d")), ("c1", Some("s1"))],
    );
    let (d, s1, c1) = (&tree.nodes["d"], &tree.nodes["s1"], &tree.nodes["c1"]);
    let _district = Server::start(&d.config, &[]);
    let mut street = Server::start(&s1.config, &[]);
    let mut community = Server::start(&c1.config, &[]);
    assert_eq!(
        seqs(&post_n(&community.url, &c1.tokens.reporter, 0, 5, "a").await),
        vec![1, 2, 3, 4, 5]
    );
    wait_heads(&street.url, &s1.tokens.viewer, &[("c1", 5)]).await;
    // A backup at seq 5 (the node stopped, its directory copied).
    assert!(community.terminate());
    let backup = dir.path().join("c1-backup");
    copy_dir(&c1.data_dir, &backup);
    community = Server::start(&c1.config, &[]);
    let later = post_n(&community.url, &c1.tokens.reporter, 5, 3, "a").await;
    assert_eq!(seqs(&later), vec![6, 7, 8]);
    wait_heads(&street.url, &s1.tokens.viewer, &[("c1", 8)]).await;

    // Disk lost; the backup is restored while the street is down, and the
    // node is started with --after-restore: no posts until the street has
    // confirmed its chain.
    assert!(community.terminate());
    assert!(street.terminate());
    restore_dir(&backup, &c1.data_dir);
    // The heads record beside the data directory still says seq 8: a plain
    // start is refused, saying what is missing and what to do.
    let out = Command::new(gridsync_bin())
        .args(["serve", "--config"])
        .arg(&c1.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("origin c1")
            && stderr.contains("seqs 6–8 missing")
            && stderr.contains("--after-restore"),
        "{stderr}"
    );
    community = Server::start(&c1.config, &["--after-restore"]);
    let one = json!(sample_event(100, "new-0"));
    let (status, body) = post_events(&community.url, &c1.tokens.reporter, &one).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "awaiting_parent_check", "{body}");
    let st = get_json(&format!("{}/v1/status", community.url), &c1.tokens.viewer).await;
    assert_eq!(st["posting"]["accepting"], false, "{st}");
    assert_eq!(st["heads"]["c1"]["seq"], 5, "{st}");

    // The street comes back: the community finds it holds seqs 6–8 of its
    // chain, pulls them back, and takes posts again after them.
    street = Server::start(&s1.config, &[]);
    wait_status(&community.url, &c1.tokens.viewer, "the repair", |st| {
        st["heads"]["c1"]["seq"] == 8 && st["posting"]["accepting"] == true
    })
    .await;
    // A phone retrying an event the disk lost gets its original receipt.
    let retry = json!(sample_event(6, "a-6"));
    let (status, body) = post_events(&community.url, &c1.tokens.reporter, &retry).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["seq"], 7);
    assert_eq!(body["results"][0]["duplicate"], true);
    assert_eq!(body["results"][0]["hash"], later[1]["hash"]);
    let new = post_n(&community.url, &c1.tokens.reporter, 200, 2, "new").await;
    assert_eq!(seqs(&new), vec![9, 10]);
    wait_heads(&_district.url, &d.tokens.viewer, &[("c1", 10)]).await;
    let metrics =
        gridsync_suite::get_text(&format!("{}/metrics", community.url), &c1.tokens.viewer).await;
    assert!(
        metrics.contains("gridsync_own_chain_repaired_events_total{node=\"c1\"} 3"),
        "{metrics}"
    );
    for (server, token) in [(&street, &s1.tokens.viewer), (&_district, &d.tokens.viewer)] {
        let st = get_json(&format!("{}/v1/status", server.url), token).await;
        assert_eq!(st["equivocations"], json!([]), "{st}");
    }
    drop(street);
    drop(_district);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out) = audit_verify(&d.data_dir, &tree.topology, "d");
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_history_stays_stopped_with_one_evidence_record() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[("d", None), ("s1", Some("d")), ("c1", Some("s1"))],
    );
    let (d, s1, c1) = (&tree.nodes["d"], &tree.nodes["s1"], &tree.nodes["c1"]);
    let district = Server::start(&d.config, &[]);
    let mut street = Server::start(&s1.config, &[]);
    let mut community = Server::start(&c1.config, &[]);
    post_n(&community.url, &c1.tokens.reporter, 0, 5, "a").await;
    wait_heads(&street.url, &s1.tokens.viewer, &[("c1", 5)]).await;
    // An image of the whole node directory: the data and its heads record.
    assert!(community.terminate());
    let node_dir = c1.data_dir.parent().unwrap().to_owned();
    let backup = dir.path().join("c1-image");
    copy_dir(&node_dir, &backup);
    community = Server::start(&c1.config, &[]);
    post_n(&community.url, &c1.tokens.reporter, 5, 3, "a").await;
    wait_heads(&district.url, &d.tokens.viewer, &[("c1", 8)]).await;

    // The image restored (nothing local can tell) without --after-restore
    // while the street is down, and new posts taken offline: seqs 6–9 now
    // exist twice, signed by c1.
    assert!(community.terminate());
    assert!(street.terminate());
    restore_dir(&backup, &node_dir);
    community = Server::start(&c1.config, &[]);
    assert_eq!(
        seqs(&post_n(&community.url, &c1.tokens.reporter, 300, 4, "offline").await),
        vec![6, 7, 8, 9]
    );
    street = Server::start(&s1.config, &[]);
    wait_status(&community.url, &c1.tokens.viewer, "the hold", |st| {
        st["posting"]["hold"]["code"] == "log_diverged"
            && st["parent_link"]["blocked"][0]["code"] == "equivocation"
    })
    .await;
    let (status, body) = post_events(
        &community.url,
        &c1.tokens.reporter,
        &json!(sample_event(400, "refused")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "log_diverged");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("seq 8")
            && message.contains("move its data directory aside")
            && message.contains("--after-restore"),
        "{message}"
    );
    // Reconnect after reconnect: the street keeps one evidence record, and
    // its copy of c1 is untouched.
    for _ in 0..3 {
        assert!(community.terminate());
        community = Server::start(&c1.config, &[]);
        let st = get_json(&format!("{}/v1/status", community.url), &c1.tokens.viewer).await;
        assert_eq!(
            st["posting"]["hold"]["code"], "log_diverged",
            "the hold survives a restart: {st}"
        );
        wait_status(&community.url, &c1.tokens.viewer, "a new session", |st| {
            st["parent_link"]["blocked"][0]["code"] == "equivocation"
        })
        .await;
    }
    let st = get_json(&format!("{}/v1/status", street.url), &s1.tokens.viewer).await;
    assert_eq!(st["heads"]["c1"]["seq"], 8, "{st}");
    let eq = st["equivocations"].as_array().unwrap();
    assert_eq!(eq.len(), 1, "one record, not one per retry: {st}");
    assert_eq!(
        (eq[0]["origin"].as_str(), eq[0]["seq"].as_u64()),
        (Some("c1"), Some(8))
    );

    // The way out the message gives: move the data aside, start empty.
    assert!(community.terminate());
    std::fs::rename(&c1.data_dir, dir.path().join("c1-kept-for-auditors")).unwrap();
    community = Server::start(&c1.config, &["--after-restore"]);
    wait_status(&community.url, &c1.tokens.viewer, "the full pull", |st| {
        st["heads"]["c1"]["seq"] == 8 && st["posting"]["accepting"] == true
    })
    .await;
    assert_eq!(
        seqs(&post_n(&community.url, &c1.tokens.reporter, 500, 1, "after").await),
        vec![9]
    );
    wait_heads(&district.url, &d.tokens.viewer, &[("c1", 9)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_community_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[
            ("d", None),
            ("s1", Some("d")),
            ("s2", Some("d")),
            ("c1", Some("s1")),
            ("c2", Some("s1")),
        ],
    );
    let n = |id: &str| &tree.nodes[id];
    let mut district = Server::start(&n("d").config, &[]);
    let street = Server::start(&n("s1").config, &[]);
    let c1 = Server::start(&n("c1").config, &[]);
    let c2 = Server::start(&n("c2").config, &[]);
    post_n(&c1.url, &n("c1").tokens.reporter, 0, 3, "c1").await;
    post_n(&c2.url, &n("c2").tokens.reporter, 0, 3, "c2").await;
    wait_heads(
        &district.url,
        &n("d").tokens.viewer,
        &[("c1", 3), ("c2", 3)],
    )
    .await;

    // The district's topology now puts c2 under s2 (the street still runs
    // with the old one).
    let text = std::fs::read_to_string(&tree.topology).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    for node in table["node"].as_array_mut().unwrap() {
        if node["id"].as_str() == Some("c2") {
            node.as_table_mut()
                .unwrap()
                .insert("parent".into(), toml::Value::String("s2".into()));
        }
    }
    std::fs::write(&tree.topology, toml::to_string(&table).unwrap()).unwrap();
    assert!(district.terminate());
    district = Server::start(&n("d").config, &[]);

    post_n(&c2.url, &n("c2").tokens.reporter, 3, 2, "c2").await;
    for round in 0..3 {
        post_n(&c1.url, &n("c1").tokens.reporter, 3 + round * 2, 2, "c1").await;
    }
    // c1's events keep arriving through s1; c2's wait at s1, refused.
    wait_heads(
        &district.url,
        &n("d").tokens.viewer,
        &[("c1", 9), ("c2", 3)],
    )
    .await;
    wait_status(&street.url, &n("s1").tokens.viewer, "the block", |st| {
        let b = &st["parent_link"]["blocked"];
        b.as_array().is_some_and(|b| b.len() == 1)
            && b[0]["origin"] == "c2"
            && b[0]["code"] == "foreign_origin"
            && st["parent_link"]["acked"]["c1"] == 9
    })
    .await;
    let st = get_json(&format!("{}/v1/status", street.url), &n("s1").tokens.viewer).await;
    assert_eq!(st["heads"]["c2"]["seq"], 5, "{st}");
    let st = get_json(
        &format!("{}/v1/status", district.url),
        &n("d").tokens.viewer,
    )
    .await;
    assert_eq!(st["equivocations"], json!([]), "{st}");
}

/// An aggregator that lost part of its log (an older backup restored, taken
/// with --after-restore) needs nothing special: its children resume from
/// its heads and send the missing part again, and its parent, which holds
/// more, records no equivocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_street_is_refilled_by_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[
            ("d", None),
            ("s1", Some("d")),
            ("c1", Some("s1")),
            ("c2", Some("s1")),
        ],
    );
    let n = |id: &str| &tree.nodes[id];
    let district = Server::start(&n("d").config, &[]);
    let mut street = Server::start(&n("s1").config, &[]);
    let c1 = Server::start(&n("c1").config, &[]);
    let c2 = Server::start(&n("c2").config, &[]);
    post_n(&c1.url, &n("c1").tokens.reporter, 0, 4, "c1").await;
    post_n(&c2.url, &n("c2").tokens.reporter, 0, 4, "c2").await;
    wait_heads(&street.url, &n("s1").tokens.viewer, &[("c1", 4), ("c2", 4)]).await;
    assert!(street.terminate());
    let backup = dir.path().join("s1-backup");
    copy_dir(&n("s1").data_dir, &backup);
    street = Server::start(&n("s1").config, &[]);
    post_n(&c1.url, &n("c1").tokens.reporter, 4, 6, "c1").await;
    post_n(&c2.url, &n("c2").tokens.reporter, 4, 6, "c2").await;
    wait_heads(
        &district.url,
        &n("d").tokens.viewer,
        &[("c1", 10), ("c2", 10)],
    )
    .await;

    assert!(street.terminate());
    restore_dir(&backup, &n("s1").data_dir);
    street = Server::start(&n("s1").config, &["--after-restore"]);
    // Refilled by the children; new events flow on through it.
    wait_heads(
        &street.url,
        &n("s1").tokens.viewer,
        &[("c1", 10), ("c2", 10)],
    )
    .await;
    post_n(&c1.url, &n("c1").tokens.reporter, 10, 2, "c1").await;
    wait_heads(
        &district.url,
        &n("d").tokens.viewer,
        &[("c1", 12), ("c2", 10)],
    )
    .await;
    for (url, token) in [
        (&street.url, &n("s1").tokens.viewer),
        (&district.url, &n("d").tokens.viewer),
    ] {
        let st = get_json(&format!("{url}/v1/status"), token).await;
        assert_eq!(st["equivocations"], json!([]), "{st}");
    }
    drop(street);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out) = audit_verify(&n("s1").data_dir, &tree.topology, "s1");
    assert_eq!(code, 0, "{out}");
}
