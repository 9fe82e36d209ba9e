//! The HTTP API of a real `gridsync serve` process: the happy paths
//! (idempotent posts, batches, paging, filters, personal data) and every
//! kind of bad input, each with its status and error code, after which the
//! node still serves and its log is unchanged (DESIGN.md §3 invariant 4).

use gridsync_suite::{provision, sample_event, wait_projection_idle, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Node {
    http: Client,
    url: String,
    reporter: String,
    auditor: String,
    viewer: String,
}

impl Node {
    async fn post(&self, token: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post_json(&self, v: &Value) -> (StatusCode, Value) {
        self.post(&self.reporter, serde_json::to_vec(v).unwrap())
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/events?limit=7&cursor={c}"),
                None => "/v1/events?limit=7".to_owned(),
            };
            let (s, page) = self.get(&path, &self.auditor).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page.get("next").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

fn node(server: &Server, files: &gridsync_suite::NodeFiles) -> Node {
    Node {
        http: gridsync_suite::http_client(),
        url: server.url.clone(),
        reporter: files.tokens.reporter.clone(),
        auditor: files.tokens.auditor.clone(),
        viewer: files.tokens.viewer.clone(),
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_paths() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("street", None), ("c1", Some("street"))]);
    let server = Server::start(&tree.nodes["c1"].config, &[]);
    let n = node(&server, &tree.nodes["c1"]);

    // One event, then its retry.
    let (s, r) = n.post_json(&sample_event(1, "one")).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["seq"], 1);
    assert_eq!(r["results"][0]["duplicate"], false);
    let (_, again) = n.post_json(&sample_event(1, "one")).await;
    assert_eq!(again["results"][0]["duplicate"], true);
    assert_eq!(again["results"][0]["hash"], r["results"][0]["hash"]);

    // A full batch, in request order.
    let batch: Vec<Value> = (0..1000)
        .map(|i| sample_event(i, &format!("b{i}")))
        .collect();
    let (s, r) = n.post_json(&json!({ "events": batch })).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let seqs: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (2..=1001).collect::<Vec<_>>());

    // Paging through everything returns each seq once, in order, chained.
    let all = n.all_events().await;
    assert_eq!(all.len(), 1001);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        if i > 0 {
            assert_eq!(e["prev"], all[i - 1]["hash"]);
        }
        let has_personal = e["kind"] == "entry" || e["kind"] == "temperature";
        let want = if has_personal { "withheld" } else { "none" };
        assert_eq!(
            e["personal"], want,
            "personal data is withheld unless asked: {e}"
        );
        assert!(e["data"].get("person").is_none());
    }
    // Filters: origin + after_seq, kind, time range; JSON Lines.
    let (_, page) = n
        .get("/v1/events?origin=c1&after_seq=995&limit=100", &n.auditor)
        .await;
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![996, 997, 998, 999, 1000, 1001]);
    assert!(page.get("next").is_none());
    let (_, page) = n.get("/v1/events?kind=visit&limit=1000", &n.auditor).await;
    assert!(page["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] == "visit"));
    assert_eq!(page["events"].as_array().unwrap().len(), 250);
    let (_, page) = n
        .get(
            "/v1/events?from=2020-01-21T00:00:00%2B08:00&to=2020-01-22T00:00:00%2B08:00&limit=1000",
            &n.auditor,
        )
        .await;
    let evs = page["events"].as_array().unwrap();
    assert!(!evs.is_empty());
    assert!(evs
        .iter()
        .all(|e| e["occurred_at"].as_str().unwrap().starts_with("2020-01-21")));
    let (_, page) = n
        .get("/v1/events?origin=c1&limit=1&personal=include", &n.auditor)
        .await;
    assert_eq!(page["events"][0]["personal"], "included");
    assert_eq!(page["events"][0]["data"]["person"]["name"], "李四");
    let text = n
        .http
        .get(format!("{}/v1/events?format=jsonl&limit=5", n.url))
        .bearer_auth(&n.auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 5);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }

    // A correction of an existing event is accepted.
    let corr = json!({
        "kind": "correction", "occurred_at": "2020-01-28T10:00:00+08:00", "grid": "g1",
        "recorded_by": "w1", "client_id": "fix-1",
        "data": {"target": {"origin": "c1", "seq": 3}, "action": "void", "reason": "entered twice"}
    });
    let (s, r) = n.post_json(&corr).await;
    assert_eq!(s, StatusCode::OK, "{r}");

    // Status and health (the projection caught up first: its
    // `log.projected_chunks` follows commits asynchronously).
    wait_projection_idle(&server.url, &n.viewer).await;
    let (s, st) = n.get("/v1/status", &n.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["heads"]["c1"]["seq"], 1002);
    assert_eq!(st["role"], "community");
    assert_eq!(st["parent"], "street");
    assert!(st["children_status"].is_array(), "{st}");
    assert!(st["parent_link"]["acked"].is_object(), "{st}");
    // Brief: the same counters, without what grows with the origins held
    // and the children.
    let (s, brief) = n.get("/v1/status?brief=true", &n.viewer).await;
    assert_eq!(s, StatusCode::OK, "{brief}");
    assert_eq!(brief["log"], st["log"]);
    assert_eq!(brief["posting"], st["posting"]);
    assert_eq!(
        brief["parent_link"]["lag_events"],
        st["parent_link"]["lag_events"]
    );
    for left_out in [
        &brief["heads"],
        &brief["children_status"],
        &brief["parent_link"]["acked"],
    ] {
        assert!(left_out.is_null(), "left out of a brief status: {brief}");
    }
    let (s, full) = n.get("/v1/status?brief=false", &n.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(full["heads"], st["heads"]);
    let (s, v) = n.get("/v1/status?short=1", &n.viewer).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_query"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("brief=true|false"),
        "{v}"
    );
    let health = n
        .http
        .get(format!("{}/healthz", n.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("street", None), ("c1", Some("street"))]);
    let server = Server::start(&tree.nodes["c1"].config, &[]);
    let street_server = Server::start(&tree.nodes["street"].config, &[]);
    let n = node(&server, &tree.nodes["c1"]);
    let street = node(&street_server, &tree.nodes["street"]);

    for i in 0..3 {
        let (s, _) = n.post_json(&sample_event(i, &format!("ok{i}"))).await;
        assert_eq!(s, StatusCode::OK);
    }
    // The projection caught up, so `log.projected_chunks` stays put.
    wait_projection_idle(&server.url, &n.viewer).await;
    let (_, status_before) = n.get("/v1/status", &n.viewer).await;
    let events_before = n.all_events().await;

    let valid = sample_event(1, "fresh");
    let with = |path: &[&str], v: Value| {
        let mut e = valid.clone();
        let mut at = &mut e;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = v;
        e
    };
    let without = |field: &str| {
        let mut e = valid.clone();
        e.as_object_mut().unwrap().remove(field);
        e
    };
    let mut mixed = vec![valid.clone(), with(&["data", "celsius"], json!(99))];
    mixed[1]["client_id"] = json!("other");
    let big_batch: Vec<Value> = (0..1001)
        .map(|i| sample_event(i, &format!("x{i}")))
        .collect();
    let reused = {
        let mut e = sample_event(2, "ok1");
        e["grid"] = json!("different");
        e
    };

    // (what, token, body, status, code, field)
    type Case<'a> = (&'a str, String, Vec<u8>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed json", n.reporter.clone(), b"{\"kind\": ".to_vec(), 400, "malformed_json", None),
        ("msgpack garbage", n.reporter.clone(), vec![0x93, 0x01, 0xc1, 0xff, 0x00], 400, "malformed_json", None),
        ("not an object", n.reporter.clone(), b"[1, 2]".to_vec(), 400, "invalid_body", None),
        ("wrong type", n.reporter.clone(), serde_json::to_vec(&with(&["data", "celsius"], json!("hot"))).unwrap(), 400, "schema_violation", Some("data.celsius")),
        ("missing field", n.reporter.clone(), serde_json::to_vec(&without("grid")).unwrap(), 400, "schema_violation", Some("grid")),
        ("missing data field", n.reporter.clone(), serde_json::to_vec(&with(&["data"], json!({"person": {"name": "x"}, "site": "home"}))).unwrap(), 400, "schema_violation", Some("data.celsius")),
        ("unknown field", n.reporter.clone(), serde_json::to_vec(&with(&["seq"], json!(5))).unwrap(), 400, "schema_violation", Some("seq")),
        ("unknown kind", n.reporter.clone(), serde_json::to_vec(&with(&["kind"], json!("weather"))).unwrap(), 400, "unknown_kind", Some("kind")),
        ("unsupported schema", n.reporter.clone(), serde_json::to_vec(&with(&["schema"], json!(7))).unwrap(), 400, "unsupported_schema", Some("schema")),
        ("temperature too high", n.reporter.clone(), serde_json::to_vec(&with(&["data", "celsius"], json!(45.1))).unwrap(), 400, "schema_violation", Some("data.celsius")),
        ("temperature too low", n.reporter.clone(), serde_json::to_vec(&with(&["data", "celsius"], json!(12))).unwrap(), 400, "schema_violation", Some("data.celsius")),
        ("bad enum", n.reporter.clone(), serde_json::to_vec(&with(&["data", "site"], json!("beach"))).unwrap(), 400, "schema_violation", Some("data.site")),
        ("string too long", n.reporter.clone(), serde_json::to_vec(&with(&["data", "person", "name"], json!("名".repeat(65)))).unwrap(), 400, "schema_violation", Some("data.person.name")),
        ("bad timestamp", n.reporter.clone(), serde_json::to_vec(&with(&["occurred_at"], json!("28/01/2020 09:30:00 +0800"))).unwrap(), 400, "invalid_timestamp", Some("occurred_at")),
        ("future timestamp", n.reporter.clone(), serde_json::to_vec(&with(&["occurred_at"], json!("2099-01-01T00:00:00+08:00"))).unwrap(), 400, "future_timestamp", Some("occurred_at")),
        ("foreign origin", n.reporter.clone(), serde_json::to_vec(&with(&["origin"], json!("c9"))).unwrap(), 400, "origin_mismatch", Some("origin")),
        ("empty batch", n.reporter.clone(), b"{\"events\": []}".to_vec(), 400, "empty_batch", Some("events")),
        ("batch too large", n.reporter.clone(), serde_json::to_vec(&json!({"events": big_batch})).unwrap(), 400, "batch_too_large", Some("events")),
        ("mixed batch", n.reporter.clone(), serde_json::to_vec(&json!({"events": mixed})).unwrap(), 400, "schema_violation", Some("data.celsius")),
        ("correction of nothing", n.reporter.clone(), serde_json::to_vec(&json!({
            "kind": "correction", "occurred_at": "2020-01-28T10:00:00+08:00", "grid": "g1", "recorded_by": "w1",
            "client_id": "fix-x", "data": {"target": {"origin": "c1", "seq": 999}, "action": "void", "reason": "r"}})).unwrap(),
            400, "unknown_target", Some("data.target")),
        ("correction without replacement", n.reporter.clone(), serde_json::to_vec(&json!({
            "kind": "correction", "occurred_at": "2020-01-28T10:00:00+08:00", "grid": "g1", "recorded_by": "w1",
            "client_id": "fix-y", "data": {"target": {"origin": "c1", "seq": 1}, "action": "replace", "reason": "r"}})).unwrap(),
            400, "schema_violation", Some("data.replacement")),
        ("client_id reused", n.reporter.clone(), serde_json::to_vec(&reused).unwrap(), 409, "client_id_reused", Some("client_id")),
        ("bad token", "gs-reporter-nope".to_owned(), serde_json::to_vec(&valid).unwrap(), 401, "unauthorized", None),
        ("wrong role", n.viewer.clone(), serde_json::to_vec(&valid).unwrap(), 403, "forbidden", None),
        ("auditor may not post", n.auditor.clone(), serde_json::to_vec(&valid).unwrap(), 403, "forbidden", None),
    ];
    for (what, token, body, status, want_code, field) in cases {
        let (s, v) = n.post(&token, body).await;
        assert_eq!(s.as_u16(), status, "{what}: {v}");
        assert_eq!(code(&v), want_code, "{what}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{what}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
    }
    // An oversized body is refused from its Content-Length, before it is
    // read. (Sent raw: a client still uploading 9 MiB may see the early
    // close before the answer, which would make the check flaky.)
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = n.url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"events\": [",
            n.reporter,
            9 * 1024 * 1024
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut resp))
            .await;
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 413"), "oversized body: {text}");
        assert!(
            text.contains("\"body_too_large\""),
            "oversized body: {text}"
        );
    }

    // Without a valid token the body is never read: the answer comes from
    // the headers while the client is still "uploading" a large body.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = n.url.trim_start_matches("http://").to_owned();
        for auth in ["", "Authorization: Bearer gs-reporter-wrong\r\n"] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"events\": [",
                4 * 1024 * 1024
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answered without waiting for the body")
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..got]);
            assert!(text.starts_with("HTTP/1.1 401"), "{auth:?}: {text}");
        }
    }

    // The mixed batch names the bad event's index.
    let (_, v) = n
        .post_json(&json!({"events": [valid.clone(), with(&["data", "celsius"], json!(99))]}))
        .await;
    assert_eq!(v["error"]["index"], 1);

    // No Authorization header at all.
    let r = n
        .http
        .post(format!("{}/v1/events", n.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // Reading events needs the auditor role; queries are checked.
    assert_eq!(
        n.get("/v1/events", &n.reporter).await.0,
        StatusCode::FORBIDDEN
    );
    for q in [
        "?bogus=1",
        "?limit=0",
        "?limit=100000",
        "?after_seq=3",
        "?cursor=zz",
        "?from=yesterday",
        "?personal=all",
    ] {
        let (s, v) = n.get(&format!("/v1/events{q}"), &n.auditor).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{q}: {v}"
        );
    }
    // An aggregator does not accept events.
    let (s, v) = street
        .post(&street.reporter, serde_json::to_vec(&valid).unwrap())
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "not_an_origin"),
        "{v}"
    );
    assert_eq!(n.get("/nowhere", &n.viewer).await.0, StatusCode::NOT_FOUND);

    // Still serving, and nothing changed.
    let (s, status_after) = n.get("/v1/status", &n.viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status_after["heads"], status_before["heads"]);
    assert_eq!(status_after["log"], status_before["log"]);
    assert_eq!(n.all_events().await, events_before);
    let (s, _) = n.post_json(&sample_event(9, "after")).await;
    assert_eq!(s, StatusCode::OK, "node still accepts good events");
}

/// The value of `name{…}` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (l, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|want| l.split(',').any(|have| have == *want))
            .then(|| value.trim().parse().ok())?
    })
}

/// `/metrics` counts requests by route and status (handles kept per route
/// and status, not looked up per request: each count must still land on
/// its own labels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("street", None), ("c1", Some("street"))]);
    let server = Server::start(&tree.nodes["c1"].config, &[]);
    let n = node(&server, &tree.nodes["c1"]);
    for i in 0..3 {
        let (s, r) = n.post_json(&sample_event(i, &format!("m{i}"))).await;
        assert_eq!(s, StatusCode::OK, "{r}");
    }
    for _ in 0..2 {
        let (s, _) = n.post("gs-reporter-not-a-token", "{}").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, _) = n.post(&n.viewer, "{}").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = n.get("/v1/nothing-here", &n.viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = n.get("/v1/status?brief=true", &n.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let (s, metrics) = n.get("/metrics", &n.viewer).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().expect("text");
    let count = |route: &str, status: u16| {
        let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
        let labels = ["node=\"c1\"", route.as_str(), status.as_str()];
        sample(metrics, "gridsync_http_requests_total", &labels)
    };
    assert_eq!(count("/v1/events", 200), Some(3.0), "{metrics}");
    assert_eq!(count("/v1/events", 401), Some(2.0), "{metrics}");
    assert_eq!(count("/v1/events", 403), Some(1.0), "{metrics}");
    assert_eq!(count("other", 404), Some(1.0), "{metrics}");
    assert_eq!(count("/v1/status", 200), Some(1.0), "{metrics}");
    assert_eq!(count("/v1/status", 401), None, "{metrics}");
    // Timed: the requests that were let in (the three posts), not those
    // refused from their headers.
    let timed = sample(
        metrics,
        "gridsync_http_request_seconds_count",
        &["node=\"c1\"", "route=\"/v1/events\""],
    );
    assert_eq!(timed, Some(3.0), "{metrics}");
}
