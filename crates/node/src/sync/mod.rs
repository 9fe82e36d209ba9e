//! Replication transport: the websocket shell around the sans-IO protocol.
//!
//! * Parent side: `GET /v1/sync` upgrades to a websocket and runs a
//!   [`ParentSession`]; verified chunks go to the store in order, acks go out
//!   once the store reports them durable. One session per child: a newer one
//!   replaces the older.
//! * Child side: [`run_upstream`] keeps one connection to the parent,
//!   reconnecting with exponential backoff and jitter, and streams what the
//!   parent lacks, woken by the store's commit notifications (no polling).

mod child;
mod parent;
mod views;

pub use crate::sync_state::{BlockedOrigin, ChildLink, ParentLink, SyncState};
pub use child::run_upstream;
pub use gridsync_deploy::config::SyncSettings;
pub use parent::sync_endpoint;

pub(crate) fn random_nonce() -> [u8; 32] {
    use rand::Rng;
    rand::rngs::OsRng.gen()
}
