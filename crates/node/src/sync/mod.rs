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
/// zero-fills its read buffer up to this size for every read; its
/// defaults, 128 KiB each way, made each reconnecting community touch 256
/// KiB of fresh memory for the acks and welcomes it reads (a few hundred
/// bytes). Once it has read a frame's header it reserves the frame's whole
/// length on top of what it already holds of it, doubling the buffer when
/// that does not fit: with reads of up to this size and children's frames
/// of at most `send_fragment_bytes` (8 KiB by default) a parent's buffer
/// for a link stays at twice this after a burst — 16 KiB; with 16 KiB
/// buffers and 16 KiB frames it was 32 KiB, ~16 MB more at a street of
/// 1,000 (BENCHMARKS.md, "Read buffers that stay at 16 KiB").
pub(crate) const LINK_BUFFER_BYTES: usize = 8 * 1024;

/// A session's fresh nonce, from the thread's CSPRNG (`rand`'s
/// `ThreadRng`: ChaCha12, seeded from the OS and reseeded as it goes).
/// Not `OsRng`: a `getrandom` call for each of 1,000 children reconnecting
/// at once was ~2 % of a street's CPU (BENCHMARKS.md, "One signature for a
/// run of heads").
pub(crate) fn random_nonce() -> [u8; 32] {
    use rand::Rng;
    rand::thread_rng().gen()
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
