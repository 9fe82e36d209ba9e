//! The running gridsync node (`gridsync serve`): its shared state, the
//! `/v1` HTTP API, the sync transport up and down the tree, the projector,
//! TLS and metrics. The files it reads are in `gridsync-deploy`, the tooling
//! that writes them in `gridsync-ops`, verification in `gridsync-audit`.
//! See ARCHITECTURE.md for the map.

pub mod aggregates;
pub mod auth;
pub mod error;
pub mod events;
pub mod http;
pub mod node;
pub mod projector;
pub mod slots;
pub mod state;
pub mod status;
pub mod sync;
pub mod sync_state;
pub mod tls;
