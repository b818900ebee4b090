//! Log subscriber set-up: JSON lines for collectors, human-readable text for people. The level
//! comes from `RUST_LOG` (default `info`). Never log images, embeddings or tokens.

use tracing_subscriber::EnvFilter;

use crate::RuntimeError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber; fails if one is already installed.
pub fn init_logging(format: LogFormat) -> Result<(), RuntimeError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|error| RuntimeError::Logging(error.to_string()))
}
