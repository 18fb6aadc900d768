//! `tagbridge`: the binary owns the world — arguments, environment,
//! signals, sockets and exit codes. Everything else is the library's.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tagbridge::cli::{self, Cli, CliError, Command};
use tagbridge::config::{self, Config, LogFormat, Purpose};
use tagbridge::ingest::Ingest;
use tagbridge::metrics::Metrics;
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
    let result: anyhow::Result<()> = rt.block_on(async move {
        let mut out = std::io::stdout().lock();
        let cfg = |purpose| -> Result<Arc<Config>, CliError> {
            Ok(Arc::new(Config::load(
                &cli.config,
                purpose,
                &config::process_env,
            )?))
        };
        match cli.command {
            Command::Serve => {
                if serve(cfg(Purpose::Serve)?, &cli.config).await? {
                    reexec()
                } else {
                    Ok(())
                }
            }
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
            Command::Unpin { service } => {
                Ok(cli::unpin(cfg(Purpose::Client)?.as_ref(), &service, &mut out).await?)
            }
            Command::Deploy {
                service,
                tag,
                reason,
            } => Ok(cli::deploy(cfg(Purpose::Client)?, &service, &tag, reason, &mut out).await?),
        }
    });
    match result {
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

/// Replace this process with a fresh `tagbridge` with the same arguments
/// (same PID, so Nomad and systemd see one long-lived task). Sockets are
/// close-on-exec; the old listeners are already closed.
fn reexec() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("locating the running binary")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::anyhow!(
        "re-executing after a configuration change: {err}"
    ))
}

/// Serve until SIGTERM/SIGINT (`Ok(false)`) or until SIGHUP brought a
/// changed, valid configuration (`Ok(true)`: the caller re-executes).
async fn serve(cfg: Arc<Config>, path: &std::path::Path) -> anyhow::Result<bool> {
    init_tracing(cfg.log_format);
    let loaded_text = std::fs::read_to_string(path).unwrap_or_default();
    let loaded = config::fingerprint(&loaded_text, &cfg);
    let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tls_files = cfg
        .tls
        .clone()
        .context("a tls block is required to serve")?;
    let certs = CertStore::load(&tls_files).context("loading the TLS certificate")?;
    let tls = certs.server_config().context("TLS configuration")?;
    let consul = cli::consul_client(&cfg).context("Consul client")?;
    let metrics = Arc::new(Metrics::new());
    metrics.tls_not_after.set(certs.not_after());
    let ingest = Ingest::new(consul, cfg.clone(), metrics.clone());
    let state = Arc::new(AppState::new(
        cfg.clone(),
        ingest,
        metrics,
        Some(certs.clone()),
    ));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
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
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    {
        let cancel = cancel.clone();
        let certs = certs.clone();
        let restart = restart.clone();
        let path = path.to_path_buf();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); cancel.cancel(); return; }
                    _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); cancel.cancel(); return; }
                    _ = sighup.recv() => {
                        match certs.reload() {
                            Ok(()) => tracing::info!(not_after = certs.not_after(), "SIGHUP: TLS certificate reloaded"),
                            Err(e) => tracing::warn!(error = %e, "SIGHUP: new TLS pair refused; still serving the previous certificate"),
                        }
                        if config_changed(&path, loaded) {
                            tracing::info!("SIGHUP: configuration changed; draining, then restarting with it");
                            restart.store(true, std::sync::atomic::Ordering::SeqCst);
                            cancel.cancel();
                            return;
                        }
                    }
                }
            }
        });
    }
    tokio::spawn(certs.clone().watch(Duration::from_secs(5), cancel.clone()));

    let controller = if cfg.services.iter().any(|s| s.rollout.is_some()) {
        let ctx = cli::rollout_context(&cfg).context("Nomad client")?;
        tracing::info!(nomad = %cfg.nomad.address, "rollout controller enabled");
        let notifier = ctx.notifier.clone();
        let task = tokio::spawn(tagbridge::controller::run(ctx, cancel.clone()));
        Some((task, notifier))
    } else {
        None
    };
    let admin_task = tokio::spawn(server::admin::run(
        admin,
        state.clone(),
        cancel.clone().cancelled_owned(),
    ));
    server::run(listener, tls, state, cancel.clone().cancelled_owned()).await?;
    cancel.cancel();
    let _ = admin_task.await;
    if let Some((task, notifier)) = controller {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        notifier.drain(Duration::from_secs(5)).await;
    }
    let restart = restart.load(std::sync::atomic::Ordering::SeqCst);
    tracing::info!(restart, "stopped");
    Ok(restart)
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
