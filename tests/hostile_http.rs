//! Slow and greedy HTTP clients (issue 8, review F7): 1,000 sockets that
//! send half a request's headers and then nothing hold no request slot,
//! are closed after `limits.header_read_timeout_s`, and do not keep a
//! legitimate client out; the node's memory stays bounded (RSS measured);
//! connections past `limits.connections_per_ip_max` are closed at once.

use std::time::{Duration, Instant};

use gridsync_suite::{provision, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn set_limits(config: &std::path::Path, limits: &[(&str, i64)]) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut t: toml::Table = toml::from_str(&text).unwrap();
    let l = t
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap();
    for (k, v) in limits {
        l.insert((*k).into(), toml::Value::Integer(*v));
    }
    std::fs::write(config, toml::to_string(&t).unwrap()).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

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
