//! A gridsync node: configuration, topology, auth, the `/v1` HTTP API,
//! metrics, provisioning and serving. See ARCHITECTURE.md for the map.

pub mod aggregates;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod events;
pub mod http;
pub mod init;
pub mod lifecycle;
pub mod node;
pub mod projector;
pub mod provision;
pub mod slots;
pub mod state;
pub mod status;
pub mod sync;
pub mod sync_state;
pub mod tls;
pub mod topology;
pub mod workload;
