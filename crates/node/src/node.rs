//! A running node: its state, and `serve` (open, bind, serve, shut down).

use std::future::Future;
use std::sync::Arc;

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
    /// Test-only negative control: sign sync proofs without the TLS
    /// channel binding (a relayed handshake then succeeds).
    pub no_channel_binding: bool,
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
    open_node_with(config, &OpenOptions::default(), progress)
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
    open_node_with(config, unsafe_opts, &|_| {}).map(|(s, _)| s)
}

fn open_node_with(
    config: NodeConfig,
    unsafe_opts: &OpenOptions,
    progress: &dyn Fn(u64),
) -> Result<(Arc<NodeState>, std::time::Duration), StartError> {
    let topology = Topology::load(&config.topology_file).map_err(|e| StartError(e.0))?;
    let Some(me) = topology.node(&config.id) else {
        return Err(StartError(format!(
            "node id {:?} from the config is not in the topology {}",
            config.id,
            config.topology_file.display()
        )));
    };
    if me.retired {
        return Err(StartError(format!(
            "node {} is retired in the topology {}: it may no longer serve or connect \
             (its history stays verifiable at its ancestors)",
            config.id,
            config.topology_file.display()
        )));
    }
    if me.parent != config.parent {
        return Err(StartError(format!(
            "config says parent {:?} but the topology says {:?}; re-provision or fix one of them",
            config.parent, me.parent
        )));
    }
    let key_text = std::fs::read_to_string(&config.key_file).map_err(|e| {
        StartError(format!(
            "cannot read key {}: {e}",
            config.key_file.display()
        ))
    })?;
    let key = gridsync_model::keys::signing_key_from_hex(&key_text)
        .map_err(|e| StartError(format!("key {}: {e}", config.key_file.display())))?;
    if Some(key.verifying_key()) != topology.key(&config.id) {
        return Err(StartError(format!(
            "the key in {} does not match the public key the topology lists for {}; \
             this node would produce events nobody can verify",
            config.key_file.display(),
            config.id
        )));
    }
    let (tls_server, tls_client) = tls_setup(&config, &topology)?;
    let is_origin = topology.is_origin(&config.id);
    let mut kv = SledKv::open(&config.data_dir, config.store.cache_bytes)
        .map_err(|e| StartError(e.to_string()))?;
    if unsafe_opts.skip_fsync {
        kv = kv.unsafe_skip_fsync();
    }
    let topo_for_keys = topology.clone();
    let store_config = StoreConfig {
        commit_events_max: config.store.commit_events_max,
        queue_requests_max: config.store.queue_requests_max,
        unsafe_ack_before_durable: unsafe_opts.ack_before_durable,
        unsafe_read_uncommitted: unsafe_opts.read_uncommitted,
        node_label: config.id.clone(),
        heads_record: Some(config.data_dir.clone()),
        heads_interval_ms: config.store.heads_interval_ms,
        accept_shorter_log: unsafe_opts.after_restore,
        verify_all_signatures: unsafe_opts.verify_all,
        hold_on_open: (unsafe_opts.after_restore && is_origin && config.parent.is_some()).then(
            || PostingHold {
                code: "awaiting_parent_check".into(),
                message: "started with --after-restore: posts are refused until the parent has \
                      confirmed this community's chain or given back what it lacks \
                      (automatic once the link to the parent is up)"
                    .into(),
                since_ms: system_now_ms(),
            },
        ),
        ..StoreConfig::default()
    };
    let origin = is_origin.then(|| OriginIdentity {
        node_id: config.id.clone(),
        key: key.clone(),
    });
    let store = Store::open(
        Arc::new(kv),
        store_config,
        origin,
        Arc::new(move |o: &str, seq: u64| topo_for_keys.key_at(o, seq)),
    )
    .map_err(|e| {
        StartError(format!(
            "cannot open the log in {}: {e}",
            config.data_dir.display()
        ))
    })?;
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
    let projector = crate::projector::Projector::rebuild(&store, pcfg, progress)
        .map_err(|e| StartError(format!("cannot build the projection: {e}")))?;
    let rebuild_time = started.elapsed();
    tracing::info!(
        elapsed_ms = rebuild_time.as_millis() as u64,
        "projection rebuilt from the log"
    );
    let state = Arc::new(NodeState {
        key,
        sync,
        projector,
        config,
        topology,
        store,
        is_origin,
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

/// The HTTP accept loop (instead of `axum::serve`, which sets no
/// header-read timeout): caps connections in all and per IP, closes a
/// connection whose client is slow to send headers (or idles between
/// requests) after `header_read_timeout_s`, and on `shutdown` stops the
/// sync sessions, then lets in-flight requests finish.
async fn serve_http(
    state: &Arc<NodeState>,
    app: axum::Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop_sync: &tokio::sync::watch::Sender<bool>,
) {
    let l = &state.config.limits;
    let header_timeout = std::time::Duration::from_secs(l.header_read_timeout_s);
    let conns = Arc::new(tokio::sync::Semaphore::new(l.connections_max));
    let per_ip_max = l.connections_per_ip_max;
    let per_ip: crate::slots::Slots<std::net::IpAddr> = crate::slots::Slots::default();
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let node = state.config.id.clone();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            metrics::counter!("gridsync_http_connections_refused_total", "node" => node.clone(), "why" => "total").increment(1);
            continue;
        };
        let Some(slot) = per_ip.try_take(addr.ip(), per_ip_max) else {
            metrics::counter!("gridsync_http_connections_refused_total", "node" => node.clone(), "why" => "per_ip").increment(1);
            continue;
        };
        let app = app.clone();
        let tls = state
            .tls_server
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        let closing = closing_rx.clone();
        let done = done_tx.clone();
        let node = node.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, None, app, header_timeout, closing).await,
                Some(acceptor) => {
                    // The TLS handshake is bounded like the headers are.
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let binding = crate::tls::exporter(tls.get_ref().1);
                            serve_connection(tls, binding, app, header_timeout, closing).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            metrics::counter!("gridsync_http_tls_failures_total", "node" => node)
                                .increment(1);
                        }
                        Err(_) => {
                            metrics::counter!("gridsync_http_tls_failures_total", "node" => node)
                                .increment(1);
                        }
                    }
                }
            }
            drop((permit, slot, done));
        });
    }
    // Stop replicating first, so websocket sessions end, then let the
    // requests in flight finish.
    let _ = stop_sync.send(true);
    let _ = closing_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// Serves HTTP/1 on one accepted connection (plain or TLS), each request
/// carrying the connection's [`crate::tls::ChannelBinding`], until it ends
/// or `closing` asks for a graceful shutdown.
async fn serve_connection<IO>(
    io: IO,
    binding: Option<[u8; 32]>,
    app: axum::Router,
    header_timeout: std::time::Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(crate::tls::ChannelBinding(binding));
        req
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = closing.changed() => conn.as_mut().graceful_shutdown(),
        }
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes
/// in-flight requests (and so in-flight commits) and closes the store.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    state: Arc<NodeState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::http::router(state.clone());
    let upstream = tokio::spawn(crate::sync::run_upstream(
        state.clone(),
        state.sync.stop.subscribe(),
    ));
    let projector = tokio::spawn(crate::aggregates::run_projector(
        state.clone(),
        state.sync.stop.subscribe(),
    ));
    let stop_tx = state.sync.stop.clone();
    serve_http(&state, app, listener, shutdown, &stop_tx).await;
    let _ = stop_tx.send(true);
    let _ = upstream.await;
    let _ = projector.await;
    state.http_permits.close();
    let store = state.store.clone();
    drop(state);
    // Joining the writer blocks: do it off the async workers.
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    Ok(())
}
