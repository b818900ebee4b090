//! Format recognition by magic bytes and header-only inspection.

use std::io::Cursor;

use crate::ImageError;

/// A supported input format, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
}

impl ImageFormat {
    pub(crate) fn to_image_format(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::WebP => image::ImageFormat::WebP,
        }
    }
}

/// What the header says about an image, read without decoding any pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// Width and height as stored (before EXIF orientation).
    pub width: u32,
    pub height: u32,
}

/// Recognises JPEG, PNG and WebP by their magic bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// Reads the format and dimensions from the header only: cheap enough for request validation.
pub fn inspect(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let (width, height) = crate::decode::guard_panics(|| {
        image::ImageReader::with_format(Cursor::new(bytes), format.to_image_format())
            .into_dimensions()
            .map_err(ImageError::from_image)
    })?;
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_magic_bytes_only() {
        assert_eq!(
            sniff_format(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\n...."),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            sniff_format(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::WebP)
        );
        assert_eq!(sniff_format(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff_format(b"GIF89a"), None);
        assert_eq!(sniff_format(&[]), None);
    }

    #[test]
    fn inspect_rejects_unknown_and_truncated_headers() {
        assert!(matches!(
            inspect(b"hello"),
            Err(ImageError::UnsupportedFormat)
        ));
        assert!(matches!(
            inspect(b"\x89PNG\r\n\x1a\n\0\0"),
            Err(ImageError::Truncated(_))
        ));
    }
}
