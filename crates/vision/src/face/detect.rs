//! The detector front end: an RGB image in, faces in image coordinates out.
//!
//! Follows OpenCV's `FaceDetectorYN` (the reference behind the golden values): the image is
//! downscaled with area interpolation so its long side is at most `max_input_side` (never
//! upscaled), converted to BGR planes, padded right and bottom with zeros to a multiple of 32, run
//! through YuNet, decoded per stride (score `sqrt(cls * obj)`), filtered by score, reduced by
//! greedy NMS, and mapped back to the original image's coordinates.

use candle_core::{Device, Tensor};
use faceproof_imaging::{Cancellation, ChannelOrder, RgbImage, resize_area, to_planar_f32};

use crate::VisionError;
use crate::nets::yunet::{STRIDES, YuNet, YuNetHeads};

/// One detected face, in the coordinates of the image given to [`FaceDetector::detect`].
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedFace {
    /// `[x, y, width, height]` of the face box.
    pub bbox: [f32; 4],
    /// Right eye, left eye, nose tip, right mouth corner, left mouth corner ("right" as the
    /// person's: the eye on the image's left), each `[x, y]`.
    pub landmarks: [[f32; 2]; 5],
    /// Detector confidence in 0..1.
    pub score: f32,
}

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Longest side of the detector input; larger images are downscaled (never upscaled).
    pub max_input_side: u32,
    /// Faces scoring below this are dropped. 0.6, lower than the OpenCV Zoo demo's 0.9, so that
    /// faces the reference finds are kept (its golden faces score 0.93..0.95) and a weak subject
    /// is reported as low quality rather than as no face.
    pub score_threshold: f32,
    /// Boxes overlapping a better one by more than this IoU are dropped (OpenCV's default 0.3).
    pub nms_threshold: f32,
    /// At most this many candidates enter NMS (OpenCV's default 5000).
    pub top_k: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            max_input_side: 640,
            score_threshold: 0.6,
            nms_threshold: 0.3,
            top_k: 5000,
        }
    }
}

/// YuNet behind the preprocessing and postprocessing it needs.
#[derive(Debug, Clone)]
pub struct FaceDetector {
    net: YuNet,
    config: DetectorConfig,
    device: Device,
}

impl FaceDetector {
    pub fn new(net: YuNet, config: DetectorConfig, device: Device) -> Result<Self, VisionError> {
        if config.max_input_side < 32 {
            return Err(VisionError::InvalidInput(format!(
                "max_input_side must be at least 32, got {}",
                config.max_input_side
            )));
        }
        Ok(Self {
            net,
            config,
            device,
        })
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Every face found in `image`, best score first.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<DetectedFace>, VisionError> {
        self.detect_cancellable(image, &Cancellation::never())
    }

    /// [`Self::detect`], stopping with [`VisionError::Cancelled`] once `cancel` fires (checked
    /// before and after the resize and between the network's units).
    pub fn detect_cancellable(
        &self,
        image: &RgbImage,
        cancel: &Cancellation,
    ) -> Result<Vec<DetectedFace>, VisionError> {
        cancel.check()?;
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(VisionError::InvalidInput("empty image".into()));
        }
        let (input_width, input_height) =
            detector_input_size(width, height, self.config.max_input_side);
        let resized;
        let work = if (input_width, input_height) == (width, height) {
            image
        } else {
            resized = resize_area(image, input_width, input_height);
            &resized
        };
        let input = padded_bgr_tensor(work, &self.device)?;
        let (_, _, padded_height, padded_width) = input.dims4()?;
        cancel.check()?;
        let heads = self.net.forward_cancellable(&input, cancel)?;
        let candidates = decode_heads(
            &heads,
            padded_width,
            padded_height,
            self.config.score_threshold,
        )?;
        let mut faces =
            non_max_suppression(candidates, self.config.nms_threshold, self.config.top_k);
        let scale_x = width as f32 / input_width as f32;
        let scale_y = height as f32 / input_height as f32;
        for face in &mut faces {
            face.bbox[0] *= scale_x;
            face.bbox[1] *= scale_y;
            face.bbox[2] *= scale_x;
            face.bbox[3] *= scale_y;
            for point in &mut face.landmarks {
                point[0] *= scale_x;
                point[1] *= scale_y;
            }
        }
        Ok(faces)
    }
}

/// The detector input size for an image: the long side brought down to `max_side` (rounded),
/// never up.
pub fn detector_input_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max_side {
        return (width, height);
    }
    let scale = f64::from(max_side) / f64::from(longest);
    let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).clamp(1, max_side);
    (scaled(width), scaled(height))
}

/// `[1, 3, H', W']` BGR 0..255 with H' and W' rounded up to multiples of 32, zero padded right and
/// bottom.
fn padded_bgr_tensor(image: &RgbImage, device: &Device) -> Result<Tensor, VisionError> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let padded_width = width.div_ceil(32) * 32;
    let padded_height = height.div_ceil(32) * 32;
    let planes = to_planar_f32(image, ChannelOrder::Bgr);
    let tensor = if (padded_width, padded_height) == (width, height) {
        Tensor::from_vec(planes, (1, 3, height, width), device)?
    } else {
        let mut data = vec![0f32; 3 * padded_width * padded_height];
        for channel in 0..3 {
            for row in 0..height {
                let src = (channel * height + row) * width;
                let dst = (channel * padded_height + row) * padded_width;
                data[dst..dst + width].copy_from_slice(&planes[src..src + width]);
            }
        }
        Tensor::from_vec(data, (1, 3, padded_height, padded_width), device)?
    };
    Ok(tensor)
}

/// Turns the raw heads of a `padded_width x padded_height` input (batch item 0) into candidate
/// faces in input pixels, keeping those scoring at least `score_threshold`.
pub fn decode_heads(
    heads: &YuNetHeads,
    padded_width: usize,
    padded_height: usize,
    score_threshold: f32,
) -> Result<Vec<DetectedFace>, VisionError> {
    let mut faces = Vec::new();
    for (level, &stride) in STRIDES.iter().enumerate() {
        let cols = padded_width / stride;
        let rows = padded_height / stride;
        let cls = heads.cls[level].get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let obj = heads.obj[level].get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let bbox = heads.bbox[level].get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let kps = heads.kps[level].get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let cells = rows * cols;
        if cls.len() != cells
            || obj.len() != cells
            || bbox.len() != 4 * cells
            || kps.len() != 10 * cells
        {
            return Err(VisionError::InvalidInput(format!(
                "YuNet heads at stride {stride} do not match a {padded_width}x{padded_height} input"
            )));
        }
        let stride_f = stride as f32;
        for row in 0..rows {
            for col in 0..cols {
                let idx = row * cols + col;
                let score = (cls[idx].clamp(0.0, 1.0) * obj[idx].clamp(0.0, 1.0)).sqrt();
                if score < score_threshold {
                    continue;
                }
                let b = &bbox[4 * idx..4 * idx + 4];
                let cx = (col as f32 + b[0]) * stride_f;
                let cy = (row as f32 + b[1]) * stride_f;
                let w = b[2].exp() * stride_f;
                let h = b[3].exp() * stride_f;
                let k = &kps[10 * idx..10 * idx + 10];
                let mut landmarks = [[0f32; 2]; 5];
                for (n, point) in landmarks.iter_mut().enumerate() {
                    *point = [
                        (k[2 * n] + col as f32) * stride_f,
                        (k[2 * n + 1] + row as f32) * stride_f,
                    ];
                }
                faces.push(DetectedFace {
                    bbox: [cx - w / 2.0, cy - h / 2.0, w, h],
                    landmarks,
                    score,
                });
            }
        }
    }
    Ok(faces)
}

/// Greedy NMS: best score first, dropping every box whose IoU with a kept one exceeds
/// `iou_threshold`; at most `top_k` candidates are considered.
pub fn non_max_suppression(
    mut faces: Vec<DetectedFace>,
    iou_threshold: f32,
    top_k: usize,
) -> Vec<DetectedFace> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    faces.truncate(top_k);
    let mut kept: Vec<DetectedFace> = Vec::new();
    for face in faces {
        if kept
            .iter()
            .all(|k| iou(&k.bbox, &face.bbox) <= iou_threshold)
        {
            kept.push(face);
        }
    }
    kept
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let x1 = a[0].max(b[0]);
    let y1 = a[1].max(b[1]);
    let x2 = (a[0] + a[2]).min(b[0] + b[2]);
    let y2 = (a[1] + a[3]).min(b[1] + b[3]);
    let intersection = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn face(x: f32, score: f32) -> DetectedFace {
        DetectedFace {
            bbox: [x, 0.0, 10.0, 10.0],
            landmarks: [[0.0; 2]; 5],
            score,
        }
    }

    #[test]
    fn input_size_never_upscales_and_rounds() {
        assert_eq!(detector_input_size(512, 512, 640), (512, 512));
        assert_eq!(detector_input_size(970, 2204, 640), (282, 640));
        assert_eq!(detector_input_size(910, 1137, 640), (512, 640));
        assert_eq!(detector_input_size(626, 1200, 640), (334, 640));
    }

    #[test]
    fn nms_keeps_best_of_overlapping_boxes() {
        let faces = vec![face(0.0, 0.7), face(1.0, 0.9), face(50.0, 0.8)];
        let kept = non_max_suppression(faces, 0.3, 5000);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.8);
        assert_eq!(
            non_max_suppression(vec![face(0.0, 0.5), face(50.0, 0.6)], 0.3, 1).len(),
            1
        );
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]) - 1.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[5.0, 5.0, 2.0, 2.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn padding_keeps_pixels_and_zeros_the_rest() {
        let mut image = RgbImage::new(33, 1);
        image.put_pixel(0, 0, [10, 20, 30].into());
        let tensor = padded_bgr_tensor(&image, &Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), &[1, 3, 32, 64]);
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values[0], 30.0); // blue plane first
        assert_eq!(values[32 * 64], 20.0);
        assert_eq!(values[2 * 32 * 64], 10.0);
        assert_eq!(values.iter().filter(|&&v| v != 0.0).count(), 3);
    }
}
