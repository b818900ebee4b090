//! The settings every model service shares, as one clap struct each service flattens into its
//! own configuration. The listen variable and the default addresses are the service's
//! ([`ModelService`] constants); every other flag, variable and default is the same for all.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;

use faceproof_imaging::ImageLimits;

use super::ModelService;
use crate::HostError;
use crate::args::{ImageBoundsArgs, ServingArgs};
use crate::telemetry::MetricsAddr;

pub const DEFAULT_MODEL_DIR: &str = "models/store";
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// The default `face_too_small` threshold, in pixels.
pub const DEFAULT_MIN_FACE_PX: u32 = 32;
/// The largest `--min-face-px` accepted (a face box wider than this is a close-up already).
pub const MAX_MIN_FACE_PX: u32 = 4096;
/// The largest image a request may carry whatever the flags say: protects the gRPC decoder.
pub const HARD_MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// Listen address, models, image limits, metrics address and serving settings of the model
/// service `S` (flag and environment variable each).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ModelServiceArgs<S: ModelService> {
    /// Address to listen on for gRPC.
    #[arg(long, env = S::LISTEN_ENV, default_value = S::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory holding the converted model weights (written by `faceproof models fetch`).
    #[arg(long, env = "FACEPROOF_MODEL_DIR", default_value = DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,

    /// Largest accepted image, in bytes (every image of a request).
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,

    /// Largest accepted image, in pixels (width x height), checked before decoding.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,

    #[command(flatten)]
    pub image_bounds: ImageBoundsArgs,

    /// Smallest face that is used, in pixels of the original image (the shorter side of its
    /// box); a smaller face is refused with `face_too_small`: it carries too little detail.
    #[arg(long, env = "FACEPROOF_MIN_FACE_PX", default_value_t = DEFAULT_MIN_FACE_PX)]
    pub min_face_px: u32,

    /// Address of the Prometheus endpoint (`GET /metrics`); `off` disables it.
    #[arg(long, env = "FACEPROOF_METRICS_ADDR", default_value = S::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: MetricsAddr,

    #[command(flatten)]
    pub serving: ServingArgs,

    #[arg(skip)]
    service: PhantomData<S>,
}

impl<S: ModelService> Default for ModelServiceArgs<S> {
    /// The flag defaults (without reading the environment).
    fn default() -> Self {
        Self {
            listen: S::DEFAULT_LISTEN
                .parse()
                .expect("ModelService::DEFAULT_LISTEN is HOST:PORT"),
            model_dir: PathBuf::from(DEFAULT_MODEL_DIR),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            image_bounds: ImageBoundsArgs::default(),
            min_face_px: DEFAULT_MIN_FACE_PX,
            metrics_addr: S::DEFAULT_METRICS_ADDR
                .parse()
                .expect("ModelService::DEFAULT_METRICS_ADDR is HOST:PORT or off"),
            serving: ServingArgs::default(),
            service: PhantomData,
        }
    }
}

impl<S: ModelService> ModelServiceArgs<S> {
    /// The header bounds every image is checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        self.image_bounds.limits(self.max_image_pixels)
    }

    /// Checks the settings together; the message names the offending flag.
    pub fn validate(&self) -> Result<(), HostError> {
        if !(1..=HARD_MAX_IMAGE_BYTES).contains(&self.max_image_bytes) {
            return Err(HostError::Config(format!(
                "--max-image-bytes must be 1..={HARD_MAX_IMAGE_BYTES}, got {}",
                self.max_image_bytes
            )));
        }
        if !(1..=MAX_MIN_FACE_PX).contains(&self.min_face_px) {
            return Err(HostError::Config(format!(
                "--min-face-px must be 1..={MAX_MIN_FACE_PX}, got {}",
                self.min_face_px
            )));
        }
        if self.max_image_pixels == 0 {
            return Err(HostError::Config(
                "--max-image-pixels must be positive".into(),
            ));
        }
        self.image_bounds.validate().map_err(HostError::Config)?;
        self.serving.validate().map_err(HostError::Config)
    }
}
