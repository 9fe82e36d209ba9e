//! SIGTERM while clients post: the node finishes in-flight requests and
//! commits, exits 0, and every acknowledged event is there after restart.

use std::collections::HashMap;
use std::time::Duration;

use gridsync_suite::{provision, sample_event, Server};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_commits_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let files = &tree.nodes["c1"];
    let mut server = Server::start(&files.config, &[]);
    let url = server.url.clone();
    let token = files.tokens.reporter.clone();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let http = gridsync_suite::http_client();
            let mut acked: HashMap<String, u64> = HashMap::new();
            for n in 0..10_000u64 {
                let ids: Vec<String> = (0..20).map(|i| format!("t{t}-{n}-{i}")).collect();
                let events: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| sample_event(i as u64, id))
                    .collect();
                let Ok(r) = http
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(&token)
                    .json(&json!({"events": events}))
                    .send()
                    .await
                else {
                    break;
                };
                if !r.status().is_success() {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                for (id, res) in ids.iter().zip(body["results"].as_array().unwrap()) {
                    acked.insert(id.clone(), res["seq"].as_u64().unwrap());
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clean = tokio::task::spawn_blocking(move || {
        let ok = server.terminate();
        (ok, server)
    })
    .await
    .unwrap();
    assert!(clean.0, "gridsync serve did not exit 0 after SIGTERM");
    let mut acked = HashMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());

    let server = Server::start(&files.config, &[]);
    let mut stored: HashMap<String, u64> = HashMap::new();
    let mut after = 0;
    loop {
        let page: Value = gridsync_suite::get_json(
            &format!(
                "{}/v1/events?origin=c1&after_seq={after}&limit=1000",
                server.url
            ),
            &files.tokens.auditor,
        )
        .await;
        for e in page["events"].as_array().unwrap() {
            after = e["seq"].as_u64().unwrap();
            stored.insert(e["client_id"].as_str().unwrap().to_owned(), after);
        }
        if page.get("next").is_none() {
            break;
        }
    }
    for (id, seq) in &acked {
        assert_eq!(
            stored.get(id),
            Some(seq),
            "acknowledged {id} missing after a clean shutdown"
        );
    }
}
