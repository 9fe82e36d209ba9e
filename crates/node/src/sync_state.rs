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
    /// The largest batch the welcome asks of each child: see
    /// [`batch_bytes_asked`].
    pub batch_bytes_asked: usize,
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
        let slots = settings.connections_max.max(children);
        Self {
            batch_bytes_asked: batch_bytes_asked(received_max, slots),
            children: Mutex::new(BTreeMap::new()),
            parent: Mutex::new(ParentLink::default()),
            permits: Arc::new(tokio::sync::Semaphore::new(slots)),
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

/// The least a parent asks of a child's batches: a community's chunk is
/// up to 32 KiB, and a batch below that would carry one event's worth of
/// bytes per ack.
pub const BATCH_BYTES_ASKED_FLOOR: usize = 32 * 1024;

/// The largest batch a parent asks of each child (in its welcome): its
/// received-bytes budget shared by the connections it takes at once, at
/// least [`BATCH_BYTES_ASKED_FLOOR`]. A parent reads a child's message
/// whole before the budget can count it (tungstenite assembles it), so
/// with every child sending at once it holds up to one message per
/// connection outside the budget: with 1,000 children sending 256 KiB
/// batches after an outage that was ~190 MB at the street (BENCHMARKS.md,
/// "Batches sized by the parent"). With the defaults (16 MiB, 64
/// connections) it is the children's own 256 KiB.
pub fn batch_bytes_asked(received_max: usize, slots: usize) -> usize {
    (received_max / slots.max(1)).max(BATCH_BYTES_ASKED_FLOOR)
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

#[cfg(test)]
mod tests {
    use super::{SyncSettings, SyncState, BATCH_BYTES_ASKED_FLOOR};

    /// The welcome's ask: the children's own 256 KiB with the defaults
    /// (16 MiB shared by 64 connections), the budget's share at a street of
    /// 100, the floor at 1,000 — and the children in the topology count
    /// when they outnumber `connections_max`.
    #[test]
    fn the_batch_asked_is_the_budget_shared_by_the_connections() {
        let defaults = SyncSettings::default();
        assert_eq!(SyncState::new(&defaults, 4).batch_bytes_asked, 256 * 1024);
        assert_eq!(
            SyncState::new(&defaults, 100).batch_bytes_asked,
            16 * 1024 * 1024 / 100
        );
        assert_eq!(
            SyncState::new(&defaults, 1000).batch_bytes_asked,
            BATCH_BYTES_ASKED_FLOOR
        );
        let wide = SyncSettings {
            connections_max: 2000,
            received_bytes_max: 256 * 1024 * 1024,
            ..SyncSettings::default()
        };
        assert_eq!(
            SyncState::new(&wide, 10).batch_bytes_asked,
            256 * 1024 * 1024 / 2000
        );
    }
}
