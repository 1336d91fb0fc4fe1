//! Starting and stopping the node: the three HTTP listeners (bound first), copycat, the
//! registry, the follower, the READY line, and the graceful shutdown on SIGTERM or ctrl-c.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::registry::{Registry, RegistryConfig, RegistryError};
use copycat::{Config, CopyCat, GossipKey, Keyring, Security, TlsIdentity};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use slog::{info, o, warn, Logger};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api::{self, json::Vantage, Addresses, App};
use crate::args::Settings;
use crate::follower::Follower;
use crate::publications::Publications;
use crate::server::{self, Limits};

/// Worker threads of the node's tokio runtime: handlers never block one (the registry's
/// blocking calls go to the blocking pool), so two serve every connection.
const WORKER_THREADS: usize = 2;

/// Threads for the registry's blocking calls (publish, unpublish): more wait in line.
const BLOCKING_THREADS: usize = 32;

/// How long the publications made through the API may take to be withdrawn at shutdown;
/// the rest are dropped, and their owner's shutdown removes them in the end (its gossip
/// death, after the registry's grace).
const UNPUBLISH_AT_SHUTDOWN: Duration = Duration::from_secs(3);

/// How often the metrics recorder drains histogram samples into its summaries (the
/// exporter's own default): the samples of one interval are what it holds at most.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How often a node waiting for the cluster to form checks whether it has joined.
const JOIN_POLL: Duration = Duration::from_millis(100);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// copycat failed to start or a file it was given is unusable.
    #[error(transparent)]
    CopyCat(#[from] copycat::Error),
    /// The registry could not start.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// `--api` or `--gateway`.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime, a thread or stdout failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
}

/// Runs the node until SIGTERM or ctrl-c; returns once it has shut down.
pub fn run(settings: Settings, log: Logger) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("copycat-node")
        .enable_all()
        .build()?;
    // Installed before anything starts, so an early SIGTERM still shuts down cleanly.
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let signal = {
            let _context = runtime.enter();
            stop_signal()?
        };
        let log = log.clone();
        runtime.spawn(async move {
            signal.await;
            info!(log, "signal received; shutting down");
            let _ = stop_tx.send(true);
        });
    }
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| RunError::Metrics(e.to_string()))?;
    api::status::describe_metrics();

    let listeners = runtime.block_on(bind_listeners(&settings))?;

    let config = Config {
        hostname: settings.hostname.clone(),
        port: settings.port,
        gossip_port: settings.gossip_port,
        data_dir: settings.data_dir.clone(),
        peers: settings.peers.clone(),
        bootstrap_expect: settings.bootstrap_expect,
        datacenter: settings.datacenter.clone(),
        logger: log.clone(),
        security: security(&settings)?,
        ..Config::default()
    };
    let node = CopyCat::start(config)?;
    let Some(registry) = start_registry(&node, &stop_rx, &log)? else {
        node.shutdown();
        return Ok(());
    };
    let follower = Follower::start(registry.clone(), log.new(o!("component" => "follower")))?;
    let publications = Publications::default();

    let served = runtime.block_on(serve(
        &settings,
        listeners,
        node.clone(),
        registry.clone(),
        &follower,
        publications.clone(),
        metrics,
        stop_rx,
        log.clone(),
    ));
    follower.stop();
    withdraw(publications, &log);
    drop(registry);
    node.shutdown();
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}

/// Starts the registry, trying again while the cluster is not there yet (a founder with
/// `--bootstrap-expect` waits for its peers); `None` if a stop signal came first.
fn start_registry(
    node: &CopyCat,
    stop: &watch::Receiver<bool>,
    log: &Logger,
) -> Result<Option<Registry>, RunError> {
    let config = RegistryConfig {
        logger: log.new(o!("component" => "registry")),
        ..RegistryConfig::default()
    };
    // Until the node replicates the cluster's directory (a founder waits for
    // `--bootstrap-expect` nodes), a registry start could only time out; waiting here
    // keeps a stop signal answered within JOIN_POLL.
    let mut waiting_logged = false;
    while !node.has_joined_blocking().unwrap_or(false) {
        if *stop.borrow() {
            return Ok(None);
        }
        if !waiting_logged {
            info!(
                log,
                "waiting for the cluster to form before starting the registry"
            );
            waiting_logged = true;
        }
        std::thread::sleep(JOIN_POLL);
    }
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        match Registry::start(node, config.clone()) {
            Ok(registry) => return Ok(Some(registry)),
            Err(e) if not_there_yet(&e) => {
                warn!(log, "the registry is not reachable yet (is the cluster formed?); trying again";
                    "error" => %e);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a failed registry start may succeed later: the cluster is still forming (a
/// founder waiting for `--bootstrap-expect` nodes, no leader yet, a busy node).
fn not_there_yet(error: &RegistryError) -> bool {
    matches!(
        error,
        RegistryError::Timeout
            | RegistryError::CopyCat(
                copycat::Error::Timeout
                    | copycat::Error::ReadTimeout
                    | copycat::Error::ApplyTimeout { .. }
                    | copycat::Error::ProposalDropped(_)
                    | copycat::Error::Overloaded
            )
    )
}

/// The HTTP listeners, bound before the node starts, so that a taken port stops the
/// process at once rather than after the cluster formed.
struct Listeners {
    api: TcpListener,
    gateway: TcpListener,
    forward: TcpListener,
}

/// Binds `--api`, `--gateway` and `--forward`.
async fn bind_listeners(settings: &Settings) -> Result<Listeners, RunError> {
    let bind = |what: &'static str, addr: String| async move {
        server::bind(&addr)
            .await
            .map_err(|source| RunError::Bind { what, addr, source })
    };
    Ok(Listeners {
        api: bind("--api", settings.api.clone()).await?,
        gateway: bind("--gateway", settings.gateway.clone()).await?,
        forward: bind("--forward", settings.forward.clone()).await?,
    })
}

/// Prints READY and serves both listeners until the stop signal.
#[allow(clippy::too_many_arguments)]
async fn serve(
    settings: &Settings,
    listeners: Listeners,
    node: CopyCat,
    registry: Registry,
    follower: &Follower,
    publications: Publications,
    metrics: PrometheusHandle,
    stop: watch::Receiver<bool>,
    log: Logger,
) -> Result<(), RunError> {
    let Listeners {
        api: api_listener,
        gateway: gateway_listener,
        forward: forward_listener,
    } = listeners;
    let forward = forward_listener.local_addr()?;
    let addresses = Addresses {
        api: api_listener.local_addr()?,
        gateway: gateway_listener.local_addr()?,
        forward,
        forward_advertised: advertised(forward, &settings.hostname),
    };
    let view = follower.view();
    let app = Arc::new(App {
        vantage: Vantage {
            node: node.node_id(),
            datacenter: settings.datacenter.clone(),
        },
        revisions: view.revisions(),
        follower: view,
        node: node.clone(),
        registry,
        publications: publications.clone(),
        metrics,
        long_polls: Arc::new(Semaphore::new(api::MAX_LONG_POLLS)),
        addresses: addresses.clone(),
        stopping: stop.clone(),
        log: log.clone(),
    });
    let sweeper = tokio::spawn(publications.sweep(log.new(o!("component" => "ttl"))));
    // The recorder keeps every histogram sample until upkeep drains it into its summary:
    // without a scrape, the gateway's latencies would pile up without bound.
    let upkeep = {
        let metrics = app.metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        })
    };
    let limits = Limits {
        max_connections: settings.http_max_connections,
        ..Limits::default()
    };

    let (registry, publications) = (app.registry.clone(), app.publications.clone());
    let api_router = server::limit_requests(api::router(app), api::publications::MAX_BODY_BYTES);

    info!(log, "copycat-node ready"; "api" => %addresses.api, "gateway" => %addresses.gateway,
        "forward" => %addresses.forward, "forward_advertised" => &addresses.forward_advertised,
        "raft" => %node.raft_addr(), "gossip" => %node.gossip_addr(),
        "node_id" => node.node_id(), "datacenter" => &settings.datacenter);
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "READY api={} gateway={} forward={} raft={} gossip={} node_id={}",
        addresses.api,
        addresses.gateway,
        addresses.forward_advertised,
        node.raft_addr(),
        node.gossip_addr(),
        node.node_id()
    )?;
    stdout.flush()?;
    drop(stdout);

    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    // Gateway and forwarding responses stream for as long as they take.
    let streaming = Limits {
        connection_max_age: None,
        ..limits
    };
    let gateway_threads = spawn_gateways(
        GatewayListeners {
            gateway: gateway_listener,
            forward: forward_listener,
        },
        &registry,
        node.node_id(),
        &publications,
        Limits {
            // Each thread accepts its share.
            max_connections: (limits.max_connections / settings.gateway_threads).max(1),
            ..streaming
        },
        settings.gateway_threads,
        &stop,
        &log,
    )?;
    let (_, ()) = tokio::join!(
        server::serve(
            api_listener,
            api_router,
            limits,
            stopped(stop.clone()),
            log.clone()
        ),
        gateway_threads.join(&log),
    );
    sweeper.abort();
    upkeep.abort();
    Ok(())
}

/// The gateway's and the forwarding entry's listeners.
struct GatewayListeners {
    gateway: TcpListener,
    forward: TcpListener,
}

/// The gateway threads, each reporting once when it has stopped.
struct GatewayThreads {
    done: tokio::sync::mpsc::Receiver<std::io::Result<()>>,
}

impl GatewayThreads {
    /// Waits until every gateway thread has stopped (after the stop signal).
    async fn join(mut self, log: &Logger) {
        while let Some(result) = self.done.recv().await {
            if let Err(e) = result {
                warn!(log, "a gateway thread failed"; "error" => %e);
            }
        }
    }
}

/// Starts `threads` threads (`--gateway-threads`), each a current-thread runtime serving both the
/// gateway and the forwarding entry (each thread accepts on the same two sockets), with
/// its own [`crate::gateway::Gateway`] (and so its own pool of upstream connections, driven
/// on that thread). A proxied call is a chain of socket wakeups (client, gateway, owner
/// node, upstream); on one thread they are served from one epoll loop without hand-offs
/// between workers. The in-flight limits are shared by the threads.
#[allow(clippy::too_many_arguments)]
fn spawn_gateways(
    listeners: GatewayListeners,
    registry: &Registry,
    node_id: copycat::NodeId,
    publications: &Publications,
    limits: Limits,
    threads: usize,
    stop: &watch::Receiver<bool>,
    log: &Logger,
) -> Result<GatewayThreads, RunError> {
    let gateway_std = listeners.gateway.into_std()?;
    let forward_std = listeners.forward.into_std()?;
    let gateway_in_flight = Arc::new(Semaphore::new(server::MAX_IN_FLIGHT_REQUESTS));
    let forward_in_flight = Arc::new(Semaphore::new(server::MAX_IN_FLIGHT_REQUESTS));
    let (done_tx, done) = tokio::sync::mpsc::channel(threads.max(1));
    for n in 0..threads {
        let gateway = Arc::new(crate::gateway::Gateway::new(
            registry.clone(),
            node_id,
            publications.clone(),
        ));
        let gateway_router = server::limit_gateway(
            crate::gateway::router(gateway.clone()),
            gateway_in_flight.clone(),
        );
        let forward_router = server::limit_gateway(
            crate::gateway::forward::router(gateway),
            forward_in_flight.clone(),
        );
        let (gateway_std, forward_std) = (gateway_std.try_clone()?, forward_std.try_clone()?);
        let (stop, log, done_tx) = (stop.clone(), log.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("copycat-gateway-{n}"))
            .spawn(move || {
                let served = (|| -> std::io::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let gateway_listener = TcpListener::from_std(gateway_std)?;
                        let forward_listener = TcpListener::from_std(forward_std)?;
                        let stopped = |mut stop: watch::Receiver<bool>| async move {
                            let _ = stop.wait_for(|stop| *stop).await;
                        };
                        tokio::join!(
                            server::serve(
                                forward_listener,
                                forward_router,
                                limits,
                                stopped(stop.clone()),
                                log.clone()
                            ),
                            server::serve(
                                gateway_listener,
                                gateway_router,
                                limits,
                                stopped(stop),
                                log
                            ),
                        );
                        Ok(())
                    })
                })();
                let _ = done_tx.try_send(served);
            })?;
    }
    Ok(GatewayThreads { done })
}

/// The forwarding entry's address as other nodes reach it: the bound one, or, when bound
/// to every interface (`0.0.0.0`, `::`), the node's `hostname` with the bound port.
fn advertised(bound: std::net::SocketAddr, hostname: &str) -> String {
    if bound.ip().is_unspecified() {
        crate::args::host_port(hostname, bound.port())
    } else {
        bound.to_string()
    }
}

/// Withdraws the API's publications at shutdown, all at once, waiting at most
/// [`UNPUBLISH_AT_SHUTDOWN`] for the removals to commit, so watchers see them go at once
/// rather than after the node's death is noticed. Withdrawals still pending then (no
/// quorum, say) fail when the node shuts down; the registry removes the publications of a
/// node dead for longer than its grace.
fn withdraw(publications: Publications, log: &Logger) {
    let deadline = Instant::now() + UNPUBLISH_AT_SHUTDOWN;
    let handles = publications.take_all();
    let count = handles.len();
    if count == 0 {
        return;
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for handle in handles {
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("unpublish".to_string())
            .spawn(move || {
                let _ = done.send(handle.unpublish());
            });
        if let Err(e) = spawned {
            warn!(log, "cannot start a thread to unpublish; dropping the rest"; "error" => %e);
            break;
        }
    }
    drop(done_tx);
    let (mut withdrawn, mut failed) = (0, 0);
    while let Ok(result) = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        match result {
            Ok(()) => withdrawn += 1,
            Err(_) => failed += 1,
        }
    }
    info!(log, "withdrew the API's publications"; "withdrawn" => withdrawn, "failed" => failed,
        "pending" => count - withdrawn - failed);
}

/// The node's security settings; a file that cannot be used is an error naming it.
fn security(settings: &Settings) -> copycat::Result<Security> {
    let tls = match &settings.tls {
        Some((ca, cert, key)) => Some(TlsIdentity::from_files(ca, cert, key)?),
        None => None,
    };
    let gossip_keys = match &settings.cluster_key {
        Some(file) => Some(Keyring::new(GossipKey::from_file(file)?)),
        None => None,
    };
    Ok(Security { tls, gossip_keys })
}

/// Resolves at the first SIGINT (ctrl-c) or SIGTERM; the handlers are installed by this
/// call (inside a tokio runtime), so a signal that arrives before the future is awaited
/// is not lost.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Resolves at the first ctrl-c.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarding_address_advertised_is_usable_by_other_nodes() {
        let bound = "10.0.0.5:4000".parse().expect("addr");
        assert_eq!(advertised(bound, "node1.example"), "10.0.0.5:4000");
        let any = "0.0.0.0:4000".parse().expect("addr");
        assert_eq!(advertised(any, "node1.example"), "node1.example:4000");
        let any6 = "[::]:4000".parse().expect("addr");
        assert_eq!(advertised(any6, "fd00::5"), "[fd00::5]:4000");
    }
}
