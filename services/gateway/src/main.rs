//! `faceproof-gateway`: runs a helper tool, or the server ([`faceproof_gateway::run`]: binds the
//! listeners and serves until SIGTERM or ctrl-c, then drains within the configured grace period).

use std::io::BufRead as _;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::{GatewayCli, Tool};
use rand_core::RngCore as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = GatewayCli::parse();
    match cli.tool {
        Some(tool) => run_tool(tool),
        None => faceproof_gateway::run(cli.config).await,
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
