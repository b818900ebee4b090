//! faceproof liveness service binary: everything happens in [`faceproof_liveness::run`].

use clap::Parser;
use faceproof_liveness::LivenessConfig;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: candle's default elementwise pool spins against ours.
    faceproof_runtime::exec_with_one_candle_thread_by_default();
    let config = LivenessConfig::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(faceproof_liveness::run(config))
}
