//! `faceproof-gateway`: parses the configuration, binds the listeners and serves until SIGTERM or
//! ctrl-c, then drains within the configured grace period.

use std::io::BufRead as _;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::{Application, GatewayCli, Tool};
use rand_core::RngCore as _;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = GatewayCli::parse();
    if let Some(tool) = cli.tool {
        return run_tool(tool);
    }
    let config = cli.config;
    init_logging(config.log_json);
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let application = Application::build(config, grpc_listener, http_listener)?;
    tracing::info!(
        grpc = %application.grpc_addr(),
        http = %application.http_addr(),
        "gateway listening"
    );
    application.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM (what orchestrators send) or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

fn run_tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::HashApiKey => {
            let mut key = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut key)
                .context("cannot read the key from stdin")?;
            anyhow::ensure!(!key.trim().is_empty(), "no key on stdin");
            println!("{}", hash_api_key(&key));
        }
        Tool::NewApiKey { client_id } => {
            anyhow::ensure!(
                !client_id.is_empty() && !client_id.contains(char::is_whitespace),
                "the client id must be non-empty and without spaces"
            );
            let mut bytes = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut bytes);
            let key = format!(
                "fp_{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            );
            println!("key (give to the client, shown once): {key}");
            println!(
                "line for the API key file: {client_id} {}",
                hash_api_key(&key)
            );
        }
    }
    Ok(())
}
