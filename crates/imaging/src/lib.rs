//! Safe image handling for faceproof: format sniffing by magic bytes, header inspection and
//! structural checks without decoding pixels ([`check_header`]: complete file, pixel count,
//! side, aspect ratio), decoding with EXIF orientation within a fixed memory budget (reduced-scale
//! JPEG, streamed PNG) and cooperative [`Cancellation`], OpenCV-compatible area/bilinear resizing, affine warps for face
//! alignment, and conversion to planar `f32` network inputs.
//!
//! Every function that reads untrusted bytes returns a typed [`ImageError`] and never panics.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cancel;
mod decode;
mod format;
mod header;
mod resize;
mod tensor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod warp;

pub use cancel::{Cancellation, Cancelled};
pub use decode::{DecodeOptions, Decoded, decode, decode_cancellable};
pub use format::{ImageFormat, ImageInfo, inspect, sniff_format};
pub use header::{ImageHeader, ImageLimits, check_budget, check_header};
/// The 8-bit RGB image type used throughout faceproof (re-exported so users need not depend on
/// `image`).
pub use image::RgbImage;
pub use resize::{resize_area, resize_bilinear};
pub use tensor::{ChannelOrder, to_planar_f32};
pub use warp::{ARCFACE_TEMPLATE_112, estimate_similarity, warp_affine_bilinear};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not JPEG, PNG or WebP (recognised by magic bytes, never by name).
    #[error("unsupported image format (expected JPEG, PNG or WebP)")]
    UnsupportedFormat,
    /// The file is truncated or its data is invalid.
    #[error("image is corrupt or truncated: {0}")]
    Corrupt(String),
    /// The format is recognised but the file uses a feature the decoder does not implement
    /// (e.g. arithmetic-coded or 12-bit JPEG).
    #[error("image uses an unsupported encoding feature: {0}")]
    UnsupportedEncoding(String),
    /// The header declares more pixels than allowed; refused before any pixel is allocated.
    #[error("image is {width}x{height} pixels, more than the limit of {max_pixels} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// The header declares a side longer than allowed.
    #[error("image is {width}x{height} pixels, a side is longer than the limit of {max_side}")]
    SideTooLong {
        width: u32,
        height: u32,
        max_side: u32,
    },
    /// Long side / short side is over the limit (e.g. a 1 x 40 000 000 "line").
    #[error("image is {width}x{height} pixels, more elongated than the limit of {max_ratio}:1")]
    BadAspectRatio {
        width: u32,
        height: u32,
        max_ratio: u32,
    },
    /// Decoding would need more memory than the budget and no reduced-scale decoding fits.
    #[error(
        "decoding the {width}x{height} image needs {bytes} bytes, over the budget of {budget} \
         (and it cannot be decoded at reduced scale)"
    )]
    OverBudget {
        width: u32,
        height: u32,
        bytes: u64,
        budget: u64,
    },
    /// The data ends early: a cut file, a missing end marker (JPEG EOI, PNG IEND) or a RIFF
    /// size larger than the file.
    #[error("image is truncated: {0}")]
    Truncated(String),
    /// A decoder needed more memory than its limit allows (a hostile or unusual file).
    #[error("image decoder memory limit exceeded: {0}")]
    MemoryLimit(String),
    /// The request's deadline passed or its caller went away while decoding.
    #[error("image decoding stopped: {0}")]
    Cancelled(#[from] Cancelled),
}

impl ImageError {
    /// True for the size, side, aspect and memory refusals (`image_too_large` or
    /// `image_bad_aspect_ratio` for clients).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. }
                | Self::SideTooLong { .. }
                | Self::OverBudget { .. }
                | Self::MemoryLimit(_)
        )
    }
}

impl ImageError {
    /// Maps an `image` crate error to ours, keeping the decoder's message (which never contains
    /// the input bytes).
    pub(crate) fn from_image(error: image::ImageError) -> Self {
        match error {
            image::ImageError::Unsupported(e) => Self::UnsupportedEncoding(e.to_string()),
            image::ImageError::Limits(e) => Self::MemoryLimit(e.to_string()),
            image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Self::Truncated("unexpected end of file".to_owned())
            }
            other => Self::Corrupt(other.to_string()),
        }
    }
}
