//! faceproof matcher service binary: everything happens in [`faceproof_matcher::run`].

use clap::Parser;
use faceproof_matcher::MatcherConfig;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: candle's default elementwise pool spins against ours.
    faceproof_runtime::exec_with_one_candle_thread_by_default();
    let config = MatcherConfig::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(faceproof_matcher::run(config))
}
