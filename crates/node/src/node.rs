//! Opening a node: the topology, key and config checked against each
//! other, TLS set up, the log opened and verified, the projection rebuilt.
//! Serving it is `gridsync_server::serve`.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gridsync_model::ingest::IngestLimits;
use gridsync_store::{OriginIdentity, PostingHold, SledKv, Store, StoreConfig};

use gridsync_deploy::config::NodeConfig;
use gridsync_deploy::topology::Topology;

pub use crate::state::{metrics_handle, system_now_ms, NodeState};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// How to open a node: operator flags of `gridsync serve`, and test-only
/// negative controls (hidden flags, never in a config file).
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The data directory was restored from a backup (or may otherwise lack
    /// a tail its parent holds): take no posts until the parent has
    /// confirmed this community's chain or given back what it lacks.
    pub after_restore: bool,
    /// Verify every chunk's signature at open, not only each origin's
    /// newest head (which covers its whole chain through the hash links).
    pub verify_all: bool,
    /// Test-only: acknowledge appends before they are durable (the crash
    /// test's negative control).
    pub ack_before_durable: bool,
    /// Test-only planted bug: let readers (replication, projections, the
    /// API) see commits before they are durable.
    pub read_uncommitted: bool,
    /// Test-only negative control: skip the fsync after sled's flush.
    pub skip_fsync: bool,
    /// Test-only negative control: commit sled's batch without first
    /// syncing the log bodies its pointers name.
    pub skip_body_fsync: bool,
    /// Test-only negative control: sign sync proofs without the TLS
    /// channel binding (a relayed handshake then succeeds).
    pub no_channel_binding: bool,
    /// Benchmarks only: keep the log in memory (nothing in `data_dir`,
    /// everything lost when the process ends), so one process can host
    /// hundreds of community nodes, each with its own sockets. Never
    /// reachable from `gridsync serve`.
    pub in_memory: bool,
}

/// Everything `open_node` does except building the projection, which the
/// caller does (with a progress report) — for `gridsync rebuild`.
///
/// # Errors
/// As [`open_node`].
pub fn open_for_rebuild(
    config: NodeConfig,
    progress: &dyn Fn(u64),
) -> Result<(Arc<NodeState>, std::time::Duration), StartError> {
    // A rebuild folds the whole log: never the saved projection (so it
    // can check a running node's numbers independently).
    open_node_with(config, &OpenOptions::default(), progress, false)
}

/// Loads topology and key, checks them against the config, opens and
/// verifies the store.
///
/// # Errors
/// Anything that stops the node from starting safely, with what to do.
pub fn open_node(
    config: NodeConfig,
    unsafe_opts: &OpenOptions,
) -> Result<Arc<NodeState>, StartError> {
    open_node_with(config, unsafe_opts, &|_| {}, true).map(|(s, _)| s)
}

fn open_node_with(
    config: NodeConfig,
    unsafe_opts: &OpenOptions,
    progress: &dyn Fn(u64),
    use_snapshot: bool,
) -> Result<(Arc<NodeState>, std::time::Duration), StartError> {
    // A config built in code (tests) has not been through
    // `NodeConfig::load`'s check: a malformed token hash is refused here
    // too, before the log opens.
    let tokens = gridsync_deploy::tokens::TokenTable::new(&config.token).map_err(StartError)?;
    let (topology, key) = load_identity(&config)?;
    let (tls_server, tls_client) = tls_setup(&config, &topology)?;
    let is_origin = topology.is_origin(&config.id);
    let store = open_store(&config, &topology, &key, is_origin, unsafe_opts)?;
    let l = &config.limits;
    let ingest_limits = IngestLimits {
        batch_events_max: l.batch_events_max,
        event_bytes_max: l.event_bytes_max,
        future_skew_ms: l.future_skew_s.saturating_mul(1000),
    };
    let http_permits = tokio::sync::Semaphore::new(l.http_concurrency_max);
    let sync = crate::sync_state::SyncState::new(&config.sync, topology.children(&config.id).len());
    let mut pcfg = gridsync_projections::ProjectionConfig::new(&topology.timezone)
        .map_err(|e| StartError(format!("topology timezone: {e}")))?;
    pcfg.fever_celsius = config.projections.fever_celsius;
    pcfg.flagged_region_prefixes = config.projections.flagged_region_prefixes.clone();
    let started = std::time::Instant::now();
    let snapshot =
        (use_snapshot && config.projections.snapshot_interval_s > 0 && !unsafe_opts.in_memory)
            .then(|| gridsync_projections::snapshot::path(&config.data_dir));
    // A serving node folds for a bounded time before it listens, the rest
    // while it serves; a rebuild (no snapshot) folds the whole log.
    let fold_for = use_snapshot
        .then(|| std::time::Duration::from_secs(config.projections.fold_before_listen_s));
    let projector = crate::projector::Projector::open(&store, pcfg, snapshot, progress, fold_for)
        .map_err(|e| StartError(format!("cannot build the projection: {e}")))?;
    let rebuild_time = started.elapsed();
    let applied = *projector.applied.borrow();
    let entries = store.counts().chunks;
    tracing::info!(
        elapsed_ms = rebuild_time.as_millis() as u64,
        resumed_from = projector.resumed_from,
        applied,
        entries,
        "projection opened (folded on from its snapshot at log entry `resumed_from`, 0: from \
         the start, to entry `applied` of `entries`; the rest is folded while the node serves)"
    );
    let state = Arc::new(NodeState {
        key,
        sync,
        projector,
        config,
        topology,
        store,
        is_origin,
        tokens,
        ingest_limits,
        metrics: metrics_handle(),
        http_permits,
        token_slots: crate::slots::Slots::default(),
        clock: system_now_ms,
        tls_server,
        tls_client,
        unsafe_no_channel_binding: unsafe_opts.no_channel_binding,
    });
    Ok((state, rebuild_time))
}

/// The topology and this node's signing key, checked against the config:
/// the node is in the tree, not retired, has the parent the config says,
/// and holds the key the topology lists for it.
fn load_identity(config: &NodeConfig) -> Result<(Topology, SigningKey), StartError> {
    let topology = Topology::load(&config.topology_file).map_err(|e| StartError(e.0))?;
    let topology_file = config.topology_file.display();
    let Some(me) = topology.node(&config.id) else {
        return Err(StartError(format!(
            "node id {:?} from the config is not in the topology {topology_file}",
            config.id,
        )));
    };
    if me.retired {
        return Err(StartError(format!(
            "node {} is retired in the topology {topology_file}: it may no longer serve or connect \
             (its history stays verifiable at its ancestors)",
            config.id,
        )));
    }
    if me.parent != config.parent {
        return Err(StartError(format!(
            "config says parent {:?} but the topology says {:?}; re-provision or fix one of them",
            config.parent, me.parent
        )));
    }
    let key_file = config.key_file.display();
    let key_text = std::fs::read_to_string(&config.key_file)
        .map_err(|e| StartError(format!("cannot read key {key_file}: {e}")))?;
    let key = gridsync_model::keys::signing_key_from_hex(&key_text)
        .map_err(|e| StartError(format!("key {key_file}: {e}")))?;
    if Some(key.verifying_key()) != topology.key(&config.id) {
        return Err(StartError(format!(
            "the key in {key_file} does not match the public key the topology lists for {}; \
             this node would produce events nobody can verify",
            config.id
        )));
    }
    Ok((topology, key))
}

/// Opens (and verifies) the node's log with its configured limits.
fn open_store(
    config: &NodeConfig,
    topology: &Topology,
    key: &SigningKey,
    is_origin: bool,
    unsafe_opts: &OpenOptions,
) -> Result<Store, StartError> {
    let kv: Arc<dyn gridsync_store::Kv> = if unsafe_opts.in_memory {
        Arc::new(gridsync_store::MemKv::new())
    } else {
        let mut kv = SledKv::open(&config.data_dir, config.store.cache_bytes)
            .map_err(|e| StartError(e.to_string()))?;
        if unsafe_opts.skip_fsync {
            kv = kv.unsafe_skip_fsync();
        }
        if unsafe_opts.skip_body_fsync {
            kv = kv.unsafe_skip_body_fsync();
        }
        Arc::new(kv)
    };
    let after_restore = unsafe_opts.after_restore;
    let store_config = StoreConfig {
        commit_events_max: config.store.commit_events_max,
        queue_requests_max: config.store.queue_requests_max,
        unsafe_ack_before_durable: unsafe_opts.ack_before_durable,
        unsafe_read_uncommitted: unsafe_opts.read_uncommitted,
        node_label: config.id.clone(),
        heads_record: (!unsafe_opts.in_memory).then(|| config.data_dir.clone()),
        heads_interval_ms: config.store.heads_interval_ms,
        accept_shorter_log: after_restore,
        verify_all_signatures: unsafe_opts.verify_all,
        hold_on_open: (after_restore && is_origin && config.parent.is_some()).then(|| {
            PostingHold {
                code: "awaiting_parent_check".into(),
                message: "started with --after-restore: posts are refused until the parent has \
                      confirmed this community's chain or given back what it lacks \
                      (automatic once the link to the parent is up)"
                    .into(),
                since_ms: system_now_ms(),
            }
        }),
        ..StoreConfig::default()
    };
    let origin = is_origin.then(|| OriginIdentity {
        node_id: config.id.clone(),
        key: key.clone(),
    });
    let keys = topology.clone();
    Store::open(
        kv,
        store_config,
        origin,
        Arc::new(move |o: &str, seq: u64| keys.key_at(o, seq)),
    )
    .map_err(|e| {
        let dir = config.data_dir.display();
        StartError(format!("cannot open the log in {dir}: {e}"))
    })
}

type TlsConfigs = (
    Option<Arc<rustls::ServerConfig>>,
    Option<Arc<rustls::ClientConfig>>,
);

/// The TLS identity this node serves with, and how it verifies its parent:
/// plain HTTP either way only where the config says `plain_http = true`.
fn tls_setup(config: &NodeConfig, topology: &Topology) -> Result<TlsConfigs, StartError> {
    let server = match &config.tls {
        Some(t) => Some(crate::tls::server_config(&t.cert_file, &t.key_file).map_err(StartError)?),
        None => None,
    };
    let Some(parent) = config.parent.as_deref().and_then(|p| topology.node(p)) else {
        return Ok((server, None));
    };
    let client = if parent.url.starts_with("https://") {
        let Some(ca) = &topology.ca_pem else {
            return Err(StartError(format!(
                "the parent {} is at {}, but the topology names no ca_file to verify its \
                 certificate against; add ca_file (the deployment's ca.crt) to {}",
                parent.id,
                parent.url,
                config.topology_file.display()
            )));
        };
        Some(crate::tls::client_config(ca, "the topology's ca_file").map_err(StartError)?)
    } else if config.plain_http {
        None
    } else {
        return Err(StartError(format!(
            "the parent {} is at {}, unencrypted: give it an https URL (provision with --tls), \
             or set plain_http = true in this node's config to send events and proofs in the clear",
            parent.id, parent.url
        )));
    };
    Ok((server, client))
}

/// After an open at the log's checkpoint, reads the whole log back (chains,
/// chunk index, each origin's newest signature) beside the running node.
/// If it does not verify, the store stops taking events at once — posts
/// and imports are refused with the reason — and the error is logged; the
/// operator keeps the data directory for `gridsync audit verify`. Stops
/// early (without a verdict) when the node shuts down.
pub fn verify_log_after_open(state: &NodeState) {
    let node = state.config.id.clone();
    if !state.store.opened_at_checkpoint() {
        metrics::gauge!("gridsync_log_verified", "node" => node).set(1.0);
        return;
    }
    metrics::gauge!("gridsync_log_verified", "node" => node.clone()).set(0.0);
    let started = std::time::Instant::now();
    let stop = state.sync.stop.subscribe();
    match state.store.verify_log(false, &|| *stop.borrow()) {
        Ok(counts) => {
            metrics::gauge!("gridsync_log_verified", "node" => node).set(1.0);
            tracing::info!(
                chunks = counts.chunks,
                events = counts.events,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "whole log verified after the open"
            );
        }
        Err(gridsync_store::StoreError::Closed) => {}
        Err(e) => {
            metrics::gauge!("gridsync_log_verified", "node" => node).set(-1.0);
            let why = format!(
                "the log does not verify: {e}. This node takes no more events; keep its data \
                 directory and run `gridsync audit verify` on it"
            );
            tracing::error!("{why}");
            state.store.fail(&why);
        }
    }
}
