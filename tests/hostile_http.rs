//! Slow and greedy HTTP clients (issue 8, review F7): 1,000 sockets that
//! send half a request's headers and then nothing hold no request slot,
//! are closed after `limits.header_read_timeout_s`, and do not keep a
//! legitimate client out; the node's memory stays bounded (RSS measured);
//! connections past `limits.connections_per_ip_max` are closed at once.

use std::time::{Duration, Instant};

use gridsync_suite::{provision, rss_kib, set_limits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server has closed the socket (read returns end of stream
/// or an error) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer (e.g. 408), then the close
        }
    }
}

async fn healthz(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("a legitimate client is answered")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let config = &tree.nodes["c1"].config;
    set_limits(
        config,
        &[
            ("header_read_timeout_s", 2),
            ("connections_per_ip_max", 1_100),
        ],
    );
    let mut node = Server::start(config, &[]);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let pid = node.child.id();
    let rss_before = rss_kib(pid);

    // 1,000 slowloris sockets: half the headers, then silence.
    let mut slow = Vec::new();
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Len")
            .await
            .unwrap();
        slow.push(s);
    }
    let answer = healthz(&addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rss_during = rss_kib(pid);
    assert!(
        rss_during < rss_before + 100 * 1024,
        "1,000 slow sockets cost {} KiB of RSS",
        rss_during - rss_before
    );
    // They are closed once their time to send headers is up.
    let started = Instant::now();
    for s in slow.iter_mut().step_by(50) {
        assert!(
            closed_within(s, Duration::from_secs(6)).await,
            "a slow socket was kept open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    let answer = healthz(&addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(slow);
    eprintln!("RSS: {rss_before} KiB at rest, {rss_during} KiB with 1,000 slow sockets");
    assert!(node.terminate());

    // Past the per-IP cap, connections are closed at once.
    set_limits(config, &[("connections_per_ip_max", 50)]);
    let node = Server::start(config, &[]);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 30,
        "only {closed} of 80 sockets past a cap of 50 were closed"
    );
}

/// Reads an HTTP response's status line (the socket stays open).
async fn status_line(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// 1,300 websocket upgrades to `/v1/sync` that never say hello, slow
/// bodies, oversized bodies without a token: the node answers legitimate
/// clients throughout, memory stays bounded, the silent sockets are
/// dropped after the handshake deadline, nothing is stored, and a real
/// child then connects and replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sync_sockets_and_slow_bodies_are_bounded() {
    // 1,300 sockets held here at once: past a stock soft limit of 1,024.
    gridsync_node::open_files::raise();
    let dir = tempfile::tempdir().unwrap();
    let tree = gridsync_suite::provision_fast(dir.path(), &[("s1", None), ("c1", Some("s1"))]);
    let config = &tree.nodes["s1"].config;
    set_limits(
        config,
        &[("connections_per_ip_max", 1_400), ("request_timeout_s", 2)],
    );
    gridsync_suite::set_sync(config, &[("handshake_timeout_ms", 1_500)]);
    set_limits(
        &tree.nodes["c1"].config,
        &[("request_timeout_s", 2), ("requests_per_token_max", 2)],
    );
    let mut node = Server::start(config, &[]);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let pid = node.child.id();
    let rss_before = rss_kib(pid);

    let upgrade = format!(
        "GET /v1/sync HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut silent = Vec::new();
    let (mut upgraded, mut refused) = (0, 0);
    for _ in 0..1_300 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(upgrade.as_bytes()).await.unwrap();
        let line = status_line(&mut s).await;
        if line.contains(" 101 ") {
            upgraded += 1;
            silent.push(s);
        } else {
            assert!(line.contains(" 503 "), "{line}");
            refused += 1;
        }
    }
    let answer = healthz(&addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rss_during = rss_kib(pid);
    eprintln!(
        "sync sockets: {upgraded} upgraded, {refused} refused (handshakes_max); \
         RSS {rss_before} KiB at rest, {rss_during} KiB during"
    );
    // `sync.handshakes_max` (1,024 by default) held at once, no more.
    assert!(
        upgraded <= 1_024,
        "{upgraded} silent handshakes held at once"
    );
    assert!(refused >= 250, "only {refused} refused");
    assert!(
        rss_during < rss_before + 100 * 1024,
        "1,300 silent sync sockets cost {} KiB of RSS",
        rss_during - rss_before
    );
    // Dropped at the handshake deadline.
    for s in silent.iter_mut().step_by(16) {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a silent sync socket was kept past its deadline"
        );
    }

    // Bodies without a token are refused from the headers, before a byte
    // is read: over the body limit 413, under it 401.
    for (length, want) in [(104_857_600, " 413 "), (1_000_000, " 401 ")] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {length}\r\n\r\n{{\"events\":["
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let line = status_line(&mut s).await;
        assert!(
            line.contains(want),
            "{length} bytes without a token: {line}"
        );
    }

    // A real child connects and replicates afterwards.
    let c1 = Server::start(&tree.nodes["c1"].config, &[]);
    let events: Vec<serde_json::Value> = (0..3)
        .map(|i| gridsync_suite::sample_event(i, &format!("after-{i}")))
        .collect();
    let (code, body) = gridsync_suite::post_events(
        &c1.url,
        &tree.nodes["c1"].tokens.reporter,
        &serde_json::json!({ "events": events }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    gridsync_suite::wait_heads(&node.url, &tree.nodes["s1"].tokens.viewer, &[("c1", 3)]).await;
    let st = gridsync_suite::get_json(
        &format!("{}/v1/status", node.url),
        &tree.nodes["s1"].tokens.viewer,
    )
    .await;
    assert_eq!(
        st["log"]["events"], 3,
        "only the child's events are stored: {st}"
    );

    // Slow bodies with a valid token: they hold the token's request slots
    // (limits.requests_per_token_max = 2 here), so a third request with the
    // same token is answered 429 at once while another token is served;
    // each slow one is answered 408 (or closed) when the request timeout is
    // up, and nothing is stored.
    let token = &tree.nodes["c1"].tokens.reporter;
    let c1_addr = c1.url.trim_start_matches("http://").to_owned();
    let slow_post = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"events\":["
    );
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&c1_addr).await.unwrap();
        s.write_all(slow_post.as_bytes()).await.unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = gridsync_suite::post_events(
        &c1.url,
        token,
        &serde_json::json!({ "events": [gridsync_suite::sample_event(9, "third")] }),
    )
    .await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let st = gridsync_suite::get_json(
        &format!("{}/v1/status", c1.url),
        &tree.nodes["c1"].tokens.viewer,
    )
    .await;
    assert_eq!(st["node"], "c1", "another token is served: {st}");
    for s in &mut slow {
        let line = status_line(s).await;
        assert!(
            line.contains(" 408 ") || line.is_empty(),
            "a slow body was not cut off: {line:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let st = gridsync_suite::get_json(
        &format!("{}/v1/status", c1.url),
        &tree.nodes["c1"].tokens.viewer,
    )
    .await;
    assert_eq!(
        st["log"]["events"], 3,
        "the cut-off body stored nothing: {st}"
    );
    assert!(node.terminate());
}
