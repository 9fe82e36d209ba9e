//! Replication transport: the websocket shell around the sans-IO protocol.
//!
//! * Parent side: `GET /v1/sync` upgrades to a websocket and runs a
//!   [`ParentSession`]; verified chunks go to the store in order, acks go out
//!   once the store reports them durable. One session per child: a newer one
//!   replaces the older.
//! * Child side: [`run_upstream`] keeps one connection to the parent,
//!   reconnecting with exponential backoff and jitter, and streams what the
//!   parent lacks, woken by the store's commit notifications (no polling).
//! * A parent that starts nudges its children that are not connected
//!   (`POST /v1/sync/nudge`, signed; up to `handshakes_max` at once, the
//!   rest later if still not back): a child waiting to retry retries at
//!   once ([`nudge_children`], [`nudge_endpoint`]).

mod child;
mod nudge;
mod parent;
mod views;

pub use crate::sync_state::{BlockedOrigin, ChildLink, ParentLink, SyncState};
pub use child::run_upstream;
pub use gridsync_deploy::config::SyncSettings;
pub use nudge::{nudge_children, nudge_endpoint};
pub use parent::sync_endpoint;

/// A link's websocket buffer size: what it reads into at first, on either
/// end, and what a child buffers before writing. tungstenite (0.29)
/// zero-fills its read buffer up to this size for every read and grows it
/// to a frame's length when one is longer; its defaults, 128 KiB each way,
/// made each reconnecting community touch 256 KiB of fresh memory for the
/// acks and welcomes it reads (a few hundred bytes). A parent's children
/// send at most `send_fragment_bytes` (16 KiB) a frame.
pub(crate) const LINK_BUFFER_BYTES: usize = 16 * 1024;

pub(crate) fn random_nonce() -> [u8; 32] {
    use rand::Rng;
    rand::rngs::OsRng.gen()
}

/// When a session's next timer is due (`next_ms` on the wall clock of
/// `system_now_ms`, from the session's `next_tick_ms`), as a tokio
/// instant: links sleep until a heartbeat or timeout is due instead of
/// waking every link twice a second. Never sooner than 20 ms (no spin if a
/// tick finds nothing to do), at most an hour.
pub(crate) fn wake_at(next_ms: Option<i64>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let wait_ms = next_ms.map_or(3_600_000, |t| {
        (t - crate::state::system_now_ms()).clamp(20, 3_600_000)
    });
    now + std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(20))
}
