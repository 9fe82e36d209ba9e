//! The core of a running gridsync node (`gridsync serve`): its shared
//! state, opening it (`node`), the sync transport up and down the tree
//! (`sync`), the live projection, TLS, auth and the API's error type. The
//! HTTP routes and the accept loop are in `gridsync-server`; the files the
//! node reads in `gridsync-deploy`; the tooling that writes them in
//! `gridsync-ops`; verification in `gridsync-audit`. See ARCHITECTURE.md.

pub mod auth;
pub mod error;
pub mod node;
pub mod open_files;
pub mod projector;
pub mod slots;
pub mod state;
pub mod sync;
pub mod sync_state;
pub mod tls;
