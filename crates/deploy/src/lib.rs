//! What describes a deployment, read by the running node and written by the
//! tooling: the tree (`topology.toml`: nodes, parents, URLs, keys over time,
//! the CA), each node's `config.toml`, and the bearer-token format stored in
//! it. Files and validation only: no runtime, no network, no storage.

pub mod config;
pub mod tokens;
pub mod topology;
