//! Settings every model service shares, flattened into each service's own clap config.

use std::time::Duration;

use crate::deadline::DeadlinePolicy;
use crate::pool::PoolConfig;
use crate::telemetry::TelemetryArgs;

pub const DEFAULT_QUEUE_CAPACITY: usize = 32;
pub const DEFAULT_DEADLINE_MS: u64 = 10_000;
pub const DEFAULT_MAX_DEADLINE_MS: u64 = 60_000;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 20_000;

/// Inference pool, deadline, shutdown, logging and tracing settings (flag and environment variable each).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServingArgs {
    /// Inference worker threads [default: available cores].
    #[arg(long, env = "FACEPROOF_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,

    /// Requests that may wait for a worker; beyond that requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "FACEPROOF_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// Deadline for requests that carry no grpc-timeout, in milliseconds.
    #[arg(long, env = "FACEPROOF_DEFAULT_DEADLINE_MS", default_value_t = DEFAULT_DEADLINE_MS)]
    pub default_deadline_ms: u64,

    /// Upper bound on any caller's grpc-timeout, in milliseconds.
    #[arg(long, env = "FACEPROOF_MAX_DEADLINE_MS", default_value_t = DEFAULT_MAX_DEADLINE_MS)]
    pub max_deadline_ms: u64,

    /// How long in-flight requests may take to finish after SIGTERM, in milliseconds.
    #[arg(long, env = "FACEPROOF_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Default for ServingArgs {
    fn default() -> Self {
        Self {
            inference_threads: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            default_deadline_ms: DEFAULT_DEADLINE_MS,
            max_deadline_ms: DEFAULT_MAX_DEADLINE_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            telemetry: TelemetryArgs::default(),
        }
    }
}

impl ServingArgs {
    /// Checks the values together; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(threads) = self.inference_threads
            && !(1..=256).contains(&threads)
        {
            return Err(format!(
                "--inference-threads must be 1..=256, got {threads}"
            ));
        }
        if !(1..=100_000).contains(&self.queue_capacity) {
            return Err(format!(
                "--queue-capacity must be 1..=100000, got {}",
                self.queue_capacity
            ));
        }
        if self.default_deadline_ms == 0 || self.max_deadline_ms == 0 {
            return Err("deadlines must be positive".into());
        }
        if self.default_deadline_ms > self.max_deadline_ms {
            return Err(format!(
                "--default-deadline-ms ({}) exceeds --max-deadline-ms ({})",
                self.default_deadline_ms, self.max_deadline_ms
            ));
        }
        Ok(())
    }

    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            threads: self
                .inference_threads
                .unwrap_or_else(PoolConfig::default_threads),
            queue_capacity: self.queue_capacity,
        }
    }

    pub fn deadline_policy(&self) -> DeadlinePolicy {
        DeadlinePolicy {
            default: Duration::from_millis(self.default_deadline_ms),
            max: Duration::from_millis(self.max_deadline_ms),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServingArgs::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_inconsistent_values() {
        let bad = [
            ServingArgs {
                inference_threads: Some(0),
                ..Default::default()
            },
            ServingArgs {
                queue_capacity: 0,
                ..Default::default()
            },
            ServingArgs {
                default_deadline_ms: 0,
                ..Default::default()
            },
            ServingArgs {
                default_deadline_ms: 5_000,
                max_deadline_ms: 1_000,
                ..Default::default()
            },
        ];
        for args in bad {
            assert!(args.validate().is_err(), "{args:?}");
        }
    }
}
