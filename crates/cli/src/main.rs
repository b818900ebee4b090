//! `faceproof`: the command-line tool. Each subcommand lives in its own module.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `outln!` for the command's output. `outln!` panics when stdout is closed early
/// (`faceproof eval ... | head`); this ends the process quietly instead, with the status a
/// process killed by SIGPIPE reports to the shell (141).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(error)
        }
    }};
}

/// Ends the process after a failed write to stdout (see `outln!`).
fn stdout_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141)
    }
    eprintln!("error: cannot write to stdout: {error}");
    std::process::exit(1)
}

mod bench;
mod compare;
mod eval;
mod health;
mod load;
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
    /// Load-test a running gateway: throughput, latency percentiles and answers by gRPC code.
    Load(load::Args),
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
        Command::Load(args) => load::run(args),
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
