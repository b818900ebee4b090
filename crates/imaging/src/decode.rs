//! Decoding with EXIF orientation, a pixel limit checked before allocation, decoder memory
//! limits, and reduced-scale (DCT-domain) JPEG decoding for large photos.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};

use crate::{ImageError, ImageFormat, sniff_format};

/// How [`decode`] may treat an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest accepted `width * height` as declared by the header; larger images are refused
    /// with [`ImageError::TooLarge`] before any pixel buffer is allocated.
    pub max_pixels: u64,
    /// When set, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT domain, much faster
    /// than decoding and resizing) as long as the long side of the result is still at least this
    /// many pixels. `None` always decodes at full resolution. PNG and WebP are always decoded at
    /// full resolution.
    pub min_long_side: Option<u32>,
}

impl Default for DecodeOptions {
    /// 40 megapixels (a 12 MP phone photo fits three times), full resolution.
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            min_long_side: None,
        }
    }
}

/// A decoded, upright (EXIF-oriented) image.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The upright pixels, possibly at reduced scale (see `scale`).
    pub image: RgbImage,
    pub format: ImageFormat,
    /// The EXIF orientation tag that was applied (1 = none, 2..=8 as in the EXIF standard).
    pub exif_orientation: u8,
    /// Size of the upright image at full resolution (what a full decode would have produced).
    pub full_width: u32,
    pub full_height: u32,
    /// Decoded pixels per full-resolution pixel along each axis: 1.0, 0.5, 0.25 or 0.125.
    /// `image` is `ceil(full * scale)` pixels on each side.
    pub scale: f32,
}

impl Decoded {
    /// Maps a point in `image` pixel coordinates (pixel centres at integers, as detector outputs
    /// are) to the full-resolution upright image. Each decoded pixel averages a `1/scale` square
    /// block of full-resolution pixels, so centres map as `(x + 0.5) / scale - 0.5`.
    pub fn to_full_resolution(&self, x: f32, y: f32) -> (f32, f32) {
        let inverse = 1.0 / self.scale;
        ((x + 0.5) * inverse - 0.5, (y + 0.5) * inverse - 0.5)
    }
}

/// Decodes a JPEG, PNG or WebP image (format recognised by magic bytes) into upright 8-bit RGB.
///
/// Alpha is dropped, grey and 16-bit images are converted. The declared size is checked against
/// `options.max_pixels` before decoding and every decoder runs with memory limits, so a hostile
/// header cannot make it allocate a huge buffer. Malformed input yields an [`ImageError`], never
/// a panic.
pub fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<Decoded, ImageError> {
    let format = sniff_format(bytes).ok_or(ImageError::UnsupportedFormat)?;
    guard_panics(|| {
        if let (ImageFormat::Jpeg, Some(min_long_side)) = (format, options.min_long_side) {
            match guard_panics(|| decode_jpeg_reduced(bytes, options, min_long_side)) {
                Ok(Some(decoded)) => return Ok(decoded),
                Ok(None) => {}
                Err(too_large @ ImageError::TooLarge { .. }) => return Err(too_large),
                // The full-resolution decoder accepts some files the scaling one refuses (or
                // panics on); if the file is really broken, its error is the one reported.
                Err(_) => {}
            }
        }
        decode_full(bytes, format, options)
    })
}

/// Runs a decoder and turns a panic inside it into [`ImageError::Corrupt`].
///
/// Last line of defence: the third-party decoders are fuzzed upstream and by our own mutation
/// test, but a panic on a hostile upload must never take down the worker thread that serves
/// other requests. (With `panic = "abort"` this guard cannot help; the workspace does not set it.)
pub(crate) fn guard_panics<T>(
    run: impl FnOnce() -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(ImageError::Corrupt(
            "the decoder failed on malformed data".to_owned(),
        ))
    })
}

fn check_pixel_limit(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "image header declares an empty {width}x{height} image"
        )));
    }
    Ok(())
}

/// Memory limits for the `image` decoders: the output buffer of an allowed image at up to
/// 16-bit RGBA (8 bytes per pixel) plus room for the decoders' own working buffers.
fn decoder_limits(max_pixels: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

fn decode_full(
    bytes: &[u8],
    format: ImageFormat,
    options: &DecodeOptions,
) -> Result<Decoded, ImageError> {
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format.to_image_format());
    reader.limits(decoder_limits(options.max_pixels));
    let mut decoder = reader.into_decoder().map_err(ImageError::from_image)?;
    let (width, height) = decoder.dimensions();
    check_pixel_limit(width, height, options.max_pixels)?;
    // A damaged EXIF block must not make an otherwise good image undecodable: treat it as absent.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let stored = DynamicImage::from_decoder(decoder).map_err(ImageError::from_image)?;
    Ok(finish(stored.into_rgb8(), format, orientation, 1))
}

/// Applies the orientation and records the geometry. `denominator` is the DCT scale divisor.
fn finish(
    stored: RgbImage,
    format: ImageFormat,
    orientation: Orientation,
    denominator: u32,
) -> Decoded {
    let mut upright = DynamicImage::ImageRgb8(stored);
    upright.apply_orientation(orientation);
    let image = upright.into_rgb8();
    Decoded {
        full_width: image.width() * denominator,
        full_height: image.height() * denominator,
        image,
        format,
        exif_orientation: orientation.to_exif(),
        scale: 1.0 / denominator as f32,
    }
}

/// Decodes a JPEG at the smallest DCT scale whose long side is still `>= min_long_side`.
/// Returns `Ok(None)` when full resolution is needed anyway or the colour model (e.g. CMYK) is
/// one only the full decoder converts; the caller then decodes at full resolution.
fn decode_jpeg_reduced(
    bytes: &[u8],
    options: &DecodeOptions,
    min_long_side: u32,
) -> Result<Option<Decoded>, ImageError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let bytes_limit = options.max_pixels.saturating_mul(4);
    decoder.set_max_decoding_buffer_size(usize::try_from(bytes_limit).unwrap_or(usize::MAX));
    // Full size as declared: `scale(u16::MAX, u16::MAX)` keeps scale 1 and reports the frame size
    // without touching `info()` (which panics on frames with 2 components).
    let (width, height) = decoder.scale(u16::MAX, u16::MAX).map_err(map_jpeg_error)?;
    let (width, height) = (u32::from(width), u32::from(height));
    check_pixel_limit(width, height, options.max_pixels)?;

    let long_side = width.max(height);
    let Some(denominator) = [8u32, 4, 2]
        .into_iter()
        .find(|d| long_side.div_ceil(*d) >= min_long_side)
    else {
        return Ok(None);
    };
    let expected = (width.div_ceil(denominator), height.div_ceil(denominator));
    let requested = (
        u16::try_from(expected.0).unwrap_or(u16::MAX),
        u16::try_from(expected.1).unwrap_or(u16::MAX),
    );
    let (out_width, out_height) = decoder
        .scale(requested.0, requested.1)
        .map_err(map_jpeg_error)?;
    let out = (u32::from(out_width), u32::from(out_height));
    if out != expected {
        // The decoder chose another scale than ours: never guess the geometry.
        return Ok(None);
    }
    let pixels = decoder.decode().map_err(map_jpeg_error)?;
    let count = (out.0 as usize) * (out.1 as usize);
    let stored = if pixels.len() == count * 3 {
        RgbImage::from_raw(out.0, out.1, pixels)
    } else if pixels.len() == count {
        RgbImage::from_raw(
            out.0,
            out.1,
            pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        )
    } else {
        None
    };
    let Some(stored) = stored else {
        return Ok(None);
    };
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let mut decoded = finish(stored, ImageFormat::Jpeg, orientation, denominator);
    // Full size is the declared size (ceil rounding makes image * denominator overshoot).
    let swapped = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    (decoded.full_width, decoded.full_height) = if swapped {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Some(decoded))
}

fn map_jpeg_error(error: jpeg_decoder::Error) -> ImageError {
    match error {
        jpeg_decoder::Error::Unsupported(feature) => {
            ImageError::UnsupportedEncoding(format!("{feature:?}"))
        }
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt("unexpected end of file".to_owned())
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    /// A minimal little-endian TIFF block holding only the orientation tag.
    fn exif_orientation_block(orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD right after the header
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes()); // count
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        tiff
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn encode_png(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image,
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode png");
        out
    }

    fn encode_jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(
                image,
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode jpeg");
        out
    }

    fn encode_webp(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(
                image,
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode webp");
        out
    }

    /// Inserts an `eXIf` chunk right after IHDR (8-byte signature + 25-byte IHDR chunk).
    fn png_with_exif(png: &[u8], orientation: u16) -> Vec<u8> {
        let data = exif_orientation_block(orientation);
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        let mut typed = b"eXIf".to_vec();
        typed.extend_from_slice(&data);
        chunk.extend_from_slice(&typed);
        chunk.extend_from_slice(&crc32(&typed).to_be_bytes());
        let mut out = png[..33].to_vec();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&png[33..]);
        out
    }

    /// Inserts an APP1 `Exif` segment right after SOI.
    fn jpeg_with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&exif_orientation_block(orientation));
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// Rewrites a simple lossless WebP as an extended one (VP8X + image + EXIF chunk).
    fn webp_with_exif(webp: &[u8], width: u32, height: u32, orientation: u16) -> Vec<u8> {
        let image_chunk = &webp[12..];
        let mut vp8x = b"VP8X".to_vec();
        vp8x.extend_from_slice(&10u32.to_le_bytes());
        vp8x.extend_from_slice(&[0x08, 0, 0, 0]); // EXIF present
        vp8x.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        let data = exif_orientation_block(orientation);
        let mut exif = b"EXIF".to_vec();
        exif.extend_from_slice(&(data.len() as u32).to_le_bytes());
        exif.extend_from_slice(&data);
        if data.len() % 2 == 1 {
            exif.push(0);
        }
        let body_len = 4 + vp8x.len() + image_chunk.len() + exif.len();
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend_from_slice(&vp8x);
        out.extend_from_slice(image_chunk);
        out.extend_from_slice(&exif);
        out
    }

    /// Where stored pixel `(x, y)` of a `w x h` image lands in the upright image, written out
    /// from the EXIF specification independently of the decoder's implementation.
    fn upright_position(orientation: u16, x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
        match orientation {
            1 => (x, y),
            2 => (w - 1 - x, y),         // mirrored horizontally
            3 => (w - 1 - x, h - 1 - y), // rotated 180
            4 => (x, h - 1 - y),         // mirrored vertically
            5 => (y, x),                 // transposed
            6 => (h - 1 - y, x),         // rotated 90 clockwise
            7 => (h - 1 - y, w - 1 - x), // transversed
            8 => (y, w - 1 - x),         // rotated 90 counter-clockwise
            _ => unreachable!(),
        }
    }

    /// Six clearly different colours for a 3x2 grid.
    fn grid_colour(x: u32, y: u32) -> Rgb<u8> {
        const COLOURS: [[u8; 3]; 6] = [
            [230, 20, 20],
            [20, 230, 20],
            [20, 20, 230],
            [230, 230, 20],
            [20, 230, 230],
            [230, 20, 230],
        ];
        Rgb(COLOURS[(y * 3 + x) as usize])
    }

    fn close(a: Rgb<u8>, b: Rgb<u8>, tolerance: u8) -> bool {
        a.0.iter().zip(b.0).all(|(p, q)| p.abs_diff(q) <= tolerance)
    }

    #[test]
    fn png_and_webp_orientations_move_every_pixel_exactly() {
        let stored = RgbImage::from_fn(3, 2, grid_colour);
        let png = encode_png(&stored);
        let webp = encode_webp(&stored);
        for orientation in 1..=8u16 {
            for (name, bytes) in [
                ("png", png_with_exif(&png, orientation)),
                ("webp", webp_with_exif(&webp, 3, 2, orientation)),
            ] {
                let decoded = decode(&bytes, &DecodeOptions::default()).expect(name);
                assert_eq!(decoded.exif_orientation, orientation as u8, "{name}");
                let swapped = orientation >= 5;
                let expected_size = if swapped { (2, 3) } else { (3, 2) };
                assert_eq!(
                    decoded.image.dimensions(),
                    expected_size,
                    "{name} {orientation}"
                );
                assert_eq!((decoded.full_width, decoded.full_height), expected_size);
                assert_eq!(decoded.scale, 1.0);
                for (x, y, pixel) in stored.enumerate_pixels() {
                    let (ux, uy) = upright_position(orientation, x, y, 3, 2);
                    assert_eq!(
                        decoded.image.get_pixel(ux, uy),
                        pixel,
                        "{name} {orientation}"
                    );
                }
            }
        }
    }

    #[test]
    fn jpeg_orientations_move_every_block_at_full_and_reduced_scale() {
        // 3x2 grid of 16x16 blocks (one MCU each) so JPEG loss stays inside each block.
        const BLOCK: u32 = 16;
        let stored = RgbImage::from_fn(3 * BLOCK, 2 * BLOCK, |x, y| {
            grid_colour(x / BLOCK, y / BLOCK)
        });
        let jpeg = encode_jpeg(&stored);
        for orientation in 1..=8u16 {
            let bytes = jpeg_with_exif(&jpeg, orientation);
            for (min_long_side, denominator) in
                [(None, 1u32), (Some(6), 8), (Some(12), 4), (Some(13), 2)]
            {
                let options = DecodeOptions {
                    min_long_side,
                    ..DecodeOptions::default()
                };
                let decoded = decode(&bytes, &options).expect("jpeg decodes");
                assert_eq!(decoded.exif_orientation, orientation as u8);
                assert_eq!(decoded.scale, 1.0 / denominator as f32);
                let swapped = orientation >= 5;
                let full = if swapped { (32, 48) } else { (48, 32) };
                assert_eq!((decoded.full_width, decoded.full_height), full);
                assert_eq!(
                    decoded.image.dimensions(),
                    (full.0 / denominator, full.1 / denominator)
                );
                let block = BLOCK / denominator;
                for gy in 0..2 {
                    for gx in 0..3 {
                        let (ux, uy) = upright_position(orientation, gx, gy, 3, 2);
                        let centre = decoded
                            .image
                            .get_pixel(ux * block + block / 2, uy * block + block / 2);
                        assert!(
                            close(*centre, grid_colour(gx, gy), 40),
                            "orientation {orientation}, scale 1/{denominator}: block ({gx},{gy}) is {centre:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reduced_jpeg_reports_geometry_for_mapping_back() {
        let stored = RgbImage::from_fn(100, 60, |x, y| Rgb([x as u8, y as u8, 128]));
        let bytes = jpeg_with_exif(&encode_jpeg(&stored), 6);
        let options = DecodeOptions {
            min_long_side: Some(20),
            ..DecodeOptions::default()
        };
        let decoded = decode(&bytes, &options).expect("decodes");
        // ceil(100 / 8) = 13 < 20, ceil(100 / 4) = 25 >= 20: quarter scale, rotated.
        assert_eq!(decoded.image.dimensions(), (15, 25));
        assert_eq!((decoded.full_width, decoded.full_height), (60, 100));
        assert_eq!(decoded.scale, 0.25);
        assert_eq!(decoded.to_full_resolution(0.0, 0.0), (1.5, 1.5));
        assert_eq!(decoded.to_full_resolution(14.5, 24.5), (59.5, 99.5));
        // A target above the full size keeps full resolution.
        let options = DecodeOptions {
            min_long_side: Some(101),
            ..DecodeOptions::default()
        };
        let decoded = decode(&bytes, &options).expect("decodes");
        assert_eq!(
            (decoded.image.dimensions(), decoded.scale),
            ((60, 100), 1.0)
        );
    }

    #[test]
    fn grey_alpha_and_sixteen_bit_inputs_become_rgb() {
        let grey = image::GrayImage::from_fn(4, 3, |x, _| image::Luma([x as u8 * 60]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&grey, 4, 3, image::ExtendedColorType::L8)
            .expect("encode");
        let decoded = decode(&png, &DecodeOptions::default()).expect("decodes");
        assert_eq!(decoded.image.get_pixel(2, 1).0, [120, 120, 120]);

        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([1, 2, 3, 0]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgba, 2, 2, image::ExtendedColorType::Rgba8)
            .expect("encode");
        let decoded = decode(&png, &DecodeOptions::default()).expect("decodes");
        assert_eq!(decoded.image.get_pixel(1, 1).0, [1, 2, 3]);
    }

    #[test]
    fn declared_size_over_the_limit_is_refused_before_decoding() {
        // PNG header claiming 100000 x 100000 over the tiny IDAT of a 1x1 image: a bomb.
        let png = encode_png(&RgbImage::new(1, 1));
        let mut huge = png.clone();
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&huge[12..29]);
        huge[29..33].copy_from_slice(&crc.to_be_bytes());
        let options = DecodeOptions {
            max_pixels: 1_000_000,
            min_long_side: None,
        };
        match decode(&huge, &options) {
            Err(ImageError::TooLarge {
                width: 100_000,
                height: 100_000,
                max_pixels: 1_000_000,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }

        // JPEG whose SOF claims 60000 x 60000, through both JPEG paths.
        let mut jpeg = encode_jpeg(&RgbImage::new(8, 8));
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF");
        jpeg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        for min_long_side in [None, Some(100)] {
            let options = DecodeOptions {
                max_pixels: 1_000_000,
                min_long_side,
            };
            assert!(
                matches!(
                    decode(&jpeg, &options),
                    Err(ImageError::TooLarge { width: 60_000, .. })
                ),
                "{min_long_side:?}"
            );
        }
        // At exactly the limit the image is accepted.
        let small = encode_png(&RgbImage::new(10, 10));
        let options = DecodeOptions {
            max_pixels: 100,
            min_long_side: None,
        };
        assert!(decode(&small, &options).is_ok());
        let options = DecodeOptions {
            max_pixels: 99,
            min_long_side: None,
        };
        assert!(matches!(
            decode(&small, &options),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let options = DecodeOptions::default();
        assert!(matches!(
            decode(b"", &options),
            Err(ImageError::UnsupportedFormat)
        ));
        assert!(matches!(
            decode(b"GIF89a....", &options),
            Err(ImageError::UnsupportedFormat)
        ));
        let jpeg = encode_jpeg(&RgbImage::new(32, 32));
        let png = encode_png(&RgbImage::new(32, 32));
        let webp = encode_webp(&RgbImage::new(32, 32));
        for bytes in [&jpeg, &png, &webp] {
            for cut in [3, 12, 20, bytes.len() / 2, bytes.len() - 1] {
                let truncated = &bytes[..cut.min(bytes.len() - 1)];
                for min_long_side in [None, Some(4)] {
                    let options = DecodeOptions {
                        min_long_side,
                        ..options
                    };
                    match decode(truncated, &options) {
                        Err(ImageError::Corrupt(message)) => assert!(!message.is_empty()),
                        // Too short to hold the magic bytes.
                        Err(ImageError::UnsupportedFormat) if cut < 12 => {}
                        // A JPEG cut after its scan data may still decode (missing EOI is
                        // tolerated); what matters is that nothing panics.
                        Ok(_) => {}
                        other => panic!("cut at {cut}: {other:?}"),
                    }
                }
            }
        }
    }
}
