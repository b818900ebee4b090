//! `faceproof`: the command-line tool. Each subcommand lives in its own module.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod compare;
mod eval;
mod health;
mod models;
mod serve;
mod up;
mod verify;

#[derive(Debug, Parser)]
#[command(
    name = "faceproof",
    version,
    about = "Self-hosted face verification with liveness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch, verify and convert the model weights.
    #[command(subcommand)]
    Models(models::Command),
    /// Compare a probe with a gallery (and check liveness) through a running gateway.
    Compare(compare::Args),
    /// Time each pipeline stage on the benchmark photos (see bench/README.md).
    Bench(bench::Args),
    /// Verify the signature of a saved compare-with-liveness response offline.
    Verify(verify::Args),
    /// Measure verification and liveness quality on labelled data, and fit the calibration.
    #[command(subcommand)]
    Eval(eval::Command),
    /// Run the whole stack locally (matcher, liveness, gateway in development mode) without Docker.
    Up(up::Args),
    /// Run one service in this process, with that service's own flags.
    #[command(subcommand)]
    Serve(serve::Service),
    /// Ask a service whether it is SERVING (grpc.health.v1); exits 0 when it is, 1 otherwise.
    Health(health::Args),
}

fn main() -> ExitCode {
    // Before any thread exists: candle's default elementwise pool spins against ours (see
    // faceproof_runtime::candle_threads). Every subcommand that runs a network needs it.
    faceproof_runtime::exec_with_one_candle_thread_by_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Models(command) => models::run(command),
        Command::Compare(args) => compare::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(command) => eval::run(command),
        Command::Up(args) => up::run(args),
        Command::Serve(service) => serve::run(service),
        Command::Health(args) => health::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
