//! Decoding with EXIF orientation and a bounded cost known before any pixel is decoded.
//!
//! [`decode_cancellable`] first runs [`check_header`] (structure complete, pixel count, side and
//! aspect ratio within [`ImageLimits`]), then picks how to decode from the header's cost
//! estimate so that one image never holds more than `max_decoded_bytes`:
//! - full resolution when it fits (and, for JPEG, when `min_long_side` does not ask for less);
//! - JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain (much faster than decoding and resizing),
//!   the largest scale that fits the budget and the smallest that still keeps `min_long_side`;
//! - PNG streamed row by row and area-averaged into a `1/n` RGB buffer (memory: the output, one
//!   row of sums and the decoder's rows);
//! - otherwise (WebP, interlaced PNG, a progressive JPEG whose coefficients alone exceed the
//!   budget) [`ImageError::OverBudget`] before decoding.
//!
//! The input is read through a reader that checks the [`Cancellation`] every 64 KiB, and the
//! PNG stream every row band, so an abandoned request stops decoding within milliseconds (the
//! JPEG decoder `image` uses reads its whole input first: a full-resolution JPEG decode, bounded
//! by the budget, runs to its end).

use std::io::{BufRead, Cursor, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, RgbImage};

use crate::header::{ImageHeader, ImageLimits, check_header};
use crate::{Cancellation, ImageError, ImageFormat};

/// How [`decode`] may treat an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// Bounds checked from the header before decoding (pixels, side, aspect ratio, memory).
    pub limits: ImageLimits,
    /// When set, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT domain) as long as
    /// the long side of the result is still at least this many pixels, and a PNG streamed at
    /// reduced scale (because it is over the budget) is reduced down to this long side. `None`
    /// decodes at full resolution whenever the budget allows.
    pub min_long_side: Option<u32>,
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
    /// Decoded pixels per full-resolution pixel along each axis: 1, 1/2, 1/4, 1/8 (JPEG) or
    /// `1/n` (streamed PNG). `image` is `ceil(full * scale)` pixels on each side.
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

/// [`decode_cancellable`] that is never cancelled (offline tools, tests).
pub fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<Decoded, ImageError> {
    decode_cancellable(bytes, options, &Cancellation::never())
}

/// Decodes a JPEG, PNG or WebP image (format recognised by magic bytes) into upright 8-bit RGB.
///
/// Alpha is dropped, grey and 16-bit images are converted. The header is checked against
/// `options.limits` before decoding, a truncated file is refused ([`ImageError::Truncated`])
/// rather than completed with grey, and `cancel` stops the work with [`ImageError::Cancelled`].
/// Malformed input yields an [`ImageError`], never a panic.
pub fn decode_cancellable(
    bytes: &[u8],
    options: &DecodeOptions,
    cancel: &Cancellation,
) -> Result<Decoded, ImageError> {
    cancel.check()?;
    let header = check_header(bytes, &options.limits)?;
    let plan = plan(&header, &options.limits, options.min_long_side)?;
    let result = guard_panics(|| match plan {
        Plan::Full => decode_full(bytes, &header, &options.limits, cancel),
        Plan::JpegScaled(denominator) => {
            match guard_panics(|| decode_jpeg_scaled(bytes, &header, denominator, options, cancel))
            {
                Ok(Some(decoded)) => Ok(decoded),
                // The full-resolution decoder accepts some files the scaling one refuses (or
                // converts colour models it does not); use it when the budget allows, and if
                // the file is really broken its error is the one reported.
                Ok(None) | Err(ImageError::Corrupt(_) | ImageError::UnsupportedEncoding(_))
                    if header.full_decode_bytes() <= options.limits.max_decoded_bytes =>
                {
                    decode_full(bytes, &header, &options.limits, cancel)
                }
                Ok(None) => Err(over_budget(&header, &options.limits)),
                Err(error) => Err(error),
            }
        }
        Plan::PngStreamed(factor) => decode_png_streamed(bytes, &header, factor, cancel),
    });
    // A reader error raised by the cancellation reaches us as some decoder error.
    match result {
        Err(_) if cancel.is_cancelled() => Err(ImageError::Cancelled(crate::Cancelled)),
        other => other,
    }
}

/// How an image that passed [`check_header`] is decoded within the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Full,
    /// JPEG at `1 / denominator` scale (2, 4 or 8).
    JpegScaled(u32),
    /// PNG streamed into a `1 / factor` buffer.
    PngStreamed(u32),
}

fn over_budget(header: &ImageHeader, limits: &ImageLimits) -> ImageError {
    ImageError::OverBudget {
        width: header.width,
        height: header.height,
        bytes: header.full_decode_bytes(),
        budget: limits.max_decoded_bytes,
    }
}

/// Picks the decoding strategy from the header's cost estimates (see the module docs).
pub(crate) fn plan(
    header: &ImageHeader,
    limits: &ImageLimits,
    min_long_side: Option<u32>,
) -> Result<Plan, ImageError> {
    let budget = limits.max_decoded_bytes;
    let long_side = header.width.max(header.height);
    let fits_full = header.full_decode_bytes() <= budget;
    match header.format {
        ImageFormat::Jpeg => {
            let wanted = min_long_side
                .and_then(|min| {
                    [8u32, 4, 2]
                        .into_iter()
                        .find(|d| long_side.div_ceil(*d) >= min)
                })
                .unwrap_or(1);
            if wanted == 1 && fits_full {
                return Ok(Plan::Full);
            }
            [2u32, 4, 8]
                .into_iter()
                .filter(|d| *d >= wanted)
                .find(|d| header.scaled_jpeg_bytes(*d) <= budget)
                .map(Plan::JpegScaled)
                .ok_or_else(|| over_budget(header, limits))
        }
        ImageFormat::Png if fits_full => Ok(Plan::Full),
        ImageFormat::Png if !header.interlaced => {
            let by_budget = (2..=long_side.max(2))
                .find(|f| header.streamed_png_bytes(*f) <= budget)
                .ok_or_else(|| over_budget(header, limits))?;
            let by_min_side = min_long_side.map_or(1, |min| (long_side / min.max(1)).max(1));
            Ok(Plan::PngStreamed(by_budget.max(by_min_side)))
        }
        ImageFormat::Png | ImageFormat::WebP if fits_full => Ok(Plan::Full),
        ImageFormat::Png | ImageFormat::WebP => Err(over_budget(header, limits)),
    }
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

/// Bytes handed to a decoder per read; the cancellation is checked at each boundary.
const READ_CHUNK: usize = 64 << 10;

/// The input as a reader that fails once the request is cancelled (checked every
/// [`READ_CHUNK`] bytes, so the cost is one clock read per 64 KiB).
struct CancellableReader<'a> {
    inner: Cursor<&'a [u8]>,
    cancel: &'a Cancellation,
}

impl<'a> CancellableReader<'a> {
    fn new(bytes: &'a [u8], cancel: &'a Cancellation) -> Self {
        Self {
            inner: Cursor::new(bytes),
            cancel,
        }
    }

    fn check(&self) -> std::io::Result<()> {
        self.cancel.check().map_err(std::io::Error::other)
    }
}

impl Read for CancellableReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Small reads (a byte, a marker) stay cheap: the clock is read only at chunk
        // boundaries.
        let position = self.inner.position() as usize;
        let to_boundary = READ_CHUNK - position % READ_CHUNK;
        if position.is_multiple_of(READ_CHUNK) {
            self.check()?;
        }
        let len = buf.len().min(to_boundary);
        self.inner.read(&mut buf[..len])
    }
}

impl BufRead for CancellableReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let position = self.inner.position() as usize;
        if position.is_multiple_of(READ_CHUNK) {
            self.check()?;
        }
        let to_boundary = READ_CHUNK - position % READ_CHUNK;
        let rest = self.inner.fill_buf()?;
        Ok(&rest[..rest.len().min(to_boundary)])
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl Seek for CancellableReader<'_> {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(position)
    }
}

/// Memory limits for the `image` decoders: the budget, with the size limits already checked.
fn decoder_limits(limits: &ImageLimits) -> image::Limits {
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_decoded_bytes);
    decoder_limits
}

fn decode_full(
    bytes: &[u8],
    header: &ImageHeader,
    limits: &ImageLimits,
    cancel: &Cancellation,
) -> Result<Decoded, ImageError> {
    let reader = CancellableReader::new(bytes, cancel);
    let mut reader = image::ImageReader::with_format(reader, header.format.to_image_format());
    reader.limits(decoder_limits(limits));
    let mut decoder = reader.into_decoder().map_err(ImageError::from_image)?;
    if decoder.dimensions() != (header.width, header.height) {
        return Err(ImageError::Corrupt(
            "the decoder reads another size than the header declares".into(),
        ));
    }
    // A damaged EXIF block must not make an otherwise good image undecodable: treat it as absent.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let stored = DynamicImage::from_decoder(decoder).map_err(ImageError::from_image)?;
    cancel.check()?;
    Ok(finish(stored.into_rgb8(), header, orientation, 1))
}

/// Applies the orientation and records the geometry. `denominator` is the scale divisor; the
/// full size is the declared one (ceil rounding makes `image * denominator` overshoot).
fn finish(
    stored: RgbImage,
    header: &ImageHeader,
    orientation: Orientation,
    denominator: u32,
) -> Decoded {
    let mut upright = DynamicImage::ImageRgb8(stored);
    upright.apply_orientation(orientation);
    let image = upright.into_rgb8();
    let swapped = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (full_width, full_height) = if swapped {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    Decoded {
        full_width,
        full_height,
        image,
        format: header.format,
        exif_orientation: orientation.to_exif(),
        scale: 1.0 / denominator as f32,
    }
}

/// Decodes a JPEG at `1 / denominator` scale with `jpeg-decoder` (which scales in the DCT
/// domain). Returns `Ok(None)` when the decoder picks another geometry or the colour model
/// (e.g. CMYK) is one only the full decoder converts.
fn decode_jpeg_scaled(
    bytes: &[u8],
    header: &ImageHeader,
    denominator: u32,
    options: &DecodeOptions,
    cancel: &Cancellation,
) -> Result<Option<Decoded>, ImageError> {
    let mut decoder = jpeg_decoder::Decoder::new(CancellableReader::new(bytes, cancel));
    let budget = options.limits.max_decoded_bytes;
    decoder.set_max_decoding_buffer_size(usize::try_from(budget).unwrap_or(usize::MAX));
    // Full size as declared: `scale(u16::MAX, u16::MAX)` keeps scale 1 and reports the frame size
    // without touching `info()` (which panics on frames with 2 components).
    let (width, height) = decoder.scale(u16::MAX, u16::MAX).map_err(map_jpeg_error)?;
    if (u32::from(width), u32::from(height)) != (header.width, header.height) {
        return Err(ImageError::Corrupt(
            "the decoder reads another size than the header declares".into(),
        ));
    }
    let expected = (
        header.width.div_ceil(denominator),
        header.height.div_ceil(denominator),
    );
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
    cancel.check()?;
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
    Ok(Some(finish(stored, header, orientation, denominator)))
}

/// Output rows between two cancellation checks of the PNG stream.
const ROWS_PER_CHECK: u32 = 16;

/// Streams a non-interlaced PNG row by row into a `1 / factor` RGB image, each output pixel
/// the mean of its `factor x factor` block (partial blocks at the right and bottom edges average
/// what they cover). Memory: the output, one row of sums, the decoder's row buffers.
fn decode_png_streamed(
    bytes: &[u8],
    header: &ImageHeader,
    factor: u32,
    cancel: &Cancellation,
) -> Result<Decoded, ImageError> {
    let mut decoder = png::Decoder::new(CancellableReader::new(bytes, cancel));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(map_png_error)?;
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let (colour, _) = reader.output_color_type();
    let channels = colour.samples();
    let (width, height) = (header.width as usize, header.height as usize);
    let step = factor as usize;
    let out_width = width.div_ceil(step);
    let out_height = height.div_ceil(step);
    let mut out = vec![0u8; out_width * out_height * 3];
    let mut sums = vec![0u64; out_width * 3];
    let mut rows_in_band = 0usize;
    let mut out_y = 0usize;
    for y in 0..height {
        let row = reader
            .next_row()
            .map_err(map_png_error)?
            .ok_or_else(|| ImageError::Truncated("PNG image data ends early".into()))?;
        let data = row.data();
        if data.len() < width * channels {
            return Err(ImageError::Corrupt("short PNG row".into()));
        }
        for (block, sum) in sums.chunks_exact_mut(3).enumerate() {
            let start = block * step;
            let end = (start + step).min(width);
            for pixel in data[start * channels..end * channels].chunks_exact(channels) {
                let (r, g, b) = if channels >= 3 {
                    (pixel[0], pixel[1], pixel[2])
                } else {
                    (pixel[0], pixel[0], pixel[0])
                };
                sum[0] += u64::from(r);
                sum[1] += u64::from(g);
                sum[2] += u64::from(b);
            }
        }
        rows_in_band += 1;
        if rows_in_band == step || y + 1 == height {
            let out_row = &mut out[out_y * out_width * 3..(out_y + 1) * out_width * 3];
            for (block, (sum, target)) in sums
                .chunks_exact_mut(3)
                .zip(out_row.chunks_exact_mut(3))
                .enumerate()
            {
                let columns = (step.min(width - block * step)) as u64;
                let count = columns * rows_in_band as u64;
                for (value, total) in target.iter_mut().zip(sum.iter_mut()) {
                    *value = ((*total + count / 2) / count) as u8;
                    *total = 0;
                }
            }
            rows_in_band = 0;
            out_y += 1;
            if (out_y as u32).is_multiple_of(ROWS_PER_CHECK) {
                cancel.check()?;
            }
        }
    }
    reader.finish().map_err(map_png_error)?;
    let stored = RgbImage::from_raw(out_width as u32, out_height as u32, out)
        .ok_or_else(|| ImageError::Corrupt("streamed PNG size mismatch".into()))?;
    Ok(finish(stored, header, orientation, factor))
}

fn map_png_error(error: png::DecodingError) -> ImageError {
    match error {
        png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated("unexpected end of file".to_owned())
        }
        png::DecodingError::LimitsExceeded => {
            ImageError::MemoryLimit("PNG decoder limit".to_owned())
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}

fn map_jpeg_error(error: jpeg_decoder::Error) -> ImageError {
    match error {
        jpeg_decoder::Error::Unsupported(feature) => {
            ImageError::UnsupportedEncoding(format!("{feature:?}"))
        }
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated("unexpected end of file".to_owned())
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fix_png_ihdr_crc, png_chunk};
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
        let mut out = png[..33].to_vec();
        out.extend(png_chunk(b"eXIf", &exif_orientation_block(orientation)));
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
        fix_png_ihdr_crc(&mut huge);
        let options = DecodeOptions {
            limits: ImageLimits {
                max_pixels: 1_000_000,
                ..ImageLimits::default()
            },
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
                limits: ImageLimits {
                    max_pixels: 1_000_000,
                    ..ImageLimits::default()
                },
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
            limits: ImageLimits {
                max_pixels: 100,
                ..ImageLimits::default()
            },
            min_long_side: None,
        };
        assert!(decode(&small, &options).is_ok());
        let options = DecodeOptions {
            limits: ImageLimits {
                max_pixels: 99,
                ..ImageLimits::default()
            },
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
                        Err(ImageError::Truncated(message)) => assert!(!message.is_empty()),
                        // Too short to hold the magic bytes.
                        Err(ImageError::UnsupportedFormat) if cut < 12 => {}
                        other => panic!("cut at {cut}: {other:?}"),
                    }
                }
            }
        }
    }
}
