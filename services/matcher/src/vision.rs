//! The production [`MatchEngine`] over faceproof-vision: decode (EXIF orientation, pixel limit,
//! large JPEGs at reduced scale) -> detect with YuNet -> subject choice and quality gates -> align to 112x112 -> embed every
//! usable face of the request in one SFace batch -> cosine.
//!
//! FAST detects on the image brought down to `fast_detector_side` and embeds each face once;
//! ACCURATE detects at `accurate_detector_side` and adds the embedding of the mirrored face
//! (flip fusion), a standard test-time augmentation for face embedders.

use candle_core::Device;
use faceproof_imaging::{
    Cancellation, DecodeOptions, Decoded, ImageError, ImageLimits, RgbImage, decode_cancellable,
};
use faceproof_models::{ModelName, ModelStore};
use faceproof_proto::common::v1::{BoundingBox, Face, FaceIssueReason, Point, SearchMode};
use faceproof_runtime::time_stage;
use faceproof_telemetry::{Metrics, Stage};
use faceproof_vision::face::align::align_face;
use faceproof_vision::face::subject::{DEFAULT_RIVAL_AREA_RATIO, choose_subject, has_rival_face};
use faceproof_vision::face::{DetectedFace, DetectorConfig, FaceDetector};
use faceproof_vision::nets::sface::{SFace, cosine_similarity, faces_to_batch};
use faceproof_vision::nets::yunet::YuNet;

use crate::engine::{
    CompareJob, CompareOutcome, EngineError, FaceRejection, GalleryMatch, MatchEngine,
};
use crate::{HostError, MatcherConfig};

/// A JPEG whose long side is at least twice this is decoded at 1/2, 1/4 or 1/8 scale in the
/// DCT domain, keeping at least this many pixels on the long side. The detector never sees more
/// than `accurate_detector_side` (640) and the aligned face is 112x112: at 1600 px a face a
/// tenth of the frame wide is still 160 px. A 12 MP phone photo decodes at 1/2 (2000x1500):
/// 129 ms instead of 193 ms on a loaded 2-core machine, and detection's resize works on a
/// quarter of the pixels. Boxes and landmarks are reported in full-resolution pixels whatever
/// the scale.
const DECODE_MIN_LONG_SIDE: u32 = 1600;
/// A subject box covering more than this share of the image means the input is a tight crop:
/// the detector needs context, so the image is padded and detected again.
const TIGHT_CROP_AREA_SHARE: f32 = 0.5;

/// Settings of the vision pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionMatchSettings {
    /// Header bounds and the decoded-bytes budget of one image.
    pub image_limits: ImageLimits,
    pub fast_detector_side: u32,
    pub accurate_detector_side: u32,
    /// Faces narrower (or shorter) than this, in full-resolution pixels, carry too little detail
    /// to embed: `face_too_small`.
    pub min_face_px: u32,
}

impl VisionMatchSettings {
    pub fn from_config(config: &MatcherConfig) -> Self {
        Self {
            image_limits: config.image_limits(),
            fast_detector_side: config.fast_detector_side,
            accurate_detector_side: config.accurate_detector_side,
            min_face_px: config.host.min_face_px,
        }
    }
}

/// YuNet + SFace on the CPU.
#[derive(Debug)]
pub struct VisionMatchEngine {
    fast_detector: FaceDetector,
    accurate_detector: FaceDetector,
    embedder: SFace,
    device: Device,
    decode_options: DecodeOptions,
    min_face_side: f32,
    /// Where stage timings go; `None` times nothing (evaluation tools).
    metrics: Option<Metrics>,
}

/// Loads the verified weights from the configured model directory.
pub fn load_engine(config: &MatcherConfig) -> Result<VisionMatchEngine, HostError> {
    let store = ModelStore::at(&config.host.model_dir).map_err(model_error)?;
    let yunet = store.read_verified(ModelName::YuNet).map_err(model_error)?;
    let sface = store.read_verified(ModelName::SFace).map_err(model_error)?;
    VisionMatchEngine::from_weights(&yunet, &sface, VisionMatchSettings::from_config(config))
}

fn model_error(error: impl std::fmt::Display) -> HostError {
    HostError::ModelLoad(error.to_string())
}

impl VisionMatchEngine {
    /// Builds the engine from the safetensors bytes of YuNet and SFace.
    pub fn from_weights(
        yunet: &[u8],
        sface: &[u8],
        settings: VisionMatchSettings,
    ) -> Result<Self, HostError> {
        let device = Device::Cpu;
        let net = YuNet::from_safetensors(yunet, &device).map_err(model_error)?;
        let detector = |side| {
            let config = DetectorConfig {
                max_input_side: side,
                ..DetectorConfig::default()
            };
            FaceDetector::new(net.clone(), config, device.clone()).map_err(model_error)
        };
        Ok(Self {
            fast_detector: detector(settings.fast_detector_side)?,
            accurate_detector: detector(settings.accurate_detector_side)?,
            embedder: SFace::from_safetensors(sface, &device).map_err(model_error)?,
            device,
            decode_options: DecodeOptions {
                limits: settings.image_limits,
                min_long_side: Some(DECODE_MIN_LONG_SIDE),
            },
            min_face_side: settings.min_face_px as f32,
            metrics: None,
        })
    }

    /// Records the time of each stage (decode, detect, align, embed) into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn timed<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        time_stage(self.metrics.as_ref(), stage, work)
    }

    fn detector(&self, mode: SearchMode) -> &FaceDetector {
        match mode {
            SearchMode::Accurate => &self.accurate_detector,
            SearchMode::Fast | SearchMode::Unspecified => &self.fast_detector,
        }
    }

    /// Decodes, detects and gates one image; on success the aligned face and its detection.
    fn prepare(
        &self,
        bytes: &[u8],
        mode: SearchMode,
        refuse_rivals: bool,
        cancel: &Cancellation,
    ) -> Result<Result<(RgbImage, DetectedFace), FaceRejection>, EngineError> {
        let decoded = self.timed(Stage::Decode, || {
            decode_cancellable(bytes, &self.decode_options, cancel)
        });
        let mut decoded = match decoded {
            Ok(decoded) => decoded,
            Err(ImageError::Cancelled(cancelled)) => return Err(cancelled.into()),
            Err(error) => return Ok(Err(decode_rejection(&error))),
        };
        let image = std::mem::take(&mut decoded.image);
        let detector = self.detector(mode);
        let faces = self.timed(Stage::Detect, || {
            detect_with_context(detector, &image, cancel)
        })?;
        let (width, height) = image.dimensions();
        let Some(subject) = choose_subject(&faces, width, height) else {
            return Ok(Err(FaceRejection::new(
                FaceIssueReason::NoFaceDetected,
                "no face found",
            )));
        };
        if refuse_rivals && has_rival_face(&faces, subject, DEFAULT_RIVAL_AREA_RATIO) {
            return Ok(Err(FaceRejection::new(
                FaceIssueReason::MultipleFacesDetected,
                format!(
                    "{} faces found and a second one is nearly as large as the subject",
                    faces.len()
                ),
            )));
        }
        let Some(face) = faces.get(subject).cloned() else {
            return Err(EngineError::Internal("subject index out of range".into()));
        };
        // Detected, chosen and aligned in the decoded pixels; gated and reported at full
        // resolution.
        let full_resolution_face = to_full_resolution(&decoded, &face);
        let side = full_resolution_face.bbox[2].min(full_resolution_face.bbox[3]);
        if side < self.min_face_side {
            return Ok(Err(FaceRejection::new(
                FaceIssueReason::FaceTooSmall,
                format!(
                    "face is {side:.0} px wide, the minimum is {:.0}",
                    self.min_face_side
                ),
            )));
        }
        let aligned = self
            .timed(Stage::Align, || align_face(&image, &face.landmarks))
            .map_err(|error| EngineError::Internal(error.to_string()))?;
        Ok(Ok((aligned, full_resolution_face)))
    }

    /// One embedding per aligned face; ACCURATE adds the mirrored face's embedding.
    fn embed(
        &self,
        faces: &[RgbImage],
        mode: SearchMode,
        cancel: &Cancellation,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let internal = |error: &dyn std::fmt::Display| EngineError::Internal(error.to_string());
        let flip = mode == SearchMode::Accurate;
        let mut batch: Vec<RgbImage> = faces.to_vec();
        if flip {
            batch.extend(faces.iter().map(mirror));
        }
        let input = faces_to_batch(&batch, &self.device).map_err(|e| internal(&e))?;
        let rows = self
            .embedder
            .embed_cancellable(&input, cancel)
            .map_err(vision_error)?
            .to_vec2::<f32>()
            .map_err(|e| internal(&e))?;
        if !flip {
            return Ok(rows);
        }
        let (plain, mirrored) = rows.split_at(faces.len());
        Ok(plain
            .iter()
            .zip(mirrored)
            .map(|(a, b)| fuse(a, b))
            .collect())
    }
}

impl MatchEngine for VisionMatchEngine {
    fn compare(
        &self,
        job: CompareJob,
        cancel: &Cancellation,
    ) -> Result<CompareOutcome, EngineError> {
        let (probe_aligned, probe_face) = self
            .prepare(&job.probe, job.mode, true, cancel)?
            .map_err(EngineError::Probe)?;
        let mut gallery = Vec::with_capacity(job.gallery.len());
        for bytes in &job.gallery {
            cancel.check()?;
            gallery.push(self.prepare(bytes, job.mode, false, cancel)?);
        }
        cancel.check()?;

        let mut aligned = vec![probe_aligned];
        for (face, _) in gallery.iter().flatten() {
            aligned.push(face.clone());
        }
        let embeddings = self.timed(Stage::Embed, || self.embed(&aligned, job.mode, cancel))?;
        let Some((probe_embedding, gallery_embeddings)) = embeddings.split_first() else {
            return Err(EngineError::Internal("embedder returned no rows".into()));
        };
        let mut gallery_embeddings = gallery_embeddings.iter();
        let mut results = Vec::with_capacity(gallery.len());
        for item in gallery {
            results.push(match item {
                Ok((_, face)) => {
                    let embedding = gallery_embeddings
                        .next()
                        .ok_or_else(|| EngineError::Internal("embedding rows missing".into()))?;
                    Ok(GalleryMatch {
                        face: to_proto(&face),
                        similarity: f64::from(cosine_similarity(probe_embedding, embedding)),
                    })
                }
                Err(rejection) => Err(rejection),
            });
        }
        Ok(CompareOutcome {
            probe_face: to_proto(&probe_face),
            gallery: results,
        })
    }

    fn warm_up(&self) -> Result<(), EngineError> {
        // A blank frame runs every detector layer; a blank face runs every embedder layer in
        // both batch shapes the service uses.
        let frame = RgbImage::from_raw(640, 480, vec![128; 640 * 480 * 3])
            .ok_or_else(|| EngineError::Internal("warm-up frame".into()))?;
        for detector in [&self.fast_detector, &self.accurate_detector] {
            detector
                .detect(&frame)
                .map_err(|error| EngineError::Internal(error.to_string()))?;
        }
        let face = RgbImage::from_raw(112, 112, vec![128; 112 * 112 * 3])
            .ok_or_else(|| EngineError::Internal("warm-up face".into()))?;
        self.embed(
            &[face.clone(), face],
            SearchMode::Accurate,
            &Cancellation::never(),
        )?;
        Ok(())
    }
}

/// Detects; when nothing is found or the subject fills most of the frame (a tight face crop),
/// pads the image by half its size on every side and detects again, mapping back.
fn detect_with_context(
    detector: &FaceDetector,
    image: &RgbImage,
    cancel: &Cancellation,
) -> Result<Vec<DetectedFace>, EngineError> {
    let faces = detector
        .detect_cancellable(image, cancel)
        .map_err(vision_error)?;
    let (width, height) = image.dimensions();
    let image_area = width as f32 * height as f32;
    let tight = faces
        .iter()
        .any(|f| f.bbox[2] * f.bbox[3] > TIGHT_CROP_AREA_SHARE * image_area);
    if !faces.is_empty() && !tight {
        return Ok(faces);
    }
    let (pad_x, pad_y) = (width / 2, height / 2);
    let Some(padded) = pad(image, pad_x, pad_y) else {
        return Ok(faces);
    };
    let mut padded_faces = detector
        .detect_cancellable(&padded, cancel)
        .map_err(vision_error)?;
    if padded_faces.is_empty() {
        return Ok(faces);
    }
    for face in &mut padded_faces {
        face.bbox[0] -= pad_x as f32;
        face.bbox[1] -= pad_y as f32;
        for point in &mut face.landmarks {
            point[0] -= pad_x as f32;
            point[1] -= pad_y as f32;
        }
    }
    Ok(padded_faces)
}

/// A stop from the cancellation stays a stop; any other vision failure is internal.
fn vision_error(error: faceproof_vision::VisionError) -> EngineError {
    match error {
        faceproof_vision::VisionError::Cancelled(cancelled) => EngineError::Cancelled(cancelled),
        other => EngineError::Internal(other.to_string()),
    }
}

/// The image centred on a black canvas `pad_x`/`pad_y` larger on each side.
fn pad(image: &RgbImage, pad_x: u32, pad_y: u32) -> Option<RgbImage> {
    let (width, height) = image.dimensions();
    let out_width = width.checked_add(pad_x.checked_mul(2)?)?;
    let out_height = height.checked_add(pad_y.checked_mul(2)?)?;
    let row_bytes = width as usize * 3;
    let out_row_bytes = out_width as usize * 3;
    let mut pixels = vec![0u8; out_row_bytes.checked_mul(out_height as usize)?];
    for (row, source) in image.as_raw().chunks_exact(row_bytes).enumerate() {
        let start = (row + pad_y as usize) * out_row_bytes + pad_x as usize * 3;
        pixels
            .get_mut(start..start + row_bytes)?
            .copy_from_slice(source);
    }
    RgbImage::from_raw(out_width, out_height, pixels)
}

/// The face mirrored left to right.
fn mirror(face: &RgbImage) -> RgbImage {
    let (width, height) = face.dimensions();
    let row_bytes = width as usize * 3;
    let mut pixels = Vec::with_capacity(face.as_raw().len());
    for row in face.as_raw().chunks_exact(row_bytes) {
        for pixel in row.chunks_exact(3).rev() {
            pixels.extend_from_slice(pixel);
        }
    }
    RgbImage::from_raw(width, height, pixels).unwrap_or_else(|| face.clone())
}

/// Sum of the two L2-normalised embeddings (cosine is scale-free, so no renormalisation).
fn fuse(a: &[f32], b: &[f32]) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let (na, nb) = (norm(a), norm(b));
    a.iter().zip(b).map(|(x, y)| x / na + y / nb).collect()
}

fn decode_rejection(error: &ImageError) -> FaceRejection {
    let reason = match error {
        ImageError::UnsupportedFormat => FaceIssueReason::UnsupportedFormat,
        error if error.is_too_large() => FaceIssueReason::ImageTooLarge,
        ImageError::BadAspectRatio { .. } => FaceIssueReason::ImageBadAspectRatio,
        ImageError::Truncated(_) => FaceIssueReason::ImageTruncated,
        _ => FaceIssueReason::ImageUndecodable,
    };
    FaceRejection::new(reason, error.to_string())
}

/// A detection in the wire format (coordinates of the upright full-resolution image).
/// `face`, found in `decoded.image`, in the pixels of the full-resolution upright image.
fn to_full_resolution(decoded: &Decoded, face: &DetectedFace) -> DetectedFace {
    let [x, y, width, height] = face.bbox;
    let (full_x, full_y) = decoded.to_full_resolution(x, y);
    DetectedFace {
        bbox: [
            full_x,
            full_y,
            width / decoded.scale,
            height / decoded.scale,
        ],
        landmarks: face.landmarks.map(|[x, y]| {
            let (x, y) = decoded.to_full_resolution(x, y);
            [x, y]
        }),
        score: face.score,
    }
}

pub fn to_proto(face: &DetectedFace) -> Face {
    let [x, y, width, height] = face.bbox;
    Face {
        r#box: Some(BoundingBox {
            x,
            y,
            width,
            height,
        }),
        landmarks: face
            .landmarks
            .iter()
            .map(|&[x, y]| Point { x, y })
            .collect(),
        detection_score: face.score,
    }
}

/// One image through the compare pipeline, for the evaluation tools (`faceproof eval`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEmbedding {
    /// The subject's embedding exactly as a comparison computes it (flip-fused in ACCURATE).
    pub embedding: Vec<f32>,
    pub face: Face,
    /// A second face nearly as large as the subject: as a probe this image would be refused
    /// with `multiple_faces_detected` (as a gallery image the subject is kept).
    pub rival_face: bool,
}

impl VisionMatchEngine {
    /// Embeds one image with exactly the service's pipeline (decode, detect with tight-crop
    /// padding, subject choice, size gate, align, embed), so that evaluation scores are the
    /// service's scores. Rival faces do not refuse the image; `rival_face` reports them.
    pub fn embed_image(
        &self,
        bytes: &[u8],
        mode: SearchMode,
    ) -> Result<Result<ImageEmbedding, FaceRejection>, EngineError> {
        let never = Cancellation::never();
        let (rival_face, prepared) = match self.prepare(bytes, mode, true, &never)? {
            Err(rejection) if rejection.reason == FaceIssueReason::MultipleFacesDetected => {
                (true, self.prepare(bytes, mode, false, &never)?)
            }
            other => (false, other),
        };
        let (aligned, face) = match prepared {
            Ok(prepared) => prepared,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let embedding = self
            .embed(std::slice::from_ref(&aligned), mode, &never)?
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Internal("embedder returned no rows".into()))?;
        Ok(Ok(ImageEmbedding {
            embedding,
            face: to_proto(&face),
            rival_face,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        RgbImage::from_raw(width, height, pixels).unwrap()
    }

    #[test]
    fn mirror_reverses_each_row_and_is_an_involution() {
        let original = image(3, 2);
        let mirrored = mirror(&original);
        assert_eq!(mirrored.as_raw()[0..3], original.as_raw()[6..9]);
        assert_eq!(mirror(&mirrored), original);
    }

    #[test]
    fn pad_centres_the_image_on_black() {
        let original = image(4, 2);
        let padded = pad(&original, 2, 1).unwrap();
        assert_eq!(padded.dimensions(), (8, 4));
        assert_eq!(padded.as_raw()[0..3], [0, 0, 0]);
        let row = 8 * 3;
        assert_eq!(padded.as_raw()[row + 6..row + 18], original.as_raw()[0..12]);
    }

    #[test]
    fn fusion_of_identical_embeddings_keeps_the_direction() {
        let fused = fuse(&[3.0, 4.0], &[3.0, 4.0]);
        assert!((cosine_similarity(&fused, &[3.0, 4.0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn decode_errors_map_to_reason_codes() {
        assert_eq!(
            decode_rejection(&ImageError::UnsupportedFormat).reason,
            FaceIssueReason::UnsupportedFormat
        );
        assert_eq!(
            decode_rejection(&ImageError::TooLarge {
                width: 1,
                height: 1,
                max_pixels: 0
            })
            .reason,
            FaceIssueReason::ImageTooLarge
        );
        assert_eq!(
            decode_rejection(&ImageError::Corrupt("x".into())).reason,
            FaceIssueReason::ImageUndecodable
        );
    }
}
