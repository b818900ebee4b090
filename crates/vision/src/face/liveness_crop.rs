//! The context crops the anti-spoofing networks read: the face box enlarged about its centre,
//! kept inside the image, resized to 80x80.
//!
//! Reference: Silent-Face-Anti-Spoofing `src/generate_patches.py` (`CropImage`), which the models
//! were trained and are run with: the scale is reduced to `min((H-1)/h, (W-1)/w, scale)`, the
//! enlarged box is shifted back inside the image, its corners are truncated to integers and the
//! inclusive pixel range is resized to 80x80 with `cv2.resize`'s default `INTER_LINEAR`
//! ([`faceproof_imaging::resize_bilinear`] reproduces its fixed-point arithmetic).
//!
//! The models were trained on boxes of a RetinaFace detector, not YuNet's: see
//! [`yunet_box_to_training_geometry`], which [`liveness_crop`] applies.

use candle_core::{Device, Tensor};
use faceproof_imaging::{ChannelOrder, RgbImage, resize_bilinear, to_planar_f32};

use crate::nets::minifasnet::{INPUT_SIZE, MiniFasNetVariant};

/// Why a liveness crop could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LivenessCropError {
    #[error("the image is empty")]
    EmptyImage,
    #[error("face box {0:?} is not a finite box of positive size")]
    InvalidBox([f32; 4]),
    #[error("face box {0:?} lies outside the {1}x{2} image")]
    BoxOutsideImage([f32; 4], u32, u32),
    #[error("could not build the crop tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// How much wider the training detector's boxes are than YuNet's (measured over 3,491 NUAA
/// frames, see `models/SOURCES.md`).
pub const TRAINING_BOX_WIDTH_FACTOR: f32 = 1.155;
/// How much taller the training detector's boxes are than YuNet's (they are shorter).
pub const TRAINING_BOX_HEIGHT_FACTOR: f32 = 0.888;
/// How far below YuNet's box centre the training detector's centre lies, in YuNet box heights.
pub const TRAINING_BOX_CENTRE_SHIFT: f32 = 0.061;

/// Maps a YuNet face box `[x, y, width, height]` to the geometry of the RetinaFace boxes the
/// anti-spoofing models were trained on: width x1.155, height x0.888, centre moved down by 0.061
/// x the YuNet box height. The largest single effect measured on liveness accuracy: on NUAA it
/// cut the ensemble's ACER on print attacks from 0.9% to 0.2% and halved APCER on screen replays.
pub fn yunet_box_to_training_geometry(yunet_box: [f32; 4]) -> [f32; 4] {
    let [x, y, w, h] = yunet_box;
    let centre_x = x + w / 2.0;
    let centre_y = y + h / 2.0 + TRAINING_BOX_CENTRE_SHIFT * h;
    let width = w * TRAINING_BOX_WIDTH_FACTOR;
    let height = h * TRAINING_BOX_HEIGHT_FACTOR;
    [
        centre_x - width / 2.0,
        centre_y - height / 2.0,
        width,
        height,
    ]
}

/// The pixel rectangle a crop reads, inclusive on both ends (Silent-Face's integer box).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    pub left: u32,
    pub top: u32,
    pub right: u32,
    pub bottom: u32,
}

impl CropWindow {
    pub fn width(&self) -> u32 {
        self.right - self.left + 1
    }

    pub fn height(&self) -> u32 {
        self.bottom - self.top + 1
    }
}

/// Silent-Face's `CropImage._get_new_box`: the box `[x, y, width, height]` enlarged `scale` times
/// about its centre (the scale first reduced so the result fits the image), shifted inside the
/// image, corners truncated to integers. Computed in f64 as the Python reference does.
pub fn crop_window(
    image_width: u32,
    image_height: u32,
    face_box: [f32; 4],
    scale: f64,
) -> Result<CropWindow, LivenessCropError> {
    if image_width == 0 || image_height == 0 {
        return Err(LivenessCropError::EmptyImage);
    }
    let [x, y, w, h] = face_box.map(f64::from);
    let valid = face_box.iter().all(|v| v.is_finite()) && w > 0.0 && h > 0.0;
    if !valid || !scale.is_finite() || scale <= 0.0 {
        return Err(LivenessCropError::InvalidBox(face_box));
    }
    let (src_w, src_h) = (f64::from(image_width), f64::from(image_height));
    if x >= src_w || y >= src_h || x + w <= 0.0 || y + h <= 0.0 {
        return Err(LivenessCropError::BoxOutsideImage(
            face_box,
            image_width,
            image_height,
        ));
    }
    let scale = ((src_h - 1.0) / h).min((src_w - 1.0) / w).min(scale);
    let (new_w, new_h) = (w * scale, h * scale);
    let (centre_x, centre_y) = (x + w / 2.0, y + h / 2.0);
    let (mut left, mut top) = (centre_x - new_w / 2.0, centre_y - new_h / 2.0);
    let (mut right, mut bottom) = (centre_x + new_w / 2.0, centre_y + new_h / 2.0);
    if left < 0.0 {
        right -= left;
        left = 0.0;
    }
    if top < 0.0 {
        bottom -= top;
        top = 0.0;
    }
    if right > src_w - 1.0 {
        left -= right - src_w + 1.0;
        right = src_w - 1.0;
    }
    if bottom > src_h - 1.0 {
        top -= bottom - src_h + 1.0;
        bottom = src_h - 1.0;
    }
    // Python's int() truncates toward zero, as `as` does; the clamps only guard against rounding.
    let truncate = |v: f64, max: u32| (v as i64).clamp(0, i64::from(max)) as u32;
    let (left, right) = (
        truncate(left, image_width - 1),
        truncate(right, image_width - 1),
    );
    let (top, bottom) = (
        truncate(top, image_height - 1),
        truncate(bottom, image_height - 1),
    );
    Ok(CropWindow {
        left,
        top,
        right: right.max(left),
        bottom: bottom.max(top),
    })
}

/// The 80x80 crop for a box already in the training geometry (no mapping), as an RGB image:
/// Silent-Face's `CropImage.crop(image, box, scale, 80, 80)`.
pub fn crop_training_box(
    image: &RgbImage,
    face_box: [f32; 4],
    scale: f64,
) -> Result<RgbImage, LivenessCropError> {
    let window = crop_window(image.width(), image.height(), face_box, scale)?;
    let (width, height) = (window.width() as usize, window.height() as usize);
    let src_stride = image.width() as usize * 3;
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in window.top as usize..=window.bottom as usize {
        let start = row * src_stride + window.left as usize * 3;
        pixels.extend_from_slice(&image.as_raw()[start..start + width * 3]);
    }
    let region = RgbImage::from_raw(window.width(), window.height(), pixels)
        .ok_or(LivenessCropError::EmptyImage)?;
    let side = INPUT_SIZE as u32;
    Ok(resize_bilinear(&region, side, side))
}

/// Converts an 80x80 RGB crop into the network input `[3, 80, 80]`: BGR planes, raw 0..255 `f32`.
pub fn crop_to_tensor(crop: &RgbImage, device: &Device) -> Result<Tensor, LivenessCropError> {
    let planes = to_planar_f32(crop, ChannelOrder::Bgr);
    Ok(Tensor::from_vec(
        planes,
        (3, crop.height() as usize, crop.width() as usize),
        device,
    )?)
}

/// The input of `variant` for a face that YuNet found at `yunet_box` (`[x, y, width, height]` in
/// `image` pixels): the box mapped to the training geometry, cropped at the variant's scale,
/// as a `[3, 80, 80]` BGR 0..255 `f32` tensor. Stack several along a new first axis for a batch.
pub fn liveness_crop(
    image: &RgbImage,
    yunet_box: [f32; 4],
    variant: MiniFasNetVariant,
    device: &Device,
) -> Result<Tensor, LivenessCropError> {
    let training_box = yunet_box_to_training_geometry(yunet_box);
    let crop = crop_training_box(image, training_box, variant.crop_scale())?;
    crop_to_tensor(&crop, device)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mapping_widens_shortens_and_lowers_the_box() {
        let [x, y, w, h] = yunet_box_to_training_geometry([100.0, 50.0, 200.0, 300.0]);
        assert!((w - 231.0).abs() < 1e-3);
        assert!((h - 266.4).abs() < 1e-3);
        assert!((x + w / 2.0 - 200.0).abs() < 1e-3);
        assert!((y + h / 2.0 - (200.0 + 18.3)).abs() < 1e-3);
    }

    #[test]
    fn window_follows_silent_face() {
        // Centre crop that fits: 2.7 x [100, 100, 50, 60] about (125, 130). The scale is f64 as in
        // Python: 2.7f32 widened would make the top 48.9999... and truncate to 48.
        let window = crop_window(640, 480, [100.0, 100.0, 50.0, 60.0], 2.7).unwrap();
        assert_eq!(
            window,
            CropWindow {
                left: 57,
                top: 49,
                right: 192,
                bottom: 211
            }
        );
        // Shifted right when it crosses the left edge: left 0, width kept.
        let window = crop_window(640, 480, [0.0, 100.0, 50.0, 60.0], 4.0).unwrap();
        assert_eq!((window.left, window.right), (0, 200));
        // Shifted up from the bottom edge: bottom at H - 1.
        let window = crop_window(640, 480, [300.0, 440.0, 40.0, 40.0], 4.0).unwrap();
        assert_eq!((window.top, window.bottom), (319, 479));
        // Scale reduced to (H - 1) / h when the crop would not fit.
        let window = crop_window(640, 480, [200.0, 100.0, 200.0, 200.0], 4.0).unwrap();
        assert_eq!((window.top, window.bottom), (0, 479));
        assert_eq!(window.width(), 480);
    }

    #[test]
    fn bad_boxes_are_errors() {
        for face_box in [
            [0.0, 0.0, 0.0, 10.0],
            [0.0, 0.0, 10.0, -1.0],
            [f32::NAN, 0.0, 10.0, 10.0],
            [0.0, f32::INFINITY, 10.0, 10.0],
        ] {
            assert!(matches!(
                crop_window(100, 100, face_box, 2.7),
                Err(LivenessCropError::InvalidBox(_))
            ));
        }
        assert!(matches!(
            crop_window(100, 100, [200.0, 0.0, 10.0, 10.0], 2.7),
            Err(LivenessCropError::BoxOutsideImage(..))
        ));
        assert!(matches!(
            crop_window(0, 100, [0.0, 0.0, 10.0, 10.0], 2.7),
            Err(LivenessCropError::EmptyImage)
        ));
        // Huge boxes shrink the scale to the image instead of overflowing.
        let window = crop_window(100, 80, [-1e30, -1e30, 3e30, 3e30], 4.0).unwrap();
        assert!(window.right < 100 && window.bottom < 80);
    }

    #[test]
    fn tiny_images_give_a_full_size_crop() {
        let image = RgbImage::from_raw(1, 1, vec![10, 20, 30]).unwrap();
        let tensor = liveness_crop(
            &image,
            [0.0, 0.0, 1.0, 1.0],
            MiniFasNetVariant::V2,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(tensor.dims(), [3, 80, 80]);
        // BGR order.
        let first = tensor.flatten_from(1).unwrap().get_on_dim(1, 0).unwrap();
        assert_eq!(first.to_vec1::<f32>().unwrap(), [30.0, 20.0, 10.0]);
    }
}
