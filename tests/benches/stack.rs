//! What the hops cost: one FAST comparison with its liveness check run on the engines in
//! process, against the same request through the whole stack (gateway -> matcher + liveness over
//! gRPC on 127.0.0.1, all in this process), and a request whose liveness check is skipped (a
//! different person below `compare_min_score`).
//!
//! `cargo bench -p faceproof-tests` (release build, the real models from `models/store`);
//! `FACEPROOF_BENCH_ROUNDS` sets the timed rounds (default 10). Prints the best and the median
//! of each; nothing is asserted: the correctness of the same path is
//! `the_stack_carries_the_engines_findings_unchanged` in tests/end_to_end.rs.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use faceproof_proto::gateway::v1 as pb;
use faceproof_tests::{Stack, StackOptions, engines, fixture, run_in_process, spawn_stack};

const OBAMA_2009: &str = "obama_2009_congress.jpg";
const OBAMA_2012: &str = "obama_2012_official_portrait.jpg";
const BIDEN: &str = "biden_2010_blue_room.jpg";

fn main() -> anyhow::Result<()> {
    let rounds = match std::env::var("FACEPROOF_BENCH_ROUNDS") {
        Ok(text) => text
            .parse()
            .with_context(|| format!("FACEPROOF_BENCH_ROUNDS={text:?}"))?,
        Err(_) => 10,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(rounds))
}

/// Best and median of a series, in milliseconds.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let millis = |time: Duration| time.as_secs_f64() * 1e3;
    format!(
        "best {:8.1} ms   median {:8.1} ms",
        millis(times[0]),
        millis(times[times.len() / 2])
    )
}

async fn through_stack(
    stack: &Stack,
    gallery: &str,
    compare_min_score: Option<f64>,
) -> anyhow::Result<Duration> {
    let request = pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: fixture(OBAMA_2012)?.into(),
        gallery: vec![fixture(gallery)?.into()],
        search_mode: "FAST".into(),
        compare_min_score,
        liveness_min_score: None,
    };
    let started = Instant::now();
    stack.compare(request).await??;
    Ok(started.elapsed())
}

async fn run(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(rounds > 0, "FACEPROOF_BENCH_ROUNDS must be at least 1");
    let stack = spawn_stack(StackOptions::default()).await?;
    let engines = engines()?;
    let (probe, gallery) = (fixture(OBAMA_2012)?, fixture(OBAMA_2009)?);
    // One of each untimed, so every path is warm (connections, allocations).
    through_stack(&stack, OBAMA_2009, None).await?;
    through_stack(&stack, BIDEN, Some(0.8)).await?;
    let mut series: [Vec<Duration>; 4] = Default::default();
    for _ in 0..rounds {
        let in_process = tokio::task::spawn_blocking({
            let (probe, gallery) = (probe.clone(), gallery.clone());
            move || run_in_process(engines, probe, gallery)
        })
        .await??;
        series[0].push(in_process.compared_after);
        series[1].push(in_process.checked_after);
        series[2].push(through_stack(&stack, OBAMA_2009, None).await?);
        series[3].push(through_stack(&stack, BIDEN, Some(0.8)).await?);
    }
    let names = [
        "in process: compare",
        "in process: compare + liveness",
        "stack: compare + liveness",
        "stack: compare only (liveness skipped)",
    ];
    println!("FAST, {rounds} rounds:");
    for (name, times) in names.into_iter().zip(series) {
        println!("  {name:<40} {}", summary(times));
    }
    stack.shutdown().await
}
