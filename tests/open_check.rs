//! Opening at the log's checkpoint (real processes). A node opens in time
//! independent of its history: it checks the heads and that the log ends
//! where its checkpoint says, listens, and reads the whole log back beside
//! the running node. Damage inside an older entry is then found within
//! seconds and the node stops taking events, saying why; `serve
//! --verify-all` refuses the same log before listening (the control that
//! the damage is real); an intact log verifies and keeps taking events.

use gridsync_store::{layout, Kv, SledKv};
use gridsync_suite::{
    copy_dir, get_json, metric, post_events, provision_fast, restore_dir, sample_event,
    set_projections, wait_status, Server,
};
use serde_json::json;

/// Where the node's projection was resumed from at its start (0: the whole
/// log was folded).
async fn resumed_from(url: &str, token: &str) -> u64 {
    metric(url, token, "gridsync_projection_resumed_from")
        .await
        .expect("gridsync_projection_resumed_from in /metrics") as u64
}

/// The outcome of the whole-log check after the start, once it has one:
/// 1 verified, -1 damage found.
async fn wait_verified(url: &str, token: &str) -> f64 {
    for _ in 0..200 {
        match metric(url, token, "gridsync_log_verified").await {
            Some(v) if v != 0.0 => return v,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("the whole-log check did not finish");
}

/// Posts `n` sample events one per post: one log entry each.
async fn post_one_at_a_time(url: &str, reporter: &str, n: u64) {
    for i in 0..n {
        let body = json!({ "events": [sample_event(i, &format!("k{i}"))] });
        let (status, answer) = post_events(url, reporter, &body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_the_log_is_found_after_an_open_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    let t = &c1.tokens;
    let mut node = Server::start(&c1.config, &[]);
    post_one_at_a_time(&node.url, &t.reporter, 30).await;
    assert!(node.terminate());
    let backup = dir.path().join("backup");
    copy_dir(&c1.data_dir, &backup);

    // Control: the intact log verifies after the open and keeps taking
    // events (none posted: the heads record beside the data directory
    // would then hold more than the backup).
    let mut node = Server::start(&c1.config, &[]);
    assert_eq!(wait_verified(&node.url, &t.viewer).await, 1.0);
    let st = get_json(&format!("{}/v1/status", node.url), &t.viewer).await;
    assert_eq!(st["posting"]["accepting"], true, "{st}");
    assert!(node.terminate());

    // Damage one byte in the middle of log entry 3 (of 30).
    restore_dir(&backup, &c1.data_dir);
    {
        // Entry 3 is in the value that begins it (its own, or a pack of
        // small entries).
        let kv = SledKv::open(&c1.data_dir, 8 << 20).unwrap();
        let (key, mut v, range) = kv
            .scan(&[layout::LOG], &[layout::LOG], 100)
            .unwrap()
            .into_iter()
            .find_map(|(k, v)| {
                let held = layout::log_value_entries(&k, &v).expect("well formed");
                let (_, r) = held.into_iter().find(|(o, _)| *o == 3)?;
                Some((k, v, r))
            })
            .expect("entry 3");
        let at = range.start + range.len() / 2;
        v[at] ^= 0x20;
        kv.commit(vec![(key, Some(v))]).unwrap();
    }
    let damaged = dir.path().join("damaged");
    copy_dir(&c1.data_dir, &damaged);

    // The full check before listening refuses it.
    let Err((_, stderr)) = Server::try_start(&c1.config, &["--verify-all"]) else {
        panic!("serve --verify-all opened a damaged log");
    };
    assert!(stderr.contains("log entry 3"), "{stderr}");

    // The default open listens at once, then finds it and stops taking
    // events, with the reason in the answer.
    restore_dir(&damaged, &c1.data_dir);
    let mut node = Server::start(&c1.config, &[]);
    assert_eq!(wait_verified(&node.url, &t.viewer).await, -1.0);
    wait_status(&node.url, &t.viewer, "posting stopped", |s| {
        s["posting"]["accepting"] == false
    })
    .await;
    let body = json!({ "events": [sample_event(31, "k31")] });
    let (status, answer) = post_events(&node.url, &t.reporter, &body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.to_string().contains("does not verify") && answer.to_string().contains("entry 3"),
        "{answer}"
    );
    // Nothing was added to the damaged log.
    let st = get_json(&format!("{}/v1/status", node.url), &t.viewer).await;
    assert_eq!(st["heads"]["c1"]["seq"], 30);
    node.kill9();
}

/// The projection is saved beside the log at shutdown and a restart folds
/// on from it: the same aggregates as before; a damaged snapshot is not
/// used (the whole log is folded) and gives the same numbers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_projection_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    let t = &c1.tokens;
    let q = "/v1/aggregates?from=2020-01-20&to=2020-01-28";
    let mut node = Server::start(&c1.config, &[]);
    let events: Vec<_> = (0..200)
        .map(|i| sample_event(i, &format!("k{i}")))
        .collect();
    let (status, answer) = post_events(&node.url, &t.reporter, &json!({ "events": events })).await;
    assert_eq!(status, 200, "{answer}");
    gridsync_suite::wait_projection_idle(&node.url, &t.viewer).await;
    let before = get_json(&format!("{}{q}", node.url), &t.viewer).await;
    assert!(node.terminate());
    let file = gridsync_projections::snapshot::path(&c1.data_dir);
    let saved = std::fs::read(&file).expect("a snapshot written at shutdown");

    let mut node = Server::start(&c1.config, &[]);
    let resumed = resumed_from(&node.url, &t.viewer).await;
    assert!(
        resumed > 0,
        "the projection was not resumed from its snapshot"
    );
    let after = get_json(&format!("{}{q}", node.url), &t.viewer).await;
    assert_eq!(after["state_hash"], before["state_hash"]);
    assert_eq!(after["totals"], before["totals"]);
    assert!(node.terminate());

    // A damaged snapshot: not used, the same numbers from the whole log.
    let mut bytes = saved;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let mut node = Server::start(&c1.config, &[]);
    assert_eq!(
        resumed_from(&node.url, &t.viewer).await,
        0,
        "a damaged snapshot was used"
    );
    let rebuilt = get_json(&format!("{}{q}", node.url), &t.viewer).await;
    assert_eq!(rebuilt["state_hash"], before["state_hash"]);
    assert_eq!(rebuilt["totals"], before["totals"]);
    node.kill9();
}

/// A node with no saved projection and no time to fold before listening
/// (`projections.fold_before_listen_s = 0`, snapshots off) listens with a
/// prefix of its log folded and folds the rest while it serves: its status
/// says how far (`log.projected_chunks`), and once that reaches the log's
/// chunks its aggregates are those of the node before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_folds_the_projection_while_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    let t = &c1.tokens;
    set_projections(
        &c1.config,
        &[("fold_before_listen_s", 0), ("snapshot_interval_s", 0)],
    );
    let q = "/v1/aggregates?from=2020-01-20&to=2020-01-28";
    let mut node = Server::start(&c1.config, &[]);
    // Several pages of the fold.
    post_one_at_a_time(&node.url, &t.reporter, 300).await;
    gridsync_suite::wait_projection_idle(&node.url, &t.viewer).await;
    let before = get_json(&format!("{}{q}", node.url), &t.viewer).await;
    assert!(node.terminate());
    assert!(
        !gridsync_projections::snapshot::path(&c1.data_dir).exists(),
        "snapshots are off: the restart must fold the whole log"
    );

    let mut node = Server::start(&c1.config, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = get_json(&format!("{}/v1/status?brief=true", node.url), &t.viewer).await;
        let (projected, chunks) = (
            st["log"]["projected_chunks"]
                .as_u64()
                .expect("projected_chunks"),
            st["log"]["chunks"].as_u64().unwrap(),
        );
        assert_eq!(chunks, 300);
        assert!(projected <= chunks, "{st}");
        if projected == chunks {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the projection stopped at {projected} of {chunks} chunks"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let after = get_json(&format!("{}{q}", node.url), &t.viewer).await;
    assert_eq!(after["state_hash"], before["state_hash"]);
    assert_eq!(after["totals"], before["totals"]);
    node.kill9();
}
