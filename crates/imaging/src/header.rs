//! Structural checks and cost estimates read from the bytes before any pixel is decoded.
//!
//! [`check_header`] walks the container of each format far enough to know that the file is
//! complete and what decoding it will cost:
//! - JPEG: every marker segment up to EOI, skipping the entropy-coded data of each scan (EOI
//!   must follow the last scan; bytes after EOI, which some cameras append, are ignored). The
//!   frame header gives the size, the components and their sampling, and whether the file is
//!   progressive (the decoders then hold every DCT coefficient of the whole image).
//! - PNG: every chunk up to IEND, each one complete; IHDR gives size, bit depth, colour type and
//!   interlacing, and at least one IDAT must come before IEND.
//! - WebP: the RIFF size must be covered by the bytes and every chunk inside it complete.
//!
//! The walk is linear in the input and allocates nothing. Its [`ImageHeader`] feeds the cost
//! model of [`ImageLimits`]: see [`ImageHeader::full_decode_bytes`].

use std::io::Cursor;

use crate::{ImageError, ImageFormat, sniff_format};

/// Bounds on what one image may cost, checked from the header before decoding.
///
/// Defaults (for face photos; all are settings of the model services and the gateway):
/// - `max_pixels` 40 MP: a 12 MP phone photo fits three times.
/// - `max_side` 12 000 px: the long side of a 40 MP 4:3 photo is ~7 300 px, of a 108 MP phone
///   sensor 12 000 px; nothing larger is a portrait.
/// - `max_aspect_ratio` 8 (long side / short side): panoramas and 32:9 screenshots fit, a
///   1 x 40 000 000 "line" (which costs as much to decode as a 40 MP photo and holds no face)
///   does not.
/// - `max_decoded_bytes` 96 MiB: what one decode may hold in memory. A 12 MP 8-bit photo decodes
///   at full resolution (36 MB + its RGB copy); larger or deeper images are decoded at reduced
///   scale (JPEG) or streamed into a smaller buffer (PNG) so that they fit, and refused when
///   neither is possible (WebP, interlaced PNG, progressive JPEG whose coefficients alone exceed
///   it). A service therefore holds at most `workers x max_decoded_bytes` of decoded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width * height` declared by the header.
    pub max_pixels: u64,
    /// Largest width or height declared by the header.
    pub max_side: u32,
    /// Largest long side / short side (e.g. 8 for 8:1).
    pub max_aspect_ratio: u32,
    /// Memory one decode may hold: decoder buffers and the RGB result (see
    /// [`ImageHeader::full_decode_bytes`]).
    pub max_decoded_bytes: u64,
}

impl ImageLimits {
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
    pub const DEFAULT_MAX_SIDE: u32 = 12_000;
    pub const DEFAULT_MAX_ASPECT_RATIO: u32 = 8;
    pub const DEFAULT_MAX_DECODED_BYTES: u64 = 96 << 20;
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_side: Self::DEFAULT_MAX_SIDE,
            max_aspect_ratio: Self::DEFAULT_MAX_ASPECT_RATIO,
            max_decoded_bytes: Self::DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

/// What the container says about an image that passed [`check_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    /// Width and height as stored (before EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the decoder's native output (16-bit RGBA PNG: 8; 8-bit RGB JPEG: 3).
    pub bytes_per_pixel: u32,
    /// Colour components (JPEG; PNG and WebP: the native channel count).
    pub components: u32,
    /// Bytes of DCT coefficients a progressive JPEG decoder keeps for the whole image whatever
    /// the output scale (2 bytes per coefficient, 64 per 8x8 block, every component); 0 otherwise.
    pub coefficient_bytes: u64,
    /// An interlaced (Adam7) PNG, which cannot be streamed row by row.
    pub interlaced: bool,
}

impl ImageHeader {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Peak bytes of a full-resolution decode: the decoder's native buffer, the RGB copy (or the
    /// rotated copy EXIF orientation makes) and, for progressive JPEG, the coefficients.
    pub fn full_decode_bytes(&self) -> u64 {
        self.pixels() * u64::from(self.bytes_per_pixel + 3) + self.coefficient_bytes
    }

    /// Peak bytes of a JPEG decoded at `1 / denominator` scale: one plane per component and the
    /// RGB output at the reduced size, plus the coefficients of a progressive file (not reduced).
    pub fn scaled_jpeg_bytes(&self, denominator: u32) -> u64 {
        let pixels = u64::from(self.width.div_ceil(denominator))
            * u64::from(self.height.div_ceil(denominator));
        pixels * u64::from(self.components + 3) + self.coefficient_bytes
    }

    /// Peak bytes of a PNG streamed into a `1 / factor` RGB buffer: the output, one row of
    /// `u32` sums per output pixel channel, and the decoder's current and previous rows.
    pub fn streamed_png_bytes(&self, factor: u32) -> u64 {
        let out_width = u64::from(self.width.div_ceil(factor));
        let out_height = u64::from(self.height.div_ceil(factor));
        let row = u64::from(self.width) * u64::from(self.bytes_per_pixel);
        out_width * out_height * 3 + out_width * 4 * 4 + 3 * row + (1 << 20)
    }
}

/// Checks the container structure and the size limits from the header alone.
///
/// Refuses with [`ImageError::UnsupportedFormat`], [`ImageError::Truncated`] (premature end,
/// missing end marker), [`ImageError::Corrupt`], [`ImageError::TooLarge`] (pixels or side) or
/// [`ImageError::BadAspectRatio`]. The decoded-bytes budget is not checked here because large
/// JPEG and PNG files can still be decoded at reduced scale: see [`check_budget`] for the
/// refusal that only depends on the header (what the gateway pre-checks).
pub fn check_header(bytes: &[u8], limits: &ImageLimits) -> Result<ImageHeader, ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let (header, too_little_data) = match format {
        ImageFormat::Jpeg => walk_jpeg(bytes)?,
        ImageFormat::Png => (walk_png(bytes)?, None),
        ImageFormat::WebP => (walk_webp(bytes)?, None),
    };
    // Size first: an oversized header is the clearer reason.
    check_size(&header, limits)?;
    match too_little_data {
        Some(error) => Err(error),
        None => Ok(header),
    }
}

/// [`check_header`] plus the decoded-bytes budget: refuses what no decoding strategy can fit
/// in `limits.max_decoded_bytes` (see [`crate::decode`] for the strategies).
pub fn check_budget(bytes: &[u8], limits: &ImageLimits) -> Result<ImageHeader, ImageError> {
    let header = check_header(bytes, limits)?;
    crate::decode::plan(&header, limits, None)?;
    Ok(header)
}

fn check_size(header: &ImageHeader, limits: &ImageLimits) -> Result<(), ImageError> {
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "image header declares an empty {width}x{height} image"
        )));
    }
    if header.pixels() > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    if width.max(height) > limits.max_side {
        return Err(ImageError::SideTooLong {
            width,
            height,
            max_side: limits.max_side,
        });
    }
    let (long, short) = (width.max(height), width.min(height));
    if u64::from(long) > u64::from(short) * u64::from(limits.max_aspect_ratio) {
        return Err(ImageError::BadAspectRatio {
            width,
            height,
            max_ratio: limits.max_aspect_ratio,
        });
    }
    Ok(())
}

fn truncated(what: &str) -> ImageError {
    ImageError::Truncated(what.to_owned())
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The frame header of a JPEG (first SOF segment).
struct JpegFrame {
    width: u32,
    height: u32,
    progressive: bool,
    /// (horizontal, vertical) sampling factor of each component.
    sampling: Vec<(u32, u32)>,
}

impl JpegFrame {
    fn parse(marker: u8, segment: &[u8]) -> Result<Self, ImageError> {
        if segment.len() < 6 {
            return Err(ImageError::Corrupt("short JPEG frame header".into()));
        }
        let height = u32::from(be16(segment, 1));
        let width = u32::from(be16(segment, 3));
        let count = usize::from(segment[5]);
        if count == 0 || segment.len() < 6 + 3 * count {
            return Err(ImageError::Corrupt("bad JPEG component count".into()));
        }
        if height == 0 {
            // The height would come from a DNL marker after the first scan: no decoder we use
            // supports it and the cost could not be known before decoding.
            return Err(ImageError::UnsupportedEncoding(
                "JPEG height defined by a DNL marker".into(),
            ));
        }
        let sampling = (0..count)
            .map(|i| {
                let factors = segment[6 + 3 * i + 1];
                (
                    u32::from(factors >> 4).max(1),
                    u32::from(factors & 15).max(1),
                )
            })
            .collect();
        Ok(Self {
            width,
            height,
            progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
            sampling,
        })
    }

    /// 8x8 blocks over every component, rounded up to whole MCUs as decoders allocate them.
    fn blocks(&self) -> u64 {
        let h_max = self.sampling.iter().map(|s| s.0).max().unwrap_or(1);
        let v_max = self.sampling.iter().map(|s| s.1).max().unwrap_or(1);
        let mcus_x = u64::from(self.width.div_ceil(8 * h_max));
        let mcus_y = u64::from(self.height.div_ceil(8 * v_max));
        self.sampling
            .iter()
            .map(|&(h, v)| mcus_x * u64::from(h) * mcus_y * u64::from(v))
            .sum()
    }
}

/// The header, and the truncation error to report once the size checks pass when the scan data
/// is too short for the declared size.
fn walk_jpeg(bytes: &[u8]) -> Result<(ImageHeader, Option<ImageError>), ImageError> {
    let mut pos = 2; // after SOI
    let mut frame: Option<JpegFrame> = None;
    let mut entropy_bytes: u64 = 0;
    let mut scans = 0u32;
    loop {
        if pos + 2 > bytes.len() {
            return Err(truncated("JPEG ends before its EOI marker"));
        }
        if bytes[pos] != 0xFF {
            return Err(ImageError::Corrupt(format!(
                "expected a JPEG marker at byte {pos}"
            )));
        }
        // Fill bytes (0xFF) may precede a marker.
        while pos + 1 < bytes.len() && bytes[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 2 > bytes.len() {
            return Err(truncated("JPEG ends before its EOI marker"));
        }
        let marker = bytes[pos + 1];
        pos += 2;
        match marker {
            0xD9 => break,
            0xD8 => return Err(ImageError::Corrupt("second SOI marker".into())),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if pos + 2 > bytes.len() {
            return Err(truncated("JPEG segment header cut short"));
        }
        let length = usize::from(be16(bytes, pos));
        if length < 2 {
            return Err(ImageError::Corrupt("JPEG segment length below 2".into()));
        }
        if pos + length > bytes.len() {
            return Err(truncated("JPEG segment cut short"));
        }
        let segment = &bytes[pos + 2..pos + length];
        pos += length;
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) && frame.is_none() => {
                frame = Some(JpegFrame::parse(marker, segment)?);
            }
            0xDA => {
                if frame.is_none() {
                    return Err(ImageError::Corrupt(
                        "JPEG scan before its frame header".into(),
                    ));
                }
                scans += 1;
                let start = pos;
                pos = skip_entropy_coded(bytes, pos)?;
                entropy_bytes += (pos - start) as u64;
            }
            _ => {}
        }
    }
    let Some(frame) = frame else {
        return Err(ImageError::Corrupt("JPEG without a frame header".into()));
    };
    if scans == 0 {
        return Err(truncated("JPEG without scan data"));
    }
    // Every block codes at least one bit (its DC difference) in the first scan of its
    // component: data shorter than that cannot hold the declared size; the rest of the image
    // would be invented by the decoder (grey).
    let blocks = frame.blocks();
    let too_little_data = (entropy_bytes * 8 < blocks).then(|| {
        truncated(&format!(
            "JPEG scan data ({entropy_bytes} bytes) is too short for {}x{} pixels",
            frame.width, frame.height
        ))
    });
    let components = frame.sampling.len() as u32;
    let header = ImageHeader {
        format: ImageFormat::Jpeg,
        width: frame.width,
        height: frame.height,
        // Decoders emit grey as 1 byte, colour as RGB (CMYK is converted from 4 bytes).
        bytes_per_pixel: if components == 1 {
            1
        } else {
            components.max(3)
        },
        components,
        coefficient_bytes: if frame.progressive { blocks * 128 } else { 0 },
        interlaced: false,
    };
    Ok((header, too_little_data))
}

/// Skips entropy-coded data from `pos`; returns the position of the marker that ends it.
fn skip_entropy_coded(bytes: &[u8], mut pos: usize) -> Result<usize, ImageError> {
    loop {
        let Some(offset) = bytes[pos..].iter().position(|&b| b == 0xFF) else {
            return Err(truncated("JPEG ends inside its scan data (no EOI)"));
        };
        let at = pos + offset;
        match bytes.get(at + 1) {
            None => return Err(truncated("JPEG ends inside its scan data (no EOI)")),
            // Stuffed zero, restart marker or fill byte: still inside the scan.
            Some(0x00 | 0xD0..=0xD7) => pos = at + 2,
            Some(0xFF) => pos = at + 1,
            Some(_) => return Ok(at),
        }
    }
}

fn walk_png(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    let mut pos = 8;
    let mut ihdr: Option<(u32, u32, u8, u8, bool)> = None;
    let mut idat_seen = false;
    loop {
        if pos + 8 > bytes.len() {
            return Err(truncated(if idat_seen {
                "PNG ends without its IEND chunk"
            } else {
                "PNG ends before its image data"
            }));
        }
        let length = be32(bytes, pos) as usize;
        if length > 0x7FFF_FFFF {
            return Err(ImageError::Corrupt("PNG chunk length over 2^31".into()));
        }
        let kind = &bytes[pos + 4..pos + 8];
        let end = pos + 12 + length;
        if end > bytes.len() {
            return Err(truncated(&format!(
                "PNG {} chunk cut short",
                String::from_utf8_lossy(kind)
            )));
        }
        let data = &bytes[pos + 8..pos + 8 + length];
        match kind {
            b"IHDR" => {
                if ihdr.is_some() || pos != 8 || length != 13 {
                    return Err(ImageError::Corrupt("misplaced or bad PNG IHDR".into()));
                }
                ihdr = Some((
                    be32(data, 0),
                    be32(data, 4),
                    data[8],
                    data[9],
                    data[12] != 0,
                ));
            }
            _ if ihdr.is_none() => {
                return Err(ImageError::Corrupt("PNG does not start with IHDR".into()));
            }
            b"IDAT" => idat_seen = true,
            b"IEND" => break,
            _ => {}
        }
        pos = end;
    }
    let Some((width, height, bit_depth, colour_type, interlaced)) = ihdr else {
        return Err(ImageError::Corrupt("PNG without IHDR".into()));
    };
    if !idat_seen {
        return Err(truncated("PNG without image data (IDAT)"));
    }
    // The decoders expand palettes (possibly with transparency) and sub-byte depths to 8 bits.
    let channels = match colour_type {
        0 => 1,
        2 => 3,
        3 => 4,
        4 => 2,
        6 => 4,
        other => {
            return Err(ImageError::Corrupt(format!("PNG colour type {other}")));
        }
    };
    let bytes_per_channel = if bit_depth == 16 { 2 } else { 1 };
    Ok(ImageHeader {
        format: ImageFormat::Png,
        width,
        height,
        bytes_per_pixel: channels * bytes_per_channel,
        components: channels,
        coefficient_bytes: 0,
        interlaced,
    })
}

fn walk_webp(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    let riff_end = 8 + le32(bytes, 4) as usize;
    if riff_end > bytes.len() {
        return Err(truncated(&format!(
            "WebP declares {riff_end} bytes, {} present",
            bytes.len()
        )));
    }
    let mut pos = 12;
    while pos < riff_end {
        if pos + 8 > riff_end {
            return Err(truncated("WebP chunk header cut short"));
        }
        let size = le32(bytes, pos + 4) as usize;
        let end = pos + 8 + size + (size & 1);
        // The padding byte of the last chunk is sometimes left out.
        if pos + 8 + size > riff_end {
            return Err(truncated("WebP chunk cut short"));
        }
        pos = end;
    }
    let decoder = crate::decode::guard_panics(|| {
        image::ImageReader::with_format(Cursor::new(&bytes[..riff_end]), image::ImageFormat::WebP)
            .into_decoder()
            .map_err(ImageError::from_image)
    })?;
    use image::ImageDecoder;
    let (width, height) = decoder.dimensions();
    let bytes_per_pixel = u32::from(decoder.color_type().bytes_per_pixel());
    Ok(ImageHeader {
        format: ImageFormat::WebP,
        width,
        height,
        bytes_per_pixel,
        components: bytes_per_pixel,
        coefficient_bytes: 0,
        interlaced: false,
    })
}

#[cfg(test)]
mod tests {
    use image::{ImageEncoder, RgbImage};

    use super::*;
    use crate::testing::png_header_only;
    use crate::{DecodeOptions, decode};

    fn encode_jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(&image, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn with_sof_size(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn a_tall_line_is_refused_by_its_aspect_ratio() {
        let png = png_header_only(1, 39_999_999, 8, 2);
        let limits = ImageLimits {
            max_side: u32::MAX,
            ..ImageLimits::default()
        };
        assert!(matches!(
            check_header(&png, &limits),
            Err(ImageError::BadAspectRatio { max_ratio: 8, .. })
        ));
        // With the default side limit the side is what is over.
        assert!(matches!(
            check_header(&png, &ImageLimits::default()),
            Err(ImageError::SideTooLong { .. })
        ));
    }

    #[test]
    fn sixteen_bit_rgba_counts_eight_bytes_per_pixel_and_is_streamed() {
        let png = png_header_only(6300, 6300, 16, 6);
        let header = check_header(&png, &ImageLimits::default()).unwrap();
        assert_eq!(header.bytes_per_pixel, 8);
        assert_eq!(header.full_decode_bytes(), 6300 * 6300 * 11);
        let plan = crate::decode::plan(&header, &ImageLimits::default(), None).unwrap();
        let crate::decode::Plan::PngStreamed(factor) = plan else {
            panic!("{plan:?}");
        };
        assert!(header.streamed_png_bytes(factor) <= ImageLimits::DEFAULT_MAX_DECODED_BYTES);
        // Interlaced cannot be streamed: refused from the header.
        let mut interlaced = png.clone();
        interlaced[28] = 1;
        assert!(matches!(
            check_budget(&interlaced, &ImageLimits::default()),
            Err(ImageError::OverBudget { .. })
        ));
    }

    #[test]
    fn jpeg_headers_claiming_huge_sizes_are_refused_before_decoding() {
        let small = encode_jpeg(64, 48);
        let claims_6000x6600 = with_sof_size(small.clone(), 6000, 6600);
        assert!(matches!(
            decode(&claims_6000x6600, &DecodeOptions::default()),
            Err(ImageError::Truncated(_))
        ));
        let claims_65500 = with_sof_size(small, 65_500, 65_500);
        assert!(matches!(
            decode(&claims_65500, &DecodeOptions::default()),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_large_progressive_jpeg_is_bounded_by_its_coefficients() {
        // A progressive frame (SOF2) of 7000 x 5000, 3 components at 4:4:4: its coefficients
        // alone (7000 * 5000 * 3 * 2 bytes) exceed the default budget at any output scale.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC2, 0, 17, 8];
        jpeg.extend_from_slice(&5000u16.to_be_bytes());
        jpeg.extend_from_slice(&7000u16.to_be_bytes());
        jpeg.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0]);
        jpeg.extend(std::iter::repeat_n(0x55, 300_000));
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        let header = check_header(&jpeg, &ImageLimits::default()).unwrap();
        assert_eq!(header.coefficient_bytes, 7000 * 5000 * 3 * 2);
        assert!(matches!(
            check_budget(&jpeg, &ImageLimits::default()),
            Err(ImageError::OverBudget { .. })
        ));
    }

    #[test]
    fn cut_files_are_truncated_and_trailing_bytes_after_eoi_are_fine() {
        let jpeg = encode_jpeg(200, 150);
        for percent in [30, 50, 70] {
            let cut = &jpeg[..jpeg.len() * percent / 100];
            assert!(
                matches!(
                    decode(cut, &DecodeOptions::default()),
                    Err(ImageError::Truncated(_))
                ),
                "{percent}%"
            );
        }
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"camera maker trailer \xFF\x00\xFF");
        assert_eq!(
            decode(&trailing, &DecodeOptions::default())
                .unwrap()
                .image
                .dimensions(),
            (200, 150)
        );

        let image = RgbImage::from_pixel(64, 64, image::Rgb([10, 200, 30]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&image, 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        let without_iend = &png[..png.len() - 12];
        assert!(matches!(
            decode(without_iend, &DecodeOptions::default()),
            Err(ImageError::Truncated(_))
        ));
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
        let cut_idat = &png[..idat + 8];
        assert!(matches!(
            decode(cut_idat, &DecodeOptions::default()),
            Err(ImageError::Truncated(_))
        ));

        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .write_image(&image, 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        let cut_webp = &webp[..webp.len() - 5];
        assert!(matches!(
            decode(cut_webp, &DecodeOptions::default()),
            Err(ImageError::Truncated(_))
        ));
    }

    #[test]
    fn a_big_png_is_streamed_within_the_budget_and_keeps_its_content() {
        // 3000 x 2000 RGB with a budget that only fits a reduced copy: left half red, right
        // half blue survive the area averaging.
        let image = RgbImage::from_fn(3000, 2000, |x, _| {
            if x < 1500 {
                image::Rgb([250, 0, 0])
            } else {
                image::Rgb([0, 0, 250])
            }
        });
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&image, 3000, 2000, image::ExtendedColorType::Rgb8)
            .unwrap();
        let options = DecodeOptions {
            limits: ImageLimits {
                max_decoded_bytes: 8 << 20,
                ..ImageLimits::default()
            },
            min_long_side: None,
        };
        let decoded = decode(&png, &options).unwrap();
        assert!(decoded.scale < 1.0);
        assert_eq!((decoded.full_width, decoded.full_height), (3000, 2000));
        let (w, h) = decoded.image.dimensions();
        assert!((w * h * 3) as u64 <= 8 << 20);
        assert_eq!(decoded.image.get_pixel(w / 4, h / 2).0, [250, 0, 0]);
        assert_eq!(decoded.image.get_pixel(3 * w / 4, h / 2).0, [0, 0, 250]);
    }

    #[test]
    fn cancellation_stops_decoding() {
        let jpeg = encode_jpeg(64, 64);
        let cancel = crate::Cancellation::never();
        cancel.cancel();
        assert!(matches!(
            crate::decode_cancellable(&jpeg, &DecodeOptions::default(), &cancel),
            Err(ImageError::Cancelled(_))
        ));
    }
}
