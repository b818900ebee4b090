//! faceproof liveness service binary: parse the configuration, load the models, serve until
//! SIGTERM or ctrl-c.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use faceproof_liveness::{Application, LivenessConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = LivenessConfig::parse();
    faceproof_runtime::init_logging(config.serving.log_format)?;
    config.validate()?;
    let engine =
        faceproof_liveness::vision::load_engine(&config).context("loading the liveness models")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let app = Application::build(config, listener, Arc::new(engine))?;
    app.run_until_stopped(faceproof_runtime::shutdown_signal())
        .await?;
    Ok(())
}
