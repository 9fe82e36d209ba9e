//! What every part of a running node shares: its configuration, topology,
//! log, keys, limits, replication and projection state. A leaf: it imports
//! the settings and state types it holds, never the HTTP, sync or serving
//! code that uses it.

use std::sync::{Arc, OnceLock};

use gridsync_model::ingest::IngestLimits;
use gridsync_store::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use gridsync_deploy::config::NodeConfig;
use gridsync_deploy::tokens::TokenTable;
use gridsync_deploy::topology::Topology;

/// Shared by every request handler.
pub struct NodeState {
    pub config: NodeConfig,
    pub topology: Topology,
    pub store: Store,
    /// True for a community (no children): it creates events.
    pub is_origin: bool,
    /// The config's tokens, their digests parsed.
    pub tokens: TokenTable,
    pub ingest_limits: IngestLimits,
    pub metrics: PrometheusHandle,
    pub http_permits: tokio::sync::Semaphore,
    /// Requests in flight per token (`limits.requests_per_token_max`).
    /// (by the token's entry in the config)
    pub token_slots: crate::slots::Slots<usize>,
    /// The node's clock, unix ms (replaceable in tests).
    pub clock: fn() -> i64,
    /// This node's key (signs its events if an origin, and its sync proofs).
    pub key: ed25519_dalek::SigningKey,
    pub sync: crate::sync_state::SyncState,
    pub projector: crate::projector::Projector,
    /// Serve HTTPS with this (from `[tls]`); plain HTTP when `None`.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Connect to an `https` parent trusting only the topology's CA.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Test-only negative control (see [`OpenOptions::no_channel_binding`]).
    pub unsafe_no_channel_binding: bool,
}

/// What axum handlers share.
pub type AppState = Arc<NodeState>;

impl NodeState {
    /// The role of the request's bearer token, if it is one of `allowed`.
    ///
    /// # Errors
    /// 401 without a known token, 403 for a role not allowed here.
    pub fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        allowed: &[gridsync_deploy::tokens::Role],
    ) -> Result<gridsync_deploy::tokens::Role, crate::error::ApiError> {
        crate::auth::authorize_with(&self.tokens, headers, None, allowed)
    }

    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }
}

pub fn system_now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The process-wide Prometheus recorder (installed once; every metric
/// carries a `node` label so several nodes in one process stay apart).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| {
                    // Another recorder is installed (embedding program): render
                    // from a private one so /metrics still answers.
                    PrometheusBuilder::new().build_recorder().handle()
                })
        })
        .clone()
}
