//! A deployed tree changes without bricking anyone: a community's key is
//! rotated, a community is retired, a community moves to another street —
//! each with `gridsync topology …` on a real multi-process tree. Before,
//! during and after, every ancestor keeps serving; events reach the
//! district exactly once; and `audit verify` exits 0 at every node.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gridsync_suite::{
    get_json, gridsync_bin, http_client, post_events, provision_fast, run_gridsync, sample_event,
    wait_heads, wait_link_error, wait_status, Server, Tree,
};
use serde_json::{json, Value};

fn gridsync(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run_gridsync(args);
    (ok, format!("{out}{err}"))
}

async fn post(tree: &Tree, srv: &Server, id: &str, from: u64, n: u64) {
    let events: Vec<Value> = (from..from + n)
        .map(|i| sample_event(i, &format!("{id}-{i}")))
        .collect();
    let (code, body) = post_events(
        &srv.url,
        &tree.nodes[id].tokens.reporter,
        &json!({ "events": events }),
    )
    .await;
    assert_eq!(code, 200, "{id}: {body}");
}

/// The node answers (it keeps serving through the change).
async fn serving(srv: &Server) {
    let r = http_client()
        .get(format!("{}/healthz", srv.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{} not serving", srv.url);
}

fn restart(tree: &Tree, srv: &mut Server, id: &str) -> Server {
    assert!(srv.terminate(), "{id} did not stop cleanly");
    let listen = tree.nodes[id].listen.clone();
    Server::start(&tree.nodes[id].config, &["--listen", &listen])
}

fn audit_verify(tree: &Tree, id: &str) {
    let data: &Path = &tree.nodes[id].data_dir;
    let out = Command::new(gridsync_bin())
        .args(["audit", "verify", "--data"])
        .arg(data)
        .arg("--topology")
        .arg(&tree.topology)
        .args(["--node", id])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit verify at {id}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_nodes_retire_and_move_without_bricking_ancestors() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[
            ("d", None),
            ("s1", Some("d")),
            ("s2", Some("d")),
            ("c1", Some("s1")),
            ("c2", Some("s2")),
            ("c3", Some("s1")),
        ],
    );
    let topo = tree.topology.to_str().unwrap().to_owned();
    let viewer = |id: &str| tree.nodes[id].tokens.viewer.clone();
    let mut d = Server::start(&tree.nodes["d"].config, &[]);
    let mut s1 = Server::start(&tree.nodes["s1"].config, &[]);
    let mut s2 = Server::start(&tree.nodes["s2"].config, &[]);
    let mut c1 = Server::start(&tree.nodes["c1"].config, &[]);
    let _c2 = Server::start(&tree.nodes["c2"].config, &[]);
    let mut c3 = Server::start(&tree.nodes["c3"].config, &[]);
    for (id, srv) in [("c1", &c1), ("c2", &_c2), ("c3", &c3)] {
        post(&tree, srv, id, 0, 10).await;
    }
    wait_heads(&d.url, &viewer("d"), &[("c1", 10), ("c2", 10), ("c3", 10)]).await;

    // 1. Rotate c1's key (stopped), with the ancestors still on the old
    // topology: c1 is refused by s1 and waits; everyone keeps serving.
    assert!(c1.terminate());
    let (ok, out) = gridsync(&[
        "topology",
        "rotate-key",
        "--config",
        tree.nodes["c1"].config.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("up to seq 10"), "{out}");
    let c1_cfg = tree.nodes["c1"].config.clone();
    let mut c1 = Server::start(&c1_cfg, &[]);
    post(&tree, &c1, "c1", 10, 5).await;
    wait_link_error(&c1.url, &viewer("c1"), "failed to prove its key").await;
    post(&tree, &c3, "c3", 10, 2).await;
    wait_heads(&d.url, &viewer("d"), &[("c3", 12)]).await;
    for srv in [&d, &s1, &s2] {
        serving(srv).await;
    }
    // The ancestors load the new topology: c1's new chunks flow.
    s1 = restart(&tree, &mut s1, "s1");
    d = restart(&tree, &mut d, "d");
    wait_heads(&d.url, &viewer("d"), &[("c1", 15), ("c3", 12)]).await;

    // 2. Retire c3: its parent refuses it, it does not start again, its
    // history stays at every ancestor.
    let (ok, out) = gridsync(&["topology", "retire", "--topology", &topo, "--node", "c3"]);
    assert!(ok, "{out}");
    let (ok, out) = gridsync(&["topology", "retire", "--topology", &topo, "--node", "s1"]);
    assert!(
        !ok && out.contains("c1"),
        "a street with children was retired: {out}"
    );
    s1 = restart(&tree, &mut s1, "s1");
    d = restart(&tree, &mut d, "d");
    post(&tree, &c3, "c3", 12, 1).await;
    wait_link_error(&c3.url, &viewer("c3"), "retired").await;
    assert!(c3.terminate());
    let Err((_, stderr)) = Server::try_start(&tree.nodes["c3"].config, &[]) else {
        panic!("a retired node started");
    };
    assert!(stderr.contains("retired"), "{stderr}");
    let st = get_json(&format!("{}/v1/status", d.url), &viewer("d")).await;
    assert_eq!(st["heads"]["c3"]["seq"], 12, "{st}");

    // 3. Move c1 from s1 to s2, while s1 holds c1 events the district
    // lacks (the district is down). s2 receives c1's whole chain from c1;
    // the district takes only what it lacks, from s2; s1 keeps its copy and
    // stops offering it upward (the district would refuse it from s1).
    assert!(d.terminate());
    post(&tree, &c1, "c1", 15, 3).await;
    wait_heads(&s1.url, &viewer("s1"), &[("c1", 18)]).await;
    assert!(c1.terminate());
    let (ok, out) = gridsync(&[
        "topology",
        "move",
        "--topology",
        &topo,
        "--node",
        "c1",
        "--parent",
        "s2",
        "--config",
        c1_cfg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = gridsync(&[
        "topology",
        "move",
        "--topology",
        &topo,
        "--node",
        "s2",
        "--parent",
        "c2",
    ]);
    assert!(!ok && out.contains("under itself"), "{out}");
    s2 = restart(&tree, &mut s2, "s2");
    s1 = restart(&tree, &mut s1, "s1");
    let d_listen = tree.nodes["d"].listen.clone();
    d = Server::start(&tree.nodes["d"].config, &["--listen", &d_listen]);
    let c1 = Server::start(&c1_cfg, &[]);
    post(&tree, &c1, "c1", 18, 2).await;
    wait_heads(&s2.url, &viewer("s2"), &[("c1", 20), ("c2", 10)]).await;
    wait_heads(&d.url, &viewer("d"), &[("c1", 20), ("c2", 10), ("c3", 12)]).await;
    wait_status(&s1.url, &viewer("s1"), "s1 linked to the district", |st| {
        st["parent_link"]["connected"] == true && st["parent_link"]["acked"]["c3"] == 12
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = get_json(&format!("{}/v1/status", s1.url), &viewer("s1")).await;
    assert_eq!(
        st["heads"]["c1"]["seq"], 18,
        "s1 keeps c1's earlier history: {st}"
    );
    assert_eq!(
        st["parent_link"]["blocked"].as_array().map(Vec::len),
        Some(0),
        "s1 offered the moved community upward: {st}"
    );
    assert_eq!(st["parent_link"]["lag_events"], 0, "{st}");
    for srv in [&d, &s1, &s2] {
        serving(srv).await;
    }
    let page = get_json(
        &format!("{}/v1/events?origin=c1&limit=1000", d.url),
        &tree.nodes["d"].tokens.auditor,
    )
    .await;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(20),
        "exactly once at the district"
    );

    // After: every log verifies with the edited topology.
    drop(c1);
    drop(_c2);
    for (id, srv) in [("d", &mut d), ("s1", &mut s1), ("s2", &mut s2)] {
        assert!(srv.terminate(), "{id}");
    }
    for id in ["d", "s1", "s2", "c1", "c2", "c3"] {
        audit_verify(&tree, id);
    }
}
