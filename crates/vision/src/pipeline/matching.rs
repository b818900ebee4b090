//! The match pipeline: decode (EXIF orientation, pixel limit, large JPEGs at reduced scale) ->
//! detect with YuNet -> subject choice and quality gates -> align to 112x112 -> embed -> cosine.
//! Each image is embedded on its own ([`MatchPipeline::embed_subject`]): the matcher runs them
//! as separate jobs, and `faceproof eval` and `bench` get the same numbers.
//!
//! FAST detects on the image brought down to `fast_detector_side` and embeds each face once;
//! ACCURATE detects at `accurate_detector_side` and adds the embedding of the mirrored face
//! (flip fusion), a standard test-time augmentation for face embedders.

use candle_core::Device;
use faceproof_imaging::{Cancellation, Decoded, ImageLimits, RgbImage};
use faceproof_proto::common::v1::{Face, FaceIssueReason, SearchMode};

use super::{
    FaceRejection, Intake, PipelineResult, Stage, StageTimer, Timer, blank_frame, find_subject,
    internal,
};
use crate::VisionError;
use crate::face::align::align_face;
use crate::face::{DetectedFace, DetectorConfig, FaceDetector};
use crate::nets::sface::{SFace, cosine_similarity};
use crate::nets::yunet::YuNet;

/// A JPEG whose long side is at least twice this is decoded at 1/2, 1/4 or 1/8 scale in the
/// DCT domain, keeping at least this many pixels on the long side. The detector never sees more
/// than `accurate_detector_side` (640) and the aligned face is 112x112: at 1600 px a face a
/// tenth of the frame wide is still 160 px. A 12 MP phone photo decodes at 1/2 (2000x1500):
/// 129 ms instead of 193 ms on a loaded 2-core machine, and detection's resize works on a
/// quarter of the pixels. Boxes and landmarks are reported in full-resolution pixels whatever
/// the scale.
pub const DECODE_MIN_LONG_SIDE: u32 = 1600;
/// A subject box covering more than this share of the image means the input is a tight crop:
/// the detector needs context, so the image is padded and detected again.
const TIGHT_CROP_AREA_SHARE: f32 = 0.5;

/// Settings of the match pipeline. The defaults are the matcher's flag defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchSettings {
    /// Header bounds and the decoded-bytes budget of one image.
    pub image_limits: ImageLimits,
    /// Longest side of the detector input in FAST mode (images are downscaled, never upscaled).
    pub fast_detector_side: u32,
    /// Longest side of the detector input in ACCURATE mode.
    pub accurate_detector_side: u32,
    /// Faces narrower (or shorter) than this, in full-resolution pixels, carry too little detail
    /// to embed: `face_too_small`.
    pub min_face_px: u32,
}

impl MatchSettings {
    pub const DEFAULT_FAST_DETECTOR_SIDE: u32 = 320;
    pub const DEFAULT_ACCURATE_DETECTOR_SIDE: u32 = 640;
    pub const DEFAULT_MIN_FACE_PX: u32 = 32;
}

impl Default for MatchSettings {
    fn default() -> Self {
        Self {
            image_limits: ImageLimits::default(),
            fast_detector_side: Self::DEFAULT_FAST_DETECTOR_SIDE,
            accurate_detector_side: Self::DEFAULT_ACCURATE_DETECTOR_SIDE,
            min_face_px: Self::DEFAULT_MIN_FACE_PX,
        }
    }
}

/// One gallery image compared with the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryMatch {
    pub face: Face,
    /// Cosine similarity of the embeddings, -1..1.
    pub similarity: f64,
}

/// A comparison: the probe's subject face and one entry per gallery image, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOutcome {
    pub probe_face: Face,
    pub gallery: Vec<Result<GalleryMatch, FaceRejection>>,
}

impl CompareOutcome {
    /// The comparison of the probe's subject with each gallery image's (or its rejection): the
    /// cosine of their embeddings.
    pub fn from_subjects(
        probe: SubjectEmbedding,
        gallery: Vec<Result<SubjectEmbedding, FaceRejection>>,
    ) -> Self {
        let gallery = gallery
            .into_iter()
            .map(|item| {
                item.map(|subject| GalleryMatch {
                    similarity: f64::from(cosine_similarity(&probe.embedding, &subject.embedding)),
                    face: subject.face,
                })
            })
            .collect();
        Self {
            probe_face: probe.face,
            gallery,
        }
    }
}

/// Which side of a comparison an image is on: a probe with a second face nearly as large as its
/// subject is refused (`multiple_faces_detected`), a gallery image keeps its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRole {
    Probe,
    Gallery,
}

/// One image's subject, ready to compare: its face (full-resolution pixels) and embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectEmbedding {
    pub face: Face,
    pub embedding: Vec<f32>,
}

/// One image through the match pipeline, for the evaluation tools (`faceproof eval`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEmbedding {
    /// The subject's embedding exactly as a comparison computes it (flip-fused in ACCURATE).
    pub embedding: Vec<f32>,
    pub face: Face,
    /// A second face nearly as large as the subject: as a probe this image would be refused
    /// with `multiple_faces_detected` (as a gallery image the subject is kept).
    pub rival_face: bool,
}

/// YuNet + SFace on the CPU.
#[derive(Debug)]
pub struct MatchPipeline {
    fast_detector: FaceDetector,
    accurate_detector: FaceDetector,
    embedder: SFace,

    intake: Intake,
}

impl MatchPipeline {
    /// Builds the pipeline from the safetensors bytes of YuNet and SFace.
    pub fn from_weights(
        yunet: &[u8],
        sface: &[u8],
        settings: MatchSettings,
    ) -> Result<Self, VisionError> {
        let device = Device::Cpu;
        let net = YuNet::from_safetensors(yunet, &device)?;
        let detector = |side| {
            let config = DetectorConfig {
                max_input_side: side,
                ..DetectorConfig::default()
            };
            FaceDetector::new(net.clone(), config, device.clone())
        };
        Ok(Self {
            fast_detector: detector(settings.fast_detector_side)?,
            accurate_detector: detector(settings.accurate_detector_side)?,
            embedder: SFace::from_safetensors(sface, &device)?,
            intake: Intake::new(
                settings.image_limits,
                Some(DECODE_MIN_LONG_SIDE),
                settings.min_face_px,
            ),
        })
    }

    /// Times each stage (decode, detect, align, embed) with `timer`.
    pub fn with_stage_timer(mut self, timer: impl StageTimer + 'static) -> Self {
        self.intake.timer = Timer::new(timer);
        self
    }

    /// The detector a search mode uses.
    pub fn detector(&self, mode: SearchMode) -> &FaceDetector {
        match mode {
            SearchMode::Accurate => &self.accurate_detector,
            SearchMode::Fast | SearchMode::Unspecified => &self.fast_detector,
        }
    }

    /// The face embedder.
    pub fn embedder(&self) -> &SFace {
        &self.embedder
    }

    /// Compares the probe's subject face with every gallery image; a probe without a usable
    /// face (or with a rival nearly as large) is the rejection. `cancel` is checked inside the
    /// long stages so abandoned work stops within milliseconds. The images run one after
    /// another on the calling thread; the matcher gives the same answer running each image as
    /// its own job.
    pub fn compare(
        &self,
        probe: &[u8],
        gallery: &[Vec<u8>],
        mode: SearchMode,
        cancel: &Cancellation,
    ) -> PipelineResult<CompareOutcome> {
        let probe = or_reject!(self.embed_subject(probe, mode, ImageRole::Probe, cancel));
        let mut gallery_subjects = Vec::with_capacity(gallery.len());
        for bytes in gallery {
            cancel.check()?;
            gallery_subjects.push(self.embed_subject(bytes, mode, ImageRole::Gallery, cancel)?);
        }
        Ok(Ok(CompareOutcome::from_subjects(probe, gallery_subjects)))
    }

    /// One image's share of a comparison, on its own: decode, detect, subject choice and gates
    /// (rivals refused for a probe), align, embed. The probe's and each gallery image's, joined
    /// by [`CompareOutcome::from_subjects`], give [`Self::compare`]'s answer, so the matcher can
    /// run each image as its own job.
    pub fn embed_subject(
        &self,
        bytes: &[u8],
        mode: SearchMode,
        role: ImageRole,
        cancel: &Cancellation,
    ) -> PipelineResult<SubjectEmbedding> {
        let (aligned, face) =
            or_reject!(self.prepare(bytes, mode, role == ImageRole::Probe, cancel));
        cancel.check()?;
        let embedding = self
            .intake
            .timer
            .timed(Stage::Embed, || self.embed_one(&aligned, mode, cancel))?;
        Ok(Ok(SubjectEmbedding {
            face: super::to_proto(&face),
            embedding,
        }))
    }

    /// Embeds one image exactly as a comparison does (decode, detect with tight-crop padding,
    /// subject choice, size gate, align, embed), so that evaluation scores are the service's
    /// scores. Rival faces do not refuse the image; `rival_face` reports them.
    pub fn embed_image(&self, bytes: &[u8], mode: SearchMode) -> PipelineResult<ImageEmbedding> {
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
        let embedding = self.embed_one(&aligned, mode, &never)?;
        Ok(Ok(ImageEmbedding {
            embedding,
            face: super::to_proto(&face),
            rival_face,
        }))
    }

    /// Runs every network once (both detectors on a blank frame, the embedder on a blank face in
    /// the batch shapes of both modes: one face, and one face with its mirror image) so the first
    /// real request is not slow.
    pub fn warm_up(&self) -> Result<(), VisionError> {
        let frame = blank_frame()?;
        for detector in [&self.fast_detector, &self.accurate_detector] {
            detector.detect(&frame).map_err(internal)?;
        }
        let face = RgbImage::from_raw(112, 112, vec![128; 112 * 112 * 3])
            .ok_or_else(|| internal("warm-up face"))?;
        for mode in [SearchMode::Fast, SearchMode::Accurate] {
            self.embed_one(&face, mode, &Cancellation::never())?;
        }
        Ok(())
    }

    /// Decodes, detects and gates one image; on success the aligned face and its detection.
    fn prepare(
        &self,
        bytes: &[u8],
        mode: SearchMode,
        refuse_rivals: bool,
        cancel: &Cancellation,
    ) -> PipelineResult<(RgbImage, DetectedFace)> {
        let mut decoded = or_reject!(self.intake.decode(bytes, cancel));
        let image = std::mem::take(&mut decoded.image);
        let detector = self.detector(mode);
        let faces = self.intake.timer.timed(Stage::Detect, || {
            detect_with_context(detector, &image, cancel)
        })?;
        let subject = or_reject!(find_subject(&faces, &image));
        if refuse_rivals && subject.has_rival {
            return Ok(Err(FaceRejection::new(
                FaceIssueReason::MultipleFacesDetected,
                format!(
                    "{} faces found and a second one is nearly as large as the subject",
                    faces.len()
                ),
            )));
        }
        let face = subject.face.clone();
        // Detected, chosen and aligned in the decoded pixels; gated and reported at full
        // resolution.
        let full_resolution_face = to_full_resolution(&decoded, &face);
        let side = full_resolution_face.bbox[2].min(full_resolution_face.bbox[3]);
        let min_face_side = self.intake.min_face_side;
        if side < min_face_side {
            return Ok(Err(FaceRejection::new(
                FaceIssueReason::FaceTooSmall,
                format!("face is {side:.0} px wide, the minimum is {min_face_side:.0}"),
            )));
        }
        let aligned = self
            .intake
            .timer
            .timed(Stage::Align, || align_face(&image, &face.landmarks))
            .map_err(internal)?;
        Ok(Ok((aligned, full_resolution_face)))
    }

    /// One aligned face's embedding, as every comparison computes it: ACCURATE fuses the face
    /// with its mirror image, embedded in the same forward pass.
    fn embed_one(
        &self,
        face: &RgbImage,
        mode: SearchMode,
        cancel: &Cancellation,
    ) -> Result<Vec<f32>, VisionError> {
        let faces = std::slice::from_ref(face);
        let rows = if mode == SearchMode::Accurate {
            self.embedder.embed_flip_fused(faces, cancel)?
        } else {
            self.embedder.embed_faces(faces, cancel)?
        };
        rows.into_iter()
            .next()
            .ok_or_else(|| internal("embedder returned no rows"))
    }
}

/// Detects; when nothing is found or the subject fills most of the frame (a tight face crop),
/// pads the image by half its size on every side and detects again, mapping back.
fn detect_with_context(
    detector: &FaceDetector,
    image: &RgbImage,
    cancel: &Cancellation,
) -> Result<Vec<DetectedFace>, VisionError> {
    let faces = detector.detect_cancellable(image, cancel)?;
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
    let mut padded_faces = detector.detect_cancellable(&padded, cancel)?;
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

/// `face`, found in `decoded.image`, in the pixels of the full-resolution upright image (the
/// coordinates the wire reports).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn image(width: u32, height: u32) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        RgbImage::from_raw(width, height, pixels).unwrap()
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
}
