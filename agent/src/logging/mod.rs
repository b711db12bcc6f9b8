//! Log set-up: tracing to stderr, as text for people (coloured on a terminal only) or
//! JSON lines for machines, written by a thread of its own ([`writer`]). `RUST_LOG`
//! overrides the configured filter; the admin API changes it at run time through
//! [`LogControl`]. The filter hears of span enters and exits only while it filters by
//! span ([`scope`]).
use std::{io::IsTerminal, sync::Arc};

use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat};

mod scope;
mod writer;

pub use writer::Flush;

/// Reads and changes the log filter in force.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Whether the filter in force follows span enters and exits.
    by_span: scope::BySpan,
    /// The filter set at start (config or `RUST_LOG`), restored by an empty level.
    initial: Arc<str>,
    current: Arc<std::sync::Mutex<String>>,
}

impl LogControl {
    /// The filter in force, as written.
    pub fn level(&self) -> String {
        crate::sync::lock(&self.current).clone()
    }

    /// Sets the filter (`""`: back to the one set at start). An invalid filter is an
    /// error naming it, and the filter in force stays.
    pub fn set_level(&self, spec: &str) -> Result<String, String> {
        let spec = if spec.trim().is_empty() {
            self.initial.to_string()
        } else {
            spec.trim().to_string()
        };
        let filter = EnvFilter::try_new(&spec).map_err(|e| format!("log level {spec:?}: {e}"))?;
        self.by_span
            .switch(&spec, || self.handle.reload(filter))
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        crate::sync::lock(&self.current).clone_from(&spec);
        tracing::info!(level = %spec, "log level changed");
        Ok(spec)
    }
}

/// Starts logging. Keep the [`Flush`] until the process ends: dropping it writes the
/// lines still waiting.
pub fn init(config: &LogConfig) -> anyhow::Result<(LogControl, Flush)> {
    let spec = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => spec,
        _ => config.level.clone(),
    };
    let filter = EnvFilter::try_new(&spec).map_err(|e| {
        if spec == config.level {
            anyhow::anyhow!("log.level {spec:?}: {e}")
        } else {
            anyhow::anyhow!("RUST_LOG={spec:?}: {e}")
        }
    })?;
    let (filter, handle) = reload::Layer::new(filter);
    let by_span = scope::BySpan::new(&spec);
    let registry = tracing_subscriber::registry().with(scope::Scoped::new(filter, by_span.clone()));
    let (lines, flush) =
        writer::start(std::io::stderr()).map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    // `try_init` also routes the `log` crate's records (aya's) into tracing.
    let result = match config.format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(lines),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(lines))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    let control = LogControl {
        handle,
        by_span,
        initial: spec.clone().into(),
        current: Arc::new(std::sync::Mutex::new(spec)),
    };
    Ok((control, flush))
}
