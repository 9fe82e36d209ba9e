//! The command line's definitions: commands, flags and their help texts.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "gridsync",
    version,
    about = "Event-sourced sync server for multi-level grid reporting",
    long_about = "gridsync runs one kind of node everywhere. A community node (no children) accepts field \
events over HTTP and appends them durably to its signed, hash-chained log; street and district nodes \
receive their subtree's events and serve them. Start with `gridsync provision`, then `gridsync serve` \
each node."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write topology, per-node configs, keys and tokens from an org tree.
    ///
    /// TREE is a TOML file with `timezone` and one `[[node]]` per node
    /// (`id`, `name`, optional `parent`, `listen`). A node without children
    /// is a community. OUT receives `topology.toml` and, per node,
    /// `<id>/config.toml`, `<id>/node.key` (mode 0600) and `<id>/tokens.toml`
    /// (plaintext tokens for the roles reporter, viewer, auditor, admin).
    Provision {
        /// The org tree file.
        #[arg(long)]
        tree: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an earlier provisioning in OUT (its keys are replaced).
        #[arg(long)]
        force: bool,
        /// Serve every node on HTTPS: make a private CA in OUT (ca.crt;
        /// ca.key stays with you, off the nodes; an existing one is kept)
        /// and a certificate per node, and give every node an https URL.
        /// Without it every node serves and connects over plain HTTP
        /// (`plain_http = true` in its config).
        #[arg(long)]
        tls: bool,
    },
    /// Post realistic field events to a community node (or to every
    /// community of a provisioned tree) and report events/s, ack latency
    /// (p50, p99, max) and errors by code.
    ///
    /// Each of N clients posts batches of B events (B = 1: one event per
    /// request, like phones) as fast as the node acknowledges them, or at
    /// `--rate` events/s across all clients. A live line on stderr shows
    /// progress when it is a terminal. Exit 0 when events were
    /// acknowledged, 1 when none was, 2 when the target cannot be used.
    Load {
        /// A community node's base URL, e.g. http://127.0.0.1:7402.
        #[arg(long, conflicts_with = "tree", requires = "token")]
        url: Option<String>,
        /// Its reporter token (also from GRIDSYNC_TOKEN).
        #[arg(long, env = "GRIDSYNC_TOKEN")]
        token: Option<String>,
        /// CA certificate (PEM) to verify an https URL against (with
        /// --tree: the topology's ca_file).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A provisioned directory (`gridsync provision --out DIR`): post to
        /// every community in it, clients spread over them.
        #[arg(long, required_unless_present = "url")]
        tree: Option<PathBuf>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Events per request (1: single-event posts like phones).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Events per second across all clients (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Stop after this many events (default 100000 without --duration).
        #[arg(long)]
        events: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Seed of the event generator (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make this machine's node key, so no other machine ever holds it.
    ///
    /// Writes `DIR/node.key` (mode 0600) and prints the line to put under
    /// the node's `[[node]]` in the tree file (`public_key = "…"`); then
    /// `gridsync provision` writes no private key for that node. Put the
    /// node's provisioned `config.toml` and `tokens.toml` into DIR, and
    /// `topology.toml` into DIR's parent.
    Init {
        /// The node's id, as in the tree file.
        #[arg(long)]
        id: String,
        /// Where the key goes (default: the current directory).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace an existing key (only for a node that never served).
        #[arg(long)]
        force: bool,
        /// Also make this node's TLS key (DIR/tls/node.key) and a
        /// certificate request for HOST (its listen IP or DNS name;
        /// repeatable) in DIR/tls/node.csr: copy that to the provisioning
        /// machine as OUT/<id>/tls/node.csr before `provision --tls`, and
        /// the certificate it writes back here as DIR/tls/node.crt.
        #[arg(long = "tls-host")]
        tls_host: Vec<String>,
    },
    /// Rotate or revoke a node's access tokens.
    ///
    /// Edits the node's config.toml (which holds only hashes) and records
    /// the new plaintext token (or the revocation) in tokens.toml beside it.
    /// The node reads its tokens at start: restart it to apply.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Change a deployed tree without invalidating history: rotate a
    /// node's key, retire a node, move a node to another parent.
    ///
    /// Each edits topology.toml atomically (validated first); copy the
    /// file to the edited node's ancestors and restart them (parent first,
    /// then up), then the node itself.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Run a whole simulated district on localhost, dashboard included.
    ///
    /// Laoshan (崂山区) with its five streets (金家岭, 中韩, 沙子口, 王哥庄,
    /// 北宅) and 118 communities (王哥庄 has 34), every node with its own
    /// sled store, HTTP server and websocket links on 127.0.0.1, simulated
    /// grid workers posting entries, temperature checks (a few fevers),
    /// visits, deliveries and the odd correction. Prints the dashboard URL
    /// with a viewer token and runs until Ctrl-C or SIGTERM.
    Demo {
        /// Where the district's dashboard and API listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Data directory (default: a fresh directory under the system temp dir).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Events per second across the district.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Take random communities offline for a while, to watch catch-up.
        #[arg(long)]
        chaos: bool,
        /// Two communities per street instead of the real numbers.
        #[arg(long)]
        small: bool,
    },
    /// Rebuild a node's projection from its log, offline, and print it.
    ///
    /// The node must not be running (sled allows one process per data
    /// directory). Verifies the log as `serve` does, folds every event into a
    /// fresh projection (with a progress bar on a terminal), and prints the
    /// same JSON as `GET /v1/aggregates` for the given node and days, so it
    /// can be compared with what a running node answered.
    Rebuild {
        #[arg(long)]
        config: PathBuf,
        /// Node to report (default: this node).
        #[arg(long)]
        node: Option<String>,
        /// First day, YYYY-MM-DD (default: --to).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today in the topology's zone).
        #[arg(long)]
        to: Option<String>,
    },
    /// Auditor tools: verify a node's data, replay its history, project the
    /// aggregates as of a past moment. They work on a copy of the data
    /// directory (the node's files are never modified; stop the node or
    /// copy its directory first if it runs).
    Audit {
        #[command(subcommand)]
        command: Box<AuditCommand>,
    },
    /// Run one node until SIGTERM or Ctrl-C.
    ///
    /// Verifies the stored log before serving (a log that does not verify is
    /// refused with the reason). On shutdown, finishes in-flight requests and
    /// commits. Logs go to stderr; set RUST_LOG (e.g. `info`,
    /// `gridsync_store=debug`). Prints `gridsync: listening on http://ADDR`
    /// on stdout once it accepts requests.
    Serve {
        /// The node's config.toml (from provision).
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of the config's address (e.g. 127.0.0.1:0).
        #[arg(long)]
        listen: Option<String>,
        /// The data directory was restored from a backup (or may lack a
        /// tail its parent holds): a community takes no posts until its
        /// parent has confirmed its chain or given back what it lacks.
        #[arg(long)]
        after_restore: bool,
        /// Verify every chunk's signature at start. By default every
        /// event's chain link is recomputed and each origin's newest signed
        /// head verified, which authenticates its whole chain; this also
        /// checks each older head's own signature (as `audit verify` does).
        #[arg(long)]
        verify_all: bool,
        /// Test-only negative control: acknowledge before the commit is
        /// durable. Loses acknowledged events on a crash.
        #[arg(long, hide = true)]
        unsafe_ack_before_durable: bool,
        /// Test-only planted bug: let replication, projections and the API
        /// read commits before they are durable.
        #[arg(long, hide = true)]
        unsafe_read_uncommitted: bool,
        /// Test-only negative control: commit with sled's flush alone, no
        /// fsync. Loses acknowledged events on a power cut.
        #[arg(long, hide = true)]
        unsafe_skip_fsync: bool,
        /// Test-only negative control: commit without first syncing the
        /// log bodies beside sled. A power cut then leaves pointers to
        /// bodies that were never kept.
        #[arg(long, hide = true)]
        unsafe_skip_body_fsync: bool,
        /// Test-only negative control: sync proofs sign no TLS channel
        /// binding, so a relay in the middle goes unnoticed.
        #[arg(long, hide = true)]
        unsafe_no_channel_binding: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Give a role a new token; its older tokens stop working.
    Rotate {
        /// The node's config.toml.
        #[arg(long)]
        config: PathBuf,
        /// reporter, viewer, auditor or admin.
        #[arg(long, value_parser = parse_role)]
        role: gridsync_deploy::tokens::Role,
    },
    /// Remove every token of a role.
    Revoke {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_parser = parse_role)]
        role: gridsync_deploy::tokens::Role,
    },
}

#[derive(Subcommand)]
pub(crate) enum TopologyCommand {
    /// Give the node of CONFIG a new key (the node must be stopped). Its
    /// chunks up to its current head keep verifying with the old key
    /// (kept as previous_keys in the topology); later ones, and its sync
    /// handshakes, need the new key.
    RotateKey {
        #[arg(long)]
        config: PathBuf,
    },
    /// Retire NODE: its history stays verifiable, its parent refuses it,
    /// it does not start. Move or retire its children first.
    Retire {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Move NODE under PARENT; the old parent stays in former_parents (its
    /// copy of NODE's history still audits clean). With --config (NODE's
    /// config.toml), that is updated too.
    Move {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        parent: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_role(s: &str) -> Result<gridsync_deploy::tokens::Role, String> {
    use gridsync_deploy::tokens::Role;
    Role::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a role: use reporter, viewer, auditor or admin"))
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify every chain, signature, the heads table and the index of a
    /// node's data, reporting every problem with its origin and seq.
    ///
    /// Exit code 0 when everything verifies, 1 when problems were found, 2
    /// when the input could not be read.
    Verify {
        /// The node's data directory (its sled database).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        topology: PathBuf,
        /// The audited node's id: its log may only hold origins of its subtree.
        #[arg(long)]
        node: Option<String>,
        /// Heads held elsewhere (a parent's `/v1/status` JSON, or a map
        /// origin → {seq, hash[, signed_at_ms, signature]}): the log must
        /// reach each, or it was cut off.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Machine-readable report on stdout.
        #[arg(long)]
        json: bool,
        /// Which signed heads to verify: `all` (every chunk's own, the
        /// default) or `newest` (each origin's newest head per unbroken run
        /// of its chain and per key, which vouches for every event before
        /// it through the hash links: the same events proven, far faster on
        /// a log of one-event chunks, but an older head's altered signature
        /// bytes go unseen).
        #[arg(long, value_enum, default_value_t = SignaturesArg::All)]
        signatures: SignaturesArg,
    },
    /// Stream events as JSON Lines, verifying them.
    ///
    /// From a data directory (`--data`, `--topology`): the whole log is
    /// verified first (chains and signatures). From a running node (`--url`,
    /// `--token` with the auditor role): every event's hash is recomputed
    /// from its fields and every `prev` link checked as it streams; with
    /// `--topology` too, the node's signed heads are verified and each
    /// streamed chain must end in its origin's signed head.
    Replay {
        #[arg(long, required_unless_present = "url")]
        data: Option<PathBuf>,
        #[arg(long, required_unless_present = "url")]
        topology: Option<PathBuf>,
        /// A running node's base URL, e.g. http://127.0.0.1:7401.
        #[arg(long, conflicts_with = "data", requires = "token")]
        url: Option<String>,
        /// Auditor token for `--url` (also from GRIDSYNC_TOKEN, which keeps
        /// it out of the process list).
        #[arg(long, env = "GRIDSYNC_TOKEN")]
        token: Option<String>,
        /// CA certificate (PEM) to verify an https `--url` against
        /// (default: the `--topology`'s ca_file).
        #[arg(long, requires = "url")]
        ca: Option<PathBuf>,
        /// Only this origin.
        #[arg(long)]
        origin: Option<String>,
        /// Only origins in this node's subtree.
        #[arg(long)]
        subtree: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        from_seq: Option<u64>,
        #[arg(long)]
        to_seq: Option<u64>,
        /// `occurred_at` at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// `occurred_at` before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// `recorded_at` at or after (RFC 3339).
        #[arg(long)]
        recorded_from: Option<String>,
        /// `recorded_at` before (RFC 3339).
        #[arg(long)]
        recorded_to: Option<String>,
        /// Include personal fields where the log holds them.
        #[arg(long)]
        with_personal: bool,
        /// With `--data`: which signed heads the whole-log check verifies
        /// before streaming (`all`, every chunk's; `newest`, each origin's
        /// newest, which vouches for its chain through the links — as
        /// `audit verify --signatures`).
        #[arg(long, value_enum, default_value_t = SignaturesArg::All)]
        signatures: SignaturesArg,
    },
    /// The aggregates as they were at a past moment, in the JSON shape of
    /// `/v1/aggregates` (with its `state_hash`).
    Project {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        topology: PathBuf,
        /// The moment (RFC 3339).
        #[arg(long)]
        as_of: String,
        /// Count what this node had received by then (instead of what had
        /// occurred by then).
        #[arg(long)]
        known_at: bool,
        /// The node whose data this is (default: the topology's root).
        #[arg(long)]
        at: Option<String>,
        /// Report this node (default: `--at`).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Which signed heads the whole-log check verifies first (as
        /// `audit verify --signatures`).
        #[arg(long, value_enum, default_value_t = SignaturesArg::All)]
        signatures: SignaturesArg,
    },
}

/// `audit … --signatures`: which signed heads an audit verifies.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SignaturesArg {
    /// Every chunk's own signed head.
    All,
    /// Each run's newest head, which vouches for its chain through the links.
    Newest,
}

impl From<SignaturesArg> for gridsync_audit::verify::Signatures {
    fn from(a: SignaturesArg) -> Self {
        match a {
            SignaturesArg::All => Self::All,
            SignaturesArg::Newest => Self::Newest,
        }
    }
}
