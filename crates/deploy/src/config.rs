//! A node's configuration file (`<id>/config.toml`, written by `provision`).
//! Relative paths are resolved against the directory of the config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tokens::TokenEntry;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in the topology.
    pub id: String,
    /// Address to serve HTTP on, e.g. `127.0.0.1:7402`.
    pub listen: String,
    /// sled database directory.
    pub data_dir: PathBuf,
    /// Parent node id (must agree with the topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// File holding this node's ed25519 private key (hex).
    pub key_file: PathBuf,
    pub topology_file: PathBuf,
    /// Serve HTTPS (and `wss` sync) with this certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// Allow unencrypted HTTP: serving it when `[tls]` is absent, and
    /// connecting to an `http://` parent. Must be said explicitly; tokens and
    /// events then cross the network readable by anyone on the path (fine on
    /// loopback, as in the demo).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
    /// Accepted tokens (hashed).
    #[serde(default)]
    pub token: Vec<TokenEntry>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub projections: ProjectionSettings,
    #[serde(default)]
    pub privacy: PrivacySettings,
}

/// This node's TLS identity (PEM files; relative to the config file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// What personal data (names, ID numbers, phones, plates, notes) leaves
/// this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Send events' personal parts to the parent. Off by default: they stay
    /// at the community that recorded them; the parent stores and forwards
    /// each event with the salted digest of its personal part, so chains
    /// and signatures still verify at every level.
    pub forward_personal: bool,
}

/// What the metrics count as a fever and as a flagged region.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionSettings {
    pub fever_celsius: f64,
    /// `from_region` prefixes counted in `entries_flagged`.
    pub flagged_region_prefixes: Vec<String>,
    /// Longest day range one aggregates query may ask for.
    pub query_days_max: i32,
    /// Save the projection beside the log at most this often (and at
    /// shutdown), so a restart folds only what came after it; 0 = never
    /// (every start folds the whole log).
    pub snapshot_interval_s: u64,
    /// At start, fold the log into the projection for at most this long
    /// before listening; the rest is folded while the node serves (its
    /// answers count a prefix of the log meanwhile: `/v1/status`
    /// `log.projected_chunks`). 0: listen after the first page.
    pub fold_before_listen_s: u64,
}

impl Default for ProjectionSettings {
    fn default() -> Self {
        Self {
            fever_celsius: 37.3,
            flagged_region_prefixes: vec!["湖北".to_owned()],
            query_days_max: 366,
            snapshot_interval_s: 60,
            fold_before_listen_s: 2,
        }
    }
}

/// Limits on requests. Every one has a default; names end in their unit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body.
    pub body_bytes_max: usize,
    /// Most events in one batch.
    pub batch_events_max: usize,
    /// Largest encoded event (envelope and personal part).
    pub event_bytes_max: usize,
    /// How far in the future `occurred_at` may be.
    pub future_skew_s: i64,
    /// HTTP requests served at once; more wait.
    pub http_concurrency_max: usize,
    /// Requests in flight with one token (more are answered 429): a
    /// community's reporter token is shared by its phones, so this is
    /// generous, but below `http_concurrency_max`.
    pub requests_per_token_max: usize,
    /// Most events in one page of `GET /v1/events`.
    pub page_events_max: usize,
    /// Seconds a request may take before it is answered 408.
    pub request_timeout_s: u64,
    /// Seconds a client may take to send a request's headers (and an idle
    /// kept-alive connection may wait for the next request) before the
    /// connection is closed: slow-header clients hold nothing for long.
    pub header_read_timeout_s: u64,
    /// HTTP connections open at once (more are closed on accept).
    pub connections_max: usize,
    /// HTTP connections open at once from one IP address.
    pub connections_per_ip_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 8 * 1024 * 1024,
            batch_events_max: 1000,
            event_bytes_max: 64 * 1024,
            future_skew_s: 600,
            http_concurrency_max: 512,
            requests_per_token_max: 256,
            page_events_max: 1000,
            request_timeout_s: 60,
            header_read_timeout_s: 10,
            connections_max: 4096,
            connections_per_ip_max: 512,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// sled page cache (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// Most events gathered into one durable commit.
    pub commit_events_max: usize,
    /// Append requests queued for the log writer.
    pub queue_requests_max: usize,
    /// Write the heads record beside the data directory at most this often
    /// (ms); 0 writes it with every commit, before acknowledging.
    pub heads_interval_ms: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
            heads_interval_ms: 200,
            commit_events_max: 4096,
            queue_requests_max: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    /// Reads a config file and resolves its relative paths.
    ///
    /// # Errors
    /// Unreadable file or invalid TOML, naming the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        let mut c: NodeConfig = toml::from_str(&text)
            .map_err(|e| ConfigError(format!("config {} is not valid: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![&mut c.data_dir, &mut c.key_file, &mut c.topology_file];
        if let Some(t) = c.tls.as_mut() {
            paths.push(&mut t.cert_file);
            paths.push(&mut t.key_file);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.tls.is_none() && !c.plain_http {
            return Err(ConfigError(format!(
                "config {}: no [tls] section: give this node a certificate \
                 ([tls] cert_file and key_file; `gridsync provision --tls` makes them), \
                 or set plain_http = true to serve unencrypted HTTP (only on a trusted network \
                 such as loopback)",
                path.display()
            )));
        }
        if c.limits.batch_events_max == 0
            || c.limits.page_events_max == 0
            || c.limits.http_concurrency_max == 0
            || c.limits.requests_per_token_max == 0
            || c.limits.header_read_timeout_s == 0
            || c.limits.connections_max == 0
            || c.limits.connections_per_ip_max == 0
        {
            return Err(ConfigError(format!(
                "config {}: limits must be at least 1",
                path.display()
            )));
        }
        crate::tokens::TokenTable::new(&c.token)
            .map_err(|m| ConfigError(format!("config {}: {m}", path.display())))?;
        c.sync
            .check()
            .map_err(|m| ConfigError(format!("config {}: [sync] {m}", path.display())))?;
        Ok(c)
    }
}

/// Replication limits and timers. Names end in their unit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Largest websocket message (and frame) accepted.
    pub frame_bytes_max: usize,
    /// Bytes of chunks per batch.
    pub batch_bytes_max: usize,
    /// Largest websocket frame this node sends to its parent: a larger
    /// message goes as continuation frames of this size. The parent's read
    /// buffer for a link grows to hold a whole frame on top of what it has
    /// read of it and keeps that capacity (16 KiB with frames up to its 8
    /// KiB reads; 32 KiB with 16 KiB frames), so this, not
    /// `batch_bytes_max`, is what each child's link costs a parent's memory
    /// after a burst. 0 sends each message in one frame.
    pub send_fragment_bytes: usize,
    /// Unacknowledged batches in flight per connection.
    pub window_batches: usize,
    /// Bytes buffered for writing to one peer before sends wait.
    pub write_buffer_bytes_max: usize,
    pub heartbeat_ms: i64,
    pub idle_timeout_ms: i64,
    /// Handshake and oldest-batch answer deadline.
    pub ack_timeout_ms: i64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// While the parent's host refuses connections (its node is not
    /// listening: restarting, or stopped), retry within this long (full
    /// jitter from `reconnect_min_ms`) instead of backing off further: a
    /// refused connect costs both ends next to nothing, and a restarted
    /// parent is reached within this delay, not after `reconnect_max_ms`.
    pub reconnect_refused_max_ms: u64,
    /// Authenticated sync connections this node keeps at once (at least
    /// the number of its children in the topology, whatever is set here).
    pub connections_max: usize,
    /// Sockets still in the handshake at once; they hold no connection
    /// slot, and are dropped after `handshake_timeout_ms`. Sized for an
    /// aggregator of 1,000 children restarting: all of them come back at
    /// once, and one told 503 would wait out its refused-retry delay (up
    /// to `reconnect_refused_max_ms`) — at 256 the last ones' wait held a
    /// restarted street's catch-up back by ~9 % (BENCHMARKS.md). A silent
    /// socket costs the node ~20 KB until its deadline.
    pub handshakes_max: usize,
    /// How long an unauthenticated socket may take to prove its key.
    pub handshake_timeout_ms: i64,
    /// Bytes of batch frames received from all children together and not
    /// yet durable here: a session takes its frame's share before decoding
    /// it and gives it back once the import commits (or is refused); a
    /// child that would go beyond waits, unread, on its socket. Bounds
    /// the memory of a catch-up burst from many children (at least
    /// `frame_bytes_max`, whatever is set here), with one message per
    /// connected child outside it (read whole before it can take a share):
    /// the welcome asks each child for batches of this shared by the
    /// connection slots, at least 32 KiB (`batch_bytes_max` in
    /// `schemas/sync-frames.md`).
    pub received_bytes_max: usize,
    /// When this node starts listening, tell each child in the topology
    /// (`POST /v1/sync/nudge`, signed with this node's key) to retry its
    /// connection now instead of at the end of its retry delay; a child
    /// that cannot be reached still comes back within its own delay.
    pub nudge_children: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            frame_bytes_max: 1024 * 1024,
            batch_bytes_max: 256 * 1024,
            send_fragment_bytes: 8 * 1024,
            window_batches: 4,
            write_buffer_bytes_max: 4 * 1024 * 1024,
            heartbeat_ms: 5_000,
            idle_timeout_ms: 20_000,
            ack_timeout_ms: 30_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            reconnect_refused_max_ms: 1_000,
            connections_max: 64,
            handshakes_max: 1024,
            handshake_timeout_ms: 5_000,
            received_bytes_max: 16 * 1024 * 1024,
            nudge_children: true,
        }
    }
}

impl SyncSettings {
    /// Settings that would make links fail for ever are refused at start
    /// (review F24).
    ///
    /// # Errors
    /// What is wrong and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        if self.window_batches == 0 || self.connections_max == 0 || self.handshakes_max == 0 {
            return Err(
                "window_batches, connections_max and handshakes_max must be at least 1".into(),
            );
        }
        if self.batch_bytes_max + 64 * 1024 > self.frame_bytes_max {
            return Err(format!(
                "batch_bytes_max ({}) must leave 64 KiB of room below frame_bytes_max ({}), or every batch is refused",
                self.batch_bytes_max, self.frame_bytes_max
            ));
        }
        if self.write_buffer_bytes_max <= self.frame_bytes_max {
            return Err(format!(
                "write_buffer_bytes_max ({}) must be larger than frame_bytes_max ({}): a message \
                 that does not fit the write buffer fails its link at every attempt",
                self.write_buffer_bytes_max, self.frame_bytes_max
            ));
        }
        if self.send_fragment_bytes != 0 && self.send_fragment_bytes < 1024 {
            return Err(format!(
                "send_fragment_bytes ({}) must be 0 (whole messages) or at least 1024: \
                 smaller frames cost a header and a wakeup each for nothing",
                self.send_fragment_bytes
            ));
        }
        if self.heartbeat_ms <= 0 || self.heartbeat_ms >= self.idle_timeout_ms {
            return Err(format!(
                "heartbeat_ms ({}) must be positive and below idle_timeout_ms ({}), or links flap",
                self.heartbeat_ms, self.idle_timeout_ms
            ));
        }
        if self.handshake_timeout_ms <= 0
            || self.ack_timeout_ms <= 0
            || self.reconnect_min_ms == 0
            || self.reconnect_min_ms > self.reconnect_max_ms
            || self.reconnect_min_ms > self.reconnect_refused_max_ms
        {
            return Err(
                "timeouts must be positive, and reconnect_min_ms at most reconnect_max_ms and \
                 reconnect_refused_max_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SyncSettings;

    #[test]
    fn sync_settings_that_cannot_work_are_refused_with_the_reason() {
        assert_eq!(SyncSettings::default().check(), Ok(()));
        let whole = SyncSettings {
            send_fragment_bytes: 0,
            ..SyncSettings::default()
        };
        assert_eq!(whole.check(), Ok(()), "0 sends whole messages");
        let tiny = SyncSettings {
            send_fragment_bytes: 512,
            ..SyncSettings::default()
        };
        let why = tiny.check().unwrap_err();
        assert!(why.contains("send_fragment_bytes (512)"), "{why}");
        let big = SyncSettings {
            batch_bytes_max: 1024 * 1024,
            ..SyncSettings::default()
        };
        let why = big.check().unwrap_err();
        assert!(why.contains("batch_bytes_max (1048576)"), "{why}");
        // tungstenite panics on a write buffer no larger than its
        // write_buffer_size (64 KiB at a parent), and a frame that does not
        // fit fails the link.
        let small = SyncSettings {
            write_buffer_bytes_max: 64 * 1024,
            ..SyncSettings::default()
        };
        let why = small.check().unwrap_err();
        assert!(why.contains("write_buffer_bytes_max (65536)"), "{why}");
    }
}
