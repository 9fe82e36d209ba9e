//! Serving a node: the HTTP accept loop (plain or TLS), the replication
//! and projection tasks beside it, and an orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridsync_node::slots::Slots;
use gridsync_node::state::NodeState;
use gridsync_node::tls::ChannelBinding;
use tokio::net::TcpStream;
use tokio::sync::watch;

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
    metrics::gauge!("gridsync_projection_resumed_from", "node" => state.config.id.clone())
        .set(state.projector.resumed_from as f64);
    let upstream = tokio::spawn(gridsync_node::sync::run_upstream(
        state.clone(),
        state.sync.stop.subscribe(),
    ));
    let projector = tokio::spawn(crate::aggregates::run_projector(
        state.clone(),
        state.sync.stop.subscribe(),
    ));
    // Children waiting to retry come back now rather than at the end of
    // their delay (the listener is bound: they queue until accepted).
    let nudger = tokio::spawn(gridsync_node::sync::nudge_children(state.clone()));
    let s = state.clone();
    let verifier =
        tokio::task::spawn_blocking(move || gridsync_node::node::verify_log_after_open(&s));
    let stop_tx = state.sync.stop.clone();
    serve_http(&state, app, listener, shutdown, &stop_tx).await;
    let _ = stop_tx.send(true);
    nudger.abort();
    let _ = upstream.await;
    let _ = projector.await;
    let _ = verifier.await;
    state.http_permits.close();
    let store = state.store.clone();
    drop(state);
    // Joining the writer blocks: do it off the async workers.
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    Ok(())
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
    stop_sync: &watch::Sender<bool>,
) {
    let l = &state.config.limits;
    let conns = Arc::new(tokio::sync::Semaphore::new(l.connections_max));
    let per_ip: Slots<std::net::IpAddr> = Slots::default();
    let (closing_tx, closing_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let refused = |why: &'static str| {
            metrics::counter!("gridsync_http_connections_refused_total", "node" => state.config.id.clone(), "why" => why).increment(1);
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            refused("total");
            continue;
        };
        let Some(slot) = per_ip.try_take(addr.ip(), l.connections_per_ip_max) else {
            refused("per_ip");
            continue;
        };
        let (state, app, closing, done) = (
            state.clone(),
            app.clone(),
            closing_rx.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            serve_accepted(&state, stream, addr, app, closing).await;
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

/// One accepted connection: the TLS handshake (bounded like the headers
/// are) when the node serves HTTPS, then HTTP on it.
async fn serve_accepted(
    state: &NodeState,
    stream: TcpStream,
    addr: SocketAddr,
    app: axum::Router,
    closing: watch::Receiver<bool>,
) {
    let header_timeout = Duration::from_secs(state.config.limits.header_read_timeout_s);
    let Some(acceptor) = state
        .tls_server
        .clone()
        .map(tokio_rustls::TlsAcceptor::from)
    else {
        return serve_connection(stream, None, app, header_timeout, closing).await;
    };
    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let binding = gridsync_node::tls::exporter(tls.get_ref().1);
            serve_connection(tls, binding, app, header_timeout, closing).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            metrics::counter!("gridsync_http_tls_failures_total", "node" => state.config.id.clone())
                .increment(1);
        }
        Err(_) => {
            metrics::counter!("gridsync_http_tls_failures_total", "node" => state.config.id.clone())
                .increment(1);
        }
    }
}

/// Serves HTTP/1 on one accepted connection (plain or TLS), each request
/// carrying the connection's [`ChannelBinding`], until it ends or `closing`
/// asks for a graceful shutdown.
async fn serve_connection<IO>(
    io: IO,
    binding: Option<[u8; 32]>,
    app: axum::Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ChannelBinding(binding));
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
