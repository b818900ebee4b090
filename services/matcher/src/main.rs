//! faceproof matcher service binary: everything happens in [`faceproof_matcher::run`].

use clap::Parser;
use faceproof_matcher::MatcherConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faceproof_matcher::run(MatcherConfig::parse()).await
}
