//! Shared helpers for the workspace-level tests and benchmarks: provision a
//! tree in a temp dir, run `gridsync serve` processes, make valid events.

pub mod nats;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `gridsync` binary built by `cargo test --workspace` / `cargo build`.
///
/// # Panics
/// When the binary has not been built.
pub fn gridsync_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/gridsync
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join(format!("gridsync{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binary)",
        bin.display()
    );
    bin
}

/// CA certificates the test helpers' HTTP clients trust (each TLS test
/// adds its deployment's; reqwest's own root stores are never used).
static TRUSTED_CAS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Makes [`http_client`] (and so every helper) trust `ca_pem` too.
pub fn trust_ca(ca_pem: &[u8]) {
    let mut cas = TRUSTED_CAS.lock().unwrap();
    cas.extend_from_slice(ca_pem);
    cas.push(b'\n');
}

/// An HTTP client for the tests: HTTPS trusting only the CAs given to
/// [`trust_ca`] (none: plain HTTP only).
///
/// # Panics
/// A CA that is not PEM certificates.
pub fn http_client() -> reqwest::Client {
    let cas = TRUSTED_CAS.lock().unwrap().clone();
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            gridsync_node::tls::tool_client_config(
                (!cas.is_empty()).then_some(&cas[..]),
                "test CA",
            )
            .expect("CA"),
        )
        .build()
        .expect("an HTTP client")
}

/// A free loopback port for a node to listen on later.
///
/// Taken from just below the kernel's ephemeral range (the source ports of
/// outgoing connections): a port from that range, free when checked, could
/// become some parallel test's connection's source port before the node
/// binds it ("Address already in use"); below it only another explicit
/// bind can take it, and the tests of one process walk the range from a
/// per-process start with a shared counter. Falls back to the kernel's
/// choice when that range is too low.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = 8_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low >= SPAN + 1_024 {
        let base = ephemeral_low - SPAN;
        let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
        for _ in 0..SPAN {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = base + (start + n) % SPAN;
            let port = u16::try_from(port).expect("below the ephemeral range");
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Plaintext tokens of one node.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Tokens {
    pub reporter: String,
    pub viewer: String,
    pub auditor: String,
    pub admin: String,
}

#[derive(Clone, Debug)]
pub struct NodeFiles {
    pub id: String,
    pub config: PathBuf,
    pub listen: String,
    pub tokens: Tokens,
    pub data_dir: PathBuf,
}

/// The benchmarks' tree: 4 communities (`c1`..`c4`) under 2 streets
/// (`s1`, `s2`) under a district (`d`).
pub const DISTRICT_OF_FOUR: &[(&str, Option<&str>)] = &[
    ("d", None),
    ("s1", Some("d")),
    ("s2", Some("d")),
    ("c1", Some("s1")),
    ("c2", Some("s1")),
    ("c3", Some("s2")),
    ("c4", Some("s2")),
];

/// A provisioned tree in a directory.
pub struct Tree {
    pub dir: PathBuf,
    pub topology: PathBuf,
    pub nodes: BTreeMap<String, NodeFiles>,
}

/// [`provision`] with the fast sync timers ([`FAST_SYNC`]) on every node.
pub fn provision_fast(dir: &Path, nodes: &[(&str, Option<&str>)]) -> Tree {
    let tree = provision(dir, nodes);
    for n in tree.nodes.values() {
        set_sync(&n.config, FAST_SYNC);
    }
    tree
}

/// Provisions `(id, parent)` nodes on free loopback ports under `dir` by
/// running `gridsync provision`.
pub fn provision(dir: &Path, nodes: &[(&str, Option<&str>)]) -> Tree {
    provision_with(dir, nodes, &[])
}

/// [`provision`] with extra `gridsync provision` flags (`--tls`).
pub fn provision_with(dir: &Path, nodes: &[(&str, Option<&str>)], flags: &[&str]) -> Tree {
    let mut text = String::from("timezone = \"Asia/Shanghai\"\n");
    // A released port may be handed out again: never give two nodes one.
    let mut used = std::collections::BTreeSet::new();
    for (id, parent) in nodes {
        let port = loop {
            let p = free_port();
            if used.insert(p) {
                break p;
            }
        };
        text.push_str(&format!(
            "[[node]]\nid = \"{id}\"\nname = \"{id} 名\"\nlisten = \"127.0.0.1:{port}\"\n"
        ));
        if let Some(p) = parent {
            text.push_str(&format!("parent = \"{p}\"\n"));
        }
    }
    let tree = dir.join("tree.toml");
    std::fs::write(&tree, text).unwrap();
    let out = dir.join("deploy");
    let status = Command::new(gridsync_bin())
        .args(["provision", "--tree"])
        .arg(&tree)
        .arg("--out")
        .arg(&out)
        .args(flags)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "provision failed");
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| *id).collect();
    load_tree(&out, &ids)
}

/// The tree `gridsync provision` wrote to `out` (its `deploy` directory),
/// read back: a kept benchmark tree used again.
pub fn load_tree(out: &Path, ids: &[&str]) -> Tree {
    let mut map = BTreeMap::new();
    for id in ids {
        let node_dir = out.join(id);
        let cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(node_dir.join("config.toml")).unwrap())
                .unwrap();
        let tokens: Tokens =
            toml::from_str(&std::fs::read_to_string(node_dir.join("tokens.toml")).unwrap())
                .unwrap();
        map.insert(
            (*id).to_owned(),
            NodeFiles {
                id: (*id).to_owned(),
                config: node_dir.join("config.toml"),
                listen: cfg["listen"].as_str().unwrap().to_owned(),
                tokens,
                data_dir: node_dir.join("data"),
            },
        );
    }
    Tree {
        topology: out.join("topology.toml"),
        dir: out.to_path_buf(),
        nodes: map,
    }
}

/// A running `gridsync serve` process; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `gridsync serve --config CONFIG [extra…]` and waits for its
    /// "listening" line (at most 30 s).
    ///
    /// # Panics
    /// When the process exits or does not start listening in time.
    pub fn start(config: &Path, extra: &[&str]) -> Self {
        Self::try_start(config, extra).unwrap_or_else(|(code, stderr)| {
            panic!(
                "gridsync serve {} did not start listening (exit {code}): {stderr}",
                config.display()
            )
        })
    }

    /// Like [`Server::start`], but a node that refuses to start is an
    /// answer: its exit code (-1: killed after 30 s without listening) and
    /// what it wrote to stderr (which is also passed through).
    ///
    /// # Errors
    /// The node exited (or hung) instead of listening.
    ///
    /// # Panics
    /// When the binary cannot be run.
    pub fn try_start(config: &Path, extra: &[&str]) -> Result<Self, (i32, String)> {
        Self::try_start_env(config, extra, &[])
    }

    /// [`Server::try_start`] with these environment variables added.
    ///
    /// # Errors
    /// As [`Server::try_start`].
    ///
    /// # Panics
    /// As [`Server::try_start`].
    pub fn try_start_env(
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (i32, String)> {
        let mut child = Command::new(gridsync_bin())
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gridsync serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("gridsync: listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let captured = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = captured.clone();
        let err_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut s = sink.lock().unwrap();
                if s.len() < 64 * 1024 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(url) = rx.try_recv() {
                return Ok(Server { child, url });
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                if exited.is_none() {
                    let _ = child.kill();
                }
                let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                let _ = err_thread.join();
                let text = captured.lock().unwrap().clone();
                return Err((code, text));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit (at most 30 s); returns whether it
    /// exited successfully.
    pub fn terminate(&mut self) -> bool {
        terminate_child(&mut self.child).is_some_and(|s| s.success())
    }
}

/// SIGTERM to `child`, then its exit status once it has exited (at most
/// 30 s; then SIGKILL and `None`).
pub fn terminate_child(child: &mut Child) -> Option<std::process::ExitStatus> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The median of `v` (the upper one of an even count).
///
/// # Panics
/// When `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

const HOUSEHOLDS: &[&str] = &["h01", "h02", "h03", "h04", "h05", "h06", "h07", "h08"];
const REGIONS: &[&str] = &["山东省青岛市", "湖北省武汉市", "山东省济南市", "北京市"];

/// A valid event of a kind chosen by `i`, with `client_id`.
pub fn sample_event(i: u64, client_id: &str) -> Value {
    let occurred_at = format!(
        "2020-01-{:02}T{:02}:{:02}:00+08:00",
        20 + (i % 8),
        8 + (i % 10),
        i % 60
    );
    let data = match i % 4 {
        0 => json!({
            "checkpoint": format!("cp{}", i % 5), "direction": "in", "subject": "resident",
            "person": {"name": "张三", "phone": "13800000000"}, "from_region": REGIONS[(i % 4) as usize],
            "decision": (["admitted", "turned_back", "referred"][(i % 3) as usize]), "celsius": 36.5
        }),
        1 => json!({
            "person": {"name": "李四"}, "celsius": 36.0 + (i % 25) as f64 / 10.0,
            "site": "checkpoint", "action": if i % 25 > 13 { "referred" } else { "none" }
        }),
        2 => json!({
            "household": HOUSEHOLDS[(i % 8) as usize], "method": "in_person", "residents": 3,
            "quarantine": (["none", "started", "ongoing", "ended"][(i % 4) as usize])
        }),
        _ => json!({
            "household": HOUSEHOLDS[(i % 8) as usize], "items": [{"item": "面条", "qty": 2}, {"item": "牛奶", "qty": 1}],
            "quarantined": i.is_multiple_of(2)
        }),
    };
    let kind = ["entry", "temperature", "visit", "delivery"][(i % 4) as usize];
    json!({
        "kind": kind, "occurred_at": occurred_at, "grid": format!("g{:02}", i % 12),
        "recorded_by": format!("w{:03}", i % 40), "client_id": client_id, "data": data
    })
}

/// Rewrites keys of a node config's `[sync]` table (test timers).
pub fn set_sync(config: &Path, settings: &[(&str, i64)]) {
    set_integers(config, "sync", settings);
}

/// Rewrites keys of a node config's `[limits]` table.
pub fn set_limits(config: &Path, limits: &[(&str, i64)]) {
    set_integers(config, "limits", limits);
}

/// Rewrites keys of a node config's `[store]` table.
pub fn set_store(config: &Path, settings: &[(&str, i64)]) {
    set_integers(config, "store", settings);
}

/// Rewrites keys of a node config's `[projections]` table.
pub fn set_projections(config: &Path, settings: &[(&str, i64)]) {
    set_integers(config, "projections", settings);
}

/// Sets a boolean key of a node config's `[sync]` table.
pub fn set_sync_flag(config: &Path, key: &str, on: bool) {
    edit_table(config, "sync", |sync| {
        sync.insert(key.to_owned(), toml::Value::Boolean(on));
    });
}

fn set_integers(config: &Path, table: &str, settings: &[(&str, i64)]) {
    edit_table(config, table, |t| {
        for (k, v) in settings {
            t.insert((*k).to_owned(), toml::Value::Integer(*v));
        }
    });
}

/// Edits table `name` of a node config (made when missing).
fn edit_table(config: &Path, name: &str, edit: impl FnOnce(&mut toml::Table)) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    let t = table
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    edit(t.as_table_mut().unwrap());
    std::fs::write(config, toml::to_string(&table).unwrap()).unwrap();
}

/// Rewrites node `id`'s entry in a topology file with `edit`.
///
/// # Panics
/// An unreadable topology or no such node.
pub fn edit_topology_node(topology: &Path, id: &str, edit: impl FnOnce(&mut toml::Table)) {
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(topology).unwrap()).unwrap();
    let node = table["node"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"].as_str() == Some(id))
        .unwrap_or_else(|| panic!("no node {id} in {}", topology.display()));
    edit(node.as_table_mut().unwrap());
    std::fs::write(topology, toml::to_string(&table).unwrap()).unwrap();
}

/// Points `node`'s URL in the topology at another address (a proxy).
pub fn set_url(topology: &Path, node: &str, url: &str) {
    edit_topology_node(topology, node, |n| {
        n.insert("url".into(), toml::Value::String(url.to_owned()));
    });
}

/// Runs the `gridsync` binary to completion: (success, stdout trimmed,
/// stderr).
///
/// # Panics
/// When the binary cannot be run.
pub fn run_gridsync(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gridsync_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (at most 20 s) until the node's parent link reports an error
/// containing `needle`; returns it.
///
/// # Panics
/// When it does not in time (with the last error).
pub async fn wait_link_error(url: &str, token: &str, needle: &str) -> String {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let st = get_json(&format!("{url}/v1/status"), token).await;
        last = st["parent_link"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if last.contains(needle) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url}: parent link error never mentioned {needle:?}; last: {last:?}");
}

/// Fast timers so tests see failures and recoveries in seconds.
pub const FAST_SYNC: &[(&str, i64)] = &[
    ("heartbeat_ms", 300),
    ("idle_timeout_ms", 2_000),
    ("ack_timeout_ms", 3_000),
    ("reconnect_min_ms", 50),
    ("reconnect_max_ms", 800),
];

/// `GET url` with a bearer token, as JSON.
///
/// # Panics
/// When the request fails or the answer is not JSON.
pub async fn get_json(url: &str, token: &str) -> Value {
    let text = get_text(url, token).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

/// `GET url` with a bearer token, as text.
///
/// # Panics
/// When the request fails.
pub async fn get_text(url: &str, token: &str) -> String {
    http_client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample of metric `name` in the node's
/// `/metrics`, if it has one.
pub async fn metric(url: &str, token: &str, name: &str) -> Option<f64> {
    let text = get_text(&format!("{url}/metrics"), token).await;
    let prefix = format!("{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The wall clock, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A benchmark setting from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (RSS KiB, CPU ticks user + system — USER_HZ, 100 per second on Linux)
/// of a process.
pub fn proc_usage(pid: u32) -> (u64, u64) {
    let f = stat_fields(pid);
    (
        rss_kib(pid),
        f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0),
    )
}

/// Minor page faults of a process so far (each a page touched for the
/// first time).
pub fn proc_minflt(pid: u32) -> u64 {
    stat_fields(pid).get(7).copied().unwrap_or(0)
}

/// The numeric fields of `/proc/PID/stat` after the command name (which
/// is in parentheses), from the state on (`0` where one is not a number).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    rest.split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect()
}

/// Lets a node take `children` connections from one address (every child
/// of a benchmark connects from 127.0.0.1).
pub fn allow_children_from_one_ip(config: &Path, children: usize) {
    set_limits(
        config,
        &[(
            "connections_per_ip_max",
            i64::try_from(children * 2 + 64).unwrap(),
        )],
    );
}

/// Signed chains of sample events (the mix of [`sample_event`], 1,000
/// distinct payloads reused) for benchmarks that write a log directly: one
/// chain per origin, continued chunk by chunk.
pub struct SampleChains {
    payloads: Vec<gridsync_model::ingest::PreparedEvent>,
    origins: Vec<(String, ed25519_dalek::SigningKey)>,
    /// Per origin: last seq and hash.
    heads: Vec<(u64, gridsync_model::Hash32)>,
    /// Per origin: the digest of its last signed head (zeros before the
    /// first), which its next v2 head names — as an origin signs them.
    afters: Vec<gridsync_model::Hash32>,
    /// Sign v1 heads instead (as builds before 2026-12-05 did).
    v1_heads: bool,
}

impl SampleChains {
    /// Chains of `origins`, each signed with its key.
    ///
    /// # Panics
    /// Never for the sample events (they are valid).
    pub fn new(origins: Vec<(String, ed25519_dalek::SigningKey)>) -> Self {
        let limits = gridsync_model::ingest::IngestLimits::default();
        let ctx = gridsync_model::ingest::IngestContext {
            node_id: "c1",
            now_ms: 1_700_000_000_000,
            limits: &limits,
        };
        let payloads = (0..1000u64)
            .map(|i| {
                let v = sample_event(i, &format!("k{i}"));
                let none = |_: &gridsync_model::kinds::EventRef| None;
                gridsync_model::ingest::prepare(v, &ctx, &none, &mut rand::thread_rng()).unwrap()
            })
            .collect();
        let heads = vec![(0, gridsync_model::ZERO_HASH); origins.len()];
        Self {
            payloads,
            afters: vec![gridsync_model::ZERO_HASH; origins.len()],
            v1_heads: false,
            origins,
            heads,
        }
    }

    /// The same chains closed by v1 heads (no `after`), as builds before
    /// 2026-12-05 signed them: a log of the earlier format.
    #[must_use]
    pub fn with_v1_heads(mut self) -> Self {
        self.v1_heads = true;
        self
    }

    /// The next chunk of origin number `o`: up to `len` events, none past
    /// seq `last` (`None` once the chain has reached it).
    pub fn next_chunk(&mut self, o: usize, len: usize, last: u64) -> Option<gridsync_model::Chunk> {
        use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt};
        let (origin, key) = &self.origins[o];
        let (mut seq, mut prev) = self.heads[o];
        let mut events = Vec::new();
        while events.len() < len && seq < last {
            seq += 1;
            let p = &self.payloads[(seq % 1000) as usize];
            let digest = p.personal().map(|x| x.digest());
            let bytes = EnvelopeHeader {
                origin,
                seq,
                kind: p.kind,
                schema: 1,
                occurred_at: OccurredAt {
                    unix_ms: p.occurred_at.unix_ms,
                    offset_min: 480,
                },
                recorded_at_ms: 1_700_000_000_000,
                grid: p.grid(),
                recorded_by: p.recorded_by(),
                client_id: &format!("{origin}-{seq}"),
                prev: &prev,
                personal_digest: digest.as_ref(),
            }
            .encode_with_data(p.data());
            prev = event_hash(&bytes);
            events.push(gridsync_model::EventRecord {
                envelope: bytes,
                personal: p.personal().cloned(),
            });
        }
        self.heads[o] = (seq, prev);
        if events.is_empty() {
            return None;
        }
        let head = if self.v1_heads {
            gridsync_model::SignedHead::sign(key, origin, seq, prev, 1)
        } else {
            gridsync_model::SignedHead::sign_after(key, (origin, seq, prev), 1, self.afters[o])
        };
        self.afters[o] = head.digest();
        Some(gridsync_model::Chunk {
            origin: origin.clone(),
            events,
            head,
        })
    }
}

/// Waits (at most 30 s) until the node at `url` has folded every event it
/// holds into its projection: every origin's `coverage.seq` in
/// `/v1/aggregates` equals its head in `/v1/status`, and its
/// `log.projected_chunks` equals `log.chunks`. Projections follow
/// commits asynchronously; comparisons are meaningful once the node is idle.
///
/// # Panics
/// When the projection does not catch up in time.
pub async fn wait_projection_idle(url: &str, viewer: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = get_json(&format!("{url}/v1/status"), viewer).await;
        let agg: Value = get_json(&format!("{url}/v1/aggregates"), viewer).await;
        let heads = status["heads"].as_object().cloned().unwrap_or_default();
        let caught_up = heads.iter().all(|(origin, h)| {
            agg["coverage"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["origin"] == origin.as_str() && c["seq"] == h["seq"])
        });
        // And its count of log entries folded has been published.
        let counted = status["log"]["projected_chunks"] == status["log"]["chunks"];
        if caught_up && counted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projection at {url} did not catch up with its log: {agg} {}",
            status["log"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 30 s) until the node at `url` holds every `(origin, seq)`
/// head given, per its `/v1/status`.
///
/// # Panics
/// When it does not in time.
pub async fn wait_heads(url: &str, viewer: &str, want: &[(&str, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st: Value = get_json(&format!("{url}/v1/status"), viewer).await;
        if want
            .iter()
            .all(|(o, s)| st["heads"][*o]["seq"].as_u64() == Some(*s))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not reach {want:?}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST {url}/v1/events` with `body`: the status code and the JSON answer.
///
/// # Panics
/// When the request cannot be sent or the answer is not JSON.
pub async fn post_events(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = http_client()
        .post(format!("{url}/v1/events"))
        .bearer_auth(token)
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Copies a directory tree (a stopped node's data directory: a backup).
///
/// # Panics
/// On I/O errors.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces `dir` with a copy of `backup`.
///
/// # Panics
/// On I/O errors.
pub fn restore_dir(backup: &Path, dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    copy_dir(backup, dir);
}

/// Waits (at most 30 s) until `check` holds for the node's `/v1/status`.
///
/// # Panics
/// When it does not in time (with the last status).
pub async fn wait_status(url: &str, token: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st: Value = get_json(&format!("{url}/v1/status"), token).await;
        if check(&st) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: waited in vain for {what}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a node acknowledged: `client_id → (seq, hash)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub hash: String,
}

pub type Acked = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Ack>>>;

/// Posts batches of 1..=`batch_max` events (client ids `{prefix}-{n}`) to
/// `url` until `stop` or the first failure, recording every acknowledged
/// event in `acked`.
pub async fn post_load(
    url: String,
    token: String,
    prefix: String,
    acked: Acked,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seed: u64,
    batch_max: u64,
) {
    use rand::{Rng, SeedableRng};
    let http = http_client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let size = rng.gen_range(1..=batch_max);
        let ids: Vec<String> = (0..size).map(|i| format!("{prefix}-{}", n + i)).collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| sample_event(n + i as u64, id))
            .collect();
        n += size;
        let resp = http
            .post(format!("{url}/v1/events"))
            .bearer_auth(&token)
            .json(&json!({ "events": events }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let Ok(resp) = resp else { return };
        if !resp.status().is_success() {
            return;
        }
        let Ok(body) = resp.json::<Value>().await else {
            return;
        };
        let mut a = acked.lock().unwrap();
        for (id, r) in ids.iter().zip(body["results"].as_array().unwrap()) {
            a.insert(
                id.clone(),
                Ack {
                    seq: r["seq"].as_u64().unwrap(),
                    hash: r["hash"].as_str().unwrap().to_owned(),
                },
            );
        }
    }
}

/// What earlier checks established: the log of an origin up to `seq` is
/// intact and its event `seq` has `hash`. Because every event's hash covers
/// `prev`, finding the same hash at `seq` again proves the whole prefix
/// unchanged, so each check reads only what is new.
#[derive(Clone, Debug, Default)]
pub struct Verified {
    pub seq: u64,
    pub hash: String,
}

/// Reads `origin`'s log at `url` from the last verified seq and returns the
/// acknowledged events (of `acked`) that are missing or differ.
///
/// # Panics
/// On a broken log (gap, duplicate, bad chain, altered prefix).
pub async fn lost_acks(
    url: &str,
    auditor: &str,
    origin: &str,
    acked: &std::collections::HashMap<String, Ack>,
    verified: &mut Verified,
) -> Vec<String> {
    let mut stored: std::collections::HashMap<String, Ack> = std::collections::HashMap::new();
    let mut after = verified.seq.saturating_sub(1);
    let mut prev_hash: Option<String> = (verified.seq == 0).then(|| "0".repeat(64));
    loop {
        let page: Value = get_json(
            &format!("{url}/v1/events?origin={origin}&after_seq={after}&limit=1000"),
            auditor,
        )
        .await;
        let events = page["events"].as_array().unwrap();
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            let hash = e["hash"].as_str().unwrap().to_owned();
            assert_eq!(seq, after + 1, "{origin}: gap in the log after seq {after}");
            if seq == verified.seq {
                assert_eq!(
                    hash, verified.hash,
                    "{origin}: the verified prefix up to seq {seq} changed"
                );
            } else {
                assert_eq!(
                    Some(e["prev"].as_str().unwrap()),
                    prev_hash.as_deref(),
                    "{origin}: broken chain at seq {seq}"
                );
                let cid = e["client_id"].as_str().unwrap().to_owned();
                let dup = stored.insert(
                    cid.clone(),
                    Ack {
                        seq,
                        hash: hash.clone(),
                    },
                );
                assert!(dup.is_none(), "{origin}: client_id {cid} stored twice");
            }
            prev_hash = Some(hash);
            after = seq;
        }
        if page.get("next").is_none() {
            break;
        }
    }
    assert!(
        after >= verified.seq,
        "{origin}: log shrank from seq {} to {after}",
        verified.seq
    );
    let lost = acked
        .iter()
        .filter(|(_, ack)| ack.seq > verified.seq)
        .filter(|(id, ack)| stored.get(*id) != Some(ack))
        .map(|(id, ack)| format!("{id} (acked as seq {})", ack.seq))
        .collect();
    if let Some(h) = prev_hash {
        *verified = Verified {
            seq: after,
            hash: h,
        };
    }
    lost
}

/// The `gridsync-lazyfs` binary (built by `cargo test --workspace`).
///
/// # Panics
/// When it has not been built.
pub fn lazyfs_bin() -> PathBuf {
    let bin =
        gridsync_bin().with_file_name(format!("gridsync-lazyfs{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binary)",
        bin.display()
    );
    bin
}

/// Sets a node config's `data_dir`.
pub fn set_data_dir(config: &Path, dir: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    table.insert(
        "data_dir".into(),
        toml::Value::String(dir.to_string_lossy().into_owned()),
    );
    std::fs::write(config, toml::to_string(&table).unwrap()).unwrap();
}

/// Events `first..=last` of `origin` (visits) chained from `prev`, closed by
/// a head signed with `key`; `variant` changes their content (for
/// equivocations and fabricated chains).
pub fn visit_chunk(
    origin: &str,
    key: &ed25519_dalek::SigningKey,
    first: u64,
    last: u64,
    prev: gridsync_model::Hash32,
    variant: &str,
) -> gridsync_model::Chunk {
    use gridsync_model::event::{event_hash, EnvelopeHeader, OccurredAt};
    let mut prev = prev;
    let mut events = Vec::new();
    for seq in first..=last {
        let data = gridsync_model::canonical::to_canonical(&json!({
            "household": format!("h{seq}{variant}"), "method": "phone", "quarantine": "none"
        }));
        let bytes = EnvelopeHeader {
            origin,
            seq,
            kind: "visit",
            schema: 1,
            occurred_at: OccurredAt {
                unix_ms: 1_580_175_000_000,
                offset_min: 480,
            },
            recorded_at_ms: 1_580_175_000_000,
            grid: "g",
            recorded_by: "w",
            client_id: &format!("k{seq}{variant}"),
            prev: &prev,
            personal_digest: None,
        }
        .encode_with_data(&data);
        prev = event_hash(&bytes);
        events.push(gridsync_model::EventRecord {
            envelope: bytes,
            personal: None,
        });
    }
    gridsync_model::Chunk {
        origin: origin.into(),
        events,
        head: gridsync_model::SignedHead::sign(key, origin, last, prev, 1),
    }
}
