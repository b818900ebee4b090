//! One candle elementwise thread by default, for every process that runs the networks.
//!
//! candle 0.11's CPU backend keeps its own busy-waiting pool for elementwise work, sized by
//! `CANDLE_NUM_THREADS` (default: one thread per core). Next to our inference threads and gemm's
//! rayon pool it spins on the cores they need: measured 782 ms instead of 270 ms per compare on 2
//! cores. `.cargo/config.toml`, the Dockerfile and `faceproof up` set it to 1; this covers a
//! binary started any other way. candle reads the variable once, so it must be in the environment
//! before the first tensor operation: setting it in-process needs `unsafe` (another thread may read
//! the environment at the same time), whereas re-executing the program with it set is safe and
//! keeps the PID, arguments and the rest of the environment.

use std::ffi::OsString;

/// The variable candle reads for the size of its elementwise pool.
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// What this process should do about [`CANDLE_THREADS_VAR`], given its current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandleThreads {
    /// The operator chose a thread count: keep it.
    Chosen,
    /// Unset, or a value candle would ignore (it then falls back to one thread per core, the
    /// slow case): re-execute with one thread.
    UseDefault,
}

impl CandleThreads {
    pub fn from_env_value(value: Option<OsString>) -> Self {
        // candle honours a positive integer only, parsed as it is (no whitespace trimmed).
        let thread_count = value
            .as_deref()
            .and_then(|value| value.to_str())
            .and_then(|value| value.parse::<usize>().ok());
        match thread_count {
            Some(count) if count > 0 => Self::Chosen,
            _ => Self::UseDefault,
        }
    }
}

/// Re-executes this program with `CANDLE_NUM_THREADS=1` unless the variable already holds a
/// thread count.
/// Returns when nothing had to be done, or when the re-execution failed (then it says so on
/// stderr and the program goes on with candle's default, slower but correct). Call it first in
/// `main`.
pub fn exec_with_one_candle_thread_by_default() {
    let value = std::env::var_os(CANDLE_THREADS_VAR);
    if CandleThreads::from_env_value(value.clone()) == CandleThreads::Chosen {
        return;
    }
    if let Some(ignored) = value.filter(|value| !value.is_empty()) {
        eprintln!(
            "warning: {CANDLE_THREADS_VAR}={} is not a positive thread count; using 1",
            ignored.to_string_lossy()
        );
    }
    let error = reexec_with_one_candle_thread();
    eprintln!(
        "warning: could not restart with {CANDLE_THREADS_VAR}=1 ({error}); set it yourself: \
         candle's default thread pool makes inference 2-3x slower"
    );
}

#[cfg(unix)]
fn reexec_with_one_candle_thread() -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return error,
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(program);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    // `exec` only returns on failure.
    command.args(args).env(CANDLE_THREADS_VAR, "1").exec()
}

#[cfg(not(unix))]
fn reexec_with_one_candle_thread() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "re-execution is only implemented on Unix",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_choice_is_kept_and_a_missing_or_unusable_value_gets_the_default() {
        assert_eq!(
            CandleThreads::from_env_value(Some("4".into())),
            CandleThreads::Chosen
        );
        assert_eq!(
            CandleThreads::from_env_value(Some("1".into())),
            CandleThreads::Chosen
        );
        assert_eq!(
            CandleThreads::from_env_value(None),
            CandleThreads::UseDefault
        );
        for ignored_by_candle in ["", "0", "abc", "-2", "1.5", " 2"] {
            assert_eq!(
                CandleThreads::from_env_value(Some(ignored_by_candle.into())),
                CandleThreads::UseDefault,
                "{ignored_by_candle:?}"
            );
        }
    }
}
