//! Listeners, accept loops and shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_session::{Proxy, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::build::Built;
use crate::config::{Config, LogConfig};
use crate::fleet::Fleet;
use crate::fleet::caps::RedisUserCap;
use crate::fleet::throttle::RedisFailures;

/// Installs the tracing subscriber: `RUST_LOG` if set, else `[log].level`; text or JSON.
pub fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for people at a terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), String> {
    let built = Built::from_config(&cfg)?;
    let admin_token = built.admin_token.clone();
    raise_fd_limit();
    // Libraries emit `metrics` counters; the binary alone installs the exporter.
    let metrics = metrics_recorder()?;
    let proxy = Arc::new(
        Proxy::new(built.settings, built.upstreams, built.pool)
            .map_err(|e| format!("cannot set up the session pool: {e}"))?,
    );
    if let Some(path) = &cfg.admin.overrides_file {
        let n = admin::load_overrides(path, proxy.overrides())?;
        info!(path = %path.display(), overrides = n, "user overrides loaded");
    }
    // Fleet mode: state shared with the other proxies through Redis.
    let stop_fleet = CancellationToken::new();
    let fleet = Fleet::start(
        &cfg.fleet,
        Arc::clone(&proxy),
        cfg.admin.overrides_file.clone(),
        stop_fleet.clone(),
    )
    .await?;
    if let Some(fleet) = &fleet {
        proxy
            .throttle()
            .set_shared(Box::new(RedisFailures::new(fleet.clone())));
        if cfg.pool.max_per_user_fleet > 0 {
            let cap = RedisUserCap::start(
                fleet.clone(),
                cfg.pool.max_per_user_fleet,
                stop_fleet.clone(),
            );
            proxy.pool().set_shared_cap(Arc::new(cap));
        }
    } else if cfg.pool.max_per_user_fleet > 0 {
        warn!("[pool] max_per_user_fleet has no effect without [fleet]");
    }
    let maintenance = tokio::spawn(proxy.pool().clone().maintain());
    // Freed heap pages go back to the system after a burst (glibc keeps them otherwise).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if cfg.server.heap_trim {
        crate::trim::start();
    }
    // Active checks of every backend; stopped (dropped) at shutdown.
    let mut health = proxy
        .upstreams()
        .health
        .as_ref()
        .map(|monitor| monitor.spawn());
    // The certificate every TLS listener shares; reloaded in place on SIGHUP.
    let server_tls = built
        .listeners
        .iter()
        .find_map(|(_, l)| l.server_tls.clone());
    // Two stages: `stop_accepting` closes the listeners at once; `shutdown` tells running
    // sessions to say BYE, after the grace period.
    let stop_accepting = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for (addr, settings) in built.listeners {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        info!(%addr, tls = %settings.tls, "listening");
        let proxy = Arc::clone(&proxy);
        let shutdown = shutdown.clone();
        let stop_accepting = stop_accepting.clone();
        let sessions = sessions.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop_accepting.cancelled() => return,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        sessions.spawn(serve(
                            Arc::clone(&proxy),
                            Arc::clone(&settings),
                            tcp,
                            peer,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        error!(%addr, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    let stop_admin = CancellationToken::new();
    if let Some(addr) = cfg.admin.addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        info!(%addr, "admin endpoint listening");
        let state = Arc::new(AdminState {
            proxy: Arc::clone(&proxy),
            metrics,
            token: admin_token,
            allowed_hosts: cfg.admin.allowed_hosts.clone(),
            sessions: sessions.clone(),
            overrides_file: cfg.admin.overrides_file.clone(),
            fleet: fleet.clone(),
        });
        tokio::spawn(admin::serve(listener, state, stop_admin.clone()));
    }
    // SIGHUP reloads; SIGTERM/SIGINT end the loop.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&proxy, config_path.as_deref(), server_tls.as_ref()) {
                    Ok(monitor) => {
                        // The old monitor stops when its handle is dropped.
                        health = monitor.map(|m| m.spawn());
                        info!("configuration reloaded");
                    }
                    Err(e) => error!("reload failed, keeping the running configuration: {e}"),
                }
            }
            _ = wait_for_signal() => break,
        }
    }
    // Drain: no new connections; running sessions get `shutdown_grace` to finish on their
    // own (a second signal cuts it short), then the rest are told BYE.
    info!(grace = ?cfg.session.shutdown_grace, "shutting down: listeners closed, draining sessions");
    stop_accepting.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    sessions.close();
    let drained = tokio::select! {
        r = tokio::time::timeout(cfg.session.shutdown_grace, sessions.wait()) => r.is_ok(),
        _ = wait_for_signal() => false,
    };
    if !drained {
        info!(
            remaining = sessions.len(),
            "grace period over: saying BYE to the remaining sessions"
        );
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(5), sessions.wait())
            .await
            .is_err()
        {
            warn!("some sessions did not end after BYE");
        }
    }
    // Cached backend sessions get a polite LOGOUT.
    proxy.pool().close_all();
    maintenance.abort();
    drop(health);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_admin.cancel();
    stop_fleet.cancel();
    info!("stopped");
    Ok(())
}

/// Latencies as histograms with fixed buckets rather than the exporter's default summaries:
/// buckets add up across the proxies of a fleet and over any interval (the console draws
/// per-second percentiles from them), where summary quantiles do neither. The per-command
/// histograms are not the exporter's (see `imapproxy_session::render_command_histograms`):
/// `imapproxy_command_backend_seconds` has these bounds too, and
/// `imapproxy_command_proxy_seconds` microsecond ones.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nothing scrapes
/// `/metrics` (without it they pile up: a few bytes per command, forever).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

fn metrics_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Every session holds two sockets; the usual soft limit of 1024 descriptors would cap the
/// proxy near 500 sessions. Raise the soft limit to the hard one, as nginx and HAProxy do.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(limit = n, "open file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
}

/// SIGHUP: re-reads the configuration file and swaps backends, routing, health checks, the
/// certificate and the limits, without touching running sessions. Listeners, pool and session
/// timeouts stay as they were started (a restart changes those). Returns the new health
/// monitor.
fn reload(
    proxy: &Proxy,
    path: Option<&std::path::Path>,
    server_tls: Option<&imapproxy_tls::ServerTls>,
) -> Result<Option<Arc<imapproxy_route::HealthMonitor>>, String> {
    if let Some(path) = path {
        crate::config::check_complete(path)?;
    }
    let cfg = crate::config::load(path).map_err(|e| e.to_string())?;
    let current = proxy.upstreams();
    let built = Built::from_config_reloading(&cfg, Some(&current.registry))?;
    if let (Some(tls), Some(files)) = (server_tls, &cfg.tls) {
        tls.reload_from_pem_files(&files.cert, &files.key)
            .map_err(|e| format!("[tls]: {e}"))?;
    }
    let monitor = built.upstreams.health.clone();
    let backends: Vec<String> = built
        .upstreams
        .registry
        .iter()
        .map(|(b, _)| b.id.to_string())
        .collect();
    proxy.replace_upstreams(built.upstreams);
    proxy.replace_limits(built.settings.limits);
    info!(?backends, "backends after reload");
    Ok(monitor)
}
