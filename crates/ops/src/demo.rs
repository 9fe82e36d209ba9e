//! `gridsync demo`: a whole simulated district in one process — Laoshan
//! (崂山区) with its five streets and their communities, every node with its
//! own sled store, HTTP server and websocket links on 127.0.0.1, and
//! simulated grid workers producing field events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::provision::{provision_nodes, PlannedNode, TokensFile};
use crate::workload::Workload;
use gridsync_node::node::{open_node, system_now_ms, NodeState, OpenOptions};
use gridsync_server::serve;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the district's dashboard and API listen.
    pub listen: String,
    /// Data directory (a fresh temporary one when `None`).
    pub data: Option<PathBuf>,
    /// Events per second across the district.
    pub rate: f64,
    /// Take random communities offline for a while.
    pub chaos: bool,
    /// Communities per street (default: the real-sized tree).
    pub small: bool,
}

/// The five streets of Laoshan: id, name, communities (王哥庄 has 34).
const STREETS: &[(&str, &str, usize)] = &[
    ("jinjialing", "金家岭街道", 14),
    ("zhonghan", "中韩街道", 20),
    ("shazikou", "沙子口街道", 26),
    ("wanggezhuang", "王哥庄街道", 34),
    ("beizhai", "北宅街道", 24),
];

const FIRST: &[&str] = &[
    "东", "西", "南", "北", "上", "下", "大", "小", "前", "后", "山", "河", "港", "石", "青", "黄",
];
const SECOND: &[&str] = &[
    "麦窑", "台", "岭", "庄", "崖", "泉", "口", "涧", "村", "峪", "湾", "岔",
];
/// The demo tree: district, streets, communities.
pub fn laoshan_plan(small: bool) -> Vec<(String, String, Option<String>)> {
    let mut out = vec![("laoshan".to_owned(), "崂山区".to_owned(), None)];
    for (sid, sname, n) in STREETS {
        out.push((
            (*sid).to_owned(),
            (*sname).to_owned(),
            Some("laoshan".to_owned()),
        ));
        let n = if small { 2 } else { *n };
        for i in 0..n {
            let name = format!(
                "{}{}社区",
                FIRST[(i * 7 + sid.len()) % FIRST.len()],
                SECOND[(i * 5 + i / 12) % SECOND.len()]
            );
            out.push((
                format!("{sid}-c{:02}", i + 1),
                name,
                Some((*sid).to_owned()),
            ));
        }
    }
    out
}

/// Open files the demo wants: all its nodes run in one process, and the
/// full tree (124 nodes: sled's files, a listener and links each, the
/// simulated workers' connections) held 877 at once, with or without
/// `--chaos` — close to a stock soft limit of 1,024, so `demo` raises it
/// (`gridsync_node::open_files`). Twelve a node leaves room.
pub fn open_files_wanted(small: bool) -> u64 {
    laoshan_plan(small).len() as u64 * 12
}

/// Runs the demo until `shutdown` resolves.
///
/// # Errors
/// A directory or port problem, with what to do.
pub async fn run_demo(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let temp;
    let dir = match &opts.data {
        Some(d) => {
            if d.join("topology.toml").exists() {
                return Err(format!(
                    "{} holds an earlier demo; pass an empty or new --data directory",
                    d.display()
                ));
            }
            d.clone()
        }
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let plan = laoshan_plan(opts.small);
    let mut listeners = BTreeMap::new();
    let mut planned = Vec::new();
    for (id, name, parent) in &plan {
        let addr = if id == "laoshan" {
            opts.listen.clone()
        } else {
            "127.0.0.1:0".to_owned()
        };
        let l = gridsync_server::serve::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        planned.push(PlannedNode {
            id: id.clone(),
            name: name.clone(),
            parent: parent.clone(),
            listen: local.to_string(),
            public_key: None,
            forward_personal: false,
        });
        listeners.insert(id.clone(), l);
    }
    provision_nodes(
        "Asia/Shanghai",
        &planned,
        &dir,
        crate::provision::ProvisionOptions::default(),
    )
    .map_err(|e| e.0)?;
    let mut states: BTreeMap<String, Arc<NodeState>> = BTreeMap::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for p in &planned {
        let mut config =
            gridsync_deploy::config::NodeConfig::load(&dir.join(&p.id).join("config.toml"))
                .map_err(|e| e.0)?;
        config.store.cache_bytes = 4 << 20;
        config.sync.reconnect_min_ms = 100;
        config.sync.reconnect_max_ms = 2_000;
        config.sync.heartbeat_ms = 2_000;
        config.sync.idle_timeout_ms = 8_000;
        config.sync.ack_timeout_ms = 8_000;
        let state = open_node(config, &OpenOptions::default()).map_err(|e| e.0)?;
        let listener = listeners.remove(&p.id).expect("bound above");
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(serve(state.clone(), listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
        states.insert(p.id.clone(), state);
    }
    let tokens: TokensFile = toml::from_str(
        &std::fs::read_to_string(dir.join("laoshan").join("tokens.toml"))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let communities: Vec<String> = plan
        .iter()
        .filter(|(id, _, _)| states[id].is_origin)
        .map(|(id, _, _)| id.clone())
        .collect();
    println!(
        "gridsync demo: {} nodes ({} streets, {} communities), data in {}",
        planned.len(),
        STREETS.len(),
        communities.len(),
        dir.display()
    );
    println!("dashboard: http://{}/?token={}", opts.listen, tokens.viewer);
    println!(
        "           (English: add &lang=en; auditor token for the API: {})",
        tokens.auditor
    );

    let workers = tokio::spawn(run_workers(states.clone(), communities.clone(), opts.rate));
    let chaos = opts
        .chaos
        .then(|| tokio::spawn(run_chaos(states.clone(), communities.clone())));
    shutdown.await;
    println!("gridsync demo: stopping");
    workers.abort();
    if let Some(c) = chaos {
        c.abort();
    }
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    drop(states);
    if opts.data.is_none() {
        // The temporary data directory was ours; a --data directory is kept.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir().join(format!(
        "gridsync-demo-{}-{}",
        std::process::id(),
        system_now_ms()
    ));
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    Ok(base)
}

async fn run_workers(
    states: BTreeMap<String, Arc<NodeState>>,
    communities: Vec<String>,
    rate: f64,
) {
    let mut w = Workload::new(StdRng::from_entropy().gen(), "demo");
    let tick = Duration::from_millis(200);
    let per_tick = rate * tick.as_secs_f64();
    let mut carry = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        carry += per_tick;
        let n = carry.floor() as usize;
        carry -= n as f64;
        let mut by_community: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for _ in 0..n {
            let c = w.pick(&communities).to_owned();
            let e = w.event(&c);
            by_community.entry(c).or_default().push(e);
        }
        for (c, events) in by_community {
            let state = &states[&c];
            let prepared: Vec<(PreparedEvent, Value)> = {
                let limits = IngestLimits::default();
                let ctx = IngestContext {
                    node_id: &c,
                    now_ms: system_now_ms(),
                    limits: &limits,
                };
                let lookup = |r: &EventRef| {
                    state.store.find_event(r).ok().flatten().map(|(e, _)| {
                        gridsync_model::ingest::TargetInfo {
                            kind: e.envelope.kind,
                            schema: e.envelope.schema,
                        }
                    })
                };
                events
                    .into_iter()
                    .filter_map(|e| {
                        prepare(e.clone(), &ctx, &lookup, &mut rand::rngs::OsRng)
                            .ok()
                            .map(|p| (p, e))
                    })
                    .collect()
            };
            let (evs, raw): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
            if evs.is_empty() {
                continue;
            }
            if let Ok(results) = state.store.append(evs, system_now_ms()).await {
                for (r, e) in results.iter().zip(raw) {
                    let data = serde_json::to_vec(&e["data"]).unwrap_or_default();
                    w.stored(&c, r.seq, e["kind"].as_str().unwrap_or(""), &data);
                }
            }
        }
    }
}

async fn run_chaos(states: BTreeMap<String, Arc<NodeState>>, communities: Vec<String>) {
    let mut rng = StdRng::from_entropy();
    loop {
        tokio::time::sleep(Duration::from_secs(rng.gen_range(3..8))).await;
        let c = communities[rng.gen_range(0..communities.len())].clone();
        let offline = Duration::from_secs(rng.gen_range(10..40));
        tracing::info!(community = %c, offline_s = offline.as_secs(), "chaos: taking a community offline");
        let state = states[&c].clone();
        state.sync.paused.send_replace(true);
        tokio::spawn(async move {
            tokio::time::sleep(offline).await;
            state.sync.paused.send_replace(false);
        });
    }
}
