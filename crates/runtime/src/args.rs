//! Settings every model service shares, flattened into each service's own clap config.

use std::time::Duration;

use faceproof_imaging::ImageLimits;

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

/// Image bounds checked from the header before decoding, beyond the pixel count each service
/// sets itself (flag and environment variable each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ImageBoundsArgs {
    /// Longest accepted side of an image, in pixels, checked before decoding.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_SIDE", default_value_t = ImageLimits::DEFAULT_MAX_SIDE)]
    pub max_image_side: u32,

    /// Most elongated accepted image, long side / short side (8 = 8:1), checked before
    /// decoding: `image_bad_aspect_ratio` beyond it.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_ASPECT_RATIO", default_value_t = ImageLimits::DEFAULT_MAX_ASPECT_RATIO)]
    pub max_image_aspect_ratio: u32,

    /// Memory one image decode may hold, in bytes (decoder buffers and the RGB result). A larger
    /// JPEG is decoded at 1/2, 1/4 or 1/8 scale and a larger PNG streamed into a smaller buffer
    /// so that it fits; what cannot fit (WebP, interlaced PNG) is refused `image_too_large`.
    /// The service holds at most workers x this in decoded images.
    #[arg(long, env = "FACEPROOF_MAX_DECODED_BYTES", default_value_t = ImageLimits::DEFAULT_MAX_DECODED_BYTES)]
    pub max_decoded_bytes: u64,
}

impl Default for ImageBoundsArgs {
    fn default() -> Self {
        Self {
            max_image_side: ImageLimits::DEFAULT_MAX_SIDE,
            max_image_aspect_ratio: ImageLimits::DEFAULT_MAX_ASPECT_RATIO,
            max_decoded_bytes: ImageLimits::DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

impl ImageBoundsArgs {
    /// The header bounds every image is checked against before decoding.
    pub fn limits(&self, max_pixels: u64) -> ImageLimits {
        ImageLimits {
            max_pixels,
            max_side: self.max_image_side,
            max_aspect_ratio: self.max_image_aspect_ratio,
            max_decoded_bytes: self.max_decoded_bytes,
        }
    }

    /// Checks the bounds; the message names the offending flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_image_side == 0 || self.max_image_aspect_ratio == 0 {
            return Err(
                "--max-image-side and --max-image-aspect-ratio must be positive".to_owned(),
            );
        }
        if self.max_decoded_bytes < 1 << 20 {
            return Err(format!(
                "--max-decoded-bytes must be at least 1 MiB, got {}",
                self.max_decoded_bytes
            ));
        }
        Ok(())
    }
}
