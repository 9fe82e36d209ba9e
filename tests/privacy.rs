//! Personal data withheld upward (issue 8): by default a community keeps
//! the personal parts of its events (names, ID numbers, phones, plates,
//! notes) and sends each event up with only the salted digest of them,
//! which still verifies. After a run through a real tree (community →
//! street → district), no personal value posted at the community appears
//! in any file of the street's or the district's node directory, nor in
//! the sync frames above the community (captured by recording proxies and
//! unmasked); the district's log verifies, its numbers equal the
//! community's, and `personal=include` there says the part is held at the
//! community. The community's own files and frames show the same values
//! where they belong (the controls that the searches work).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridsync_suite::{
    get_json, gridsync_bin, post_events, provision_fast, set_url, wait_heads, wait_projection_idle,
    Server,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy that records every byte the client (a child) sends.
async fn recording_proxy(upstream: String) -> (String, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Recorded::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(outbound) = TcpStream::connect(&upstream).await else {
                continue;
            };
            // Each connection's client bytes are recorded as they pass (not
            // when the connection ends: the other direction may end first).
            let slot = {
                let mut all = rec.0.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        rec.0.lock().unwrap()[slot].extend_from_slice(&buf[..n]);
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = tokio::io::copy(&mut ro, &mut wi);
                tokio::select! { () = up => {}, _ = down => {} }
            });
        }
    });
    (url, seen)
}

/// The client-side bytes of every connection through a recording proxy.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

impl Recorded {
    /// The websocket payloads clients sent, unmasked, all connections.
    fn payloads(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| unmask_client_stream(c))
            .collect()
    }
}

/// The payloads of the websocket frames a client sent on one connection
/// (after its HTTP upgrade request), unmasked.
fn unmask_client_stream(bytes: &[u8]) -> Vec<u8> {
    let Some(start) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut at = start + 4;
    let mut out = Vec::new();
    while at + 2 <= bytes.len() {
        let masked = bytes[at + 1] & 0x80 != 0;
        let mut len = u64::from(bytes[at + 1] & 0x7f);
        at += 2;
        if len == 126 && at + 2 <= bytes.len() {
            len = u64::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
            at += 2;
        } else if len == 127 && at + 8 <= bytes.len() {
            len = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            at += 8;
        }
        let key = if masked && at + 4 <= bytes.len() {
            let k = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            at += 4;
            k
        } else {
            [0; 4]
        };
        let end = (at + len as usize).min(bytes.len());
        out.extend(
            bytes[at..end]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4]),
        );
        at = end;
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
}

fn event(i: u64) -> (Value, Vec<String>) {
    let name = format!("隐私甲乙{i:03}");
    let phone = format!("1397700{i:04}");
    let plate = format!("鲁B9{i:04}");
    let note = format!("私密备注-{i:03}-不外传");
    let at = format!("2020-01-28T{:02}:{:02}:00+08:00", 8 + i % 10, i % 60);
    let body = match i % 3 {
        0 => json!({
            "kind": "entry", "occurred_at": at, "grid": "g1", "recorded_by": "w1",
            "client_id": format!("p{i}"),
            "data": {"checkpoint": "cp1", "direction": "in", "subject": "vehicle",
                     "person": {"name": name, "phone": phone}, "plate": plate,
                     "from_region": "湖北省武汉市", "decision": "referred", "celsius": 36.5}
        }),
        1 => json!({
            "kind": "temperature", "occurred_at": at, "grid": "g1", "recorded_by": "w1",
            "client_id": format!("p{i}"),
            "data": {"person": {"name": name, "phone": phone}, "celsius": 38.2,
                     "site": "checkpoint", "action": "referred"}
        }),
        _ => json!({
            "kind": "visit", "occurred_at": at, "grid": "g1", "recorded_by": "w1",
            "client_id": format!("p{i}"),
            "data": {"household": format!("h-privacy-{i:03}"), "method": "in_person",
                     "quarantine": "started", "note": note}
        }),
    };
    let secrets = match i % 3 {
        0 => vec![name, phone, plate],
        1 => vec![name, phone],
        _ => vec![note],
    };
    (body, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_stays_at_the_community() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[("d", None), ("s1", Some("d")), ("c1", Some("s1"))],
    );
    let n = |id: &str| &tree.nodes[id];
    // Children reach their parents through recording proxies.
    let (s1_proxy, above_c1) = recording_proxy(n("s1").listen.clone()).await;
    let (d_proxy, above_s1) = recording_proxy(n("d").listen.clone()).await;
    set_url(&tree.topology, "s1", &s1_proxy);
    set_url(&tree.topology, "d", &d_proxy);
    let district = Server::start(&n("d").config, &[]);
    let street = Server::start(&n("s1").config, &[]);
    let community = Server::start(&n("c1").config, &[]);
    let mut secrets = Vec::new();
    let mut events = Vec::new();
    for i in 0..30 {
        let (e, s) = event(i);
        events.push(e);
        secrets.extend(s);
    }
    let (code, body) = post_events(
        &community.url,
        &n("c1").tokens.reporter,
        &json!({ "events": events }),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    wait_heads(&district.url, &n("d").tokens.viewer, &[("c1", 30)]).await;

    // At the district: the personal part is held at the community.
    let page = get_json(
        &format!("{}/v1/events?origin=c1&personal=include", district.url),
        &n("d").tokens.auditor,
    )
    .await;
    let first = &page["events"][0];
    assert_eq!(first["personal"], "held_at_origin", "{first}");
    assert!(first["personal_digest"].is_string(), "{first}");
    let own = get_json(
        &format!("{}/v1/events?origin=c1&personal=include", community.url),
        &n("c1").tokens.auditor,
    )
    .await;
    assert_eq!(own["events"][0]["personal"], "included");
    assert_eq!(own["events"][0]["data"]["person"]["name"], "隐私甲乙000");
    // The numbers are the same at every level.
    for (url, viewer) in [
        (&district.url, &n("d").tokens.viewer),
        (&community.url, &n("c1").tokens.viewer),
    ] {
        wait_projection_idle(url, viewer).await;
    }
    let q = "/v1/aggregates?node=c1&from=2020-01-28&to=2020-01-28";
    let at_d = get_json(&format!("{}{q}", district.url), &n("d").tokens.viewer).await;
    let at_c1 = get_json(&format!("{}{q}", community.url), &n("c1").tokens.viewer).await;
    assert_eq!(at_d["totals"], at_c1["totals"]);
    assert_eq!(at_d["totals"]["fevers"], 10, "{}", at_d["totals"]);

    let mut community = community;
    let mut street = street;
    let mut district = district;
    for s in [&mut community, &mut street, &mut district] {
        assert!(s.terminate());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No personal byte in the upper nodes' files, nor on the wire above
    // the community.
    let node_dir = |id: &str| n(id).config.parent().unwrap().to_owned();
    let mut upper = Vec::new();
    all_bytes(&node_dir("s1"), &mut upper);
    all_bytes(&node_dir("d"), &mut upper);
    let wire = [above_c1.payloads(), above_s1.payloads()].concat();
    for s in &secrets {
        assert!(
            !contains(&upper, s),
            "{s:?} found in the street's or district's files"
        );
        assert!(
            !contains(&wire, s),
            "{s:?} found in the sync frames above the community"
        );
    }
    // Controls: the searches find what is there.
    let mut lower = Vec::new();
    all_bytes(&node_dir("c1"), &mut lower);
    assert!(
        secrets.iter().all(|s| contains(&lower, s)),
        "the community keeps every value"
    );
    assert!(
        contains(&wire, "h-privacy-002"),
        "the frames were captured and unmasked"
    );
    assert!(
        contains(&upper, "h-privacy-002"),
        "the upper files hold the events"
    );
    // The district's log verifies.
    let out = std::process::Command::new(gridsync_bin())
        .args(["audit", "verify", "--data"])
        .arg(&n("d").data_dir)
        .arg("--topology")
        .arg(&tree.topology)
        .args(["--node", "d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Control: with `privacy.forward_personal = true` on the community and the
/// street, the same searches find the values at the district and on the
/// wire (so the test above can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_personal_data_is_seen_by_the_same_searches() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[("d", None), ("s1", Some("d")), ("c1", Some("s1"))],
    );
    let n = |id: &str| &tree.nodes[id];
    for id in ["c1", "s1"] {
        let text = std::fs::read_to_string(&n(id).config).unwrap();
        let mut t: toml::Table = toml::from_str(&text).unwrap();
        let mut privacy = toml::Table::new();
        privacy.insert("forward_personal".into(), toml::Value::Boolean(true));
        t.insert("privacy".into(), toml::Value::Table(privacy));
        std::fs::write(&n(id).config, toml::to_string(&t).unwrap()).unwrap();
    }
    let (s1_proxy, above_c1) = recording_proxy(n("s1").listen.clone()).await;
    set_url(&tree.topology, "s1", &s1_proxy);
    let mut district = Server::start(&n("d").config, &[]);
    let mut street = Server::start(&n("s1").config, &[]);
    let mut community = Server::start(&n("c1").config, &[]);
    let (e, secrets) = event(0);
    let (code, body) = post_events(&community.url, &n("c1").tokens.reporter, &e).await;
    assert_eq!(code, 200, "{body}");
    wait_heads(&district.url, &n("d").tokens.viewer, &[("c1", 1)]).await;
    let page = get_json(
        &format!("{}/v1/events?origin=c1&personal=include", district.url),
        &n("d").tokens.auditor,
    )
    .await;
    assert_eq!(page["events"][0]["personal"], "included");
    for s in [&mut community, &mut street, &mut district] {
        assert!(s.terminate());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut upper = Vec::new();
    all_bytes(n("d").config.parent().unwrap(), &mut upper);
    let wire = above_c1.payloads();
    for s in &secrets {
        assert!(contains(&upper, s), "{s:?} forwarded to the district");
        assert!(contains(&wire, s), "{s:?} on the wire");
    }
}
