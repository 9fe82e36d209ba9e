//! Auditor tools (DESIGN.md §3 invariant 3: tampering with any stored byte
//! is detected by `audit verify`).
//!
//! * Tamper test: 1,000 random single mutations of a real node's log, each
//!   on a fresh copy (flip a byte inside an event, delete an entry, reorder
//!   two, change a seq, swap signatures, flip a bit of one, change a head's signed time, append a forged
//!   event, cut the tail with its heads entry) — every one is reported, naming origin and seq
//!   where the damage is in an event, the same report with 1, 2 or 3
//!   threads checking entries; untouched copies verify clean. Plus
//!   the CLI on sled copies: exit codes 0 / 1 / 2.
//! * As-of: `/v1/aggregates` recorded at T equals `audit project --known-at T`
//!   after later events and corrections; `--as-of` by event time equals a
//!   hand-computed expectation.
//! * Replay: a street's replay equals the union of its communities'.
//! * The copy every audit reads: refused while a running node holds the
//!   directory, and when `TMPDIR` has no room for it.

use std::collections::BTreeMap;
use std::process::Command;

use std::time::Duration;

use gridsync_audit::{data, reference, verify as audit};
use gridsync_deploy::topology::Topology;
use gridsync_model::{Chunk, SignedHead};
use gridsync_store::kv::Kv;
use gridsync_store::{MemKv, SledKv};
use gridsync_suite::{gridsync_bin, provision, provision_fast, sample_event, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

async fn post(url: &str, token: &str, events: Vec<Value>) -> Value {
    let r = gridsync_suite::http_client()
        .post(format!("{url}/v1/events"))
        .bearer_auth(token)
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    r.json().await.unwrap()
}

/// A node's store as keys and values, each log entry that lives in the
/// body file put in its key as a one-fragment entry (what the tampering
/// below edits; the body file's own damage is `log_bodies_tampering_is_detected`).
fn dump(dir: &std::path::Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    data::copy_dir(dir, tmp.path()).unwrap();
    let kv = SledKv::open(tmp.path(), 8 << 20).unwrap();
    let bodies = kv.bodies().expect("sled keeps a body file");
    kv.scan(b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| match gridsync_store::layout::parse_log_key(&k) {
            Some((offset, 0)) if gridsync_store::bodies::is_pointer(&v) => {
                let body = bodies.read(offset, &v).unwrap();
                (k, body)
            }
            _ => (k, v),
        })
        .collect()
}

fn mem(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> MemKv {
    let kv = MemKv::new();
    kv.commit(
        entries
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
    )
    .unwrap();
    kv
}

/// Re-encodes log entry value `v` with `f` applied to its chunk.
fn edit_chunk(v: &[u8], f: impl FnOnce(&mut Chunk)) -> Option<Vec<u8>> {
    let mut c = Chunk::decode(v.get(10..)?).ok()?;
    f(&mut c);
    let mut out = v[..10].to_vec();
    out.extend_from_slice(&c.encode());
    Some(out)
}

/// A street `s` with communities `c1` and `c2` running, each community
/// having posted `batches` batches of 12 events, which the street holds.
async fn street_holding(
    dir: &std::path::Path,
    batches: u64,
) -> (gridsync_suite::Tree, Vec<Server>) {
    let tree = provision_fast(dir, &[("s", None), ("c1", Some("s")), ("c2", Some("s"))]);
    let servers: Vec<Server> = ["s", "c1", "c2"]
        .iter()
        .map(|id| Server::start(&tree.nodes[*id].config, &[]))
        .collect();
    for (i, c) in ["c1", "c2"].iter().enumerate() {
        for b in 0..batches {
            let events = (0..12)
                .map(|k| sample_event(b * 12 + k, &format!("{c}-{b}-{k}")))
                .collect();
            post(&servers[i + 1].url, &tree.nodes[*c].tokens.reporter, events).await;
        }
    }
    let n = batches * 12;
    gridsync_suite::wait_heads(
        &servers[0].url,
        &tree.nodes["s"].tokens.viewer,
        &[("c1", n), ("c2", n)],
    )
    .await;
    (tree, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, servers) = street_holding(dir.path(), 6).await;
    // The street's status (signed heads) is a reference an auditor can keep.
    let status_text = gridsync_suite::get_text(
        &format!("{}/v1/status", servers[0].url),
        &tree.nodes["s"].tokens.viewer,
    )
    .await;
    drop(servers); // SIGKILL: the audit works on what is durable
    let topo = Topology::load(&tree.topology).unwrap();
    let entries = dump(&tree.nodes["s"].data_dir);
    let clean = audit::verify(&mem(&entries), &topo, Some("s"), None, &|_| {});
    assert!(clean.ok(), "untouched copy: {:?}", clean.problems);
    assert_eq!(clean.events, 144);

    let log: Vec<Vec<u8>> = entries
        .keys()
        .filter(|k| k[0] == b'L' && k[9..] == [0, 0])
        .cloned()
        .collect();
    assert!(log.len() >= 4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::thread_rng().gen());
    let foreign_key = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
    let mut detected = 0;
    let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
    for round in 0..1000 {
        let mut m = entries.clone();
        let pick = log[rng.gen_range(0..log.len())].clone();
        let what = [
            "flip",
            "delete",
            "reorder",
            "seq",
            "signature",
            "signature_bit",
            "head_time",
            "forge",
            "cut",
        ][round % 9];
        let mut flipped_head = None;
        let mut names_event = true;
        match what {
            "flip" => {
                let v = m[&pick].clone();
                let flipped = edit_chunk(&v, |c| {
                    let i = rng.gen_range(0..c.events.len());
                    let e = &mut c.events[i].envelope;
                    let at = rng.gen_range(0..e.len());
                    e[at] ^= 1 << rng.gen_range(0..8);
                });
                m.insert(pick.clone(), flipped.unwrap());
            }
            "delete" => {
                m.remove(&pick);
            }
            "reorder" => {
                let other =
                    log[(log.iter().position(|k| *k == pick).unwrap() + 1) % log.len()].clone();
                let (a, b) = (m[&pick].clone(), m[&other].clone());
                m.insert(pick.clone(), b);
                m.insert(other, a);
            }
            "seq" => {
                let v = m[&pick].clone();
                let changed = edit_chunk(&v, |c| {
                    let i = rng.gen_range(0..c.events.len());
                    let mut env = gridsync_model::Envelope::decode(&c.events[i].envelope).unwrap();
                    env.seq += 1 + rng.gen_range(0..3);
                    c.events[i].envelope = env.encode();
                });
                m.insert(pick.clone(), changed.unwrap());
            }
            "signature" => {
                let other =
                    log[(log.iter().position(|k| *k == pick).unwrap() + 1) % log.len()].clone();
                let sig_b = Chunk::decode(&m[&other][10..]).unwrap().head.signature;
                let v = m[&pick].clone();
                m.insert(
                    pick.clone(),
                    edit_chunk(&v, |c| c.head.signature = sig_b).unwrap(),
                );
            }
            "signature_bit" => {
                // One bit of a stored head's signature (its R or its s):
                // what batch verification must not let through.
                let v = m[&pick].clone();
                let flipped = edit_chunk(&v, |c| {
                    c.head.signature[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
                    flipped_head = Some(c.head.seq);
                });
                m.insert(pick.clone(), flipped.unwrap());
            }
            "head_time" => {
                // A stored head's signed time (a v2 head, its signature
                // untouched): its own signature fails, and the next head
                // of its origin no longer names it by its digest.
                let v = m[&pick].clone();
                let changed = edit_chunk(&v, |c| {
                    assert!(c.head.after.is_some(), "nodes sign v2 heads");
                    c.head.signed_at_ms += 1 + rng.gen_range(0..1000);
                    flipped_head = Some(c.head.seq);
                });
                m.insert(pick.clone(), changed.unwrap());
            }
            "forge" => {
                // Append a chunk continuing c1 but signed with another key,
                // and update the heads table to match, as an intruder would.
                let last = m.keys().rfind(|k| k[0] == b'L').unwrap().clone();
                let offset = u64::from_be_bytes(last[1..9].try_into().unwrap()) + 1;
                let st = audit::verify(&mem(&entries), &topo, None, None, &|_| {});
                let c1 = &st.origins["c1"];
                let prev: [u8; 32] = hex::decode(&c1.head_hash).unwrap().try_into().unwrap();
                let env = gridsync_model::Envelope {
                    origin: "c1".into(),
                    seq: c1.last_seq + 1,
                    kind: "visit".into(),
                    schema: 1,
                    occurred_at: gridsync_model::OccurredAt {
                        unix_ms: 1_580_000_000_000,
                        offset_min: 480,
                    },
                    recorded_at_ms: 1_580_000_000_000,
                    grid: "g".into(),
                    recorded_by: "w".into(),
                    client_id: "forged".into(),
                    prev,
                    data: json!({"household": "h", "method": "phone", "quarantine": "none"}),
                    personal_digest: None,
                };
                let bytes = env.encode();
                let hash = gridsync_model::event::event_hash(&bytes);
                let head = SignedHead::sign(&foreign_key, "c1", env.seq, hash, 1);
                let chunk = Chunk {
                    origin: "c1".into(),
                    events: vec![gridsync_model::EventRecord {
                        envelope: bytes,
                        personal: None,
                    }],
                    head: head.clone(),
                };
                let mut value = vec![0, 1];
                value.extend_from_slice(&1i64.to_be_bytes());
                value.extend_from_slice(&chunk.encode());
                m.insert(gridsync_store::layout::log_key(offset, 0), value);
                let mut hv = env.seq.to_be_bytes().to_vec();
                hv.extend_from_slice(&hash);
                hv.extend_from_slice(&head.encode());
                m.insert(gridsync_store::layout::head_key("c1"), hv);
            }
            _ => {
                // Cut the last entry of the log and make the heads table
                // agree: only a reference held elsewhere can tell.
                let last = log.last().unwrap().clone();
                m.remove(&last);
                names_event = false;
            }
        }
        let reference: Option<reference::Reference> = (what == "cut").then(|| {
            clean
                .origins
                .iter()
                .map(|(o, r)| {
                    (
                        o.clone(),
                        reference::ReferenceHead {
                            seq: r.last_seq,
                            hash: r.head_hash.clone(),
                            signed_at_ms: None,
                            signature: None,
                            after: None,
                        },
                    )
                })
                .collect()
        });
        let report = audit::verify(&mem(&m), &topo, Some("s"), reference.as_ref(), &|_| {});
        // Entries are checked on worker threads: the report must not
        // depend on how many.
        let refs: Vec<(&str, &reference::Reference)> =
            reference.iter().map(|r| ("the reference", r)).collect();
        let audit_with = |threads, signatures| {
            let how = audit::How {
                threads,
                signatures,
            };
            audit::verify_with(&mem(&m), &topo, Some("s"), &refs, None, how, &|_| {})
        };
        for threads in [1, 3] {
            let other = audit_with(threads, audit::Signatures::All);
            assert_eq!(other, report, "round {round}: {what}: {threads} threads");
        }
        // Checking only each run's newest head finds every tampering but
        // an older head's signature bytes or time (the newest head vouches
        // for the events through the links), with any number of threads.
        let newest = audit_with(2, audit::Signatures::Newest);
        for threads in [1, 3] {
            let other = audit_with(threads, audit::Signatures::Newest);
            assert_eq!(
                other, newest,
                "round {round}: {what}: newest, {threads} threads"
            );
        }
        if let Some(seq) = flipped_head {
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.kind == "bad_signature" && p.seq == Some(seq)),
                "round {round}: the flipped signature of the head at {seq} not named: {:?}",
                report.problems
            );
        }
        assert!(
            what.starts_with("signature") || what == "head_time" || !newest.ok(),
            "round {round}: {what} of {pick:?} went unnoticed checking newest heads"
        );
        assert!(
            !report.ok(),
            "round {round}: {what} of {pick:?} went unnoticed"
        );
        if names_event || what == "cut" {
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.origin.is_some() && p.seq.is_some()),
                "round {round}: {what}: no problem names origin and seq: {:?}",
                report.problems
            );
        }
        detected += 1;
        *kinds.entry(what).or_default() += 1;
    }
    eprintln!("detected {detected}/1000 mutations: {kinds:?}");
    assert_eq!(kinds.len(), 9, "every kind of mutation tried");

    // An origin that signs an event in a form that is not canonical, with
    // its own key and its chain whole (a buggy or hostile community): only
    // the check of each envelope's form can tell. c1's newest event gets
    // its seq written as a uint8 (canonical: a fixint), its head re-signed
    // by c1, the heads table made to agree.
    let key = std::fs::read_to_string(tree.dir.join("c1").join("node.key")).unwrap();
    let key = gridsync_model::keys::signing_key_from_hex(key.trim()).unwrap();
    let last_of_c1 = log
        .iter()
        .rfind(|k| Chunk::decode(&entries[*k][10..]).unwrap().origin == "c1")
        .unwrap();
    let mut m = entries.clone();
    let mut table = None;
    let resigned = edit_chunk(&m[last_of_c1], |c| {
        let e = &mut c.events.last_mut().unwrap().envelope;
        let seq = gridsync_model::event::read_links(e).unwrap().seq;
        assert!(seq < 128 && e[..6] == [0x9e, 1, 0xa2, b'c', b'1', seq as u8]);
        e.insert(5, 0xcc);
        let hash = gridsync_model::event::event_hash(e);
        let after = c.head.after.expect("nodes sign v2 heads");
        c.head = SignedHead::sign_after(&key, ("c1", seq, hash), c.head.signed_at_ms, after);
        let mut hv = seq.to_be_bytes().to_vec();
        hv.extend_from_slice(&hash);
        hv.extend_from_slice(&c.head.encode());
        table = Some((seq, hv));
    });
    m.insert(last_of_c1.clone(), resigned.unwrap());
    let (seq, hv) = table.unwrap();
    m.insert(gridsync_store::layout::head_key("c1"), hv);
    for signatures in [audit::Signatures::All, audit::Signatures::Newest] {
        let how = audit::How {
            threads: 2,
            signatures,
        };
        let report = audit::verify_with(&mem(&m), &topo, Some("s"), &[], None, how, &|_| {});
        let kinds: Vec<(&str, Option<u64>)> = report
            .problems
            .iter()
            .map(|p| (p.kind.as_str(), p.seq))
            .collect();
        assert_eq!(kinds, [("not_canonical", Some(seq))], "{signatures:?}");
    }
    assert_eq!(detected, 1000);
    newest_heads_vouch_for_their_runs(&entries, &topo);
    index_damage_is_reported(&entries, &topo);

    // The CLI on sled copies: clean → 0, damaged → 1, unreadable → 2.
    let data = &tree.nodes["s"].data_dir;
    let run = |data: &std::path::Path, extra: &[&str]| {
        Command::new(gridsync_bin())
            .args(["audit", "verify", "--data"])
            .arg(data)
            .arg("--topology")
            .arg(&tree.topology)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(data, &["--node", "s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(data, &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 144);
    // Newest heads only: the same clean report; a mode it does not know
    // is refused naming the ones it does.
    let out = run(data, &["--json", "--signatures", "newest"]);
    assert_eq!(out.status.code(), Some(0));
    let newest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(newest, report);
    // The text report says which heads were checked.
    let text = |extra: &[&str]| String::from_utf8_lossy(&run(data, extra).stdout).into_owned();
    assert!(text(&[]).contains("OK: every chain, signature, head"));
    let newest = text(&["--signatures", "newest"]);
    assert!(newest.contains("each run's newest signed head"), "{newest}");
    assert!(!newest.contains("every chain, signature"), "{newest}");
    let out = run(data, &["--signatures", "some"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("all") && err.contains("newest"), "{err}");
    assert_eq!(
        run(std::path::Path::new("/nonexistent"), &[]).status.code(),
        Some(2)
    );
    // A data directory whose log has one envelope byte flipped: refused
    // by verify, replay and project whichever signatures they check.
    let damaged = tempfile::tempdir().unwrap();
    {
        let mut m = entries.clone();
        let v = m[&log[0]].clone();
        let flipped = edit_chunk(&v, |c| {
            let e = &mut c.events[0].envelope;
            let at = e.len() - 40;
            e[at] ^= 1;
        });
        m.insert(log[0].clone(), flipped.unwrap());
        let kv = SledKv::open(damaged.path(), 8 << 20).unwrap();
        kv.commit(m.into_iter().map(|(k, v)| (k, Some(v))).collect())
            .unwrap();
    }
    for mode in ["all", "newest"] {
        let out = run(damaged.path(), &["--signatures", mode]);
        assert_eq!(out.status.code(), Some(1), "verify --signatures {mode}");
        for (command, extra) in [
            ("replay", &[][..]),
            ("project", &["--as-of", "2030-01-01T00:00:00Z"][..]),
        ] {
            let out = Command::new(gridsync_bin())
                .args(["audit", command, "--data"])
                .arg(damaged.path())
                .arg("--topology")
                .arg(&tree.topology)
                .args(["--signatures", mode])
                .args(extra)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {mode}: {err}");
            assert!(err.contains("does not verify"), "{command} {mode}: {err}");
        }
    }
    // The street's own status as a signed reference: verifies; with one
    // signature altered, the reference itself is refused.
    let signed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(signed.path(), &status_text).unwrap();
    let out = run(data, &["--reference", signed.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut st: Value = serde_json::from_str(&status_text).unwrap();
    let sig = st["heads"]["c1"]["signature"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    st["heads"]["c1"]["signature"] = json!(flipped);
    std::fs::write(signed.path(), st.to_string()).unwrap();
    let out = run(data, &["--reference", signed.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad_signature"));

    // A reference ahead of the log: cut off.
    let refs = tempfile::NamedTempFile::new().unwrap();
    let mut ahead = serde_json::Map::new();
    ahead.insert("c1".into(), json!({"seq": 500, "hash": "00"}));
    std::fs::write(refs.path(), Value::Object(ahead).to_string()).unwrap();
    let out = run(data, &["--reference", refs.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("truncated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_projection_reproduces_a_recorded_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let files = &tree.nodes["c1"];
    let server = Server::start(&files.config, &[]);
    let temp = |cid: &str, at: &str, c: f64| {
        json!({"kind": "temperature", "occurred_at": at, "grid": "g", "recorded_by": "w", "client_id": cid,
               "data": {"person": {"name": "王五"}, "celsius": c, "site": "home"}})
    };
    post(
        &server.url,
        &files.tokens.reporter,
        vec![
            temp("a", "2020-01-26T09:00:00+08:00", 38.0),
            temp("b", "2020-01-27T09:00:00+08:00", 36.5),
            temp("c", "2020-01-27T10:00:00+08:00", 39.0),
        ],
    )
    .await;
    let q = "from=2020-01-25&to=2020-01-28";
    // The projection follows commits asynchronously: take the snapshot once
    // the node has applied what it acknowledged (idle).
    let mut snapshot = Value::Null;
    for _ in 0..200 {
        snapshot = gridsync_suite::get_json(
            &format!("{}/v1/aggregates?{q}", server.url),
            &files.tokens.viewer,
        )
        .await;
        if snapshot["coverage"][0]["seq"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(snapshot["totals"]["temperatures"], 3, "{snapshot}");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = gridsync_model::time_fmt::format_rfc3339_ms(gridsync_suite::now_ms(), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    // After T: a late event for an earlier day, and a correction voiding seq 1.
    post(
        &server.url,
        &files.tokens.reporter,
        vec![temp("late", "2020-01-25T08:00:00+08:00", 38.5)],
    )
    .await;
    post(
        &server.url,
        &files.tokens.reporter,
        vec![
            json!({"kind": "correction", "occurred_at": "2020-01-27T12:00:00+08:00",
        "grid": "g", "recorded_by": "w", "client_id": "fix",
        "data": {"target": {"origin": "c1", "seq": 1}, "action": "void", "reason": "误测"}}),
        ],
    )
    .await;
    let mut server = server;
    tokio::task::spawn_blocking(move || assert!(server.terminate()))
        .await
        .unwrap();
    let project = |extra: &[&str]| -> Value {
        let out = Command::new(gridsync_bin())
            .args(["audit", "project", "--data"])
            .arg(&files.data_dir)
            .arg("--topology")
            .arg(&tree.topology)
            .args(["--from", "2020-01-25", "--to", "2020-01-28"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let known = project(&["--as-of", &t, "--known-at"]);
    for key in ["days", "totals", "children", "state_hash"] {
        assert_eq!(
            known[key], snapshot[key],
            "{key}: --known-at T differs from the snapshot taken at T"
        );
    }
    // Checking only the newest heads before projecting: the same answer.
    assert_eq!(
        project(&["--as-of", &t, "--known-at", "--signatures", "newest"]),
        known
    );
    // By event time, as of the end of 2020-01-26 (Shanghai): seq 1 (fever on
    // the 26th, voided only on the 27th) and the late event of the 25th.
    let by_event = project(&["--as-of", "2020-01-26T23:59:59+08:00"]);
    let fevers: Vec<i64> = by_event["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metrics"]["fevers"].as_i64().unwrap())
        .collect();
    assert_eq!(fevers, vec![1, 1, 0, 0], "{by_event}");
    let now = project(&["--as-of", "2030-01-01T00:00:00Z"]);
    let fevers: Vec<i64> = now["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metrics"]["fevers"].as_i64().unwrap())
        .collect();
    assert_eq!(
        fevers,
        vec![1, 0, 1, 0],
        "everything, with seq 1 voided: {now}"
    );
    assert_ne!(known["state_hash"], now["state_hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn street_replay_is_the_union_of_its_communities() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision_fast(
        dir.path(),
        &[("s", None), ("c1", Some("s")), ("c2", Some("s"))],
    );
    let mut servers: Vec<Server> = ["s", "c1", "c2"]
        .iter()
        .map(|id| Server::start(&tree.nodes[*id].config, &[]))
        .collect();
    for (i, c) in ["c1", "c2"].iter().enumerate() {
        let events = (0..40)
            .map(|k| sample_event(k, &format!("{c}-{k}")))
            .collect();
        post(&servers[i + 1].url, &tree.nodes[*c].tokens.reporter, events).await;
    }
    gridsync_suite::wait_heads(
        &servers[0].url,
        &tree.nodes["s"].tokens.viewer,
        &[("c1", 40), ("c2", 40)],
    )
    .await;
    // Replay from the running street over HTTP (hashes recomputed, links
    // checked) before stopping it.
    let out = Command::new(gridsync_bin())
        .args([
            "audit",
            "replay",
            "--url",
            &servers[0].url,
            "--token",
            &tree.nodes["s"].tokens.auditor,
        ])
        .arg("--topology")
        .arg(&tree.topology)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let over_http: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for s in servers.iter_mut() {
        s.terminate();
    }
    let replay_with = |node: &str, extra: &[&str]| -> Vec<Value> {
        let out = Command::new(gridsync_bin())
            .args(["audit", "replay", "--data"])
            .arg(&tree.nodes[node].data_dir)
            .arg("--topology")
            .arg(&tree.topology)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let replay = |node: &str| replay_with(node, &[]);
    let street = replay("s");
    // Checking only each origin's newest head first: the same stream.
    assert_eq!(replay_with("s", &["--signatures", "newest"]), street);
    assert_eq!(
        over_http, street,
        "replay over HTTP differs from replay of the data directory"
    );
    let mut by_origin: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in street {
        by_origin
            .entry(e["origin"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    for c in ["c1", "c2"] {
        let own = replay(c);
        assert_eq!(own.len(), 40);
        assert_eq!(
            by_origin[c], own,
            "{c}: the street's replay differs from the community's"
        );
        let seqs: Vec<u64> = own.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    }
    assert_eq!(by_origin.len(), 2);
}

/// The chunk index held against the log (the street's clean log,
/// `entries`): an index entry removed, one pointing at the wrong log
/// entry, and a malformed one are each reported as `index_mismatch` with
/// the origin and seq at fault, and nothing else.
fn index_damage_is_reported(entries: &BTreeMap<Vec<u8>, Vec<u8>>, topo: &Topology) {
    use gridsync_store::layout;
    let index_problems = |m: &BTreeMap<Vec<u8>, Vec<u8>>| {
        let report = audit::verify(&mem(m), topo, Some("s"), None, &|_| {});
        assert!(
            report.problems.iter().all(|p| p.kind == "index_mismatch"),
            "{:?}",
            report.problems
        );
        report
            .problems
            .into_iter()
            .map(|p| (p.origin, p.seq, p.message.contains("lacks")))
            .collect::<Vec<_>>()
    };
    assert!(index_problems(entries).is_empty());
    let (key, value) = entries
        .iter()
        .find(|(k, _)| k[0] == layout::INDEX)
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let (origin, seq, _) = layout::parse_origin_seq_key(&key).unwrap();
    let chunks = layout::index_chunks(&key, &value).unwrap();
    // Removed: every chunk it named is lacking.
    let mut m = entries.clone();
    m.remove(&key);
    let lacking: Vec<_> = chunks
        .iter()
        .map(|(last, _, _)| (Some(origin.clone()), Some(*last), true))
        .collect();
    assert_eq!(index_problems(&m), lacking);
    // Pointing one log entry further: the chunk is lacking, and the index
    // names a chunk the log does not hold there.
    let moved: Vec<(u64, u64)> = chunks.iter().map(|(_, o, f)| (o + 1, *f)).collect();
    let mut m = entries.clone();
    m.insert(key.clone(), layout::index_group_value(&moved));
    let mut found = index_problems(&m);
    found.sort();
    let mut want: Vec<_> = chunks
        .iter()
        .flat_map(|(last, _, _)| {
            [
                (Some(origin.clone()), Some(*last), false),
                (Some(origin.clone()), Some(*last), true),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(found, want);
    // A malformed value: the entry points nowhere and its chunks lack.
    let mut m = entries.clone();
    m.insert(key.clone(), vec![1, 2, 3]);
    let found = index_problems(&m);
    assert_eq!(found[0], (Some(origin.clone()), Some(seq), false));
    assert_eq!(found[1..], lacking[..]);
    // Every index entry of the origin gone: each of its chunks lacks, in
    // seq order, and nothing else is reported.
    let mut m = entries.clone();
    let mut all = Vec::new();
    m.retain(|k, v| {
        let ours = k[0] == layout::INDEX
            && layout::parse_origin_seq_key(k).is_some_and(|(o, _, _)| o == origin);
        if ours {
            all.extend(layout::index_chunks(k, v).unwrap());
        }
        !ours
    });
    all.sort_unstable();
    let want: Vec<_> = all
        .iter()
        .map(|(last, _, _)| (Some(origin.clone()), Some(*last), true))
        .collect();
    assert!(
        want.len() > lacking.len(),
        "the origin has more than one index entry"
    );
    assert_eq!(index_problems(&m), want);
}

/// `--signatures newest` on the street's clean log (`entries`): a
/// swapped signature on an origin's newest head is reported with the run
/// it leaves unvouched for; on an older head it goes unseen (the events
/// are proven by the newest head) while `all` reports it.
fn newest_heads_vouch_for_their_runs(entries: &BTreeMap<Vec<u8>, Vec<u8>>, topo: &Topology) {
    let audit_with = |m: &BTreeMap<Vec<u8>, Vec<u8>>, signatures| {
        let how = audit::How {
            threads: 2,
            signatures,
        };
        audit::verify_with(&mem(m), topo, Some("s"), &[], None, how, &|_| {})
    };
    let clean = audit_with(entries, audit::Signatures::Newest);
    assert!(clean.ok(), "{:?}", clean.problems);
    assert_eq!(clean, audit_with(entries, audit::Signatures::All));
    // c1's log entries (each a chunk of its own here), oldest first.
    let c1: Vec<Vec<u8>> = entries
        .iter()
        .filter(|(k, v)| k[0] == b'L' && Chunk::decode(&v[10..]).is_ok_and(|c| c.origin == "c1"))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(c1.len() >= 2, "c1 has {} chunks", c1.len());
    // A reference inside the chain (seq 5, not a chunk's end) is held
    // against that event's own hash, kept whole for it: the right hash
    // passes, another is a fork.
    let first = Chunk::decode(&entries[&c1[0]][10..]).unwrap();
    let seq5 = gridsync_model::event::event_hash(&first.events[4].envelope);
    for (hash, fork) in [(hex::encode(seq5), false), (hex::encode([1u8; 32]), true)] {
        let head = reference::ReferenceHead {
            seq: 5,
            hash,
            signed_at_ms: None,
            signature: None,
            after: None,
        };
        let r: reference::Reference = [("c1".to_owned(), head)].into_iter().collect();
        let how = audit::How {
            threads: 2,
            signatures: audit::Signatures::Newest,
        };
        let refs = [("the reference", &r)];
        let report = audit::verify_with(&mem(entries), topo, Some("s"), &refs, None, how, &|_| {});
        let forks: Vec<_> = report
            .problems
            .iter()
            .filter(|p| p.kind == "fork")
            .collect();
        assert_eq!(forks.len(), usize::from(fork), "{:?}", report.problems);
        assert_eq!(report.ok(), !fork);
    }
    let other_sig = Chunk::decode(&entries[&c1[0]][10..])
        .unwrap()
        .head
        .signature;
    let newest = c1.last().unwrap();
    let mut m = entries.clone();
    m.insert(
        newest.clone(),
        edit_chunk(&entries[newest], |c| c.head.signature = other_sig).unwrap(),
    );
    let report = audit_with(&m, audit::Signatures::Newest);
    let last_seq = clean.origins["c1"].last_seq;
    let bad: Vec<_> = report.problems.iter().collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].kind, "bad_signature");
    assert_eq!(
        (bad[0].origin.as_deref(), bad[0].seq),
        (Some("c1"), Some(last_seq))
    );
    assert!(
        bad[0].message.contains(&format!("seqs 1..={last_seq}")),
        "{}",
        bad[0].message
    );
    // The oldest head's signature swapped for the newest's: its events
    // are still vouched for by the newest head; only `all` sees the bytes.
    let newest_sig = Chunk::decode(&entries[newest][10..])
        .unwrap()
        .head
        .signature;
    let mut m = entries.clone();
    m.insert(
        c1[0].clone(),
        edit_chunk(&entries[&c1[0]], |c| c.head.signature = newest_sig).unwrap(),
    );
    assert!(audit_with(&m, audit::Signatures::Newest).ok());
    let all = audit_with(&m, audit::Signatures::All);
    let oldest = Chunk::decode(&entries[&c1[0]][10..]).unwrap().head.seq;
    assert!(
        all.problems
            .iter()
            .any(|p| p.kind == "bad_signature" && p.seq == Some(oldest)),
        "{:?}",
        all.problems
    );
}

/// Tampered data with extreme values — a head at seq u64::MAX, an origin id
/// of 300 bytes, a chunk claiming more events than its seq — is reported,
/// never a panic or a runaway allocation (review F18, F19).
#[test]
fn extreme_tampering_is_reported_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let tree = provision(dir.path(), &[("c1", None)]);
    let topo = Topology::load(&tree.topology).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let chunk = |origin: &str, seq: u64| {
        let env = gridsync_model::Envelope {
            origin: origin.into(),
            seq,
            kind: "visit".into(),
            schema: 1,
            occurred_at: gridsync_model::OccurredAt {
                unix_ms: 1_580_000_000_000,
                offset_min: 480,
            },
            recorded_at_ms: 1_580_000_000_000,
            grid: "g".into(),
            recorded_by: "w".into(),
            client_id: "x".into(),
            prev: [7; 32],
            data: json!({"household": "h", "method": "phone", "quarantine": "none"}),
            personal_digest: None,
        };
        let bytes = env.encode();
        let hash = gridsync_model::event::event_hash(&bytes);
        Chunk {
            origin: origin.into(),
            events: vec![gridsync_model::EventRecord {
                envelope: bytes,
                personal: None,
            }],
            head: SignedHead::sign(&key, origin, seq, hash, 1),
        }
    };
    let long = "x".repeat(300);
    let mut entries = BTreeMap::new();
    for (offset, c) in [
        chunk("c1", u64::MAX),
        chunk("c1", u64::MAX - 1),
        chunk(&long, 5),
        chunk("c1", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut value = vec![0, 1];
        value.extend_from_slice(&1i64.to_be_bytes());
        value.extend_from_slice(&c.encode());
        entries.insert(gridsync_store::layout::log_key(offset as u64, 0), value);
    }
    let started = std::time::Instant::now();
    let report = audit::verify(&mem(&entries), &topo, None, None, &|_| {});
    assert!(!report.ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.origin.as_deref() == Some(long.as_str())),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.origin.as_deref() == Some("c1")),
        "{:?}",
        report.problems
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no runaway work"
    );
}

/// Origins `a` and `b`: their public keys and chains of sample events
/// signed with their keys.
fn two_origins() -> (
    Vec<ed25519_dalek::VerifyingKey>,
    gridsync_suite::SampleChains,
) {
    let keys: Vec<_> = [5u8, 6]
        .iter()
        .map(|b| ed25519_dalek::SigningKey::from_bytes(&[*b; 32]))
        .collect();
    let public = keys
        .iter()
        .map(ed25519_dalek::SigningKey::verifying_key)
        .collect();
    let origins = ["a", "b"].iter().map(|o| (*o).to_owned());
    (
        public,
        gridsync_suite::SampleChains::new(origins.zip(keys).collect()),
    )
}

/// `audit replay`'s pipeline (a reader, two renderers taking pages as
/// they come, the writer putting them back in log order) writes exactly what
/// rendering the log entry by entry writes, in log order, with and without
/// a filter; and when the output goes away it stops (no hang, no error)
/// without writing more.
#[tokio::test]
async fn replay_writes_the_log_in_order_and_stops_when_its_output_closes() {
    use gridsync_audit::replay::{replay_local, EventFilter};
    use std::sync::Arc;
    let (keys, mut chains) = two_origins();
    let public: BTreeMap<String, ed25519_dalek::VerifyingKey> = ["a", "b"]
        .iter()
        .map(|o| (*o).to_owned())
        .zip(keys)
        .collect();
    let store = gridsync_store::Store::open(
        Arc::new(MemKv::new()),
        gridsync_store::StoreConfig::default(),
        None,
        Arc::new(move |o: &str, _| public.get(o).copied()),
    )
    .unwrap();
    // 400 entries (over six pages of 64), one-event and 7-event chunks of
    // two origins interleaved.
    let mut events = 0;
    for round in 0..100 {
        let mut chunks = Vec::new();
        for (o, len) in [(0, 1), (1, 7), (0, 7), (1, 1)] {
            chunks.extend(chains.next_chunk(o, len + round % 3, u64::MAX));
            events += len + round % 3;
        }
        store.import(chunks, 1_700_000_000_000).await.unwrap();
    }
    assert_eq!(store.read_log(0, usize::MAX).unwrap().len(), 400);
    // The oracle: entry by entry, on one thread.
    let one_by_one = |keep: &dyn Fn(&str) -> bool| {
        let mut out = Vec::new();
        for e in store.read_log(0, usize::MAX).unwrap() {
            if !keep(&e.chunk.origin) {
                continue;
            }
            for (ev, rec) in e.chunk.decode_events().unwrap().iter().zip(&e.chunk.events) {
                let view = gridsync_model::api::event_view(ev, rec, false);
                serde_json::to_writer(&mut out, &view).unwrap();
                out.push(b'\n');
            }
        }
        out
    };
    let mut all = Vec::new();
    replay_local(&store, &EventFilter::default(), false, &mut all).unwrap();
    assert_eq!(all.iter().filter(|b| **b == b'\n').count(), events);
    assert!(
        all == one_by_one(&|_| true),
        "replay differs from the log's order"
    );
    let only_b = EventFilter {
        origin: Some("b".into()),
        ..EventFilter::default()
    };
    let mut b = Vec::new();
    replay_local(&store, &only_b, false, &mut b).unwrap();
    assert!(b == one_by_one(&|o| o == "b"));
    // An output that takes 10 KB and then fails, like a closed pipe.
    struct Closing {
        taken: usize,
        calls_after: usize,
    }
    impl std::io::Write for Closing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken >= 10_000 {
                self.calls_after += 1;
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.taken += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut closing = Closing {
        taken: 0,
        calls_after: 0,
    };
    replay_local(&store, &EventFilter::default(), false, &mut closing).unwrap();
    assert!(closing.taken < all.len());
    assert_eq!(closing.calls_after, 1, "nothing written after the failure");
}

/// The audit reads the log in pages that a pool of worker threads check
/// in whatever order they finish, and applies them in log order: a log of
/// many pages verifies clean with any number of workers, and entries
/// removed from several pages are reported alike with 1, 2 or 3 workers —
/// each once, in log order, with the gap it leaves in its origin's chain.
#[tokio::test]
async fn a_log_of_many_pages_is_applied_in_log_order() {
    use gridsync_deploy::topology::{TopologyFile, TopologyNode};
    use std::sync::Arc;
    let (keys, mut chains) = two_origins();
    let node = |id: &str, parent: Option<&str>, port: u16, key: &ed25519_dalek::VerifyingKey| {
        TopologyNode {
            id: id.into(),
            name: id.into(),
            parent: parent.map(Into::into),
            url: format!("http://127.0.0.1:{port}"),
            public_key: gridsync_model::keys::verifying_key_to_hex(key),
            previous_keys: Vec::new(),
            retired: false,
            former_parents: Vec::new(),
        }
    };
    let street_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let topo = Topology::from_file(TopologyFile {
        timezone: gridsync_deploy::topology::default_timezone(),
        ca_file: None,
        node: vec![
            node("s", None, 7000, &street_key),
            node("a", Some("s"), 7001, &keys[0]),
            node("b", Some("s"), 7002, &keys[1]),
        ],
    })
    .unwrap();
    let key_of = topo.clone();
    let kv = Arc::new(MemKv::new());
    let store = gridsync_store::Store::open(
        kv.clone(),
        gridsync_store::StoreConfig::default(),
        None,
        Arc::new(move |o: &str, seq| key_of.key_at(o, seq)),
    )
    .unwrap();
    // 1,600 entries of two origins interleaved: one-event chunks (packed
    // several to a log key) and 20-event ones (a key each).
    let mut events = 0;
    for round in 0..400usize {
        let mut chunks = Vec::new();
        for (o, len) in [(0, 1), (1, 20), (0, 20), (1, 1)] {
            let len = len + round % 2;
            chunks.extend(chains.next_chunk(o, len, u64::MAX));
            events += len;
        }
        store.import(chunks, 1_700_000_000_000).await.unwrap();
    }
    store.close();
    let entries: BTreeMap<Vec<u8>, Vec<u8>> =
        kv.scan(b"", b"", usize::MAX).unwrap().into_iter().collect();
    let log_keys: Vec<&Vec<u8>> = entries.keys().filter(|k| k[0] == b'L').collect();
    assert!(
        log_keys.len() > 6 * 128,
        "{} log keys: several pages",
        log_keys.len()
    );
    let audit_with = |m: &BTreeMap<Vec<u8>, Vec<u8>>, threads| {
        let how = audit::How {
            threads,
            signatures: audit::Signatures::All,
        };
        audit::verify_with(&mem(m), &topo, Some("s"), &[], None, how, &|_| {})
    };
    for threads in [1, 2, 3] {
        let clean = audit_with(&entries, threads);
        assert!(clean.ok(), "{threads} threads: {:?}", clean.problems);
        assert_eq!((clean.entries, clean.events), (1600, events as u64));
    }
    // Whole one-key entries (a 20-event chunk in one fragment) removed
    // from pages far apart.
    let whole: Vec<Vec<u8>> = log_keys
        .iter()
        .filter(|k| {
            let v = &entries[**k];
            !gridsync_store::layout::is_pack(v) && v.get(..2) == Some(&[0, 1][..])
        })
        .map(|k| (*k).clone())
        .collect();
    assert!(whole.len() > 100, "{} entries of one key", whole.len());
    let gone: Vec<Vec<u8>> = [whole.len() / 8, whole.len() / 2, whole.len() * 7 / 8]
        .iter()
        .map(|i| whole[*i].clone())
        .collect();
    let mut damaged = entries.clone();
    for k in &gone {
        damaged.remove(k);
    }
    let offsets: Vec<u64> = gone
        .iter()
        .map(|k| gridsync_store::layout::parse_log_key(k).unwrap().0)
        .collect();
    let report = audit_with(&damaged, 2);
    let missing: Vec<u64> = report
        .problems
        .iter()
        .filter(|p| p.kind == "missing_entry")
        .filter_map(|p| p.offset)
        .collect();
    assert_eq!(missing, offsets, "{:?}", report.problems);
    let gaps = report.problems.iter().filter(|p| p.kind == "gap").count();
    assert_eq!(gaps, 3, "{:?}", report.problems);
    for threads in [1, 3] {
        assert_eq!(audit_with(&damaged, threads), report, "{threads} threads");
    }
}

/// A community `c1` serving, with 20 events posted.
async fn community_with_events(dir: &std::path::Path) -> (gridsync_suite::Tree, Server) {
    let tree = provision(dir, &[("c1", None)]);
    let files = &tree.nodes["c1"];
    let server = Server::start(&files.config, &[]);
    let events = (0..20).map(|i| sample_event(i, &format!("e{i}"))).collect();
    post(&server.url, &files.tokens.reporter, events).await;
    (tree, server)
}

/// A running node's data directory is not copied: a copy taken under a
/// running node can be torn (its newest writes half there) and then look
/// truncated or damaged. The audit says so and exits 2; once the node has
/// stopped, the same command verifies. (Control: without the check the
/// first audit runs on whatever the copy caught — no refusal — and fails
/// the first assertion.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_refuses_the_directory_of_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, server) = community_with_events(dir.path()).await;
    let files = &tree.nodes["c1"];
    let audit = || {
        Command::new(gridsync_bin())
            .args(["audit", "verify", "--data"])
            .arg(&files.data_dir)
            .arg("--topology")
            .arg(&tree.topology)
            .output()
            .unwrap()
    };
    let out = audit();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("in use by a running node"), "{err}");
    let mut server = server;
    tokio::task::spawn_blocking(move || assert!(server.terminate()))
        .await
        .unwrap();
    let out = audit();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("copying the data directory"), "{text}");
}

/// The audit copies the data directory under `TMPDIR` first; when that
/// filesystem has no room (often a tmpfs: memory), it says so, with what
/// to do, and exits 2 — before copying anything. Needs a small tmpfs
/// (mounted here as root; skipped, saying so, where mounting is not
/// allowed — but not under `CI=true`, where `.ci/run` runs as root).
/// (Control: without the check the copy fails part way with
/// "No space left on device" — or on a large tmpfs fills the memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_without_room_for_its_copy_says_where_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, mut server) = community_with_events(dir.path()).await;
    let files = &tree.nodes["c1"];
    tokio::task::spawn_blocking(move || assert!(server.terminate()))
        .await
        .unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !in_ci,
            "CI=true but a tmpfs cannot be mounted (.ci/run runs as root)"
        );
        eprintln!(
            "\n!!! SKIPPING the TMPDIR-without-room test: cannot mount a tmpfs (not root?)\n"
        );
        return;
    }
    let out = Command::new(gridsync_bin())
        .args(["audit", "verify", "--data"])
        .arg(&files.data_dir)
        .arg("--topology")
        .arg(&tree.topology)
        .env("TMPDIR", &small)
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&small).status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("MB free: set TMPDIR"), "{err}");
}

/// Tampering with the body file beside sled (where a street keeps its
/// large log entries) is detected by `audit verify`, at the entry it hit:
/// a byte of a body flipped, the file cut short, a pointer swapped for
/// another entry's (a whole, valid body in the wrong place). Each round on
/// a fresh copy of a street's data directory; the untouched copy verifies
/// clean (the control), and the CLI exits 1 on a damaged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bodies_tampering_is_detected() {
    use gridsync_store::bodies::{Pointer, BODIES_FILE};
    let dir = tempfile::tempdir().unwrap();
    let (tree, servers) = street_holding(dir.path(), 4).await;
    drop(servers);
    let topo = Topology::load(&tree.topology).unwrap();
    let data = &tree.nodes["s"].data_dir;
    // A fresh copy, changed by `f` (its kv and its directory), audited.
    let audit_copy = |f: &dyn Fn(&SledKv, &std::path::Path)| {
        let tmp = tempfile::tempdir().unwrap();
        data::copy_dir(data, tmp.path()).unwrap();
        let kv = SledKv::open(tmp.path(), 8 << 20).unwrap();
        f(&kv, tmp.path());
        audit::verify(&kv, &topo, Some("s"), None, &|_| {})
    };
    let pointers: Vec<(u64, Pointer)> = {
        let tmp = tempfile::tempdir().unwrap();
        data::copy_dir(data, tmp.path()).unwrap();
        let kv = SledKv::open(tmp.path(), 8 << 20).unwrap();
        kv.scan(b"L", b"L", usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|(k, v)| {
                let (offset, _) = gridsync_store::layout::parse_log_key(&k)?;
                Some((offset, Pointer::decode(&v)?))
            })
            .collect()
    };
    assert!(pointers.len() >= 2, "the street keeps bodies: {pointers:?}");
    let clean = audit_copy(&|_, _| {});
    assert!(clean.ok(), "untouched copy: {:?}", clean.problems);
    assert_eq!(clean.events, 96);
    let hit = |report: &audit::AuditReport, offset: u64| {
        !report.ok() && report.problems.iter().any(|p| p.offset == Some(offset))
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::thread_rng().gen());
    for round in 0..30 {
        let (offset, p) = pointers[rng.gen_range(0..pointers.len())];
        let file = |d: &std::path::Path| d.join(BODIES_FILE);
        let report = match round % 3 {
            0 => {
                let at = p.position + rng.gen_range(0..u64::from(p.length));
                let bit = 1u8 << rng.gen_range(0..8);
                audit_copy(&|_, d| {
                    let mut b = std::fs::read(file(d)).unwrap();
                    b[at as usize] ^= bit;
                    std::fs::write(file(d), b).unwrap();
                })
            }
            1 => {
                let len = p.position + rng.gen_range(0..u64::from(p.length));
                audit_copy(&|_, d| {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(file(d))
                        .unwrap();
                    f.set_len(len).unwrap();
                })
            }
            _ => {
                let other = pointers
                    .iter()
                    .find(|(o, _)| *o != offset)
                    .expect("another body")
                    .0;
                audit_copy(&|kv, _| {
                    let v = kv.get(&gridsync_store::layout::log_key(other, 0)).unwrap();
                    kv.commit(vec![(gridsync_store::layout::log_key(offset, 0), v)])
                        .unwrap();
                })
            }
        };
        assert!(!report.ok(), "round {round}: not detected");
        // A damaged body is named by its entry (a swapped pointer by the
        // chain and index checks, wherever they find it).
        assert!(
            round % 3 == 2 || hit(&report, offset),
            "round {round} at entry {offset}: {:?}",
            report.problems
        );
    }
    // The CLI on a copy with one body byte flipped: exit 1, naming it.
    let damaged = tempfile::tempdir().unwrap();
    data::copy_dir(data, damaged.path()).unwrap();
    let path = damaged.path().join(BODIES_FILE);
    let mut b = std::fs::read(&path).unwrap();
    b[pointers[0].1.position as usize + 20] ^= 1;
    std::fs::write(&path, b).unwrap();
    let out = Command::new(gridsync_bin())
        .args(["audit", "verify", "--data"])
        .arg(damaged.path())
        .arg("--topology")
        .arg(&tree.topology)
        .args(["--node", "s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("checksum"), "{text}");
}
