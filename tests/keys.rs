//! Keys born on their node: `gridsync init` makes a node's key on its own
//! machine and prints only the public key; `provision` takes public keys
//! from the tree file and writes no private key for those nodes. A street
//! and a community set up this way replicate.

use std::path::Path;

use gridsync_suite::{copy_dir, free_port, post_events, sample_event, wait_heads, Server};
use serde_json::json;

use gridsync_suite::run_gridsync as run;

fn tokens(dir: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join("tokens.toml")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_make_their_own_keys_and_provision_takes_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let machines = dir.path().join("machines");
    // On each machine: its own key.
    let mut lines = Vec::new();
    for id in ["s1", "c1"] {
        let out = machines.join(id);
        let (ok, line, err) = run(&["init", "--id", id, "--out", out.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(line.starts_with("public_key = \""), "{line}");
        lines.push(line);
    }
    // A second init would replace the key: refused.
    let (ok, _, err) = run(&[
        "init",
        "--id",
        "c1",
        "--out",
        machines.join("c1").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");

    // The tree names the public keys; provisioning makes no private key.
    let tree = format!(
        "timezone = \"Asia/Shanghai\"\n\
         [[node]]\nid = \"s1\"\nname = \"s1\"\nlisten = \"127.0.0.1:{}\"\n{}\n\
         [[node]]\nid = \"c1\"\nname = \"c1\"\nparent = \"s1\"\nlisten = \"127.0.0.1:{}\"\n{}\n",
        free_port(),
        lines[0],
        free_port(),
        lines[1]
    );
    std::fs::write(dir.path().join("tree.toml"), &tree).unwrap();
    let deploy = dir.path().join("deploy");
    let (ok, _, err) = run(&[
        "provision",
        "--tree",
        dir.path().join("tree.toml").to_str().unwrap(),
        "--out",
        deploy.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for id in ["s1", "c1"] {
        assert!(
            !deploy.join(id).join("node.key").exists(),
            "provision wrote a private key for {id}"
        );
    }
    // Each machine gets its config and tokens beside its key, and the
    // topology beside its directory.
    for id in ["s1", "c1"] {
        copy_dir(&deploy.join(id), &machines.join(id));
    }
    std::fs::copy(deploy.join("topology.toml"), machines.join("topology.toml")).unwrap();
    let street = Server::start(&machines.join("s1").join("config.toml"), &[]);
    let community = Server::start(&machines.join("c1").join("config.toml"), &[]);
    let c1_tokens = tokens(&machines.join("c1"));
    let events: Vec<_> = (0..4).map(|i| sample_event(i, &format!("k{i}"))).collect();
    let (code, body) = post_events(
        &community.url,
        c1_tokens["reporter"].as_str().unwrap(),
        &json!({ "events": events }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let s1_tokens = tokens(&machines.join("s1"));
    wait_heads(
        &street.url,
        s1_tokens["viewer"].as_str().unwrap(),
        &[("c1", 4)],
    )
    .await;

    // A public key that is not one, and a key on disk that does not match
    // the tree, are refused with the reason.
    let bad = tree.replacen(&lines[1], "public_key = \"zz\"", 1);
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let (ok, _, err) = run(&[
        "provision",
        "--tree",
        dir.path().join("bad.toml").to_str().unwrap(),
        "--out",
        dir.path().join("deploy2").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("public_key of \"c1\""), "{err}");
    let swapped = tree.replacen(&lines[1], &lines[0], 1);
    std::fs::write(dir.path().join("swapped.toml"), swapped).unwrap();
    std::fs::create_dir_all(dir.path().join("deploy3")).unwrap();
    copy_dir(&machines.join("c1"), &dir.path().join("deploy3").join("c1"));
    let (ok, _, err) = run(&[
        "provision",
        "--tree",
        dir.path().join("swapped.toml").to_str().unwrap(),
        "--out",
        dir.path().join("deploy3").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("does not match the public_key"),
        "{err}"
    );
}
