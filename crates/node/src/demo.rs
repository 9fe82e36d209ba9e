//! `gridsync demo`: a whole simulated district in one process — Laoshan
//! (崂山区) with its five streets and their communities, every node with its
//! own sled store, HTTP server and websocket links on 127.0.0.1, and
//! simulated grid workers producing field events.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gridsync_model::ingest::{prepare, IngestContext, IngestLimits, PreparedEvent};
use gridsync_model::kinds::EventRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::node::{open_node, serve, system_now_ms, NodeState, OpenOptions};
use crate::provision::{provision_nodes, PlannedNode, TokensFile};

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
const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "孙", "于",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明",
];
const ITEMS: &[&str] = &["面条", "牛奶", "熟食", "饼干", "蔬菜", "大米", "鸡蛋"];

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

struct Worker {
    rng: StdRng,
    /// Per community: recent (seq, kind, data) for corrections.
    recent: BTreeMap<String, VecDeque<(u64, String, Value)>>,
    quarantined: BTreeMap<String, Vec<String>>,
    n: u64,
}

impl Worker {
    fn person(&mut self) -> Value {
        let name = format!(
            "{}{}",
            SURNAMES[self.rng.gen_range(0..SURNAMES.len())],
            GIVEN[self.rng.gen_range(0..GIVEN.len())]
        );
        json!({"name": name, "phone": format!("1{:010}", self.rng.gen_range(3_000_000_000u64..9_999_999_999))})
    }

    /// One realistic event for `community`, as a device would post it.
    fn event(&mut self, community: &str) -> Value {
        self.n += 1;
        let now = system_now_ms();
        let late = self.rng.gen_bool(0.03);
        let at = if late {
            now - self.rng.gen_range(3_600_000..30 * 3_600_000)
        } else {
            now - self.rng.gen_range(0..120_000)
        };
        let occurred_at = gridsync_model::time_fmt::format_rfc3339_ms(at, 480);
        let household = format!("{community}-h{:03}", self.rng.gen_range(1..80));
        let roll: f64 = self.rng.gen();
        let recent_len = self.recent.get(community).map_or(0, VecDeque::len);
        let (kind, data) = if roll < 0.02 && recent_len > 0 {
            let q = &self.recent[community];
            let (seq, kind, data) = q[self.rng.gen_range(0..q.len())].clone();
            let mut d = json!({"target": {"origin": community, "seq": seq}, "reason": "登记有误"});
            if kind != "correction" && self.rng.gen_bool(0.5) {
                d["action"] = json!("void");
            } else {
                d["action"] = json!("replace");
                let mut r = data.clone();
                if kind == "temperature" {
                    r["celsius"] = json!(36.6);
                    r["action"] = json!("none");
                }
                d["replacement"] = r;
            }
            ("correction", d)
        } else if roll < 0.37 {
            let hubei = self.rng.gen_bool(0.05);
            let subject = ["resident", "resident", "resident", "visitor", "vehicle"]
                [self.rng.gen_range(0..5)];
            let decision = if hubei && self.rng.gen_bool(0.5) {
                "referred"
            } else if self.rng.gen_bool(0.08) {
                "turned_back"
            } else {
                "admitted"
            };
            let from_region = if hubei {
                "湖北省武汉市"
            } else {
                ["山东省青岛市", "山东省青岛市", "山东省济南市", "北京市"][self.rng.gen_range(0..4)]
            };
            let mut d = json!({
                "checkpoint": format!("{community}-cp{}", self.rng.gen_range(1..4)),
                "direction": if self.rng.gen_bool(0.7) { "in" } else { "out" },
                "subject": subject, "person": self.person(),
                "from_region": from_region,
                "purpose": "返乡", "decision": decision,
                "celsius": (362 + self.rng.gen_range(0..10)) as f64 / 10.0,
            });
            if subject == "vehicle" {
                d["plate"] = json!(format!("鲁B{:05}", self.rng.gen_range(0..99999)));
            }
            ("entry", d)
        } else if roll < 0.72 {
            let fever = self.rng.gen_bool(0.02);
            let c = if fever {
                self.rng.gen_range(373..395)
            } else {
                self.rng.gen_range(358..372)
            } as f64
                / 10.0;
            (
                "temperature",
                json!({
                    "person": self.person(), "celsius": c,
                    "site": (["checkpoint", "home", "home", "clinic"][self.rng.gen_range(0..4)]),
                    "action": if fever { "referred" } else { "none" },
                }),
            )
        } else if roll < 0.92 {
            let q = self.quarantined.entry(community.to_owned()).or_default();
            let status = if q.contains(&household) {
                if self.rng.gen_bool(0.1) {
                    q.retain(|h| *h != household);
                    "ended"
                } else {
                    "ongoing"
                }
            } else if self.rng.gen_bool(0.06) {
                q.push(household.clone());
                "started"
            } else {
                "none"
            };
            (
                "visit",
                json!({
                    "household": household, "method": if self.rng.gen_bool(0.6) { "in_person" } else { "phone" },
                    "residents": self.rng.gen_range(1..6), "symptoms": false, "quarantine": status,
                }),
            )
        } else {
            let quarantined = self
                .quarantined
                .get(community)
                .is_some_and(|q| !q.is_empty());
            let h = if quarantined {
                self.quarantined[community][0].clone()
            } else {
                household
            };
            let items: Vec<Value> = (0..self.rng.gen_range(1..4))
                .map(|_| json!({"item": ITEMS[self.rng.gen_range(0..ITEMS.len())], "qty": self.rng.gen_range(1..5)}))
                .collect();
            (
                "delivery",
                json!({"household": h, "items": items, "quarantined": quarantined}),
            )
        };
        json!({
            "kind": kind, "occurred_at": occurred_at, "grid": format!("g{:02}", self.rng.gen_range(1..12)),
            "recorded_by": format!("w{:03}", self.rng.gen_range(1..40)), "client_id": format!("demo-{community}-{}", self.n),
            "data": data,
        })
    }
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
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        planned.push(PlannedNode {
            id: id.clone(),
            name: name.clone(),
            parent: parent.clone(),
            listen: local.to_string(),
        });
        listeners.insert(id.clone(), l);
    }
    provision_nodes("Asia/Shanghai", &planned, &dir, false).map_err(|e| e.0)?;
    let mut states: BTreeMap<String, Arc<NodeState>> = BTreeMap::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for p in &planned {
        let mut config = crate::config::NodeConfig::load(&dir.join(&p.id).join("config.toml"))
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
    let mut w = Worker {
        rng: StdRng::from_entropy(),
        recent: BTreeMap::new(),
        quarantined: BTreeMap::new(),
        n: 0,
    };
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
            let c = communities[w.rng.gen_range(0..communities.len())].clone();
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
                let q = w.recent.entry(c.clone()).or_default();
                for (r, e) in results.iter().zip(raw) {
                    if e["kind"] != "correction" {
                        q.push_back((
                            r.seq,
                            e["kind"].as_str().unwrap_or("").to_owned(),
                            e["data"].clone(),
                        ));
                    }
                    if q.len() > 20 {
                        q.pop_front();
                    }
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
