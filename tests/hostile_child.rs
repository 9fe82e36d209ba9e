//! A hostile or broken child speaking the sync protocol to a real parent
//! process: unknown ids, wrong keys, someone else's child, a foreign
//! protocol version, a replayed session, forged signatures, events of an
//! origin outside its subtree, gaps, equivocation, garbage, text and
//! oversized frames or messages. Each is refused with its reason, the parent stays up,
//! and its log holds exactly the honest chunks (DESIGN.md §3 inv. 3, 4).
//! A bad chunk refuses only its origin: the session and the other origins'
//! chunks in the same batch go on; evidence is recorded once per
//! conflicting event however often it is offered.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use gridsync_model::{Chunk, ZERO_HASH};
use gridsync_protocol::auth;
use gridsync_protocol::{Frame, PROTOCOL_VERSION};
use gridsync_suite::{provision, visit_chunk, Server};
use serde_bytes::ByteBuf;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key_of(dir: &std::path::Path, id: &str) -> SigningKey {
    gridsync_model::keys::signing_key_from_hex(
        &std::fs::read_to_string(dir.join(id).join("node.key")).unwrap(),
    )
    .unwrap()
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/v1/sync", base.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, f: &Frame) {
    ws.send(Message::Binary(f.encode().into())).await.unwrap();
}

/// One binary message of `frames` × `size` zero bytes, sent as that many
/// websocket frames (send errors ignored: the parent may close first).
async fn send_in_frames(ws: &mut Ws, frames: usize, size: usize) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    for k in 0..frames {
        let code = if k == 0 { Data::Binary } else { Data::Continue };
        let part = WsFrame::message(vec![0u8; size], OpCode::Data(code), k + 1 == frames);
        if ws.send(Message::Frame(part)).await.is_err() {
            return;
        }
    }
}

/// The next protocol frame, or `None` when the parent closed the connection.
async fn recv(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("parent answers in time")
        {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b, 1 << 20).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn hello(node: &str, parent: &str, version: u32, nonce: [u8; 32]) -> Frame {
    Frame::Hello {
        version,
        node: node.into(),
        parent: parent.into(),
        nonce: ByteBuf::from(nonce.to_vec()),
        capabilities: vec![],
    }
}

/// Runs the handshake as `node` with `key` toward `s1`; returns the socket
/// after Welcome, or the refusal code.
async fn handshake(base: &str, node: &str, key: &SigningKey) -> Result<(Ws, Frame), String> {
    handshake_with(base, node, "s1", key).await
}

async fn handshake_with(
    base: &str,
    node: &str,
    parent: &str,
    key: &SigningKey,
) -> Result<(Ws, Frame), String> {
    let mut ws = connect(base).await;
    send(&mut ws, &hello(node, parent, PROTOCOL_VERSION, [7; 32])).await;
    let nonce = match recv(&mut ws).await {
        Some(Frame::Challenge { nonce, .. }) => nonce,
        Some(Frame::Refused { code, .. }) => return Err(code),
        other => panic!("unexpected {other:?}"),
    };
    let proof = auth::prove(key, "child", node, parent, &nonce, &[]);
    let auth_frame = Frame::Auth {
        proof: ByteBuf::from(proof.to_vec()),
    };
    send(&mut ws, &auth_frame).await;
    match recv(&mut ws).await {
        Some(w @ Frame::Welcome { .. }) => Ok((ws, w)),
        Some(Frame::Refused { code, .. }) => Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends one batch on a fresh authenticated session; returns `Ok(())` on
/// Ack or the rejection code.
async fn batch(
    base: &str,
    as_node: &str,
    key: &SigningKey,
    chunks: Vec<Chunk>,
) -> Result<(), String> {
    let (mut ws, _) = handshake(base, as_node, key).await.unwrap();
    let f = Frame::Batch {
        id: 1,
        chunks: chunks.iter().map(|c| ByteBuf::from(c.encode())).collect(),
        lag: vec![],
    };
    send(&mut ws, &f).await;
    match recv(&mut ws).await {
        Some(Frame::Ack { id: 1, .. }) => Ok(()),
        Some(Frame::Rejected { code, .. }) => {
            assert!(
                recv(&mut ws).await.is_none(),
                "connection closes after a rejection"
            );
            Err(code)
        }
        Some(Frame::OriginRefused { code, .. }) => {
            // Only that origin is refused: the batch is still acknowledged
            // and the session stays open.
            assert!(
                matches!(recv(&mut ws).await, Some(Frame::Ack { id: 1, .. })),
                "the batch is acknowledged after an origin refusal"
            );
            send(&mut ws, &Frame::Ping { lag: vec![] }).await;
            assert!(
                matches!(recv(&mut ws).await, Some(Frame::Pong)),
                "the session goes on after an origin refusal"
            );
            Err(code)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_children_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(
        dir.path(),
        &[
            ("d", None),
            ("s1", Some("d")),
            ("s2", Some("d")),
            ("s1-c1", Some("s1")),
            ("s2-c1", Some("s2")),
        ],
    );
    let keys = |id: &str| key_of(&tree.dir, id);
    let server = Server::start(&tree.nodes["s1"].config, &[]);
    let base = server.url.clone();
    let c1 = keys("s1-c1");

    // Identity.
    assert_eq!(
        handshake(&base, "stranger", &c1).await.err().as_deref(),
        Some("unknown_node")
    );
    assert_eq!(
        handshake(&base, "s2-c1", &keys("s2-c1"))
            .await
            .err()
            .as_deref(),
        Some("not_a_child")
    );
    assert_eq!(
        handshake(&base, "s1-c1", &keys("s2-c1"))
            .await
            .err()
            .as_deref(),
        Some("bad_proof")
    );
    let mut ws = connect(&base).await;
    send(&mut ws, &hello("s1-c1", "s1", 99, [1; 32])).await;
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "unsupported_version")
    );
    let mut ws = connect(&base).await;
    send(&mut ws, &hello("s1-c1", "s2", PROTOCOL_VERSION, [1; 32])).await;
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "wrong_parent")
    );

    // A replayed session: the Auth of an old session does not open a new one.
    let mut ws = connect(&base).await;
    send(&mut ws, &hello("s1-c1", "s1", PROTOCOL_VERSION, [2; 32])).await;
    let Some(Frame::Challenge { nonce, .. }) = recv(&mut ws).await else {
        panic!("challenge")
    };
    let old_auth = Frame::Auth {
        proof: ByteBuf::from(auth::prove(&c1, "child", "s1-c1", "s1", &nonce, &[]).to_vec()),
    };
    send(&mut ws, &old_auth).await;
    assert!(matches!(recv(&mut ws).await, Some(Frame::Welcome { .. })));
    drop(ws);
    let mut ws = connect(&base).await;
    send(&mut ws, &hello("s1-c1", "s1", PROTOCOL_VERSION, [2; 32])).await;
    assert!(matches!(recv(&mut ws).await, Some(Frame::Challenge { .. })));
    send(&mut ws, &old_auth).await;
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "bad_proof")
    );

    // The one honest chunk.
    let honest = visit_chunk("s1-c1", &c1, 1, 3, ZERO_HASH, "");
    batch(&base, "s1-c1", &c1, vec![honest.clone()])
        .await
        .unwrap();
    // An exact duplicate is acknowledged and ignored.
    batch(&base, "s1-c1", &c1, vec![honest.clone()])
        .await
        .unwrap();

    // Content.
    let mut forged = visit_chunk("s1-c1", &c1, 4, 5, honest.head.hash, "");
    forged.head.signature[10] ^= 1;
    assert_eq!(
        batch(&base, "s1-c1", &c1, vec![forged])
            .await
            .err()
            .as_deref(),
        Some("bad_signature")
    );
    let other_key = SigningKey::from_bytes(&[42; 32]);
    let wrong_signer = visit_chunk("s1-c1", &other_key, 4, 5, honest.head.hash, "");
    assert_eq!(
        batch(&base, "s1-c1", &c1, vec![wrong_signer])
            .await
            .err()
            .as_deref(),
        Some("bad_signature")
    );
    let foreign = visit_chunk("s2-c1", &keys("s2-c1"), 1, 2, ZERO_HASH, "");
    assert_eq!(
        batch(&base, "s1-c1", &c1, vec![foreign])
            .await
            .err()
            .as_deref(),
        Some("foreign_origin")
    );
    let gap = visit_chunk("s1-c1", &c1, 7, 8, [9; 32], "");
    assert_eq!(
        batch(&base, "s1-c1", &c1, vec![gap]).await.err().as_deref(),
        Some("gap")
    );
    let mut tampered = visit_chunk("s1-c1", &c1, 4, 5, honest.head.hash, "");
    let n = tampered.events[0].envelope.len();
    tampered.events[0].envelope[n - 3] ^= 1;
    assert!(batch(&base, "s1-c1", &c1, vec![tampered]).await.is_err());
    let fork = visit_chunk("s1-c1", &c1, 1, 3, ZERO_HASH, "-other");
    for _ in 0..3 {
        // Offered again and again (a child retrying): one evidence record.
        assert_eq!(
            batch(&base, "s1-c1", &c1, vec![fork.clone()])
                .await
                .err()
                .as_deref(),
            Some("equivocation")
        );
    }

    // Garbage, text and oversized frames.
    let (mut ws, _) = handshake(&base, "s1-c1", &c1).await.unwrap();
    ws.send(Message::Binary(vec![0xc1, 0xff, 0x00, 0x13].into()))
        .await
        .unwrap();
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "malformed")
    );
    let (mut ws, _) = handshake(&base, "s1-c1", &c1).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "malformed")
    );
    let (mut ws, _) = handshake(&base, "s1-c1", &c1).await.unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; 3 << 20].into())).await;
    assert!(
        recv(&mut ws).await.is_none(),
        "an oversized frame ends the connection"
    );
    // The same size in small continuation frames: the limit is on the
    // message the frames make, not on each frame. (Control: a message of
    // four such frames is taken whole and refused as what it is.)
    let (mut ws, _) = handshake(&base, "s1-c1", &c1).await.unwrap();
    send_in_frames(&mut ws, 4, 64 << 10).await;
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "malformed")
    );
    let (mut ws, _) = handshake(&base, "s1-c1", &c1).await.unwrap();
    send_in_frames(&mut ws, 48, 64 << 10).await;
    assert!(
        recv(&mut ws).await.is_none(),
        "an oversized message in small frames ends the connection"
    );
    let mut ws = connect(&base).await;
    let f = Frame::Batch {
        id: 1,
        chunks: vec![ByteBuf::from(honest.encode())],
        lag: vec![],
    };
    send(&mut ws, &f).await;
    assert!(
        matches!(recv(&mut ws).await, Some(Frame::Refused { code, .. }) if code == "protocol"),
        "batch before auth"
    );

    // Still up; the log holds only the honest chunk; the fork is recorded.
    let http = gridsync_suite::http_client();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let st: serde_json::Value = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(&tree.nodes["s1"].tokens.viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["log"]["events"], 3, "{st}");
    assert_eq!(st["heads"]["s1-c1"]["seq"], 3);
    assert_eq!(st["heads"]["s1-c1"]["hash"], hex::encode(honest.head.hash));
    assert!(st["heads"].get("s2-c1").is_none());
    let eq = st["equivocations"].as_array().unwrap();
    assert_eq!(eq.len(), 1, "{st}");
    assert_eq!(eq[0]["origin"], "s1-c1");
    // The parent's log still verifies from scratch after all that.
    let config = tree.nodes["s1"].config.clone();
    let mut server = server;
    tokio::task::spawn_blocking(move || {
        assert!(server.terminate());
        drop(Server::start(&config, &[]));
    })
    .await
    .unwrap();

    // At the district: street s1 sends a batch mixing an origin outside its
    // subtree with its own community's chunk. Only the foreign origin is
    // refused; the other chunk is stored and the session goes on.
    let district = Server::start(&tree.nodes["d"].config, &[]);
    let s1 = keys("s1");
    let (mut ws, _) = handshake_with(&district.url, "s1", "d", &s1).await.unwrap();
    let foreign = visit_chunk("s2-c1", &keys("s2-c1"), 1, 2, ZERO_HASH, "");
    let f = Frame::Batch {
        id: 1,
        chunks: vec![
            ByteBuf::from(foreign.encode()),
            ByteBuf::from(honest.encode()),
        ],
        lag: vec![],
    };
    send(&mut ws, &f).await;
    match recv(&mut ws).await {
        Some(Frame::OriginRefused { origin, code, .. }) => {
            assert_eq!(
                (origin.as_str(), code.as_str()),
                ("s2-c1", "foreign_origin")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    match recv(&mut ws).await {
        Some(Frame::Ack { id: 1, heads }) => {
            assert_eq!(heads.len(), 1);
            assert_eq!((heads[0].origin.as_str(), heads[0].seq), ("s1-c1", 3));
        }
        other => panic!("unexpected {other:?}"),
    }
    let more = visit_chunk("s1-c1", &c1, 4, 5, honest.head.hash, "");
    let f = Frame::Batch {
        id: 2,
        chunks: vec![
            ByteBuf::from(foreign.encode()),
            ByteBuf::from(more.encode()),
        ],
        lag: vec![],
    };
    send(&mut ws, &f).await;
    match recv(&mut ws).await {
        Some(Frame::Ack { id: 2, heads }) => {
            assert_eq!((heads[0].origin.as_str(), heads[0].seq), ("s1-c1", 5));
        }
        other => {
            panic!("a refused origin is skipped quietly for the rest of the session: {other:?}")
        }
    }
    let st: serde_json::Value = http
        .get(format!("{}/v1/status", district.url))
        .bearer_auth(&tree.nodes["d"].tokens.viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["heads"]["s1-c1"]["seq"], 5, "{st}");
    assert!(st["heads"].get("s2-c1").is_none(), "{st}");
}

/// Sockets that never authenticate hold no connection slot and are dropped
/// after the handshake deadline (review F8): with one connection slot and
/// 40 idle unauthenticated sockets open, the real child still connects and
/// its events arrive; more sockets than `handshakes_max` are refused at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_sockets_hold_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let tree = gridsync_suite::provision_fast(dir.path(), &[("s1", None), ("c1", Some("s1"))]);
    gridsync_suite::set_sync(
        &tree.nodes["s1"].config,
        &[
            ("connections_max", 1),
            ("handshakes_max", 50),
            ("handshake_timeout_ms", 1500),
        ],
    );
    let street = Server::start(&tree.nodes["s1"].config, &[]);
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect(&street.url).await);
    }
    // Past handshakes_max: refused at the upgrade.
    let url = format!("{}/v1/sync", street.url.replacen("http://", "ws://", 1));
    let mut refused = 0;
    let mut extra = Vec::new();
    for _ in 0..20 {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => extra.push(ws),
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused >= 10,
        "only {refused} of 20 sockets past the limit were refused"
    );
    // The real child connects through all that and replicates.
    let community = Server::start(&tree.nodes["c1"].config, &[]);
    let events: Vec<serde_json::Value> = (0..3)
        .map(|i| gridsync_suite::sample_event(i, &format!("k{i}")))
        .collect();
    let (code, body) = gridsync_suite::post_events(
        &community.url,
        &tree.nodes["c1"].tokens.reporter,
        &serde_json::json!({ "events": events }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    gridsync_suite::wait_heads(&street.url, &tree.nodes["s1"].tokens.viewer, &[("c1", 3)]).await;
    // The idle sockets are dropped once their handshake time is up.
    let started = std::time::Instant::now();
    assert!(
        recv(&mut idle[0]).await.is_none(),
        "an idle socket is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the handshake deadline, not later"
    );
}

use gridsync_suite::edit_topology_node as edit_topology;

fn hex_pub(k: &SigningKey) -> String {
    gridsync_model::keys::verifying_key_to_hex(&k.verifying_key())
}

/// A rotated-out key keeps its chunks verifying but can neither open a
/// session nor extend the chain; a retired node cannot connect. Negative
/// control: a rotation that drops the old key (no `previous_keys`) makes the
/// parent's own log unverifiable, so the record is what keeps history valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_out_keys_and_retired_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(
        dir.path(),
        &[("s1", None), ("s1-c1", Some("s1")), ("s1-c2", Some("s1"))],
    );
    let old = key_of(&tree.dir, "s1-c1");
    let new = SigningKey::from_bytes(&[7; 32]);
    let mut server = Server::start(&tree.nodes["s1"].config, &[]);
    let base = server.url.clone();
    let first = visit_chunk("s1-c1", &old, 1, 3, ZERO_HASH, "");
    batch(&base, "s1-c1", &old, vec![first.clone()])
        .await
        .unwrap();
    assert!(server.terminate());
    let listen = tree.nodes["s1"].listen.clone();

    // Negative control: the new key replaces the old without a record.
    edit_topology(&tree.topology, "s1-c1", |n| {
        n.insert("public_key".into(), hex_pub(&new).into());
    });
    let Err((_, stderr)) = Server::try_start(&tree.nodes["s1"].config, &["--listen", &listen])
    else {
        panic!("a log signed with a dropped key opened");
    };
    assert!(stderr.contains("s1-c1"), "{stderr}");

    // The rotation as recorded: the old key up to seq 3.
    edit_topology(&tree.topology, "s1-c1", |n| {
        let mut prev = toml::Table::new();
        prev.insert("public_key".into(), hex_pub(&old).into());
        prev.insert("until_seq".into(), 3.into());
        n.insert(
            "previous_keys".into(),
            toml::Value::Array(vec![toml::Value::Table(prev)]),
        );
    });
    edit_topology(&tree.topology, "s1-c2", |n| {
        n.insert("retired".into(), true.into());
    });
    let server = Server::start(&tree.nodes["s1"].config, &["--listen", &listen]);
    let base = server.url.clone();
    assert_eq!(
        handshake(&base, "s1-c1", &old).await.err().as_deref(),
        Some("bad_proof"),
        "the old key opened a session"
    );
    let extended_by_old = visit_chunk("s1-c1", &old, 4, 5, first.head.hash, "");
    assert_eq!(
        batch(&base, "s1-c1", &new, vec![extended_by_old])
            .await
            .err()
            .as_deref(),
        Some("bad_signature"),
        "the old key extended the chain"
    );
    let extended_by_new = visit_chunk("s1-c1", &new, 4, 5, first.head.hash, "");
    batch(&base, "s1-c1", &new, vec![extended_by_new])
        .await
        .unwrap();
    assert_eq!(
        handshake(&base, "s1-c2", &key_of(&tree.dir, "s1-c2"))
            .await
            .err()
            .as_deref(),
        Some("retired")
    );
    let st: serde_json::Value = gridsync_suite::get_json(
        &format!("{base}/v1/status"),
        &tree.nodes["s1"].tokens.viewer,
    )
    .await;
    assert_eq!(st["heads"]["s1-c1"]["seq"], 5, "{st}");
}

/// A child's lag reports are kept per origin (a parent that says
/// `lag-changes-v1` is sent only the origins whose report changed), and
/// only for origins the topology knows: a child naming thousands of made-up
/// origins grows nothing at its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reports_are_merged_per_origin_and_bounded_by_the_topology() {
    use gridsync_protocol::{LagReport, CAPABILITY_LAG_CHANGES_V1};
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("s1", None), ("s1-c1", Some("s1"))]);
    let server = Server::start(&tree.nodes["s1"].config, &[]);
    let base = server.url.clone();
    let key = key_of(&tree.dir, "s1-c1");

    let mut ws = connect(&base).await;
    send(&mut ws, &hello("s1-c1", "s1", PROTOCOL_VERSION, [3; 32])).await;
    match recv(&mut ws).await {
        Some(Frame::Challenge { capabilities, .. }) => assert!(
            capabilities.iter().any(|c| c == CAPABILITY_LAG_CHANGES_V1),
            "{capabilities:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }

    let (mut ws, _) = handshake(&base, "s1-c1", &key).await.unwrap();
    let report = |origin: &str, seq: u64| LagReport {
        origin: origin.into(),
        seq,
        oldest_missing_ms: Some(1_580_175_000_000),
    };
    let mut lag = vec![report("s1-c1", 7)];
    lag.extend((0..5_000).map(|i| report(&format!("made-up-{i}"), 1)));
    let children = |st: &serde_json::Value| st["children_status"][0].clone();
    let status = || async {
        gridsync_suite::get_json(
            &format!("{base}/v1/status"),
            &tree.nodes["s1"].tokens.viewer,
        )
        .await
    };
    ping(&mut ws, lag).await;
    let child = children(&status().await);
    assert_eq!(child["id"], "s1-c1", "{child}");
    assert_eq!(
        child["heads"],
        serde_json::json!({ "s1-c1": 7 }),
        "only origins of the topology are kept"
    );
    assert_eq!(child["lag_events"], 7, "{child}");
    // A report without the origin keeps its last one (merged, not replaced).
    ping(&mut ws, vec![]).await;
    assert_eq!(
        children(&status().await)["heads"],
        serde_json::json!({ "s1-c1": 7 })
    );
    ping(&mut ws, vec![report("s1-c1", 9)]).await;
    let child = children(&status().await);
    assert_eq!(child["heads"], serde_json::json!({ "s1-c1": 9 }), "{child}");
    assert_eq!(child["lag_events"], 9, "{child}");
}

/// Sends a ping with `lag` and waits for the pong.
async fn ping(ws: &mut Ws, lag: Vec<gridsync_protocol::LagReport>) {
    send(ws, &Frame::Ping { lag }).await;
    assert!(matches!(recv(ws).await, Some(Frame::Pong)));
}
