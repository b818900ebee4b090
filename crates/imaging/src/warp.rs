//! Affine warps with OpenCV `warpAffine` semantics and the similarity transform used to align
//! five facial landmarks to the ArcFace/SFace 112x112 template.
//!
//! Reference: OpenCV `modules/imgproc/src/imgwarp.cpp` (`WarpAffineInvoker`, `remapBilinear`):
//! source coordinates in 1/32-pixel fixed point, bilinear weights in 1/32768 units.

use image::RgbImage;

/// The standard 5-point template of 112x112 face crops (right eye, left eye, nose tip, right and
/// left mouth corners, in the order YuNet reports them).
pub const ARCFACE_TEMPLATE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Warps `image` into an `out_width x out_height` image with OpenCV `warpAffine` semantics:
/// `matrix` maps source to destination coordinates (it is inverted here), sampling is bilinear
/// and pixels outside the source read as black (constant border 0).
///
/// The arithmetic follows OpenCV 4.11+/5 (which made the golden crops): the inverse matrix in
/// `f32`, source coordinates in `f32`, exact bilinear weights, rounding half to even. Measured
/// against it: at most 1 level apart on a handful of pixels (float evaluation order).
/// A singular matrix gives a black image.
pub fn warp_affine_bilinear(
    image: &RgbImage,
    matrix: [[f32; 3]; 2],
    out_width: u32,
    out_height: u32,
) -> RgbImage {
    let mut out = RgbImage::new(out_width, out_height);
    let Some(inverse) = invert_affine(matrix) else {
        return out;
    };
    let (src_width, src_height) = (i64::from(image.width()), i64::from(image.height()));
    if src_width == 0 || src_height == 0 || out_width == 0 {
        return out;
    }
    let src = image.as_raw();
    let stride = src_width as usize * 3;
    let [[m0, m1, m2], [m3, m4, m5]] = inverse.map(|row| row.map(|v| v as f32));
    let pixel = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= src_width || y >= src_height {
            return [0.0; 3];
        }
        let at = y as usize * stride + x as usize * 3;
        [
            f32::from(src[at]),
            f32::from(src[at + 1]),
            f32::from(src[at + 2]),
        ]
    };
    let out_stride = out_width as usize * 3;
    let raw: &mut [u8] = &mut out;
    for (y, out_row) in raw.chunks_exact_mut(out_stride).enumerate() {
        let y = y as f32;
        let (row_x, row_y) = (m1 * y + m2, m4 * y + m5);
        for (x, target) in out_row.chunks_exact_mut(3).enumerate() {
            let x = x as f32;
            let (sx, sy) = (m0 * x + row_x, m3 * x + row_y);
            if !(sx.is_finite() && sy.is_finite()) {
                continue;
            }
            let (fx, fy) = (sx.floor(), sy.floor());
            let (ix, iy) = (fx as i64, fy as i64);
            if ix >= src_width || ix + 1 < 0 || iy >= src_height || iy + 1 < 0 {
                continue; // entirely outside: border value 0
            }
            let (a, b) = (sx - fx, sy - fy);
            let (p00, p01) = (pixel(ix, iy), pixel(ix + 1, iy));
            let (p10, p11) = (pixel(ix, iy + 1), pixel(ix + 1, iy + 1));
            for c in 0..3 {
                let top = p00[c] * (1.0 - a) + p01[c] * a;
                let bottom = p10[c] * (1.0 - a) + p11[c] * a;
                let value = top * (1.0 - b) + bottom * b;
                target[c] = value.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `invertAffineTransform` in double precision; `None` for a singular or non-finite matrix.
fn invert_affine(matrix: [[f32; 3]; 2]) -> Option<[[f64; 3]; 2]> {
    let [[a, b, c], [d, e, f]] = matrix.map(|row| row.map(f64::from));
    let det = a * e - b * d;
    if det == 0.0 || !det.is_finite() || ![c, f].iter().all(|v| v.is_finite()) {
        return None;
    }
    let inv = 1.0 / det;
    let (a11, a22, a12, a21) = (e * inv, a * inv, -b * inv, -d * inv);
    let b1 = -a11 * c - a12 * f;
    let b2 = -a21 * c - a22 * f;
    Some([[a11, a12, b1], [a21, a22, b2]])
}

/// Least-squares similarity transform (rotation, uniform scale, translation; no reflection)
/// mapping `src` points onto `dst` points, as a 2x3 matrix for [`warp_affine_bilinear`].
///
/// This is Umeyama's method (as in scikit-image's `SimilarityTransform.estimate`), in its
/// closed 2-D form. `None` when the slices differ in length, hold fewer than two points, contain
/// non-finite values, or all source points coincide.
pub fn estimate_similarity(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<[[f32; 3]; 2]> {
    if src.len() != dst.len() || src.len() < 2 {
        return None;
    }
    let n = src.len() as f64;
    let to_f64 = |p: &[f32; 2]| [f64::from(p[0]), f64::from(p[1])];
    let mean = |points: &[[f32; 2]]| {
        let sum = points
            .iter()
            .map(to_f64)
            .fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]);
        [sum[0] / n, sum[1] / n]
    };
    let (src_mean, dst_mean) = (mean(src), mean(dst));
    // With centred points s and d: a = sum(s . d), b = sum(s x d), var = sum |s|^2. The optimal
    // rotation angle is atan2(b, a) and the scale sqrt(a^2 + b^2) / var, which equals Umeyama's
    // SVD solution with its reflection correction.
    let (mut a, mut b, mut variance) = (0.0f64, 0.0f64, 0.0f64);
    for (s, d) in src.iter().zip(dst) {
        let s = to_f64(s);
        let d = to_f64(d);
        let (sx, sy) = (s[0] - src_mean[0], s[1] - src_mean[1]);
        let (dx, dy) = (d[0] - dst_mean[0], d[1] - dst_mean[1]);
        a += sx * dx + sy * dy;
        b += sx * dy - sy * dx;
        variance += sx * sx + sy * sy;
    }
    if variance.is_nan() || variance <= f64::EPSILON || !a.is_finite() || !b.is_finite() {
        return None;
    }
    let (scale_cos, scale_sin) = (a / variance, b / variance);
    let tx = dst_mean[0] - (scale_cos * src_mean[0] - scale_sin * src_mean[1]);
    let ty = dst_mean[1] - (scale_sin * src_mean[0] + scale_cos * src_mean[1]);
    let matrix = [
        [scale_cos as f32, -scale_sin as f32, tx as f32],
        [scale_sin as f32, scale_cos as f32, ty as f32],
    ];
    matrix
        .iter()
        .flatten()
        .all(|v| v.is_finite())
        .then_some(matrix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let (scale, angle, tx, ty) = (1.7f64, 0.3f64, -12.5f64, 40.25f64);
        let (c, s) = (scale * angle.cos(), scale * angle.sin());
        let src: Vec<[f32; 2]> = ARCFACE_TEMPLATE_112.to_vec();
        let dst: Vec<[f32; 2]> = src
            .iter()
            .map(|p| {
                let (x, y) = (f64::from(p[0]), f64::from(p[1]));
                [(c * x - s * y + tx) as f32, (s * x + c * y + ty) as f32]
            })
            .collect();
        let m = estimate_similarity(&src, &dst).expect("well-posed");
        let expected = [[c, -s, tx], [s, c, ty]];
        for (row, want) in m.iter().zip(expected) {
            for (got, want) in row.iter().zip(want) {
                assert!((f64::from(*got) - want).abs() < 1e-3, "{m:?}");
            }
        }
    }

    #[test]
    fn similarity_never_reflects() {
        // Mirror-image points: the best similarity must still have a positive determinant.
        let src = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        let dst = [[0.0, 0.0], [-1.0, 0.0], [0.0, 1.0]];
        let m = estimate_similarity(&src, &dst).expect("well-posed");
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        assert!(det >= 0.0);
    }

    #[test]
    fn similarity_rejects_degenerate_input() {
        assert!(estimate_similarity(&[[1.0, 1.0]], &[[2.0, 2.0]]).is_none());
        assert!(
            estimate_similarity(&[[1.0, 1.0]; 3], &[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).is_none()
        );
        assert!(estimate_similarity(&[[0.0, 0.0], [1.0, 0.0]], &[[0.0, 0.0]]).is_none());
        assert!(
            estimate_similarity(&[[0.0, f32::NAN], [1.0, 0.0]], &[[0.0, 0.0], [1.0, 0.0]])
                .is_none()
        );
    }

    #[test]
    fn identity_warp_copies_and_translation_moves_pixels() {
        let image = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        let same = warp_affine_bilinear(&image, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 5, 4);
        assert_eq!(same, image);
        // Shift right by 2: destination (x, y) reads source (x - 2, y); columns 0..2 are border.
        let moved = warp_affine_bilinear(&image, [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], 5, 4);
        assert_eq!(moved.get_pixel(0, 1).0, [0, 0, 0]);
        assert_eq!(moved.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(moved.get_pixel(4, 3), image.get_pixel(2, 3));
        // Half-pixel shift blends with the black border on the first column.
        let half = warp_affine_bilinear(&image, [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], 5, 4);
        assert_eq!(half.get_pixel(0, 0).0, [0, 0, 4]); // (0 + 0) / 2, (0 + 0) / 2, (0 + 7) / 2 rounded
        assert_eq!(half.get_pixel(2, 0).0, [60, 0, 7]);
    }

    #[test]
    fn singular_matrix_gives_black() {
        let image = RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]));
        let out = warp_affine_bilinear(&image, [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], 3, 2);
        assert_eq!(out.dimensions(), (3, 2));
        assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
        let empty = warp_affine_bilinear(&image, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 0, 0);
        assert_eq!(empty.dimensions(), (0, 0));
    }
}
