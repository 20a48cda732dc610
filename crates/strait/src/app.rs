//! Wiring: settings → declarative configuration → snapshot → listeners →
//! proxy, and the orderly shutdown on SIGTERM/SIGINT.

use std::path::Path;

use anyhow::{Context, Result, bail};
use strait_config::{LogLevel, Settings};
use strait_model::{Config, KeyPair, Loaded};
use strait_proxy::{AccessLogger, Proxy, Snapshot, Timeouts};

/// Everything `start` needs, validated; also what `check` validates.
struct Prepared {
    settings: Settings,
    loaded: Loaded,
    default_cert: KeyPair,
}

fn prepare(settings: Settings, generate_cert: bool) -> Result<Prepared> {
    let loaded = match &settings.declarative_config {
        Some(path) => load_declarative("declarative_config", path)?,
        None => Loaded { config: Config::default(), warnings: Vec::new() },
    };
    let default_cert = match &settings.ssl_cert {
        Some((cert, key)) => crate::certs::load(cert, key)?,
        None if generate_cert => crate::certs::load_or_generate(&settings.prefix)?,
        // `check` must not write files: validate with a throwaway certificate.
        None => throwaway_cert()?,
    };
    Ok(Prepared { settings, loaded, default_cert })
}

fn throwaway_cert() -> Result<KeyPair> {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    strait_model::pem::key_pair(&g.cert.pem(), &g.signing_key.serialize_pem(), "mismatch")
        .map_err(|errs| anyhow::anyhow!("generated certificate: {errs:?}"))
}

/// Reads and validates a declarative file; `what` names it in errors.
fn load_declarative(what: &str, path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read {}", path.display()))?;
    strait_model::load_str(&text).with_context(|| format!("{what} {}", path.display()))
}

fn init_tracing(level: LogLevel) {
    let level = match level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `strait start`.
pub fn start(conf: Option<&Path>) -> Result<()> {
    let settings = Settings::load(conf)?;
    init_tracing(settings.log_level);
    if settings.stream_listen.is_empty() {
        bail!("stream_listen is off: there is nothing to serve (set stream_listen, e.g. \"127.0.0.1:9000\")");
    }
    std::fs::create_dir_all(&settings.prefix)
        .with_context(|| format!("prefix: cannot create {}", settings.prefix.display()))?;
    let Prepared { settings, loaded, default_cert } = prepare(settings, true)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if settings.declarative_config.is_none() {
        tracing::warn!("declarative_config is not set: there are no routes, every session will be closed");
    }
    let counts = summary(&loaded.config);
    let snapshot = Snapshot::compile(loaded.config, &default_cert)?;

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("strait-worker");
    if let Some(n) = settings.worker_threads {
        rt.worker_threads(n.get());
    }
    let rt = rt.build().context("cannot start the runtime")?;

    let (logger, writer) = AccessLogger::open(&settings.proxy_stream_access_log)
        .context("proxy_stream_access_log: cannot open the access log")?;
    let listeners = strait_proxy::bind_all(&settings.stream_listen)?;
    let report = rt.block_on(async {
        let proxy = Proxy::start(
            listeners,
            snapshot,
            logger,
            Timeouts { preread: settings.preread_timeout, tls_detect: settings.tls_detect_timeout },
        )?;
        let addrs: Vec<String> = proxy.local_addrs().iter().map(ToString::to_string).collect();
        tracing::info!(listeners = %addrs.join(", "), config = %counts, "strait started");
        wait_for_signal().await?;
        tracing::info!(drain_timeout = ?settings.drain_timeout, "shutting down: no new sessions");
        // A second signal cuts the drain short.
        let closer = proxy.closer();
        tokio::spawn(async move {
            if wait_for_signal().await.is_ok() {
                tracing::warn!("second signal: closing every open session now");
                closer.close_all();
            }
        });
        anyhow::Ok(proxy.shutdown(settings.drain_timeout).await)
    })?;
    // Dropping the runtime drops any session task still holding a logger, so
    // the writer can then flush and end.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    writer.finish();
    tracing::info!(forced = report.forced, "strait stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn summary(c: &Config) -> String {
    format!(
        "{} services, {} routes, {} certificates, {} snis, {} ca_certificates, {} upstreams, {} targets, {} plugins",
        c.services.len(),
        c.routes.len(),
        c.certificates.len(),
        c.snis.len(),
        c.ca_certificates.len(),
        c.upstreams.len(),
        c.targets.len(),
        c.plugins.len()
    )
}

/// `strait check`.
pub fn check(conf: Option<&Path>) -> Result<()> {
    let Prepared { settings, loaded, default_cert } = prepare(Settings::load(conf)?, false)?;
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    let counts = summary(&loaded.config);
    Snapshot::compile(loaded.config, &default_cert)?;
    println!("configuration OK: {} stream listener(s); {counts}", settings.stream_listen.len());
    Ok(())
}

/// `strait config parse FILE`.
pub fn parse(file: &Path) -> Result<()> {
    let loaded = load_declarative("declarative file", file)?;
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    println!("parse successful: {}", summary(&loaded.config));
    Ok(())
}

/// `strait config init [FILE]`.
pub fn init(file: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .with_context(|| format!("cannot create {} (it is never overwritten)", file.display()))?;
    f.write_all(crate::example::DECLARATIVE.as_bytes())?;
    println!("{} written", file.display());
    Ok(())
}
