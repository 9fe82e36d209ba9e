//! A gridsync node: configuration, topology, auth, the `/v1` HTTP API,
//! metrics, provisioning and serving. See ARCHITECTURE.md for the map.

pub mod aggregates;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod node;
pub mod provision;
pub mod sync;
pub mod tls;
pub mod topology;
pub mod workload;
