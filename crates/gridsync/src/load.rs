//! `gridsync load`: posts realistic field events to a community node, or to
//! every community of a provisioned tree, from N concurrent clients —
//! batched, or one event per request like phones — as fast as possible or
//! at a rate, and reports events/s, acknowledgement latency and errors by
//! code. Every event is acknowledged only once it is durable, so the
//! latency is what a grid worker's phone sees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use gridsync_ops::workload::{Workload, Written, RECENT_KEPT};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What `gridsync load` was asked to do.
pub struct LoadOptions {
    pub url: Option<String>,
    pub token: Option<String>,
    /// CA certificate to verify an https `url` (with `tree`: the
    /// topology's ca_file).
    pub ca: Option<PathBuf>,
    pub tree: Option<PathBuf>,
    pub clients: usize,
    pub batch: usize,
    /// Events per second across all clients; 0: as fast as possible.
    pub rate: f64,
    pub events: Option<u64>,
    pub duration_s: Option<f64>,
    pub seed: Option<u64>,
    pub json: bool,
}

/// One community to post to.
#[derive(Clone, Debug)]
struct Target {
    id: String,
    url: String,
    token: String,
}

/// Shared by the clients.
struct Run {
    targets: Vec<Target>,
    /// TLS for every client (trusting only the deployment's CA).
    tls: Arc<rustls::ClientConfig>,
    batch: usize,
    rate: f64,
    /// Events handed out to clients so far (the stop condition and the
    /// rate schedule).
    reserved: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    started: Instant,
    acked: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Acknowledgement latency of every successful request, ms.
    latencies: Mutex<Vec<f64>>,
}

impl Run {
    /// Reserves the next request's events; `None` when the run is over.
    /// With a rate, also says when they are due.
    fn reserve(&self) -> Option<(u64, Option<Instant>)> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.batch as u64;
        let first = self.reserved.fetch_add(n, Ordering::Relaxed);
        if first >= self.limit {
            return None;
        }
        let due = (self.rate > 0.0)
            .then(|| self.started + Duration::from_secs_f64(first as f64 / self.rate));
        Some((n.min(self.limit - first), due))
    }

    fn error(&self, code: &str, events: u64) {
        self.failed.fetch_add(events, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .expect("lock")
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

/// Resolves where to post: one node (`--url`, asking it who it is) or every
/// community of a provisioned tree (`--tree`).
async fn targets(opts: &LoadOptions, http: &reqwest::Client) -> anyhow::Result<Vec<Target>> {
    if let (Some(url), Some(token)) = (&opts.url, &opts.token) {
        let url = url.trim_end_matches('/').to_owned();
        let resp = http
            .get(format!("{url}/v1/status"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!(
                "{url} answered {status} to /v1/status: {}",
                body["error"]["message"].as_str().unwrap_or("")
            );
        }
        if body["role"] != "community" {
            anyhow::bail!(
                "{url} is node {} ({}), not a community: events are posted to community nodes",
                body["node"],
                body["role"]
            );
        }
        let id = body["node"].as_str().unwrap_or_default().to_owned();
        return Ok(vec![Target {
            id,
            url,
            token: token.clone(),
        }]);
    }
    let dir = opts
        .tree
        .as_ref()
        .context("give --url and --token, or --tree")?;
    let topo = gridsync_deploy::topology::Topology::load(&dir.join("topology.toml"))
        .map_err(|e| anyhow::anyhow!(e.0))?;
    let mut out = Vec::new();
    let ids: Vec<String> = topo.nodes().map(|n| n.id.clone()).collect();
    for id in ids {
        if !topo.is_origin(&id) {
            continue;
        }
        let tokens_path = dir.join(&id).join("tokens.toml");
        let text = std::fs::read_to_string(&tokens_path)
            .with_context(|| format!("cannot read {}", tokens_path.display()))?;
        let tokens: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not a tokens file", tokens_path.display()))?;
        let token = tokens["reporter"]
            .as_str()
            .with_context(|| format!("{} has no reporter token", tokens_path.display()))?
            .to_owned();
        let url = topo.node(&id).map(|n| n.url.clone()).unwrap_or_default();
        out.push(Target { id, url, token });
    }
    anyhow::ensure!(!out.is_empty(), "{} lists no community", dir.display());
    Ok(out)
}

/// Where one client posts: the target's address, parsed once.
struct Endpoint {
    /// `host:port` to connect to.
    addr: String,
    /// The TLS server name, for an `https` URL.
    tls_name: Option<rustls_pki_types::ServerName<'static>>,
    host: HeaderValue,
    path: String,
    auth: HeaderValue,
}

impl Endpoint {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&target.url)
            .with_context(|| format!("{} is not a URL", target.url))?;
        let host = url
            .host_str()
            .with_context(|| format!("{} names no host", target.url))?;
        let port = url
            .port_or_known_default()
            .with_context(|| format!("{} names no port", target.url))?;
        let tls_name = match url.scheme() {
            "https" => Some(
                rustls_pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .with_context(|| format!("{host} is not a TLS server name"))?,
            ),
            "http" => None,
            other => anyhow::bail!("{}: scheme {other} is not http or https", target.url),
        };
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        Ok(Self {
            addr: format!("{host}:{port}"),
            tls_name,
            host: HeaderValue::from_str(&authority)?,
            path: format!("{}/v1/events", url.path().trim_end_matches('/')),
            auth: HeaderValue::from_str(&format!("Bearer {}", target.token))
                .context("the token is not a header value")?,
        })
    }

    /// A keep-alive HTTP/1.1 connection (its driver runs on its own task
    /// and ends when the sender is dropped).
    async fn connect(&self, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let Some(name) = &self.tls_name else {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            return Ok(sender);
        };
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name.clone(), tcp)
            .await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Posts `body`; the answer's status and body.
    async fn post(&self, sender: &mut Sender, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::post(&self.path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

/// How long one request may take before it counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One client: posts until the run is over, over one keep-alive connection
/// (made again after a transport error), as a phone or a form would.
/// HTTP/1.1 straight on hyper's connection API: no pool, URL parsing or
/// redirect handling per request — the load generator shares the machine
/// with the node it measures.
async fn client(run: Arc<Run>, index: usize, seed: u64, tag: String) {
    let mut work = Workload::new(seed, &tag);
    // Clients spread over the targets.
    let target = run.targets[index % run.targets.len()].clone();
    let endpoint = match Endpoint::new(&target) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("gridsync load: {e:#}");
            run.error("bad_target", 0);
            return;
        }
    };
    let mut sender: Option<Sender> = None;
    let one = run.batch == 1;
    while let Some((n, due)) = run.reserve() {
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut body = Vec::with_capacity(n as usize * 400 + 16);
        if !one {
            body.extend_from_slice(b"{\"events\":[");
        }
        let written: Vec<Written> = (0..n)
            .map(|i| {
                if i > 0 {
                    body.push(b',');
                }
                work.write_event(&target.id, &mut body)
            })
            .collect();
        if !one {
            body.extend_from_slice(b"]}");
        }
        let body = Bytes::from(body);
        let sent = Instant::now();
        run.requests.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            // A kept connection the node closed meanwhile (idle, restart)
            // is made again before the request is sent: nothing is lost.
            let kept = match sender.take() {
                Some(mut s) => s.ready().await.is_ok().then_some(s),
                None => None,
            };
            let s = match kept {
                Some(s) => sender.insert(s),
                None => {
                    let mut s = endpoint.connect(&run.tls).await?;
                    s.ready().await?;
                    sender.insert(s)
                }
            };
            endpoint.post(s, body.clone()).await
        })
        .await;
        let (status, bytes) = match answer {
            Ok(Ok(a)) => a,
            failed => {
                run.error(
                    if failed.is_err() {
                        "timeout"
                    } else {
                        "connect"
                    },
                    n,
                );
                sender = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !(200..300).contains(&status) {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = answer["error"]["code"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_owned);
            run.error(&code, n);
            continue;
        }
        run.latencies
            .lock()
            .expect("lock")
            .push(sent.elapsed().as_secs_f64() * 1000.0);
        run.acked.fetch_add(n, Ordering::Relaxed);
        // Only the newest few are kept for corrections: their seqs are
        // read from the answer's end, one per event posted, in order.
        let seqs = newest_seqs(&bytes, RECENT_KEPT.min(written.len()));
        let newest = written.len() - seqs.len();
        for (seq, w) in seqs.into_iter().zip(written.into_iter().skip(newest)) {
            work.stored(&target.id, seq, w.kind, &body[w.data]);
        }
    }
}

/// The seqs of the last `k` results of a `POST /v1/events` answer
/// (`{"results":[{"origin":…,"seq":N,"hash":…,"duplicate":…},…]}`), in
/// order, read backwards from its end: the generator shares the machine
/// with the node it loads, and parsing the whole answer (a 64-hex hash an
/// event) was an eighth of its CPU. Fewer if the answer has fewer.
fn newest_seqs(answer: &[u8], k: usize) -> Vec<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let mut seqs = Vec::with_capacity(k);
    let mut end = answer.len();
    while seqs.len() < k {
        let Some(at) = answer[..end].windows(KEY.len()).rposition(|w| w == KEY) else {
            break;
        };
        let digits = &answer[at + KEY.len()..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        match std::str::from_utf8(&digits[..n])
            .ok()
            .and_then(|d| d.parse().ok())
        {
            Some(seq) => seqs.push(seq),
            None => break,
        }
        end = at;
    }
    seqs.reverse();
    seqs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(run: &Run, seconds: f64, clients: usize) -> Value {
    let mut lat = run.latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    let acked = run.acked.load(Ordering::Relaxed);
    json!({
        "events": acked,
        "failed_events": run.failed.load(Ordering::Relaxed),
        "requests": run.requests.load(Ordering::Relaxed),
        "seconds": seconds,
        "events_per_s": acked as f64 / seconds.max(1e-9),
        "ack_ms": {
            "p50": percentile(&lat, 0.50),
            "p99": percentile(&lat, 0.99),
            "max": lat.last().copied().unwrap_or(0.0),
        },
        "errors": *run.errors.lock().expect("lock"),
        "clients": clients,
        "batch": run.batch,
        "targets": run.targets.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
    })
}

/// TLS trusting `--ca`, or the tree's CA, or nothing (plain HTTP only).
fn load_tls(opts: &LoadOptions) -> anyhow::Result<rustls::ClientConfig> {
    let pem = match (&opts.ca, &opts.tree) {
        (Some(p), _) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read --ca {}", p.display()))?)
        }
        (None, Some(dir)) => {
            gridsync_deploy::topology::Topology::load(&dir.join("topology.toml"))
                .map_err(|e| anyhow::anyhow!(e.0))?
                .ca_pem
        }
        (None, None) => None,
    };
    gridsync_node::tls::tool_client_config(pem.as_deref(), "the CA certificate")
        .map_err(|e| anyhow::anyhow!(e))
}

/// Runs the load; exit 0 when events were acknowledged, 1 when none was,
/// 2 when the targets cannot be resolved.
pub fn run(opts: LoadOptions) -> ExitCode {
    if opts.clients == 0 || opts.batch == 0 || opts.rate < 0.0 {
        eprintln!("gridsync load: --clients and --batch must be at least 1, --rate not negative");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gridsync load: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match load_tls(&opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gridsync load: {e:#}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let http = match reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                eprintln!("gridsync load: cannot make an HTTP client: {e}");
                return ExitCode::from(2);
            }
        };
        let targets = match targets(&opts, &http).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gridsync load: {e:#}");
                return ExitCode::from(2);
            }
        };
        let seed = opts.seed.unwrap_or_else(rand::random);
        let tag = format!("load-{:08x}", rand::random::<u32>());
        let limit = opts.events.unwrap_or(if opts.duration_s.is_some() {
            u64::MAX
        } else {
            100_000
        });
        let started = Instant::now();
        let run = Arc::new(Run {
            targets,
            tls: Arc::new(tls),
            batch: opts.batch,
            rate: opts.rate,
            reserved: AtomicU64::new(0),
            limit,
            deadline: opts
                .duration_s
                .map(|s| started + Duration::from_secs_f64(s.max(0.0))),
            started,
            acked: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            latencies: Mutex::new(Vec::new()),
        });
        let tasks: Vec<_> = (0..opts.clients)
            .map(|i| {
                tokio::spawn(client(
                    run.clone(),
                    i,
                    seed.wrapping_add(i as u64),
                    format!("{tag}-{i}"),
                ))
            })
            .collect();
        let progress = tokio::spawn(progress_line(run.clone()));
        for t in tasks {
            let _ = t.await;
        }
        progress.abort();
        let seconds = started.elapsed().as_secs_f64();
        let r = report(&run, seconds, opts.clients);
        print_report(&r, opts.json);
        if r["events"].as_u64().unwrap_or(0) == 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// A live line on stderr (only when it is a terminal).
async fn progress_line(run: Arc<Run>) {
    use std::io::Write;
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return;
    }
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = run.acked.load(Ordering::Relaxed);
        let rate = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), acked);
        let errors: u64 = run.errors.lock().expect("lock").values().sum();
        let mut e = std::io::stderr();
        let _ = write!(
            e,
            "\r{acked} events acknowledged, {rate:.0}/s now, {errors} errors   "
        );
        let _ = e.flush();
    }
}

fn print_report(r: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    eprintln!();
    println!(
        "{} events acknowledged in {:.2} s: {:.0} events/s ({} requests of {} from {} clients to {} communities)",
        r["events"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["events_per_s"].as_f64().unwrap_or(0.0),
        r["requests"],
        r["batch"],
        r["clients"],
        r["targets"].as_array().map_or(0, Vec::len)
    );
    println!(
        "ack latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r["ack_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["ack_ms"]["p99"].as_f64().unwrap_or(0.0),
        r["ack_ms"]["max"].as_f64().unwrap_or(0.0)
    );
    let errors = r["errors"].as_object().cloned().unwrap_or_default();
    if errors.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} × {v}")).collect();
        println!(
            "errors: {} ({} events not acknowledged)",
            list.join(", "),
            r["failed_events"]
        );
    }
}

#[cfg(test)]
mod tests {
    use gridsync_model::api::{AppendedEvent, PostEventsResponse};

    use super::newest_seqs;

    /// The seqs read from an answer's end are those of its last results,
    /// in order — on the answer as the node writes it (new events and
    /// duplicates, seqs of any width), fewer when it holds fewer.
    #[test]
    fn the_newest_seqs_are_read_from_the_answers_end() {
        let seqs: Vec<u64> = (0..250u64)
            .map(|i| if i % 7 == 3 { i } else { 1_000_000 + i * 13 })
            .collect();
        let answer = PostEventsResponse {
            results: seqs
                .iter()
                .map(|&seq| AppendedEvent {
                    origin: "c-07".into(),
                    seq,
                    hash: "ab".repeat(32),
                    duplicate: seq < 1_000,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&answer).unwrap();
        assert_eq!(newest_seqs(&bytes, 20), seqs[230..]);
        assert_eq!(newest_seqs(&bytes, 1), seqs[249..]);
        assert_eq!(newest_seqs(&bytes, 0), Vec::<u64>::new());
        assert_eq!(newest_seqs(&bytes, 400), seqs);
        assert_eq!(newest_seqs(b"{\"results\":[]}", 20), Vec::<u64>::new());
    }
}
