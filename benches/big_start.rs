//! A node with a large log starting. A street (`s1`, 4 communities below
//! it) holds N events, half posted one at a time (one-event chunks, one
//! signed head each: phones) and half in 30-event chunks, a realistic mix
//! of the four kinds; they are written straight into its store. Then
//! `gridsync serve` (release build, a separate process) starts three times:
//! first with no saved projection (it folds the whole log, and saves the
//! projection when stopped), then twice as it normally does — the log
//! checked at its checkpoint, the projection resumed from its snapshot.
//! Measured: time from spawn to the "listening" line, to the projection
//! holding the whole log (a start folds for at most
//! `projections.fold_before_listen_s`, the running node the rest), RSS 3 s
//! after listening, how long the whole-log check the node runs beside
//! itself takes, and RSS at rest (5 s after that check finished).
//!
//! Then `gridsync audit verify` of the same data directory
//! (`GRIDSYNC_BENCH_AUDITS` times, default 1; with
//! `GRIDSYNC_BENCH_AUDIT_BASELINE=path/to/another/gridsync`, that build
//! audits in turn with this one; `GRIDSYNC_BENCH_AUDIT_SIGNATURES=newest`
//! checks each run's newest head instead of every signature).
//!
//! `cargo build --release -p gridsync && cargo bench --bench big_start`
//! (`GRIDSYNC_BENCH_EVENTS`, default 10000000; `GRIDSYNC_BENCH_KEEP=1`
//! only writes the log and leaves the tree's directory for a closer look;
//! `GRIDSYNC_BENCH_PACK_BYTES=0` writes every log entry under its own key,
//! as before packs — the baseline for them; `GRIDSYNC_BENCH_HEADS=v1`
//! closes the chunks with v1 heads, as builds before 2026-12-05 signed —
//! the baseline for the full audit of v2 heads).
//!
//! `GRIDSYNC_BENCH_TREE=/tmp/…/deploy` starts a kept tree again instead of
//! writing a new one (the events are counted from the street's heads);
//! `GRIDSYNC_BENCH_STARTS` (default 3) sets the number of starts, and
//! `GRIDSYNC_BENCH_START_BASELINE=path/to/another/gridsync` starts that
//! build in turn with this one (the same data, alternating).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gridsync_deploy::config::NodeConfig;
use gridsync_deploy::topology::Topology;
use gridsync_store::{Kv, SledKv, Store, StoreConfig};
use gridsync_suite::{gridsync_bin, provision};

const COMMUNITIES: [&str; 4] = ["c1", "c2", "c3", "c4"];

/// Writes `n` events of the four communities into the street's store.
fn write_log(tree: &gridsync_suite::Tree, n: u64) {
    let topo = Topology::load(&tree.topology).unwrap();
    let street = NodeConfig::load(&tree.nodes["s1"].config).unwrap();
    let keys: Vec<_> = COMMUNITIES
        .iter()
        .map(|c| {
            let cfg = NodeConfig::load(&tree.nodes[*c].config).unwrap();
            let hex = std::fs::read_to_string(&cfg.key_file).unwrap();
            gridsync_model::keys::signing_key_from_hex(&hex).unwrap()
        })
        .collect();
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        pack_entry_bytes_max: gridsync_suite::env_u64(
            "GRIDSYNC_BENCH_PACK_BYTES",
            defaults.pack_entry_bytes_max as u64,
        ) as usize,
        ..defaults
    };
    let kv = Arc::new(SledKv::open(&street.data_dir, 64 << 20).unwrap());
    let store = Store::open(
        kv.clone(),
        config,
        None,
        Arc::new(move |o: &str, seq: u64| topo.key_at(o, seq)),
    )
    .unwrap();
    let mut chains = gridsync_suite::SampleChains::new(
        COMMUNITIES
            .iter()
            .map(|c| (*c).to_owned())
            .zip(keys)
            .collect(),
    );
    if std::env::var("GRIDSYNC_BENCH_HEADS").as_deref() == Ok("v1") {
        chains = chains.with_v1_heads();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let per_origin = n / COMMUNITIES.len() as u64;
    loop {
        // Per origin: 30 one-event chunks, then one 30-event chunk; the
        // origins take turns, so no two consecutive chunks of one origin
        // are merged on arrival (the one-event chunks stay as phones made
        // them, as when they arrive one per push).
        let mut chunks = Vec::new();
        for len in std::iter::repeat_n(1, 30).chain([30]) {
            for o in 0..COMMUNITIES.len() {
                chunks.extend(chains.next_chunk(o, len, per_origin));
            }
        }
        if chunks.is_empty() {
            break;
        }
        rt.block_on(store.import(chunks, 1_700_000_000_000))
            .unwrap();
    }
    let c = store.counts();
    store.close();
    let took = started.elapsed().as_secs_f64();
    let log_keys = count_keys(kv.as_ref(), &[gridsync_store::layout::LOG]);
    let all_keys = count_keys(kv.as_ref(), &[]);
    println!(
        "wrote {} events in {} chunks in {took:.0} s: {log_keys} log keys, {all_keys} keys in all, {:.0} MB on disk",
        c.events,
        c.chunks,
        kv.size_on_disk() as f64 / 1e6
    );
}

/// Events the street holds (its heads' seqs summed), read from its store.
fn stored_events(tree: &gridsync_suite::Tree) -> u64 {
    let street = NodeConfig::load(&tree.nodes["s1"].config).unwrap();
    let kv = SledKv::open(&street.data_dir, 64 << 20).unwrap();
    let heads = [gridsync_store::layout::HEAD];
    let page = kv.scan(&heads, &heads, COMMUNITIES.len() + 1).unwrap();
    page.iter()
        .map(|(_, v)| u64::from_be_bytes(v[..8].try_into().unwrap()))
        .sum()
}

/// Keys under `prefix`, a page at a time.
fn count_keys(kv: &dyn Kv, prefix: &[u8]) -> u64 {
    let mut start = prefix.to_vec();
    let mut n = 0;
    loop {
        let page = kv.scan(&start, prefix, 65_536).unwrap();
        n += page.len() as u64;
        match page.last() {
            Some((k, _)) if page.len() == 65_536 => {
                start.clone_from(k);
                start.push(0);
            }
            _ => return n,
        }
    }
}

struct Start {
    listening: Duration,
    /// When the projection had folded the whole log (`/v1/status`
    /// `log.projected_chunks` equal to `log.chunks`): the start folds for
    /// at most `projections.fold_before_listen_s`, the node the rest.
    projected: Duration,
    rss_mb: f64,
    verified: Duration,
    /// RSS 5 s after the whole-log check finished.
    rest_mb: f64,
}

fn start(bin: &std::path::Path, config: &std::path::Path, viewer: &str) -> Start {
    let spawned = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut url = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(u) = line.unwrap().strip_prefix("gridsync: listening on ") {
            url = u.to_owned();
            break;
        }
    }
    let listening = spawned.elapsed();
    assert!(!url.is_empty(), "the node did not start");
    // Until the projection has folded the whole log and the whole-log
    // check beside the node is done; RSS 3 s after listening meanwhile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut projected, mut verified, mut rss_mb) = (None, None, None);
    rt.block_on(async {
        loop {
            if rss_mb.is_none() && spawned.elapsed() >= listening + Duration::from_secs(3) {
                rss_mb = Some(gridsync_suite::rss_kib(child.id()) as f64 / 1024.0);
            }
            if projected.is_none() {
                let st =
                    gridsync_suite::get_json(&format!("{url}/v1/status?brief=true"), viewer).await;
                // Builds before 2026-12-06 fold the whole log before
                // they listen (and do not report `projected_chunks`).
                let p = &st["log"]["projected_chunks"];
                if p.is_null() || *p == st["log"]["chunks"] {
                    projected = Some(spawned.elapsed());
                }
            }
            if verified.is_none() {
                match gridsync_suite::metric(&url, viewer, "gridsync_log_verified").await {
                    Some(v) if v != 0.0 => {
                        assert_eq!(v, 1.0, "the whole-log check found damage");
                        verified = Some(spawned.elapsed());
                    }
                    _ => {}
                }
            }
            if projected.is_some() && verified.is_some() && rss_mb.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (projected, verified, rss_mb) = (projected.unwrap(), verified.unwrap(), rss_mb.unwrap());
    // At rest: the whole-log check done, nothing posted, 5 s later.
    std::thread::sleep(Duration::from_secs(5));
    let rest_mb = gridsync_suite::rss_kib(child.id()) as f64 / 1024.0;
    // Stop (SIGTERM): the projection is saved at shutdown.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
    Start {
        listening,
        projected,
        rss_mb,
        verified,
        rest_mb,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![("s1", None)];
    nodes.extend(COMMUNITIES.iter().map(|c| (*c, Some("s1"))));
    let (tree, n) = match std::env::var_os("GRIDSYNC_BENCH_TREE") {
        Some(kept) => {
            let ids: Vec<&str> = nodes.iter().map(|(id, _)| *id).collect();
            let tree = gridsync_suite::load_tree(std::path::Path::new(&kept), &ids);
            let n = stored_events(&tree);
            eprintln!(
                "starting the kept tree in {} ({n} events)",
                tree.dir.display()
            );
            (tree, n)
        }
        None => {
            let n = gridsync_suite::env_u64("GRIDSYNC_BENCH_EVENTS", 10_000_000);
            let tree = provision(dir.path(), &nodes);
            write_log(&tree, n);
            if std::env::var_os("GRIDSYNC_BENCH_KEEP").is_some() {
                // Leave the tree for a closer look (heap profiles, other builds).
                eprintln!("keeping the tree in {}", dir.keep().display());
                return;
            }
            (tree, n)
        }
    };
    let s1 = &tree.nodes["s1"];
    let this = gridsync_bin();
    let start_baseline =
        std::env::var_os("GRIDSYNC_BENCH_START_BASELINE").map(std::path::PathBuf::from);
    let mut builds = vec![("this build", this.as_path())];
    if let Some(b) = &start_baseline {
        builds.push(("baseline", b.as_path()));
    }
    println!("| start | build | listening after | projection complete after | RSS 3 s later | whole-log check done after | RSS 5 s after the check |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    // (time to listening, whether a saved projection was there) per start
    let mut listening = Vec::new();
    for i in 0..gridsync_suite::env_u64("GRIDSYNC_BENCH_STARTS", 3) as usize {
        // Alternating, the baseline first every other round: neither build
        // always starts on the page cache the other warmed.
        let (what_build, bin) = builds[(i + i / builds.len()) % builds.len()];
        let saved = gridsync_projections::snapshot::path(&s1.data_dir).exists();
        let s = start(bin, &s1.config, &s1.tokens.viewer);
        let what = if saved {
            "checkpoint + saved projection"
        } else {
            "no saved projection: whole log folded (the part after fold_before_listen_s while serving)"
        };
        println!(
            "| {what} | {what_build} | {:.2} s | {:.2} s | {:.0} MB | {:.1} s | {:.0} MB |",
            s.listening.as_secs_f64(),
            s.projected.as_secs_f64(),
            s.rss_mb,
            s.verified.as_secs_f64(),
            s.rest_mb
        );
        listening.push((s.listening.as_secs_f64(), saved));
    }
    // The fold of the whole log against starts from the saved projection.
    if let [(first, false), (a, true), (b, true), ..] = listening[..] {
        println!(
            "first start {first:.2} s; later starts {a:.2} s and {b:.2} s ({:.0}× faster)",
            first / a.max(b)
        );
    }
    // A baseline build (`GRIDSYNC_BENCH_AUDIT_BASELINE`: another gridsync
    // binary) audits the same log in turn with this one.
    let baseline = std::env::var_os("GRIDSYNC_BENCH_AUDIT_BASELINE").map(std::path::PathBuf::from);
    for _ in 0..gridsync_suite::env_u64("GRIDSYNC_BENCH_AUDITS", 1) {
        audit(&tree, n, &gridsync_bin(), "this build");
        if let Some(b) = &baseline {
            audit(&tree, n, b, "baseline");
        }
    }
}

/// `gridsync audit verify` of the street's data directory, as an auditor
/// runs it: the time of the pass (the CLI's "verified in") and the wall
/// time with the copy of the data directory.
fn audit(tree: &gridsync_suite::Tree, n: u64, bin: &std::path::Path, what: &str) {
    let street = NodeConfig::load(&tree.nodes["s1"].config).unwrap();
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["audit", "verify", "--node", "s1", "--signatures"])
        .arg(std::env::var("GRIDSYNC_BENCH_AUDIT_SIGNATURES").unwrap_or_else(|_| "all".into()))
        .arg("--data")
        .arg(&street.data_dir)
        .arg("--topology")
        .arg(&tree.topology)
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "audit verify failed: {text}");
    let pass: f64 = text
        .split("verified in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("the audit's time");
    println!(
        "audit verify ({what}): pass {pass:.2} s ({:.0} events/s), {wall:.2} s with the copy ({:.0} events/s)",
        n as f64 / pass,
        n as f64 / wall
    );
}
