//! `tagbridge`: the binary owns the world — arguments, environment,
//! signals, sockets and exit codes. Everything else is the library's.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tagbridge::cli::{self, Cli, CliError, Command};
use tagbridge::config::{self, Config, LogFormat, Purpose};
use tagbridge::ingest::Ingest;
use tagbridge::metrics::Metrics;
use tagbridge::notify::Notifier;
use tagbridge::server::{self, AppState};
use tagbridge::tls::CertStore;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tagbridge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Configuration problems are already one line each.
            for line in format!("{e:#}").lines() {
                eprintln!("tagbridge: {line}");
            }
            ExitCode::from(1)
        }
    }
}

/// Run the command: the configuration each needs, then the library's
/// function for it.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let cfg = |purpose| -> Result<Arc<Config>, CliError> {
        Ok(Arc::new(Config::load(
            &cli.config,
            purpose,
            &config::process_env,
        )?))
    };
    match cli.command {
        Command::Serve => match serve(cfg(Purpose::Serve)?, &cli.config).await? {
            Some(listener) => reexec(listener),
            None => Ok(()),
        },
        Command::Check { connect } => Ok(cli::check(&cli.config, connect, &mut out).await?),
        Command::Secret => Ok(cli::secret(&mut out)?),
        Command::History {
            service,
            limit,
            json,
        } => Ok(cli::history(
            cfg(Purpose::Client)?.as_ref(),
            &service,
            limit,
            json,
            &mut out,
        )
        .await?),
        Command::Status {
            service,
            json,
            watch,
        } => {
            let cfg = cfg(Purpose::Client)?;
            match (watch, service.as_deref()) {
                (true, Some(svc)) => Ok(cli::watch(&cfg, svc, &mut out).await?),
                _ => Ok(cli::status(&cfg, service.as_deref(), json, &mut out).await?),
            }
        }
        Command::Rollback {
            service,
            to,
            reason,
        } => Ok(cli::rollback(
            cfg(Purpose::Client)?.as_ref(),
            &service,
            to,
            reason,
            &mut out,
        )
        .await?),
        Command::Sync { service } => {
            Ok(cli::sync(cfg(Purpose::Client)?, &service, &mut out).await?)
        }
        Command::Unpin { service } => {
            Ok(cli::unpin(cfg(Purpose::Client)?.as_ref(), &service, &mut out).await?)
        }
        Command::Deploy {
            service,
            tag,
            reason,
        } => Ok(cli::deploy(cfg(Purpose::Client)?, &service, &tag, reason, &mut out).await?),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAGBRIDGE_LOG")
        // SECURITY: rustls warns once per handshake whose SNI is an IP
        // address; a stranger could write one log line per connection.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The environment variable through which a re-executed tagbridge
/// inherits its webhook listener.
const LISTEN_FD: &str = "TAGBRIDGE_LISTEN_FD";

/// Replace this process with a fresh `tagbridge` with the same arguments
/// (same PID, so Nomad and systemd see one long-lived task).
///
/// The webhook listener is handed over open: connections that arrive
/// while the old image drains and the new one starts wait in the kernel's
/// backlog instead of being refused, so a registry never sees a reload.
/// Every other socket is close-on-exec.
fn reexec(listener: std::net::TcpListener) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("locating the running binary")?;
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns (the listener stays
    // alive until exec replaces the image); it only clears FD_CLOEXEC.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        anyhow::bail!(
            "handing the listener over: {}",
            std::io::Error::last_os_error()
        );
    }
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(LISTEN_FD, fd.to_string())
        .exec();
    Err(anyhow::anyhow!(
        "re-executing after a configuration change: {err}"
    ))
}

/// The webhook listener: the one a previous image handed over (when it
/// still listens on the configured address), else a fresh bind.
async fn webhook_listener(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd as _;
    let inherited = std::env::var(LISTEN_FD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    std::env::remove_var(LISTEN_FD);
    if let Some(fd) = inherited {
        // SAFETY: the variable is set only by `reexec` of the image this
        // process replaced, naming a descriptor it left open for us and
        // that nothing else in this process owns. Anything that is not a
        // listening socket fails `local_addr` and is closed below.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        match l.local_addr() {
            Ok(at) if at.ip() == addr.ip() && (addr.port() == 0 || at.port() == addr.port()) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            _ => drop(l),
        }
    }
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(l.into_std()?)
}

/// Serve until SIGTERM/SIGINT (`Ok(None)`) or until SIGHUP brought a
/// changed, valid configuration (`Ok(Some(listener))`: the caller
/// re-executes, handing the still-open webhook listener over).
async fn serve(
    cfg: Arc<Config>,
    path: &std::path::Path,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    init_tracing(cfg.log_format);
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    let loaded_text = std::fs::read_to_string(path).unwrap_or_default();
    let loaded = config::fingerprint(&loaded_text, &cfg);
    let restart = Arc::new(AtomicBool::new(false));
    let tls_files = cfg
        .tls
        .clone()
        .context("a tls block is required to serve")?;
    let certs = CertStore::load(&tls_files).context("loading the TLS certificate")?;
    let tls = certs.server_config().context("TLS configuration")?;
    let state = app_state(&cfg, &certs)?;

    let listener = webhook_listener(cfg.listen).await?;
    // A second descriptor of the same socket: it keeps the socket listening
    // (connections queue in its backlog) after the server stops accepting,
    // for the hand-over to the next image on a reload.
    let kept = listener.try_clone().context("keeping the listener")?;
    let listener = TcpListener::from_std(listener)?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding {}", cfg.admin_listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        services = cfg.services.len(),
        consul = %cfg.consul.address,
        "tagbridge serving"
    );

    let cancel = CancellationToken::new();
    spawn_signal_handler(
        cancel.clone(),
        certs.clone(),
        restart.clone(),
        path.to_path_buf(),
        loaded,
    )?;
    tokio::spawn(certs.clone().watch(Duration::from_secs(5), cancel.clone()));

    let controller = start_controller(&cfg, &cancel, &state.metrics)?;
    let admin_task = tokio::spawn(server::admin::run(
        admin,
        state.clone(),
        cancel.clone().cancelled_owned(),
    ));
    server::run(listener, tls, state, cancel.clone().cancelled_owned()).await?;
    cancel.cancel();
    // Not restarting: close the socket now, so new connections are refused
    // at once (and retried elsewhere) instead of queueing in a backlog that
    // no one will accept from.
    let kept = restart
        .load(std::sync::atomic::Ordering::SeqCst)
        .then_some(kept);
    let _ = admin_task.await;
    if let Some((task, notifier)) = controller {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        notifier.drain(Duration::from_secs(5)).await;
    }
    // A SIGTERM during the drain cancels the restart.
    let kept = kept.filter(|_| restart.load(std::sync::atomic::Ordering::SeqCst));
    tracing::info!(restart = kept.is_some(), "stopped");
    Ok(kept)
}

/// What the listeners share: the ingest path on its Consul client, the
/// metrics, the certificate.
fn app_state(cfg: &Arc<Config>, certs: &Arc<CertStore>) -> anyhow::Result<Arc<AppState>> {
    let consul = tagbridge::clients::consul_client(cfg).context("Consul client")?;
    let metrics = Arc::new(Metrics::new());
    metrics.tls_not_after.set(certs.not_after());
    let ingest = Ingest::new(consul, cfg.clone(), metrics.clone());
    Ok(Arc::new(AppState::new(
        cfg.clone(),
        ingest,
        metrics,
        Some(certs.clone()),
    )))
}

/// The controller (leader election), when any service has a rollout block
/// or a `poll_interval`: its task and the notifier to drain at shutdown.
fn start_controller(
    cfg: &Arc<Config>,
    cancel: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<(tokio::task::JoinHandle<()>, Notifier)>> {
    if !cfg
        .services
        .iter()
        .any(|s| s.rollout.is_some() || s.poll_interval.is_some())
    {
        return Ok(None);
    }
    let mut ctx = tagbridge::clients::rollout_context(cfg).context("Nomad client")?;
    // The poller's deliveries count in the metrics the admin listener
    // exports, like the webhooks'.
    ctx.metrics = metrics.clone();
    tracing::info!(nomad = %cfg.nomad.address, "rollout controller enabled");
    let notifier = ctx.notifier.clone();
    let task = tokio::spawn(tagbridge::controller::run(ctx, cancel.clone()));
    Ok(Some((task, notifier)))
}

/// Act on signals until the process stops: SIGTERM / SIGINT shut down,
/// SIGHUP reloads the certificate and, when the configuration file
/// changed into a valid one, drains and asks for a restart (`restart`).
fn spawn_signal_handler(
    cancel: CancellationToken,
    certs: Arc<CertStore>,
    restart: Arc<AtomicBool>,
    path: std::path::PathBuf,
    loaded: [u8; 32],
) -> std::io::Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    restart.store(false, std::sync::atomic::Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                _ = sigint.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    restart.store(false, std::sync::atomic::Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                _ = sighup.recv() => {
                    match certs.reload() {
                        Ok(()) => tracing::info!(not_after = certs.not_after(), "SIGHUP: TLS certificate reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: new TLS pair refused; still serving the previous certificate"),
                    }
                    if config_changed(&path, loaded) && !cancel.is_cancelled() {
                        tracing::info!("SIGHUP: configuration changed; draining, then restarting with it");
                        restart.store(true, std::sync::atomic::Ordering::SeqCst);
                        cancel.cancel();
                        // Keep listening: a SIGTERM during the drain
                        // (`nomad stop`) must end the process, not
                        // restart it.
                    }
                }
            }
        }
    });
    Ok(())
}

/// Whether the file at `path` now holds a valid configuration that differs
/// from the running one. An invalid one is refused with one log line per
/// problem, and the running configuration stays.
fn config_changed(path: &std::path::Path, running: [u8; 32]) -> bool {
    match Config::load(path, Purpose::Serve, &config::process_env) {
        Ok(new) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            config::fingerprint(&text, &new) != running
        }
        Err(e) => {
            for problem in &e.0 {
                tracing::warn!(%problem, "SIGHUP: new configuration refused; still running the previous one");
            }
            false
        }
    }
}
