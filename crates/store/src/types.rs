//! What the store takes and gives: its errors, settings, heads, stored
//! chunks and posting hold.

use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridsync_model::{Chunk, Hash32, SignedHead};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("{0}")]
    Open(String),
    #[error("the stored log does not verify: {0}")]
    Corrupt(String),
    #[error("the log holds less than this node recorded having: {0}. If this data directory was restored from a backup, or sled lost part of it, start with --after-restore: the node takes the shorter log, refuses posts until its parent has confirmed its chain, and gets the missing events back from its parent (a community) or its children (an aggregator). Otherwise restore the data directory from a copy")]
    Truncated(String),
    #[error("the log writer stopped after a failed commit ({0}); nothing further is acknowledged: restart the node")]
    Failed(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("refused: {0}")]
    Refused(String),
    #[error(
        "origin {origin}: the event offered at seq {seq} differs from the one held (equivocation)"
    )]
    Diverged { origin: String, seq: u64 },
}

/// Why an append request was refused (nothing of it was stored).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    #[error("event {index}: client_id {client_id:?} was already used for a different event (seq {seq}); use a new client_id for a new event")]
    ClientIdReused {
        index: usize,
        client_id: String,
        seq: u64,
    },
    #[error("this node is not an origin; events are created only at community nodes")]
    NotAnOrigin,
    #[error("{}", .0.message)]
    Held(PostingHold),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result for one appended event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Shared by a request's results (all of one origin): one string per
    /// request, not per event, made and freed.
    pub origin: std::sync::Arc<str>,
    pub seq: u64,
    pub hash: Hash32,
    /// The `client_id` was already stored; nothing new was written.
    pub duplicate: bool,
}

/// Why an origin refuses posts for now. Persisted with the log, so it
/// survives a restart; lifted only when the parent has confirmed (or given
/// back) this origin's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostingHold {
    /// `log_behind_parent`, `log_diverged`, `awaiting_parent_check`.
    pub code: String,
    /// What happened and what the operator should do.
    pub message: String,
    pub since_ms: i64,
}

impl PostingHold {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let code = self.code.as_bytes();
        let mut v = Vec::with_capacity(10 + code.len() + self.message.len());
        v.extend_from_slice(&self.since_ms.to_be_bytes());
        v.extend_from_slice(&u16::try_from(code.len()).unwrap_or(0).to_be_bytes());
        v.extend_from_slice(&code[..usize::from(u16::try_from(code.len()).unwrap_or(0))]);
        v.extend_from_slice(self.message.as_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let since_ms = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let n = usize::from(u16::from_be_bytes(v.get(8..10)?.try_into().ok()?));
        Some(Self {
            since_ms,
            code: String::from_utf8(v.get(10..10 + n)?.to_vec()).ok()?,
            message: String::from_utf8_lossy(v.get(10 + n..)?).into_owned(),
        })
    }
}

/// An origin's chain head as this store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadState {
    pub seq: u64,
    pub hash: Hash32,
    pub signed: SignedHead,
}

impl HeadState {
    /// The head a chunk closed by `signed` leaves.
    pub fn of(signed: &SignedHead) -> Self {
        Self {
            seq: signed.seq,
            hash: signed.hash,
            signed: signed.clone(),
        }
    }
}

/// One log entry read back as stored: the chunk encoded, for readers that
/// read it in place (`gridsync_model::chunk::ChunkView`) instead of
/// decoding every event into its own allocation.
#[derive(Clone, Debug)]
pub struct EncodedEntry {
    pub offset: u64,
    /// When this node committed the chunk (its clock).
    pub received_at_ms: i64,
    /// The chunk's encoding.
    pub chunk: Vec<u8>,
}

/// One log entry read back.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    pub offset: u64,
    /// When this node committed the chunk (its clock).
    pub received_at_ms: i64,
    pub chunk: Chunk,
}

/// Store settings. Names end in their unit.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most events gathered into one commit.
    pub commit_events_max: usize,
    /// Append requests queued for the writer before senders wait.
    pub queue_requests_max: usize,
    /// A chunk is closed once its encoding reaches this size.
    pub chunk_bytes_target: usize,
    /// Log entries up to this size are kept several to a sled value (a
    /// pack, up to ~7 KiB), so that one-event entries do not cost a sled
    /// key each; 0 keeps every entry under its own key (format 1's way).
    pub pack_entry_bytes_max: usize,
    /// Test-only negative control: answer appends before the commit is
    /// durable. Never set outside the crash test's control run.
    pub unsafe_ack_before_durable: bool,
    /// Test-only negative control (planted bug): let readers see commits
    /// that are applied but not yet durable, as sled itself does. Never set
    /// outside the crash tests' control runs.
    pub unsafe_read_uncommitted: bool,
    /// Value of the `node` label on this store's metrics.
    pub node_label: String,
    /// Set this posting hold at open (durably), unless one is recorded.
    pub hold_on_open: Option<PostingHold>,
    /// The sled directory, to keep the heads record beside it (see
    /// [`heads_file`]); `None` keeps none (in-memory stores).
    pub heads_record: Option<std::path::PathBuf>,
    /// Write the heads record at most this often (ms; 0 = at every commit,
    /// before it is acknowledged), and always when the store closes.
    pub heads_interval_ms: u64,
    /// Open a log that holds less than its heads record says (a restored
    /// backup): report what is missing, then take the log as it is.
    pub accept_shorter_log: bool,
    /// Verify every chunk's head signature at open (`serve --verify-all`).
    /// By default the chain links of every event are recomputed and only
    /// each origin's newest head signature is verified: that signature
    /// covers the whole chain through the hash links, so it authenticates
    /// every event as well; what the full pass adds is a check of the
    /// older heads' own signature bytes (damage there is found by `audit
    /// verify`, or refused by the parent if such a chunk is forwarded).
    pub verify_all_signatures: bool,
    /// Read the whole log back at open (every chain link, the index, each
    /// origin's newest signature) even when a checkpoint makes that
    /// unnecessary. By default an open with a checkpoint checks only what
    /// the checkpoint vouches for (O(origins)) and leaves the whole-log
    /// pass to [`crate::Store::verify_log`], run after the node listens.
    /// `verify_all_signatures` implies it.
    pub verify_whole_log: bool,
    /// Shape of the origin's client-id index (defaults suit every node).
    pub client_index: crate::ClientIndexConfig,
    /// How many of this origin's newest events have their kind and schema
    /// version kept in memory (~8 bytes each), so that a posted
    /// correction's target is known without reading its log entry.
    pub recent_kinds_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            commit_events_max: 4096,
            queue_requests_max: 256,
            chunk_bytes_target: 32 * 1024,
            pack_entry_bytes_max: 2048,
            unsafe_ack_before_durable: false,
            unsafe_read_uncommitted: false,
            node_label: String::new(),
            hold_on_open: None,
            heads_record: None,
            heads_interval_ms: 200,
            accept_shorter_log: false,
            verify_all_signatures: false,
            verify_whole_log: false,
            client_index: crate::ClientIndexConfig::default(),
            recent_kinds_max: 65_536,
        }
    }
}

/// Who this node is when it originates events.
pub struct OriginIdentity {
    pub node_id: String,
    pub key: SigningKey,
}

/// Answers the public key of an origin (from the topology).
pub type KeyLookup = Arc<dyn Fn(&str, u64) -> Option<VerifyingKey> + Send + Sync>;
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub chunks: u64,
    pub events: u64,
}
