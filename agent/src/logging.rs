//! Log set-up: tracing to stderr, as text for people or JSON lines for machines.
//! `RUST_LOG` overrides the configured filter.
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| anyhow::anyhow!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", config.level))?,
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging: {e}"))
}
