//! faceproof liveness service binary: everything happens in [`faceproof_liveness::run`].

use clap::Parser;
use faceproof_liveness::LivenessConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faceproof_liveness::run(LivenessConfig::parse()).await
}
