//! Token hygiene: a token in a URL is taken only by the aggregates stream
//! (EventSource cannot set a header), and `gridsync token rotate | revoke`
//! replace or withdraw a role's tokens.

use std::process::Command;
use std::time::Duration;

use gridsync_suite::{gridsync_bin, post_events, provision, sample_event, Server};
use serde_json::json;

fn token_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gridsync_bin())
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_out_of_urls_and_can_be_rotated_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let c1 = &tree.nodes["c1"];
    let mut node = Server::start(&c1.config, &[]);
    let http = gridsync_suite::http_client();

    // ?token= on a plain request is refused and says what to do ...
    let r = http
        .get(format!(
            "{}/v1/aggregates?token={}",
            node.url, c1.tokens.viewer
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    // ... and taken by the stream, which EventSource opens.
    let r = http
        .get(format!(
            "{}/v1/aggregates/stream?token={}",
            node.url, c1.tokens.viewer
        ))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(r);

    // Rotate the reporter token: after a restart the old one is refused.
    let (ok, new_reporter, err) = token_cmd(&[
        "rotate",
        "--config",
        c1.config.to_str().unwrap(),
        "--role",
        "reporter",
    ]);
    assert!(ok, "{err}");
    assert!(new_reporter.starts_with("gs-reporter-"), "{new_reporter}");
    assert!(err.contains("restart the node"), "{err}");
    let tokens_file = std::fs::read_to_string(c1.config.with_file_name("tokens.toml")).unwrap();
    assert!(tokens_file.contains(&new_reporter));
    assert!(node.terminate());
    node = Server::start(&c1.config, &[]);
    let one = json!(sample_event(1, "k1"));
    let (code, _) = post_events(&node.url, &c1.tokens.reporter, &one).await;
    assert_eq!(code, 401, "the old reporter token is refused");
    let (code, body) = post_events(&node.url, &new_reporter, &one).await;
    assert_eq!(code, 200, "{body}");

    // Revoke the viewers.
    let (ok, _, err) = token_cmd(&[
        "revoke",
        "--config",
        c1.config.to_str().unwrap(),
        "--role",
        "viewer",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("revoked 1 viewer"), "{err}");
    assert!(node.terminate());
    node = Server::start(&c1.config, &[]);
    let r = http
        .get(format!("{}/v1/status", node.url))
        .bearer_auth(&c1.tokens.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .get(format!("{}/v1/status", node.url))
        .bearer_auth(&c1.tokens.auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "other roles are untouched");
    // A role that does not exist is refused with the list.
    let (ok, _, err) = token_cmd(&[
        "rotate",
        "--config",
        c1.config.to_str().unwrap(),
        "--role",
        "boss",
    ]);
    assert!(!ok);
    assert!(
        err.contains("use reporter, viewer, auditor or admin"),
        "{err}"
    );
}
