//! TLS on every link: a tree provisioned with `--tls` serves HTTPS and
//! replicates over `wss`, children trust only the deployment CA, a wrong CA
//! or a parent with a foreign certificate is refused with a clear message,
//! a relay in the middle of the TLS channel cannot pass the sync handshake
//! (with the negative control: without the channel binding it can), and
//! TLS keys can be born on their node too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gridsync_suite::{
    copy_dir, free_port, get_json, gridsync_bin, http_client, post_events, provision_with,
    run_gridsync, sample_event, set_sync, set_url, trust_ca, wait_heads, wait_link_error,
    wait_status, Server, Tree, FAST_SYNC,
};
use serde_json::{json, Value};

fn tls_tree(dir: &Path, nodes: &[(&str, Option<&str>)]) -> Tree {
    let tree = provision_with(dir, nodes, &["--tls"]);
    for n in tree.nodes.values() {
        set_sync(&n.config, FAST_SYNC);
    }
    trust_ca(&std::fs::read(tree.dir.join("ca.crt")).unwrap());
    tree
}

async fn post_n(url: &str, token: &str, prefix: &str, n: u64) {
    let events: Vec<Value> = (0..n)
        .map(|i| sample_event(i, &format!("{prefix}-{i}")))
        .collect();
    let (code, body) = post_events(url, token, &json!({ "events": events })).await;
    assert_eq!(code, 200, "{body}");
}

fn origin_head(st: &Value, origin: &str) -> u64 {
    st["heads"][origin]["seq"].as_u64().unwrap_or(0)
}

/// Points a node at its own copy of the topology (to give it a different
/// CA or parent URL than the rest of the tree).
fn own_topology(tree: &Tree, node: &str) -> PathBuf {
    let own = tree.dir.join(node).join("topology.toml");
    std::fs::copy(&tree.topology, &own).unwrap();
    let cfg = &tree.nodes[node].config;
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
    table.insert("topology_file".into(), "topology.toml".into());
    std::fs::write(cfg, toml::to_string(&table).unwrap()).unwrap();
    // ca_file is relative to the topology file.
    std::fs::copy(tree.dir.join("ca.crt"), tree.dir.join(node).join("ca.crt")).unwrap();
    own
}

fn set_ca_file(topology: &Path, ca_file: &str) {
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(topology).unwrap()).unwrap();
    table.insert("ca_file".into(), ca_file.into());
    std::fs::write(topology, toml::to_string(&table).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_on_tls_replicates_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tls_tree(
        dir.path(),
        &[("d", None), ("s", Some("d")), ("c1", Some("s"))],
    );
    let topo = std::fs::read_to_string(&tree.topology).unwrap();
    assert!(topo.contains("ca_file = \"ca.crt\""), "{topo}");
    assert!(
        !topo.contains("http://"),
        "plain URL in a TLS topology: {topo}"
    );
    let cfg = std::fs::read_to_string(&tree.nodes["c1"].config).unwrap();
    assert!(!cfg.contains("plain_http"), "{cfg}");
    let d = Server::start(&tree.nodes["d"].config, &[]);
    let s = Server::start(&tree.nodes["s"].config, &[]);
    let c1 = Server::start(&tree.nodes["c1"].config, &[]);
    for srv in [&d, &s, &c1] {
        assert!(srv.url.starts_with("https://"), "{}", srv.url);
    }
    let c = &tree.nodes["c1"].tokens;
    post_n(&c1.url, &c.reporter, "tls", 40).await;
    wait_heads(&d.url, &tree.nodes["d"].tokens.viewer, &[("c1", 40)]).await;
    wait_status(&c1.url, &c.viewer, "a connected parent link", |st| {
        st["parent_link"]["connected"] == true
    })
    .await;

    // Nothing is served in the clear: a plain HTTP request gets no answer.
    let plain = http_client()
        .get(c1.url.replacen("https://", "http://", 1) + "/v1/status")
        .bearer_auth(&c.viewer)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "answered over plain HTTP: {plain:?}");

    // The tools speak TLS, trusting the topology's CA.
    let out = Command::new(gridsync_bin())
        .args(["audit", "replay", "--url", &d.url, "--topology"])
        .arg(&tree.topology)
        .env("GRIDSYNC_TOKEN", &tree.nodes["d"].tokens.auditor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit replay over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 40);
    // Without a CA for the https URL, the audit tool refuses to connect.
    let out = Command::new(gridsync_bin())
        .args(["audit", "replay", "--url", &d.url])
        .env("GRIDSYNC_TOKEN", &tree.nodes["d"].tokens.auditor)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "replay trusted an unknown certificate"
    );
    let out = Command::new(gridsync_bin())
        .args(["load", "--tree"])
        .arg(&tree.dir)
        .args([
            "--events",
            "300",
            "--clients",
            "2",
            "--batch",
            "50",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_heads(&d.url, &tree.nodes["d"].tokens.viewer, &[("c1", 340)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_foreign_parent_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tls_tree(dir.path(), &[("s", None), ("c1", Some("s"))]);
    // Another deployment: its own CA and certificates.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = provision_with(&other_dir, &[("x", None)], &["--tls"]);

    // 1. The child trusts another CA: it refuses the parent.
    let own = own_topology(&tree, "c1");
    std::fs::copy(other.dir.join("ca.crt"), tree.dir.join("c1/other-ca.crt")).unwrap();
    set_ca_file(&own, "other-ca.crt");
    let mut s = Server::start(&tree.nodes["s"].config, &[]);
    let mut c1 = Server::start(&tree.nodes["c1"].config, &[]);
    let c = &tree.nodes["c1"].tokens;
    post_n(&c1.url, &c.reporter, "ca", 5).await;
    let err = wait_link_error(&c1.url, &c.viewer, "TLS").await;
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let st = get_json(
        &format!("{}/v1/status", s.url),
        &tree.nodes["s"].tokens.viewer,
    )
    .await;
    assert_eq!(
        origin_head(&st, "c1"),
        0,
        "events crossed an untrusted link"
    );
    c1.terminate();

    // 2. The right CA, but the parent serves another deployment's
    // certificate (valid for 127.0.0.1 too): refused.
    set_ca_file(&own, "ca.crt");
    s.terminate();
    let s_tls = tree.dir.join("s/tls");
    let saved = dir.path().join("s-tls");
    copy_dir(&s_tls, &saved);
    for f in ["node.crt", "node.key"] {
        std::fs::copy(other.dir.join("x/tls").join(f), s_tls.join(f)).unwrap();
    }
    let listen = tree.nodes["s"].listen.clone();
    let mut s = Server::start(&tree.nodes["s"].config, &["--listen", &listen]);
    let mut c1 = Server::start(&tree.nodes["c1"].config, &[]);
    let err = wait_link_error(&c1.url, &c.viewer, "TLS").await;
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let st = get_json(&format!("{}/v1/status", c1.url), &c.viewer).await;
    assert_eq!(st["parent_link"]["connected"], false, "{st}");

    // Positive control: the street's own certificate back, the link works.
    s.terminate();
    copy_dir(&saved, &s_tls);
    let s = Server::start(&tree.nodes["s"].config, &["--listen", &listen]);
    wait_heads(&s.url, &tree.nodes["s"].tokens.viewer, &[("c1", 5)]).await;
    c1.terminate();

    // 3. Plain HTTP must be asked for: a config without [tls] and without
    // plain_http does not start, and says what to do.
    let cfg = &tree.nodes["c1"].config;
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
    table.remove("tls");
    std::fs::write(cfg, toml::to_string(&table).unwrap()).unwrap();
    let Err((_, stderr)) = Server::try_start(cfg, &[]) else {
        panic!("a node without TLS and without plain_http started");
    };
    assert!(
        stderr.contains("plain_http = true") && stderr.contains("[tls]"),
        "{stderr}"
    );
}

/// A man in the middle holding a certificate the child trusts (another
/// node's, issued by the same CA for the same address): it terminates the
/// child's TLS session and opens its own to the parent, relaying bytes.
async fn run_relay(
    listener: tokio::net::TcpListener,
    cert: PathBuf,
    key: PathBuf,
    ca_pem: Vec<u8>,
    upstream: SocketAddr,
    relayed: Arc<AtomicU64>,
) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(gridsync_node::tls::server_config(&cert, &key).unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(gridsync_node::tls::client_config(&ca_pem, "ca").unwrap());
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, connector, relayed) = (acceptor.clone(), connector.clone(), relayed.clone());
        tokio::spawn(async move {
            let Ok(mut a) = acceptor.accept(inbound).await else {
                return;
            };
            let Ok(tcp) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let Ok(mut b) = connector.connect(name, tcp).await else {
                return;
            };
            relayed.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_sync_handshake_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tls_tree(
        dir.path(),
        &[("s", None), ("c1", Some("s")), ("c2", Some("s"))],
    );
    let ca_pem = std::fs::read(tree.dir.join("ca.crt")).unwrap();
    // Bound at once (port 0), not picked first and bound later: another
    // test may take a picked port in between.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let relayed = Arc::new(AtomicU64::new(0));
    let upstream: SocketAddr = tree.nodes["s"].listen.parse().unwrap();
    // The relay holds c2's certificate and key (a stolen or compromised
    // node): the child's certificate check passes.
    tokio::spawn(run_relay(
        listener,
        tree.dir.join("c2/tls/node.crt"),
        tree.dir.join("c2/tls/node.key"),
        ca_pem,
        upstream,
        relayed.clone(),
    ));
    let own = own_topology(&tree, "c1");
    set_url(&own, "s", &format!("https://127.0.0.1:{relay_port}"));
    let c = &tree.nodes["c1"].tokens;
    let sv = &tree.nodes["s"].tokens.viewer;

    // With the channel binding: refused, nothing crosses.
    let mut s = Server::start(&tree.nodes["s"].config, &[]);
    let mut c1 = Server::start(&tree.nodes["c1"].config, &[]);
    post_n(&c1.url, &c.reporter, "mitm", 5).await;
    let err = wait_link_error(&c1.url, &c.viewer, "relay in the middle").await;
    assert!(err.contains("failed to prove its key"), "{err}");
    assert!(
        relayed.load(Ordering::Relaxed) > 0,
        "the relay never carried a session: the test proves nothing"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = get_json(&format!("{}/v1/status", s.url), sv).await;
    assert_eq!(origin_head(&st, "c1"), 0, "events crossed the relay: {st}");
    c1.terminate();
    s.terminate();

    // Negative control: proofs without the channel binding pass the relay
    // (so the check above is what stops it).
    let listen = tree.nodes["s"].listen.clone();
    let s = Server::start(
        &tree.nodes["s"].config,
        &["--listen", &listen, "--unsafe-no-channel-binding"],
    );
    let _c1 = Server::start(&tree.nodes["c1"].config, &["--unsafe-no-channel-binding"]);
    wait_heads(&s.url, sv, &[("c1", 5)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_keys_are_born_on_their_node_too() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = dir.path().join("deploy");
    let run = run_gridsync;
    let ports = [free_port(), free_port()];
    let mut lines = Vec::new();
    for id in ["s1", "c1"] {
        let out = deploy.join(id);
        let (ok, line, err) = run(&[
            "init",
            "--id",
            id,
            "--out",
            out.to_str().unwrap(),
            "--tls-host",
            "127.0.0.1",
        ]);
        assert!(ok, "{err}");
        assert!(out.join("tls/node.csr").exists() && out.join("tls/node.key").exists());
        lines.push(line);
    }
    let tls_key_before = std::fs::read(deploy.join("c1/tls/node.key")).unwrap();
    let tree = format!(
        "timezone = \"Asia/Shanghai\"\n\
         [[node]]\nid = \"s1\"\nname = \"s1\"\nlisten = \"127.0.0.1:{}\"\n{}\n\
         [[node]]\nid = \"c1\"\nname = \"c1\"\nparent = \"s1\"\nlisten = \"127.0.0.1:{}\"\n{}\n",
        ports[0], lines[0], ports[1], lines[1]
    );
    std::fs::write(dir.path().join("tree.toml"), &tree).unwrap();
    let tree_arg = dir.path().join("tree.toml");
    // A born-on-node key without its certificate request: refused, saying
    // what to run.
    std::fs::rename(deploy.join("c1/tls/node.csr"), dir.path().join("c1.csr")).unwrap();
    let (ok, _, err) = run(&[
        "provision",
        "--tls",
        "--tree",
        tree_arg.to_str().unwrap(),
        "--out",
        deploy.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--tls-host"), "{err}");
    std::fs::rename(dir.path().join("c1.csr"), deploy.join("c1/tls/node.csr")).unwrap();
    let (ok, _, err) = run(&[
        "provision",
        "--tls",
        "--force",
        "--tree",
        tree_arg.to_str().unwrap(),
        "--out",
        deploy.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(deploy.join("c1/tls/node.key")).unwrap(),
        tls_key_before,
        "provision replaced a TLS key born on the node"
    );
    trust_ca(&std::fs::read(deploy.join("ca.crt")).unwrap());
    let tokens = |id: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(deploy.join(id).join("tokens.toml")).unwrap())
            .unwrap()
    };
    for id in ["s1", "c1"] {
        set_sync(&deploy.join(id).join("config.toml"), FAST_SYNC);
    }
    let s1 = Server::start(&deploy.join("s1/config.toml"), &[]);
    let c1 = Server::start(&deploy.join("c1/config.toml"), &[]);
    let c1_tokens = tokens("c1");
    post_n(&c1.url, c1_tokens["reporter"].as_str().unwrap(), "born", 7).await;
    wait_heads(
        &s1.url,
        tokens("s1")["viewer"].as_str().unwrap(),
        &[("c1", 7)],
    )
    .await;
}
