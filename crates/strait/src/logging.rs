//! The process log (`tracing` to stderr) at `log_level`, which a reload can
//! change without restarting.

use strait_config::LogLevel;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// Changes the level of the running log.
#[derive(Debug, Clone)]
pub(crate) struct LevelHandle(Option<reload::Handle<LevelFilter, Registry>>);

fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    }
}

/// Installs the log at `level`. When a log is already installed (tests
/// that run several commands in one process), the handle changes nothing.
pub(crate) fn init(level: LogLevel) -> LevelHandle {
    let (layer, handle) = reload::Layer::new(filter(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match tracing_subscriber::registry().with(layer).with(fmt).try_init() {
        Ok(()) => LevelHandle(Some(handle)),
        Err(_) => LevelHandle(None),
    }
}

impl LevelHandle {
    /// Logs at `level` from now on.
    pub(crate) fn set(&self, level: LogLevel) {
        if let Some(h) = &self.0
            && let Err(e) = h.reload(filter(level))
        {
            tracing::warn!(error = %e, "cannot change log_level");
        }
    }
}
