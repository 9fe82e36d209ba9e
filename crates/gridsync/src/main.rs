//! `gridsync`: provision a tree of nodes, serve one node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

mod audit;
mod cli;
mod load;
mod malloc_tuning;
use clap::Parser;
use cli::{Cli, Command, TokenCommand, TopologyCommand};

fn topology(command: TopologyCommand) -> anyhow::Result<()> {
    use gridsync_ops::lifecycle;
    match command {
        TopologyCommand::RotateKey { config } => {
            let r = lifecycle::rotate_key(&config)?;
            println!("public_key = \"{}\"", r.public_key);
            eprintln!(
                "node {}: new key in place; its chunks up to seq {} verify with the old one \
                 (kept in {}). Copy the topology to its ancestors and restart them, then this node.",
                r.id,
                r.until_seq,
                r.old_key_file.display()
            );
        }
        TopologyCommand::Retire { topology, node } => {
            lifecycle::retire(&topology, &node)?;
            eprintln!(
                "node {node} retired in {}: copy it to every node and restart its ancestors",
                topology.display()
            );
        }
        TopologyCommand::Move {
            topology,
            node,
            parent,
            config,
        } => {
            lifecycle::move_node(&topology, &node, &parent, config.as_deref())?;
            eprintln!(
                "node {node} now under {parent} in {}: copy it to every node, restart {parent} \
                 and its ancestors, the old parent, then {node}{}",
                topology.display(),
                if config.is_some() {
                    ""
                } else {
                    " (set parent in its config.toml too, or pass --config)"
                }
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: may exec this binary anew. `serve` does it
    // once it knows from the topology whether it is an aggregator.
    let tuning = (!matches!(cli.command, Command::Serve { .. }))
        .then(|| malloc_tuning::apply(|| malloc_tuning::TUNABLES.to_owned()));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(tuning) = tuning {
        malloc_tuning::report(tuning);
    }
    let result = match cli.command {
        Command::Provision {
            tree,
            out,
            force,
            tls,
        } => provision(
            &tree,
            &out,
            gridsync_ops::provision::ProvisionOptions { force, tls },
        ),
        Command::Token { command } => token(command),
        Command::Topology { command } => topology(command),
        Command::Init {
            id,
            out,
            force,
            tls_host,
        } => init(&id, &out, force, &tls_host),
        Command::Load {
            url,
            token,
            ca,
            tree,
            clients,
            batch,
            rate,
            events,
            duration,
            seed,
            json,
        } => {
            return load::run(load::LoadOptions {
                url,
                token,
                ca,
                tree,
                clients,
                batch,
                rate,
                events,
                duration_s: duration,
                seed,
                json,
            })
        }
        Command::Serve {
            config,
            listen,
            after_restore,
            verify_all,
            unsafe_ack_before_durable,
            unsafe_read_uncommitted,
            unsafe_skip_fsync,
            unsafe_skip_body_fsync,
            unsafe_no_channel_binding,
        } => serve(
            config,
            listen,
            gridsync_node::node::OpenOptions {
                after_restore,
                verify_all,
                ack_before_durable: unsafe_ack_before_durable,
                read_uncommitted: unsafe_read_uncommitted,
                skip_fsync: unsafe_skip_fsync,
                skip_body_fsync: unsafe_skip_body_fsync,
                no_channel_binding: unsafe_no_channel_binding,
                ..Default::default()
            },
        ),
        Command::Rebuild {
            config,
            node,
            from,
            to,
        } => rebuild(&config, node, from, to),
        Command::Audit { command } => return audit::run(*command),
        Command::Demo {
            listen,
            data,
            rate,
            chaos,
            small,
        } => demo(gridsync_ops::demo::DemoOptions {
            listen,
            data,
            rate,
            chaos,
            small,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gridsync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(id: &str, out: &std::path::Path, force: bool, tls_hosts: &[String]) -> anyhow::Result<()> {
    let public_key = gridsync_ops::init::init_key(id, out, force)?;
    if !tls_hosts.is_empty() {
        let csr = gridsync_ops::init::init_tls(id, out, tls_hosts, force)?;
        eprintln!(
            "wrote {} and {}: copy the request to the provisioning machine as <out>/{id}/tls/node.csr",
            out.join("tls/node.key").display(),
            csr.display()
        );
    }
    eprintln!(
        "wrote {}; put this line under node {id:?} in the tree file:",
        out.join("node.key").display()
    );
    println!("public_key = \"{public_key}\"");
    Ok(())
}

fn provision(
    tree: &std::path::Path,
    out: &std::path::Path,
    opts: gridsync_ops::provision::ProvisionOptions,
) -> anyhow::Result<()> {
    let topo = gridsync_ops::provision::provision(tree, out, opts)?;
    let n = topo.nodes().count();
    let communities = topo.nodes().filter(|x| topo.is_origin(&x.id)).count();
    println!(
        "provisioned {n} nodes ({communities} communities) into {}; start each with: gridsync serve --config {}/<id>/config.toml",
        out.display(),
        out.display()
    );
    Ok(())
}

fn serve(
    config_path: PathBuf,
    listen: Option<String>,
    opts: gridsync_node::node::OpenOptions,
) -> anyhow::Result<()> {
    let config = gridsync_deploy::config::NodeConfig::load(&config_path)?;
    // Still no other thread: exec'd anew with the allocator tuned for this
    // node's role, the topology read for it only before that exec (an
    // unreadable one is reported by the open below).
    malloc_tuning::report(malloc_tuning::apply(|| {
        let aggregator = gridsync_deploy::topology::Topology::load(&config.topology_file)
            .is_ok_and(|t| !t.children(&config.id).is_empty());
        malloc_tuning::tunables(aggregator)
    }));
    let children = gridsync_deploy::topology::Topology::load(&config.topology_file)
        .map_or(0, |t| t.children(&config.id).len());
    let wanted = gridsync_node::open_files::wanted(children);
    gridsync_node::open_files::report(&gridsync_node::open_files::raise(), wanted);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gridsync")
        .build()
        .context("cannot start the async runtime")?;
    if opts.ack_before_durable {
        tracing::warn!(
            "UNSAFE: acknowledging appends before they are durable (test negative control)"
        );
    }
    if opts.skip_fsync {
        tracing::warn!("UNSAFE: committing without fsync (test negative control)");
    }
    if opts.skip_body_fsync {
        tracing::warn!("UNSAFE: committing without syncing the log bodies (test negative control)");
    }
    if opts.no_channel_binding {
        tracing::warn!(
            "UNSAFE: sync proofs are not bound to the TLS channel (test negative control)"
        );
    }
    if opts.read_uncommitted {
        tracing::warn!("UNSAFE: readers see commits before they are durable (test planted bug)");
    }
    let listen = listen.unwrap_or_else(|| config.listen.clone());
    // The two passes over large data — the open (sled's page table, the
    // projection's snapshot) and the whole-log check after it — run on
    // this thread, whose allocations glibc serves from its main arena; the
    // node serves on a thread of its own (`gridsync_server::LogCheckOn`).
    let state = {
        let _runtime = runtime.enter();
        gridsync_node::node::open_node(config, &opts)?
    };
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<gridsync_server::serve::Job>(1);
    let stop_check = StopOnDrop(state.sync.stop.clone());
    let node = std::thread::Builder::new()
        .name("gridsync-node".into())
        .spawn(move || {
            // However this thread ends (a panic too), the check on the main
            // thread stops rather than reading on for minutes.
            let _stop = stop_check;
            runtime.block_on(serve_node(state, listen, jobs_tx))
        })
        .context("cannot start the node's thread")?;
    // Ends when the node lets go of its sender (it has stopped, or failed
    // to listen).
    for job in jobs_rx {
        // A panic in the check (a bug) is reported, not the process's end:
        // the node goes on serving, its log left unverified.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("the whole-log check panicked; the log stays unverified");
        }
    }
    node.join()
        .map_err(|_| anyhow::anyhow!("the node's thread panicked"))?
}

/// Sets the node's stop flag when dropped.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Serves the opened node until a shutdown signal; the whole-log check is
/// sent to `jobs`.
async fn serve_node(
    state: std::sync::Arc<gridsync_node::state::NodeState>,
    listen: String,
    jobs: std::sync::mpsc::SyncSender<gridsync_server::serve::Job>,
) -> anyhow::Result<()> {
    let listener = gridsync_server::serve::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(node = %state.config.id, %addr, origin = state.is_origin, "serving");
    let scheme = if state.tls_server.is_some() {
        "https"
    } else {
        "http"
    };
    println!("gridsync: listening on {scheme}://{addr}");
    let check_on = gridsync_server::LogCheckOn::Thread(jobs);
    gridsync_server::serve_with(state, listener, shutdown_signal(), check_on).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Rotate { config, role } => {
            let t = gridsync_ops::init::rotate_token(&config, role)?;
            println!("{t}");
            eprintln!(
                "new {} token written to {} (hash) and tokens.toml; restart the node to apply",
                role.as_str(),
                config.display()
            );
        }
        TokenCommand::Revoke { config, role } => {
            let n = gridsync_ops::init::revoke_tokens(&config, role)?;
            eprintln!(
                "revoked {n} {} token(s) in {}; restart the node to apply",
                role.as_str(),
                config.display()
            );
        }
    }
    Ok(())
}

fn rebuild(
    config_path: &std::path::Path,
    node: Option<String>,
    from: Option<String>,
    to: Option<String>,
) -> anyhow::Result<()> {
    let config = gridsync_deploy::config::NodeConfig::load(config_path)?;
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message("rebuilding the projection");
    let (state, took) = gridsync_node::node::open_for_rebuild(config, &|n| {
        bar.set_message(format!("{n} events folded"));
        bar.tick();
    })?;
    bar.finish_and_clear();
    let events = state.store.counts().events;
    eprintln!(
        "rebuilt the projection from {events} events in {:.2} s ({:.0} events/s)",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64().max(1e-9)
    );
    let q = gridsync_server::aggregates::AggregatesQuery {
        node,
        from,
        to,
        depth: None,
        days: None,
        token: None,
    };
    let answer = gridsync_server::aggregates::aggregates(&state, &q)
        .map_err(|e| anyhow::anyhow!(e.body.message))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    let store = state.store.clone();
    drop(state);
    store.close();
    Ok(())
}

fn demo(opts: gridsync_ops::demo::DemoOptions) -> anyhow::Result<()> {
    if !(opts.rate > 0.0 && opts.rate <= 100_000.0) {
        anyhow::bail!("--rate must be between 0 and 100000 events per second");
    }
    let wanted = gridsync_ops::demo::open_files_wanted(opts.small);
    gridsync_node::open_files::report(&gridsync_node::open_files::raise(), wanted);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gridsync-demo")
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(gridsync_ops::demo::run_demo(opts, shutdown_signal()))
        .map_err(|e| anyhow::anyhow!(e))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests and commits");
}
