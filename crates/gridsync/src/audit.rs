//! `gridsync audit …`: flags in, `gridsync_audit` does the work, results
//! printed here. Exit codes: 0 verified, 1 problems, 2 unreadable input.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use gridsync_audit::replay::EventFilter;
use gridsync_audit::verify::{AuditReport, Signatures};
use gridsync_audit::{data, AuditError};
use gridsync_deploy::topology::Topology;
use gridsync_model::api::EventView;
use gridsync_projections::rollup::RangeQuery;

use crate::cli::AuditCommand;

/// Exit code when the input could not be read.
const UNREADABLE: u8 = 2;
/// Exit code when problems were found.
const PROBLEMS: u8 = 1;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gridsync audit: {msg}");
    ExitCode::from(code)
}

fn failed(e: AuditError) -> ExitCode {
    match e {
        AuditError::Unreadable(m) => fail(UNREADABLE, m),
        AuditError::Problems(m) => fail(PROBLEMS, m),
    }
}

fn load_topology(path: &Path) -> Result<Topology, ExitCode> {
    Topology::load(path).map_err(|e| fail(UNREADABLE, e))
}

/// An RFC 3339 flag as unix ms.
fn parse_time(flag: &str, v: Option<&str>) -> Result<Option<i64>, ExitCode> {
    v.map(|s| gridsync_model::time_fmt::parse_rfc3339_ms(s).map(|(ms, _)| ms))
        .transpose()
        .map_err(|_| {
            fail(
                UNREADABLE,
                format!("--{flag} is not RFC 3339 (like 2020-01-28T00:00:00+08:00)"),
            )
        })
}

/// Prints events as JSON lines; `false` once stdout is gone (e.g. piped to
/// `head`).
fn json_lines(out: &mut impl Write) -> impl FnMut(&EventView) -> bool + '_ {
    move |v| serde_json::to_writer(&mut *out, v).is_ok() && out.write_all(b"\n").is_ok()
}

pub fn run(command: AuditCommand) -> ExitCode {
    let r = match command {
        AuditCommand::Verify {
            data,
            topology,
            node,
            reference,
            json,
            signatures,
        } => verify(
            &data,
            &topology,
            (node.as_deref(), reference.as_deref()),
            json,
            signatures.into(),
        ),
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
            signatures,
        } => (|| {
            let topo = topology.as_deref().map(load_topology).transpose()?;
            if subtree.is_some() && topo.is_none() {
                return Err(fail(UNREADABLE, "--subtree needs --topology"));
            }
            let filter = EventFilter {
                origin,
                origins: subtree.map(|s| {
                    topo.as_ref()
                        .expect("checked")
                        .subtree(&s)
                        .into_iter()
                        .collect()
                }),
                kind,
                from_seq,
                to_seq,
                occurred_from: parse_time("from", from.as_deref())?,
                occurred_to: parse_time("to", to.as_deref())?,
                recorded_from: parse_time("recorded-from", recorded_from.as_deref())?,
                recorded_to: parse_time("recorded-to", recorded_to.as_deref())?,
            };
            match (url, token, data, topo) {
                (Some(url), Some(token), _, topo) => replay_remote(
                    &url,
                    &token,
                    ca.as_deref(),
                    &filter,
                    with_personal,
                    topo.as_ref(),
                ),
                (_, _, Some(data), Some(topo)) => {
                    replay_local(&data, &topo, &filter, with_personal, signatures.into())
                }
                _ => Err(fail(
                    UNREADABLE,
                    "--data and --topology (or --url and --token) are required",
                )),
            }
        })(),
        AuditCommand::Project {
            data,
            topology,
            as_of,
            known_at,
            at,
            node,
            from,
            to,
            signatures,
        } => {
            let q = RangeQuery {
                node,
                from,
                to,
                depth: None,
                days: None,
            };
            let signatures = signatures.into();
            project(
                &data,
                &topology,
                (&as_of, known_at),
                at.as_deref(),
                &q,
                signatures,
            )
        }
    };
    r.unwrap_or_else(|code| code)
}

fn verify(
    data: &Path,
    topology: &Path,
    (node, reference): (Option<&str>, Option<&Path>),
    json: bool,
    signatures: Signatures,
) -> Result<ExitCode, ExitCode> {
    let how = gridsync_audit::verify::How {
        signatures,
        ..Default::default()
    };
    let topo = load_topology(topology)?;
    let reference = reference
        .map(gridsync_audit::reference::load)
        .transpose()
        .map_err(|e| fail(UNREADABLE, e))?;
    let copying = std::time::Instant::now();
    let (_tmp, kv) = data::open_copy(data).map_err(failed)?;
    let copied_s = copying.elapsed().as_secs_f64();
    let bar = spinner();
    let started = std::time::Instant::now();
    let report = gridsync_audit::verify::verify_data_dir(
        &kv,
        data,
        &topo,
        (node, reference.as_ref()),
        how,
        &|n| verified(&bar, n),
    );
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let took_s = (started.elapsed().as_secs_f64(), copied_s);
        print_report(&report, took_s, how.signatures);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(PROBLEMS)
    })
}

/// A spinner on stderr when it is a terminal (hidden otherwise).
fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

fn verified(bar: &indicatif::ProgressBar, n: u64) {
    bar.set_message(format!("{n} events verified"));
    bar.tick();
}

/// A copy of `data` that verified, as a store (the audit's pass, shown
/// on a spinner).
fn open_verified(
    data: &Path,
    topo: &Topology,
    signatures: Signatures,
) -> Result<(tempfile::TempDir, gridsync_store::Store), ExitCode> {
    let bar = spinner();
    let opened = data::open_verified(data, topo, signatures, &|n| verified(&bar, n));
    bar.finish_and_clear();
    opened.map_err(failed)
}

/// `took_s`: the pass, and the copy of the data directory before it.
fn print_report(report: &AuditReport, (took_s, copied_s): (f64, f64), signatures: Signatures) {
    println!(
        "{} log entries, {} events, {} origins, verified in {took_s:.2} s (after {copied_s:.2} s \
         copying the data directory)",
        report.entries,
        report.events,
        report.origins.len(),
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
        match signatures {
            Signatures::All => {
                println!("OK: every chain, signature, head and index entry verifies");
            }
            Signatures::Newest => println!(
                "OK: every chain, head and index entry verifies, and each run's newest signed head \
                 (older heads' own signatures not checked: --signatures all)"
            ),
        }
        return;
    }
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

fn replay_local(
    data: &Path,
    topo: &Topology,
    filter: &EventFilter,
    with_personal: bool,
    signatures: Signatures,
) -> Result<ExitCode, ExitCode> {
    let (_tmp, store) = open_verified(data, topo, signatures)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    gridsync_audit::replay::replay_local(&store, filter, with_personal, &mut out)
        .map_err(|e| fail(PROBLEMS, e))?;
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

fn replay_remote(
    url: &str,
    token: &str,
    ca: Option<&Path>,
    filter: &EventFilter,
    with_personal: bool,
    topo: Option<&Topology>,
) -> Result<ExitCode, ExitCode> {
    let ca_pem = match ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| fail(UNREADABLE, format!("cannot read --ca {}: {e}", p.display())))?,
        ),
        None => topo.and_then(|t| t.ca_pem.clone()),
    };
    let tls = gridsync_node::tls::tool_client_config(ca_pem.as_deref(), "--ca")
        .map_err(|e| fail(UNREADABLE, e))?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| fail(UNREADABLE, e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(UNREADABLE, e))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let report = rt
        .block_on(gridsync_audit::remote::replay_remote(
            &http,
            url,
            token,
            filter,
            with_personal,
            topo,
            &mut json_lines(&mut out),
        ))
        .map_err(|e| fail(UNREADABLE, e))?;
    let _ = out.flush();
    if !report.heads_verified {
        eprintln!(
            "gridsync audit: chains checked gap-free and linked from seq 1 to the node's heads, \
             but the heads are not verified: pass --topology to check the origins' signatures \
             (a node could serve a fabricated, self-consistent chain)"
        );
    }
    if report.problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in report.problems.iter().take(1000) {
        eprintln!("gridsync audit: problem: {p}");
    }
    let n = report.problems.len();
    Err(fail(PROBLEMS, format!("{n} problems in the replayed log")))
}

fn project(
    data: &Path,
    topology: &Path,
    (as_of, known_at): (&str, bool),
    at: Option<&str>,
    q: &RangeQuery,
    signatures: Signatures,
) -> Result<ExitCode, ExitCode> {
    let t = gridsync_model::time_fmt::parse_rfc3339_ms(as_of)
        .map_err(|e| fail(UNREADABLE, format!("--as-of: {e}")))?
        .0;
    let topo = load_topology(topology)?;
    let (_tmp, store) = open_verified(data, &topo, signatures)?;
    let a = gridsync_audit::project::project(&store, &topo, t, known_at, at, q).map_err(failed)?;
    eprintln!("state_hash {}", a.state_hash);
    println!("{}", serde_json::to_string_pretty(&a).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
