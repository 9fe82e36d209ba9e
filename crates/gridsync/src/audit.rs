//! `gridsync audit …`: the CLI around `gridsync_node::audit`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use gridsync_node::audit::{self, Reference, ReferenceHead};
use gridsync_node::topology::Topology;
use gridsync_store::{SledKv, Store, StoreConfig};

use crate::AuditCommand;

/// Exit code when the input could not be read.
const UNREADABLE: u8 = 2;
/// Exit code when problems were found.
const PROBLEMS: u8 = 1;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gridsync audit: {msg}");
    ExitCode::from(code)
}

/// Copies `data` into a temporary directory and opens the copy.
fn open_copy(data: &Path) -> Result<(tempfile::TempDir, SledKv), String> {
    if !data.join("db").exists() {
        return Err(format!(
            "{} is not a gridsync data directory (no sled database in it)",
            data.display()
        ));
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    audit::copy_dir(data, tmp.path())
        .map_err(|e| format!("cannot copy {}: {e}", data.display()))?;
    let kv = SledKv::open(tmp.path(), 256 << 20).map_err(|e| e.to_string())?;
    Ok((tmp, kv))
}

/// Loads the topology and opens a copy of `data` as a store; opening
/// verifies the whole log (chains, signatures, heads table, index).
fn open_verified(
    data: &Path,
    topology: &Path,
) -> Result<(Topology, tempfile::TempDir, Store), ExitCode> {
    let topo = Topology::load(topology).map_err(|e| fail(UNREADABLE, e))?;
    let (tmp, kv) = open_copy(data).map_err(|e| fail(UNREADABLE, e))?;
    let keys_topo = topo.clone();
    let store = Store::open(
        Arc::new(kv),
        StoreConfig::default(),
        None,
        Arc::new(move |o: &str, seq: u64| keys_topo.key_at(o, seq)),
    )
    .map_err(|e| fail(PROBLEMS, format!("the log does not verify: {e}")))?;
    Ok((topo, tmp, store))
}

fn load_reference(path: &Path) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let heads = v.get("heads").cloned().unwrap_or(v);
    let map = heads
        .as_object()
        .ok_or_else(|| format!("{}: expected an object of heads", path.display()))?;
    let mut out = Reference::new();
    for (origin, h) in map {
        let r: ReferenceHead = serde_json::from_value(h.clone())
            .map_err(|e| format!("{}: head of {origin}: {e}", path.display()))?;
        out.insert(origin.clone(), r);
    }
    Ok(out)
}

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify {
            data,
            topology,
            node,
            reference,
            json,
        } => {
            let topo = match Topology::load(&topology) {
                Ok(t) => t,
                Err(e) => return fail(UNREADABLE, e),
            };
            let reference = match reference.as_deref().map(load_reference).transpose() {
                Ok(r) => r,
                Err(e) => return fail(UNREADABLE, e),
            };
            let (_tmp, kv) = match open_copy(&data) {
                Ok(x) => x,
                Err(e) => return fail(UNREADABLE, e),
            };
            let bar = indicatif::ProgressBar::new_spinner();
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let started = std::time::Instant::now();
            // The node's own heads record beside its data directory: the
            // log must hold at least that (sled may recover a damaged log
            // to an earlier point without a word).
            let (record, record_problem) = match gridsync_store::heads_file::load(&data) {
                gridsync_store::heads_file::Loaded::Absent => (None, None),
                gridsync_store::heads_file::Loaded::Valid(r) => (Some(r), None),
                gridsync_store::heads_file::Loaded::Damaged(m) => (None, Some(m)),
            };
            let record_ref: Option<Reference> = record.as_ref().map(|r| {
                r.heads
                    .iter()
                    .map(|(o, h)| {
                        (
                            o.clone(),
                            ReferenceHead {
                                seq: h.seq,
                                hash: hex::encode(h.hash),
                                signed_at_ms: Some(h.signed_at_ms),
                                signature: Some(hex::encode(h.signature)),
                            },
                        )
                    })
                    .collect()
            });
            let mut refs: Vec<(&str, &Reference)> = Vec::new();
            if let Some(r) = &reference {
                refs.push(("the reference", r));
            }
            if let Some(r) = &record_ref {
                refs.push(("the node's heads record", r));
            }
            let mut report = audit::verify_with(
                &kv,
                &topo,
                node.as_deref(),
                &refs,
                record.as_ref().map(|r| r.next_offset),
                &|n| {
                    bar.set_message(format!("{n} events verified"));
                    bar.tick();
                },
            );
            if let Some(m) = record_problem {
                report.problems.push(audit::Problem {
                    kind: "heads_record_damaged".into(),
                    origin: None,
                    seq: None,
                    offset: None,
                    message: m,
                });
            }
            bar.finish_and_clear();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!(
                    "{} log entries, {} events, {} origins, verified in {:.2} s",
                    report.entries,
                    report.events,
                    report.origins.len(),
                    started.elapsed().as_secs_f64()
                );
                for (o, r) in &report.origins {
                    println!(
                        "  {o}: seq {}..{} ({} events), head {}…{}",
                        r.first_seq.unwrap_or(0),
                        r.last_seq,
                        r.events,
                        &r.head_hash[..12.min(r.head_hash.len())],
                        if r.problems > 0 {
                            format!(", {} PROBLEMS", r.problems)
                        } else {
                            String::new()
                        }
                    );
                }
                if report.ok() {
                    println!("OK: every chain, signature, head and index entry verifies");
                } else {
                    println!("{} PROBLEMS:", report.problems.len());
                    for p in &report.problems {
                        println!(
                            "  [{}] origin {} seq {}: {}",
                            p.kind,
                            p.origin.as_deref().unwrap_or("-"),
                            p.seq.map_or("-".into(), |s| s.to_string()),
                            p.message
                        );
                    }
                }
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(PROBLEMS)
            }
        }
        AuditCommand::Replay {
            data,
            topology,
            url,
            token,
            ca,
            origin,
            subtree,
            kind,
            from_seq,
            to_seq,
            from,
            to,
            recorded_from,
            recorded_to,
            with_personal,
        } => {
            let parse = |v: &Option<String>| -> Result<Option<i64>, String> {
                v.as_deref()
                    .map(|s| gridsync_model::time_fmt::parse_rfc3339_ms(s).map(|(ms, _)| ms))
                    .transpose()
            };
            let (from, to, rfrom, rto) = match (
                parse(&from),
                parse(&to),
                parse(&recorded_from),
                parse(&recorded_to),
            ) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
                _ => {
                    return fail(
                        UNREADABLE,
                        "a time filter is not RFC 3339 (like 2020-01-28T00:00:00+08:00)",
                    )
                }
            };
            if let (Some(url), Some(token)) = (&url, &token) {
                if subtree.is_some() && topology.is_none() {
                    return fail(UNREADABLE, "--subtree needs --topology");
                }
                let filter = RemoteFilter {
                    origin,
                    subtree: subtree.clone(),
                    kind,
                    from_seq,
                    to_seq,
                    from,
                    to,
                    recorded_from: rfrom,
                    recorded_to: rto,
                    with_personal,
                    topology: match topology.as_deref().map(Topology::load).transpose() {
                        Ok(t) => t,
                        Err(e) => return fail(UNREADABLE, e),
                    },
                };
                let ca_pem = match &ca {
                    Some(p) => match std::fs::read(p) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            return fail(
                                UNREADABLE,
                                format!("cannot read --ca {}: {e}", p.display()),
                            )
                        }
                    },
                    None => filter.topology.as_ref().and_then(|t| t.ca_pem.clone()),
                };
                let tls = match gridsync_node::tls::tool_client_config(ca_pem.as_deref(), "--ca") {
                    Ok(t) => t,
                    Err(e) => return fail(UNREADABLE, e),
                };
                return replay_remote(url, token, &filter, tls);
            }
            let (Some(data), Some(topology)) = (data, topology) else {
                return fail(
                    UNREADABLE,
                    "--data and --topology (or --url and --token) are required",
                );
            };
            let (topo, _tmp, store) = match open_verified(&data, &topology) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let allowed: Option<Vec<String>> = subtree.map(|s| topo.subtree(&s));
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut offset = 0;
            loop {
                let entries = match store.read_log(offset, 256) {
                    Ok(e) => e,
                    Err(e) => return fail(PROBLEMS, e),
                };
                if entries.is_empty() {
                    break;
                }
                for e in &entries {
                    let c = &e.chunk;
                    if origin.as_ref().is_some_and(|o| *o != c.origin)
                        || allowed.as_ref().is_some_and(|a| !a.contains(&c.origin))
                    {
                        continue;
                    }
                    let events = match c.decode_events() {
                        Ok(v) => v,
                        Err(err) => return fail(PROBLEMS, err),
                    };
                    for (ev, rec) in events.iter().zip(&c.events) {
                        let env = &ev.envelope;
                        let keep = kind.as_ref().is_none_or(|k| *k == env.kind)
                            && from_seq.is_none_or(|s| env.seq >= s)
                            && to_seq.is_none_or(|s| env.seq <= s)
                            && from.is_none_or(|t| env.occurred_at.unix_ms >= t)
                            && to.is_none_or(|t| env.occurred_at.unix_ms < t)
                            && rfrom.is_none_or(|t| env.recorded_at_ms >= t)
                            && rto.is_none_or(|t| env.recorded_at_ms < t);
                        if keep {
                            let view = gridsync_model::api::event_view(ev, rec, with_personal);
                            if serde_json::to_writer(&mut out, &view).is_err()
                                || out.write_all(b"\n").is_err()
                            {
                                return ExitCode::SUCCESS; // stdout closed (e.g. piped to head)
                            }
                        }
                    }
                }
                offset = entries.last().expect("non-empty").offset + 1;
            }
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        AuditCommand::Project {
            data,
            topology,
            as_of,
            known_at,
            at,
            node,
            from,
            to,
        } => {
            let t = match gridsync_model::time_fmt::parse_rfc3339_ms(&as_of) {
                Ok((ms, _)) => ms,
                Err(e) => return fail(UNREADABLE, format!("--as-of: {e}")),
            };
            let (topo, _tmp, store) = match open_verified(&data, &topology) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let cfg = match gridsync_projections::ProjectionConfig::new(&topo.timezone) {
                Ok(c) => c,
                Err(e) => return fail(UNREADABLE, e),
            };
            let p = match gridsync_node::aggregates::fold_as_of(&store, cfg, t, known_at) {
                Ok(p) => p,
                Err(e) => return fail(PROBLEMS, e),
            };
            let root = at.unwrap_or_else(|| {
                topo.nodes()
                    .find(|n| n.parent.is_none())
                    .map(|n| n.id.clone())
                    .unwrap_or_default()
            });
            let q = gridsync_node::aggregates::AggregatesQuery {
                node,
                from,
                to,
                depth: None,
                days: None,
                token: None,
            };
            match gridsync_node::aggregates::answer(&topo, &root, &p, &q, t, 366) {
                Ok(a) => {
                    eprintln!("state_hash {}", a.state_hash);
                    println!("{}", serde_json::to_string_pretty(&a).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(UNREADABLE, e.body.message),
            }
        }
    }
}

struct RemoteFilter {
    origin: Option<String>,
    /// Only origins in this node's subtree (needs the topology).
    subtree: Option<String>,
    kind: Option<String>,
    from_seq: Option<u64>,
    to_seq: Option<u64>,
    /// `occurred_at` range.
    from: Option<i64>,
    to: Option<i64>,
    recorded_from: Option<i64>,
    recorded_to: Option<i64>,
    with_personal: bool,
    /// With the topology: check the node's signed heads and that the
    /// streamed chains end in them.
    topology: Option<Topology>,
}

impl RemoteFilter {
    /// Whether a verified event is printed.
    fn keep(&self, v: &gridsync_model::api::EventView) -> bool {
        let ms = |t: &str| gridsync_model::time_fmt::parse_rfc3339_ms(t).map_or(0, |(ms, _)| ms);
        let (occurred, recorded) = (ms(&v.occurred_at), ms(&v.recorded_at));
        self.kind.as_ref().is_none_or(|k| *k == v.kind)
            && self.from_seq.is_none_or(|s| v.seq >= s)
            && self.to_seq.is_none_or(|s| v.seq <= s)
            && self.from.is_none_or(|t| occurred >= t)
            && self.to.is_none_or(|t| occurred < t)
            && self.recorded_from.is_none_or(|t| recorded >= t)
            && self.recorded_to.is_none_or(|t| recorded < t)
            && match (&self.subtree, &self.topology) {
                (Some(root), Some(topo)) => topo.subtree(root).contains(&v.origin),
                _ => true,
            }
    }
}

/// Recomputes an event's hash from its JSON view: the canonical envelope
/// bytes are a function of its fields (personal fields split off again).
fn view_hash(v: &gridsync_model::api::EventView) -> Result<[u8; 32], String> {
    let (occ_ms, occ_off) = gridsync_model::time_fmt::parse_rfc3339_ms(&v.occurred_at)?;
    let (rec_ms, _) = gridsync_model::time_fmt::parse_rfc3339_ms(&v.recorded_at)?;
    let prev: [u8; 32] = hex::decode(&v.prev)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("prev is not a 32-byte hex hash")?;
    let digest: Option<[u8; 32]> = match &v.personal_digest {
        None => None,
        Some(d) => Some(
            hex::decode(d)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or("personal_digest is not hex")?,
        ),
    };
    let mut data = v.data.clone();
    if v.personal == gridsync_model::api::PersonalState::Included {
        gridsync_model::event::split_personal(&mut data);
    }
    let bytes = gridsync_model::event::EnvelopeHeader {
        origin: &v.origin,
        seq: v.seq,
        kind: &v.kind,
        schema: v.schema,
        occurred_at: gridsync_model::OccurredAt {
            unix_ms: occ_ms,
            offset_min: occ_off,
        },
        recorded_at_ms: rec_ms,
        grid: &v.grid,
        recorded_by: &v.recorded_by,
        client_id: &v.client_id,
        prev: &prev,
        personal_digest: digest.as_ref(),
    }
    .encode_with_data(&gridsync_model::canonical::to_canonical(
        &serde_json::Value::Object(data),
    ));
    Ok(gridsync_model::event::event_hash(&bytes))
}

/// Per origin, the chain as streamed so far.
#[derive(Clone, Debug, Default)]
struct Streamed {
    seq: u64,
    hash: String,
}

/// The node's heads from its `/v1/status`: with the topology each must carry
/// its origin's valid signature (a problem otherwise).
fn status_heads(
    status: &gridsync_model::api::StatusResponse,
    topology: Option<&Topology>,
    problems: &mut Vec<String>,
) -> std::collections::BTreeMap<String, Streamed> {
    let mut heads = std::collections::BTreeMap::new();
    for (origin, h) in &status.heads {
        if let Some(topo) = topology {
            let head = (|| {
                Some(gridsync_model::SignedHead {
                    origin: origin.clone(),
                    seq: h.seq,
                    hash: hex::decode(&h.hash).ok()?.try_into().ok()?,
                    signed_at_ms: h.signed_at_ms,
                    signature: hex::decode(&h.signature).ok()?.try_into().ok()?,
                })
            })();
            let ok = matches!((head, topo.key_at(origin, h.seq)), (Some(head), Some(key)) if head.verify(&key).is_ok());
            if !ok {
                problems.push(format!(
                    "origin {origin} seq {}: the node's signed head does not verify with the origin's key",
                    h.seq
                ));
                continue;
            }
        }
        heads.insert(
            origin.clone(),
            Streamed {
                seq: h.seq,
                hash: h.hash.clone(),
            },
        );
    }
    heads
}

/// Checks one streamed event against its origin's chain so far: its hash
/// recomputed from its fields, seq `last + 1` (from 1), `prev` the last
/// hash (zero for seq 1), and the head hash at the head's seq. Returns the
/// problem, and resynchronises on the event either way.
fn check_streamed(
    v: &gridsync_model::api::EventView,
    chain: &mut Streamed,
    head: Option<&Streamed>,
) -> Option<String> {
    let (origin, seq) = (&v.origin, v.seq);
    let problem = match view_hash(v) {
        Err(e) => Some(format!("origin {origin} seq {seq}: {e}")),
        Ok(h) if hex::encode(h) != v.hash => Some(format!(
            "origin {origin} seq {seq}: its fields do not hash to its hash (altered)"
        )),
        Ok(_) if seq != chain.seq + 1 => Some(if seq > chain.seq + 1 {
            format!(
                "origin {origin} seq {}: missing — the node served seq {seq} after seq {} (a gap of {} events)",
                chain.seq + 1,
                chain.seq,
                seq - chain.seq - 1
            )
        } else {
            format!("origin {origin} seq {seq}: served again or out of order after seq {}", chain.seq)
        }),
        Ok(_) if chain.seq == 0 && v.prev != hex::encode(gridsync_model::ZERO_HASH) => Some(
            format!("origin {origin} seq {seq}: the first event's prev is not zero"),
        ),
        Ok(_) if chain.seq > 0 && v.prev != chain.hash => Some(format!(
            "origin {origin} seq {seq}: prev does not link to seq {}",
            chain.seq
        )),
        Ok(_) => head.and_then(|h| {
            (h.seq == seq && h.hash != v.hash).then(|| {
                format!("origin {origin} seq {seq}: differs from the origin's signed head (a fabricated chain)")
            })
        }),
    };
    chain.seq = seq;
    chain.hash.clone_from(&v.hash);
    problem
}

/// What one page request asks for: everything, in log order (or one
/// origin's chain); every filter is applied here, after verification, so a
/// filter can never hide a gap.
fn page_query(f: &RemoteFilter, cursor: Option<&str>) -> String {
    let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
    q.push((
        "personal",
        if f.with_personal {
            "include"
        } else {
            "withhold"
        }
        .into(),
    ));
    if let Some(o) = &f.origin {
        q.push(("origin", o.clone()));
    }
    if let Some(c) = cursor {
        q.push(("cursor", c.to_owned()));
    }
    // Values are ids and cursors: URL-safe.
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<T, String> {
    let resp = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}"));
    }
    resp.json()
        .await
        .map_err(|e| format!("unexpected answer from {url}: {e}"))
}

/// `audit replay --url`: streams a running node's log and proves every
/// chain gap-free from seq 1, linked, with recomputed hashes, up to the
/// origin's head — signed and verified with `--topology` — or exits 1
/// naming origin and seq. Filters are applied on this side.
fn replay_remote(url: &str, token: &str, f: &RemoteFilter, tls: rustls::ClientConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(UNREADABLE, e),
    };
    let http = match reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
    {
        Ok(h) => h,
        Err(e) => return fail(UNREADABLE, e),
    };
    rt.block_on(async move {
        let status: gridsync_model::api::StatusResponse =
            match get_json(&http, &format!("{url}/v1/status"), token).await {
                Ok(s) => s,
                Err(e) => return fail(UNREADABLE, e),
            };
        let mut problems = Vec::new();
        let heads = status_heads(&status, f.topology.as_ref(), &mut problems);
        let mut chains: std::collections::BTreeMap<String, Streamed> = Default::default();
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut cursor: Option<String> = None;
        loop {
            let q = page_query(f, cursor.as_deref());
            let page: gridsync_model::api::EventsPage =
                match get_json(&http, &format!("{url}/v1/events?{q}"), token).await {
                    Ok(p) => p,
                    Err(e) => return fail(UNREADABLE, e),
                };
            for v in &page.events {
                let head = heads.get(&v.origin);
                if f.topology.is_some() && head.is_none_or(|h| v.seq > h.seq) {
                    // Past the signed head (it grew meanwhile), or an origin
                    // without one: not covered by this replay.
                    if head.is_none() && !chains.contains_key(&v.origin) {
                        problems.push(format!(
                            "origin {}: served, but the node's verified heads do not list it",
                            v.origin
                        ));
                        chains.insert(v.origin.clone(), Streamed::default());
                    }
                    continue;
                }
                let chain = chains.entry(v.origin.clone()).or_default();
                if let Some(p) = check_streamed(v, chain, head) {
                    problems.push(p);
                }
                if f.keep(v)
                    && (serde_json::to_writer(&mut out, v).is_err()
                        || out.write_all(b"\n").is_err())
                {
                    return ExitCode::SUCCESS; // the reader went away
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let _ = out.flush();
        // Every chain must reach its head.
        for (origin, h) in &heads {
            if f.origin.as_ref().is_some_and(|o| o != origin) {
                continue;
            }
            let got = chains.get(origin).map_or(0, |c| c.seq);
            if got < h.seq {
                problems.push(format!(
                    "origin {origin} seq {}: missing — the chain stops at seq {got}, short of its head at seq {}",
                    got + 1,
                    h.seq
                ));
            }
        }
        if f.topology.is_none() {
            eprintln!(
                "gridsync audit: chains checked gap-free and linked from seq 1 to the node's heads, \
                 but the heads are not verified: pass --topology to check the origins' signatures \
                 (a node could serve a fabricated, self-consistent chain)"
            );
        }
        if problems.is_empty() {
            return ExitCode::SUCCESS;
        }
        for p in problems.iter().take(1000) {
            eprintln!("gridsync audit: problem: {p}");
        }
        fail(PROBLEMS, format!("{} problems in the replayed log", problems.len()))
    })
}
