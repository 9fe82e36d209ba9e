//! The HTTP front of a running node: the `/v1` routes composed in one
//! place (`http`: router and admission), their handlers (`events`,
//! `status`, `aggregates`), and `serve` (the accept loop, TLS, the
//! replication and projection tasks, shutdown). Handlers never import the
//! router; the node core (`gridsync-node`: state, log, sync transport)
//! never imports this crate.

pub mod aggregates;
pub mod events;
pub mod http;
pub mod serve;
pub mod status;

pub use serve::{serve, serve_with, LogCheckOn};
