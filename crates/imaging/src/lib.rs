//! Safe image handling for faceproof: format sniffing by magic bytes, header inspection without
//! decoding pixels, decoding with EXIF orientation and pixel limits (with reduced-scale JPEG
//! decoding for large photos), OpenCV-compatible area/bilinear resizing, affine warps for face
//! alignment, and conversion to planar `f32` network inputs.
//!
//! Every function that reads untrusted bytes returns a typed [`ImageError`] and never panics.

mod cancel;
mod decode;
mod format;
mod resize;
mod tensor;
mod warp;

pub use cancel::{Cancellation, Cancelled};
pub use decode::{DecodeOptions, Decoded, decode};
pub use format::{ImageFormat, ImageInfo, inspect, sniff_format};
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
    /// A decoder needed more memory than its limit allows (a hostile or unusual file).
    #[error("image decoder memory limit exceeded: {0}")]
    MemoryLimit(String),
}

impl ImageError {
    /// Maps an `image` crate error to ours, keeping the decoder's message (which never contains
    /// the input bytes).
    pub(crate) fn from_image(error: image::ImageError) -> Self {
        match error {
            image::ImageError::Unsupported(e) => Self::UnsupportedEncoding(e.to_string()),
            image::ImageError::Limits(e) => Self::MemoryLimit(e.to_string()),
            image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Self::Corrupt("unexpected end of file".to_owned())
            }
            other => Self::Corrupt(other.to_string()),
        }
    }
}
