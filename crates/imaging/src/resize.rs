//! Resizing with OpenCV semantics: `INTER_AREA` for downscaling (the detector's input was made
//! with it) and `INTER_LINEAR` (fixed-point, as OpenCV computes it for 8-bit images).
//!
//! Reference: OpenCV `modules/imgproc/src/resize.cpp` (`resizeAreaFast_`, `resizeArea_`,
//! `computeResizeAreaTab`, `resizeGeneric_` with `HResizeLinear`/`VResizeLinear`).

use image::RgbImage;

const CHANNELS: usize = 3;

/// Downscales with OpenCV `INTER_AREA` semantics: each output pixel is the exact average of the
/// source area it covers, with fractional weights at the edges for non-integer ratios (integer
/// ratios take a faster integer path, bit-identical to OpenCV's).
///
/// Enlarging along either axis falls back to [`resize_bilinear`]. A zero target size gives an
/// empty image; an empty source gives a black image of the target size.
pub fn resize_area(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_width, src_height) = image.dimensions();
    if width == 0 || height == 0 || src_width == 0 || src_height == 0 {
        return RgbImage::new(width, height);
    }
    if (width, height) == (src_width, src_height) {
        return image.clone();
    }
    if width > src_width || height > src_height {
        return resize_bilinear(image, width, height);
    }
    // OpenCV computes the ratio as 1 / (dst / src) in double precision; do the same so the
    // integer test and the area tables agree with it.
    let scale_x = 1.0 / (f64::from(width) / f64::from(src_width));
    let scale_y = 1.0 / (f64::from(height) / f64::from(src_height));
    let integer_x = scale_x.round();
    let integer_y = scale_y.round();
    if (scale_x - integer_x).abs() < f64::EPSILON && (scale_y - integer_y).abs() < f64::EPSILON {
        area_integer(image, width, height, integer_x as u32, integer_y as u32)
    } else {
        area_fractional(image, width, height, scale_x, scale_y)
    }
}

/// Integer ratios: plain box sums. OpenCV rounds `(sum + 2) >> 2` for 2x2 boxes (its SIMD path)
/// and `cvRound(sum * (1.0f / area))` otherwise.
fn area_integer(image: &RgbImage, width: u32, height: u32, kx: u32, ky: u32) -> RgbImage {
    let src = image.as_raw();
    let src_stride = image.width() as usize * CHANNELS;
    let (width, kx, ky) = (width as usize, kx as usize, ky as usize);
    let row_len = width * CHANNELS;
    let mut out = vec![0u8; row_len * height as usize];
    let mut sums = vec![0u32; row_len];
    let inverse_area = 1.0f32 / (kx * ky) as f32;
    for (dy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        sums.fill(0);
        for sy in dy * ky..(dy + 1) * ky {
            let src_row = &src[sy * src_stride..(sy + 1) * src_stride];
            if kx == 2 {
                for (sum, pair) in sums.chunks_exact_mut(3).zip(src_row.chunks_exact(6)) {
                    sum[0] += u32::from(pair[0]) + u32::from(pair[3]);
                    sum[1] += u32::from(pair[1]) + u32::from(pair[4]);
                    sum[2] += u32::from(pair[2]) + u32::from(pair[5]);
                }
            } else {
                for (sum, block) in sums
                    .chunks_exact_mut(3)
                    .zip(src_row.chunks_exact(kx * CHANNELS))
                {
                    for pixel in block.chunks_exact(3) {
                        sum[0] += u32::from(pixel[0]);
                        sum[1] += u32::from(pixel[1]);
                        sum[2] += u32::from(pixel[2]);
                    }
                }
            }
        }
        if kx == 2 && ky == 2 {
            for (o, &s) in out_row.iter_mut().zip(&sums) {
                *o = ((s + 2) >> 2) as u8;
            }
        } else {
            for (o, &s) in out_row.iter_mut().zip(&sums) {
                *o = saturate_u8(s as f32 * inverse_area);
            }
        }
    }
    RgbImage::from_raw(width as u32, height, out).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// One source index with its weight towards an output index.
#[derive(Clone, Copy)]
struct AreaWeight {
    dst: usize,
    src: usize,
    alpha: f32,
}

/// `computeResizeAreaTab`: the source cells covering each output cell, with the fraction of each.
fn area_table(src_size: usize, dst_size: usize, scale: f64) -> Vec<AreaWeight> {
    let mut table = Vec::with_capacity(src_size + dst_size * 2);
    for dst in 0..dst_size {
        let start = dst as f64 * scale;
        let end = start + scale;
        let cell = scale.min(src_size as f64 - start);
        let mut first = start.ceil() as i64;
        let last = (end.floor() as i64).min(src_size as i64 - 1);
        first = first.min(last);
        if first as f64 - start > 1e-3 {
            table.push(AreaWeight {
                dst,
                src: (first - 1).max(0) as usize,
                alpha: ((first as f64 - start) / cell) as f32,
            });
        }
        for src in first.max(0)..last.max(0) {
            table.push(AreaWeight {
                dst,
                src: src as usize,
                alpha: (1.0 / cell) as f32,
            });
        }
        if end - last as f64 > 1e-3 {
            table.push(AreaWeight {
                dst,
                src: last.max(0) as usize,
                alpha: ((end - last as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    table
}

/// Output column `dst` takes source pixels `first..first + weights.len()`.
struct ColumnSpan {
    first: usize,
    weights: std::ops::Range<usize>,
}

/// Fractional ratios: `resizeArea_`, with the same float operation order as OpenCV (so results
/// agree except where a sum lands within float error of a .5 rounding tie).
fn area_fractional(
    image: &RgbImage,
    width: u32,
    height: u32,
    scale_x: f64,
    scale_y: f64,
) -> RgbImage {
    let src = image.as_raw();
    let (src_width, src_height) = (image.width() as usize, image.height() as usize);
    let src_stride = src_width * CHANNELS;
    let (width, height) = (width as usize, height as usize);
    let row_len = width * CHANNELS;

    // Columns: contiguous spans, weights stored flat, in table order.
    let x_table = area_table(src_width, width, scale_x);
    let mut spans: Vec<ColumnSpan> = Vec::with_capacity(width);
    let mut x_weights: Vec<f32> = Vec::with_capacity(x_table.len());
    for entry in &x_table {
        let same_column = entry.dst + 1 == spans.len();
        match spans.last_mut() {
            Some(span) if same_column => span.weights.end += 1,
            _ => spans.push(ColumnSpan {
                first: entry.src,
                weights: x_weights.len()..x_weights.len() + 1,
            }),
        }
        x_weights.push(entry.alpha);
    }
    let y_table = area_table(src_height, height, scale_y);

    let mut out = vec![0u8; row_len * height];
    let mut row_buf = vec![0f32; row_len];
    let mut sums = vec![0f32; row_len];
    let mut previous_dy: Option<usize> = None;
    let mut buffered_row: Option<usize> = None;
    for entry in &y_table {
        // A source row straddling two output rows appears twice in a row: filter it once.
        if buffered_row != Some(entry.src) {
            horizontal_area(src, src_stride, entry.src, &spans, &x_weights, &mut row_buf);
            buffered_row = Some(entry.src);
        }
        let beta = entry.alpha;
        match previous_dy {
            Some(dy) if dy == entry.dst => {
                for (sum, &value) in sums.iter_mut().zip(&row_buf) {
                    *sum += beta * value;
                }
            }
            _ => {
                if let Some(dy) = previous_dy {
                    write_row(&mut out[dy * row_len..(dy + 1) * row_len], &sums);
                }
                for (sum, &value) in sums.iter_mut().zip(&row_buf) {
                    *sum = beta * value;
                }
                previous_dy = Some(entry.dst);
            }
        }
    }
    if let Some(dy) = previous_dy {
        write_row(&mut out[dy * row_len..(dy + 1) * row_len], &sums);
    }
    RgbImage::from_raw(width as u32, height as u32, out).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// One source row filtered horizontally: `buf[dx] = sum(S[sx] * alpha)` in table order.
fn horizontal_area(
    src: &[u8],
    src_stride: usize,
    row: usize,
    spans: &[ColumnSpan],
    x_weights: &[f32],
    buf: &mut [f32],
) {
    let src_row = &src[row * src_stride..(row + 1) * src_stride];
    for (span, out) in spans.iter().zip(buf.chunks_exact_mut(3)) {
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        let pixels = &src_row[span.first * CHANNELS..];
        for (pixel, &alpha) in pixels.chunks_exact(3).zip(&x_weights[span.weights.clone()]) {
            r += f32::from(pixel[0]) * alpha;
            g += f32::from(pixel[1]) * alpha;
            b += f32::from(pixel[2]) * alpha;
        }
        out.copy_from_slice(&[r, g, b]);
    }
}

fn write_row(out: &mut [u8], sums: &[f32]) {
    for (o, &s) in out.iter_mut().zip(sums) {
        *o = saturate_u8(s);
    }
}

/// OpenCV `saturate_cast<uchar>(float)`: round half to even, clamp to 0..=255.
fn saturate_u8(value: f32) -> u8 {
    value.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Fixed-point precision of OpenCV's linear resize coefficients (`INTER_RESIZE_COEF_BITS`).
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Source index and fixed-point weights `(1 - f, f)` for each output coordinate, as OpenCV
/// computes them. Columns outside the source are clamped with weight `(1, 0)` (`clamp_edges`);
/// rows keep their weights and only the row indices are clamped when used, as in OpenCV, which
/// matters for bit parity because the vertical pass rounds each product separately.
fn linear_coefficients(
    src_size: usize,
    dst_size: usize,
    clamp_edges: bool,
) -> Vec<(i64, [i32; 2])> {
    let scale = 1.0 / (dst_size as f64 / src_size as f64);
    (0..dst_size)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if clamp_edges && s < 0 {
                s = 0;
                frac = 0.0;
            }
            if clamp_edges && s >= src_size as i64 - 1 {
                s = src_size as i64 - 1;
                frac = 0.0;
            }
            let w0 = ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32;
            let w1 = (frac * COEF_SCALE).round_ties_even() as i32;
            (s, [w0, w1])
        })
        .collect()
}

/// Resizes with OpenCV `INTER_LINEAR` semantics (half-pixel centres, edge pixels replicated,
/// 11-bit fixed-point weights as OpenCV uses for 8-bit images). What the anti-spoofing reference
/// (`cv2.resize` default) uses for its crops. Zero or empty sizes behave as in [`resize_area`].
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_width, src_height) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 || src_width == 0 || src_height == 0 {
        return RgbImage::new(width, height);
    }
    let src = image.as_raw();
    let src_stride = src_width * CHANNELS;
    let (width, height) = (width as usize, height as usize);
    let row_len = width * CHANNELS;
    let xs = linear_coefficients(src_width, width, true);
    let ys = linear_coefficients(src_height, height, false);
    let clamp_row = |row: i64| row.clamp(0, src_height as i64 - 1) as usize;

    let horizontal = |row: usize, buf: &mut [i32]| {
        let src_row = &src[row * src_stride..(row + 1) * src_stride];
        for (&(sx, [a0, a1]), out) in xs.iter().zip(buf.chunks_exact_mut(3)) {
            let left_index = sx as usize * CHANNELS;
            let right_index = (sx as usize + 1).min(src_width - 1) * CHANNELS;
            let left = &src_row[left_index..left_index + 3];
            let right = &src_row[right_index..right_index + 3];
            for c in 0..3 {
                out[c] = i32::from(left[c]) * a0 + i32::from(right[c]) * a1;
            }
        }
    };
    // Horizontally filtered rows for the two source rows of the current output row, reused
    // while consecutive output rows share them.
    let mut top = vec![0i32; row_len];
    let mut bottom = vec![0i32; row_len];
    let (mut top_row, mut bottom_row) = (usize::MAX, usize::MAX);
    let mut out = vec![0u8; row_len * height];
    for (&(sy, [b0, b1]), out_row) in ys.iter().zip(out.chunks_exact_mut(row_len)) {
        let (first, second) = (clamp_row(sy), clamp_row(sy + 1));
        if top_row != first {
            if bottom_row == first {
                std::mem::swap(&mut top, &mut bottom);
                bottom_row = usize::MAX;
            } else {
                horizontal(first, &mut top);
            }
            top_row = first;
        }
        if bottom_row != second {
            horizontal(second, &mut bottom);
            bottom_row = second;
        }
        vertical_linear(&top, &bottom, b0, b1, out_row);
    }
    RgbImage::from_raw(width as u32, height as u32, out).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// OpenCV's `VResizeLinearVec_32s8u` arithmetic (its SIMD path, used for whole 16-byte lanes)
/// and `FixedPtCast<int, uchar, 22>` for the remainder of the row.
fn vertical_linear(top: &[i32], bottom: &[i32], b0: i32, b1: i32, out: &mut [u8]) {
    let vector_len = out.len() / 16 * 16;
    let mul_hi = |a: i32, b: i32| ((a >> 4) as i16 as i32 * b) >> 16;
    for ((o, &s0), &s1) in out[..vector_len].iter_mut().zip(top).zip(bottom) {
        let value = (mul_hi(s0, b0) + mul_hi(s1, b1) + 2) >> 2;
        *o = value.clamp(0, 255) as u8;
    }
    for ((o, &s0), &s1) in out[vector_len..]
        .iter_mut()
        .zip(&top[vector_len..])
        .zip(&bottom[vector_len..])
    {
        let value = (s0 * b0 + s1 * b1 + (1 << 21)) >> 22;
        *o = value.clamp(0, 255) as u8;
    }
}
