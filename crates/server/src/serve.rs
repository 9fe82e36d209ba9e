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

/// Connections the kernel queues for a node's listener before the node
/// accepts them. A listener bound by `std` or tokio gets 128: 200 phones
/// posting at once (`gridsync load --clients 200 --batch 1`) overflowed it,
/// and each dropped connection's retry came 1 s later (the load's ack max
/// ~1.04 s in most runs, `TcpExtListenOverflows` counting them). The
/// kernel caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a node's listener on `addr` (`host:port`; the first address it
/// resolves to that binds) with [`LISTEN_BACKLOG`].
///
/// # Errors
/// An address that does not resolve or bind (in use, not local); the
/// callers name the address.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        // As std and tokio do: a restarted node rebinds its port at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// A job handed to the thread that runs the whole-log check.
pub type Job = Box<dyn FnOnce() + Send>;

/// Where [`serve_with`] runs the whole-log check of a node opened at its
/// checkpoint (`verify_log_after_open`: minutes of reading at 10 M events,
/// and the sled cache pages it reads in stay allocated after it).
pub enum LogCheckOn {
    /// One of tokio's blocking threads (in-process nodes: the demo, tests).
    Blocking,
    /// A thread of the caller's, which runs the jobs it receives.
    /// `gridsync serve` opens the node on its main thread and gives that
    /// thread the check too: glibc serves both passes from its main arena,
    /// and what the open freed is reused by the cache pages the check reads
    /// in. On another thread either pass lands in glibc's main arena or in
    /// the second (an aggregator runs with one per core) as threads happen
    /// to be handed arenas, and with the two passes in two arenas a 10
    /// M-event street rested ~33 MiB higher (BENCHMARKS.md, "The open and
    /// the whole-log check on one thread").
    Thread(std::sync::mpsc::SyncSender<Job>),
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes
/// in-flight requests (and so in-flight commits) and closes the store.
/// The whole-log check runs on a blocking thread ([`serve_with`]).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    state: Arc<NodeState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(state, listener, shutdown, LogCheckOn::Blocking).await
}

/// [`serve`], the whole-log check run where `check_on` says.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve_with(
    state: Arc<NodeState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    check_on: LogCheckOn,
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
    let verifier = check_log(&state, check_on);
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

/// Starts the whole-log check where `on` says; what it gives resolves when
/// the check is over (or cannot end: the job was dropped unrun, as when
/// the runtime shuts down first).
fn check_log(state: &Arc<NodeState>, on: LogCheckOn) -> tokio::sync::oneshot::Receiver<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let s = state.clone();
    let job: Job = Box::new(move || {
        // First what the start left of the projection's fold: the node
        // answers for a prefix of the log until it is done.
        let stop = s.sync.stop.subscribe();
        if let Err(e) = s.projector.finish_start(&s.store, &|| *stop.borrow()) {
            tracing::error!(error = %e, "the projection's fold after the start failed");
        }
        gridsync_node::node::verify_log_after_open(&s);
        // The state let go before the store is closed (after this).
        drop(s);
        let _ = done_tx.send(());
    });
    dispatch(job, on);
    done_rx
}

/// Hands `job` to the thread `on` names; never waits (an async worker must
/// not): a thread that is gone or busy with another job leaves it to a
/// blocking thread.
fn dispatch(job: Job, on: LogCheckOn) {
    use std::sync::mpsc::TrySendError;
    match on {
        LogCheckOn::Blocking => drop(tokio::task::spawn_blocking(job)),
        LogCheckOn::Thread(jobs) => {
            if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                jobs.try_send(job)
            {
                drop(tokio::task::spawn_blocking(job));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that says, on `tx`, which thread ran it.
    fn job(tx: std::sync::mpsc::Sender<Option<String>>) -> Job {
        Box::new(move || {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_log_check_runs_on_the_thread_given_or_else_on_a_blocking_one() {
        let (tx, ran) = std::sync::mpsc::channel();
        // The thread given takes it.
        let (jobs_tx, jobs) = std::sync::mpsc::sync_channel(1);
        let given = std::thread::Builder::new()
            .name("given".into())
            .spawn(move || jobs.into_iter().for_each(|j: Job| j()))
            .unwrap();
        dispatch(job(tx.clone()), LogCheckOn::Thread(jobs_tx));
        assert_eq!(ran.recv().unwrap().as_deref(), Some("given"));
        // The sender was dropped with the dispatch: the thread's loop ends.
        given.join().unwrap();

        // A thread that is gone: the job still runs, on a blocking thread.
        let (jobs_tx, jobs) = std::sync::mpsc::sync_channel(1);
        drop(jobs);
        dispatch(job(tx.clone()), LogCheckOn::Thread(jobs_tx));
        let name = tokio::task::spawn_blocking(move || ran.recv().unwrap())
            .await
            .unwrap();
        assert_ne!(name.as_deref(), Some("given"));
        assert!(name.is_some(), "tokio names its blocking threads");
    }

    /// How many of `n` connections, made at once to a listener that
    /// accepts none, the kernel completes within 1 s: the ones its accept
    /// queue holds (a SYN it drops is retried only after 1 s).
    async fn queued(listener: &tokio::net::TcpListener, n: usize) -> usize {
        let addr = listener.local_addr().unwrap();
        let connects = (0..n).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let done = futures_util::future::join_all(connects).await;
        done.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count()
    }

    /// A burst of connections larger than a default listener's queue (128)
    /// is queued whole by a node's listener; the control, a listener bound
    /// the default way, completes only about 128 of them at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connections_is_queued_whole() {
        const BURST: usize = 300;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        assert!(
            somaxconn >= BURST,
            "net.core.somaxconn is {somaxconn}: raise it to at least {BURST} (sysctl) for this test \
             and for nodes that take bursts of connections"
        );
        let ours = bind("127.0.0.1:0").await.unwrap();
        assert_eq!(queued(&ours, BURST).await, BURST);
        let default = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let n = queued(&default, BURST).await;
        assert!(n < BURST / 2, "the default listener queued {n} of {BURST}");
    }
}
