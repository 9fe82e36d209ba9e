//! What the replication links share with the rest of the node (status,
//! metrics, shutdown): a leaf, so the node's state can hold it without
//! importing the sync transport.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gridsync_protocol::LagReport;
use tokio::sync::{watch, Notify};

use gridsync_deploy::config::SyncSettings;

#[derive(Clone, Debug, Default)]
pub struct ChildLink {
    pub connected: bool,
    pub last_contact_ms: Option<i64>,
    /// The child's latest lag report per origin.
    pub lag: BTreeMap<String, LagReport>,
    pub(crate) session: u64,
    pub(crate) cancel: Option<Arc<Notify>>,
}

#[derive(Clone, Debug, Default)]
pub struct ParentLink {
    pub connected: bool,
    pub last_ack_ms: Option<i64>,
    pub acked: BTreeMap<String, u64>,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Origins the parent refuses (kept across reconnects until the parent
    /// acknowledges that origin again).
    pub blocked: BTreeMap<String, BlockedOrigin>,
}

#[derive(Clone, Debug)]
pub struct BlockedOrigin {
    pub code: String,
    pub message: String,
    pub since_ms: i64,
}

/// Replication state shown by `/v1/status`.
pub struct SyncState {
    pub children: Mutex<BTreeMap<String, ChildLink>>,
    pub parent: Mutex<ParentLink>,
    /// Authenticated connections.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Sockets in the handshake (unauthenticated).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Bytes of received frames not yet durable, all children together
    /// (`sync.received_bytes_max`).
    pub received: Arc<tokio::sync::Semaphore>,
    /// What one frame takes of `received` at most (the whole budget).
    pub received_max: usize,
    pub(crate) next_session: std::sync::atomic::AtomicU64,
    /// Set to true when the node shuts down: every sync session ends.
    pub stop: watch::Sender<bool>,
    /// While true the upward link stays down (the demo's `--chaos` uses it
    /// to take a community offline).
    pub paused: watch::Sender<bool>,
    /// Woken by the parent's nudge (`POST /v1/sync/nudge`): the upward link,
    /// if it is waiting to retry, retries now.
    pub nudge: Notify,
}

impl SyncState {
    /// `children`: how many children the topology gives this node (each
    /// always has a connection slot).
    pub fn new(settings: &SyncSettings, children: usize) -> Self {
        let received_max = received_max(settings);
        Self {
            children: Mutex::new(BTreeMap::new()),
            parent: Mutex::new(ParentLink::default()),
            permits: Arc::new(tokio::sync::Semaphore::new(
                settings.connections_max.max(children),
            )),
            handshakes: Arc::new(tokio::sync::Semaphore::new(settings.handshakes_max)),
            received: Arc::new(tokio::sync::Semaphore::new(received_max)),
            received_max,
            next_session: std::sync::atomic::AtomicU64::new(1),
            stop: watch::channel(false).0,
            paused: watch::channel(false).0,
            nudge: Notify::new(),
        }
    }
}

/// The received-bytes budget: `sync.received_bytes_max`, at least one
/// whole frame, within what a semaphore counts.
fn received_max(settings: &SyncSettings) -> usize {
    settings
        .received_bytes_max
        .max(settings.frame_bytes_max)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
}
