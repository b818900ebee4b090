//! The face pipelines, assembled once for every caller: the matcher and liveness services run
//! them behind their engine traits, `faceproof eval` scores them offline and `faceproof bench`
//! times them.
//!
//! - [`MatchPipeline`]: decode -> detect (padded and detected again for tight crops) -> subject
//!   choice and quality gates -> align to 112x112 -> SFace embedding -> cosine.
//! - [`LivenessPipeline`]: decode -> the caller's face hint, or detection and subject choice ->
//!   capture-quality gates -> context crops -> MiniFASNet ensemble -> softmax.
//! - [`Calibration`]: the cosine -> 0..1 score table compiled into the build.
//!
//! Inputs and outputs are the wire's common messages (`faceproof.common.v1`: [`Face`],
//! [`FaceIssueReason`], [`SearchMode`]) so the services, the evaluation and the benchmark read
//! one result the same way. Nothing here is async: the services run the pipelines on their
//! inference threads and time each [`Stage`] through a [`StageTimer`].

/// The value of a step's inner `Ok`; a rejection returns from the enclosing pipeline function
/// as its answer, a failure as its error.
macro_rules! or_reject {
    ($step:expr) => {
        match $step? {
            Ok(value) => value,
            Err(rejection) => return Ok(Err(rejection)),
        }
    };
}

pub mod calibration;
pub mod liveness;
pub mod matching;

use faceproof_imaging::{
    Cancellation, DecodeOptions, Decoded, ImageError, ImageLimits, RgbImage, decode_cancellable,
};
pub use faceproof_proto::common::v1::SearchMode;
use faceproof_proto::common::v1::{BoundingBox, Face, FaceIssueReason, Point};
pub use faceproof_telemetry::Stage;

use crate::VisionError;
use crate::face::DetectedFace;
use crate::face::subject::{DEFAULT_RIVAL_AREA_RATIO, choose_subject, has_rival_face};

pub use calibration::Calibration;
pub use liveness::{LivenessPipeline, LivenessScores, LivenessSettings, ModelVerdict};
pub use matching::{CompareOutcome, GalleryMatch, ImageEmbedding, MatchPipeline, MatchSettings};

/// Why an image has no usable face, e.g. `FaceTooSmall` with "face is 31 px wide, the minimum
/// is 32".
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRejection {
    pub reason: FaceIssueReason,
    pub detail: String,
    /// The face concerned, when one was found (e.g. the subject that is too close to the border).
    pub face: Option<Face>,
}

impl FaceRejection {
    pub fn new(reason: FaceIssueReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            face: None,
        }
    }

    /// Whether the image itself is unusable (undecodable, too large, unsupported format) as
    /// opposed to a capture-quality gate on its face.
    pub fn is_image_level(&self) -> bool {
        matches!(
            self.reason,
            FaceIssueReason::ImageUndecodable
                | FaceIssueReason::ImageTooLarge
                | FaceIssueReason::UnsupportedFormat
                | FaceIssueReason::ImageTruncated
                | FaceIssueReason::ImageBadAspectRatio
                | FaceIssueReason::Unspecified
        )
    }
}

/// What a pipeline run gives: the result, or why the image has no usable face; the outer
/// error is a stop ([`VisionError::Cancelled`]) or a model failure.
pub type PipelineResult<T> = Result<Result<T, FaceRejection>, VisionError>;

/// Times the pipeline's stages: the services record each into their metrics and trace spans;
/// callers that time nothing give none.
pub trait StageTimer: Send + Sync {
    /// Runs `work` (one stage) exactly once, timing it as `stage`.
    fn time(&self, stage: Stage, work: &mut dyn FnMut());
}

impl<F: Fn(Stage, &mut dyn FnMut()) + Send + Sync> StageTimer for F {
    fn time(&self, stage: Stage, work: &mut dyn FnMut()) {
        self(stage, work);
    }
}

/// An optional [`StageTimer`], shareable between clones of a pipeline.
#[derive(Clone, Default)]
pub(crate) struct Timer(Option<std::sync::Arc<dyn StageTimer>>);

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Timer(on)"
        } else {
            "Timer(off)"
        })
    }
}

impl Timer {
    pub(crate) fn new(timer: impl StageTimer + 'static) -> Self {
        Self(Some(std::sync::Arc::new(timer)))
    }

    /// Runs `work` as `stage`, timed when a timer is set.
    pub(crate) fn timed<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let Some(timer) = &self.0 else {
            return work();
        };
        let mut work = Some(work);
        let mut output = None;
        timer.time(stage, &mut || {
            if let Some(work) = work.take() {
                output = Some(work());
            }
        });
        match (output, work) {
            (Some(output), _) => output,
            // A timer that did not run the stage: run it untimed rather than lose it.
            (None, Some(work)) => work(),
            (None, None) => unreachable!("the stage ran but left no output"),
        }
    }
}

/// The first steps both pipelines take and the stage timer they share: decoding within the image
/// limits, and the smallest face worth scoring.
#[derive(Debug)]
struct Intake {
    decode_options: DecodeOptions,
    /// Faces narrower (or shorter) than this, in full-resolution pixels, are `face_too_small`.
    min_face_side: f32,
    timer: Timer,
}

impl Intake {
    /// `min_long_side`: decode large JPEGs at a reduced scale keeping at least this long side.
    fn new(limits: ImageLimits, min_long_side: Option<u32>, min_face_px: u32) -> Self {
        Self {
            decode_options: DecodeOptions {
                limits,
                min_long_side,
            },
            min_face_side: min_face_px as f32,
            timer: Timer::default(),
        }
    }

    /// Decodes one image (timed as [`Stage::Decode`]); an image that cannot be decoded is a
    /// rejection, a stop stays a stop.
    fn decode(&self, bytes: &[u8], cancel: &Cancellation) -> PipelineResult<Decoded> {
        let decoded = self.timer.timed(Stage::Decode, || {
            decode_cancellable(bytes, &self.decode_options, cancel)
        });
        match decoded {
            Ok(decoded) => Ok(Ok(decoded)),
            Err(ImageError::Cancelled(cancelled)) => Err(VisionError::Cancelled(cancelled)),
            Err(error) => Ok(Err(decode_rejection(&error))),
        }
    }
}

/// The face a pipeline works on among those detected in an image.
struct Subject<'a> {
    face: &'a DetectedFace,
    /// A second face nearly as large as the subject: whose face is meant is unclear.
    has_rival: bool,
}

/// The subject among `faces` (the face [`choose_subject`] picks) and whether a rival is nearly
/// as large; `no_face_detected` when there is none.
fn find_subject<'a>(faces: &'a [DetectedFace], image: &RgbImage) -> PipelineResult<Subject<'a>> {
    let (width, height) = image.dimensions();
    let Some(index) = choose_subject(faces, width, height) else {
        return Ok(Err(FaceRejection::new(
            FaceIssueReason::NoFaceDetected,
            "no face found",
        )));
    };
    let face = faces
        .get(index)
        .ok_or_else(|| internal("subject index out of range"))?;
    Ok(Ok(Subject {
        face,
        has_rival: has_rival_face(faces, index, DEFAULT_RIVAL_AREA_RATIO),
    }))
}

/// A mid-grey 640x480 frame: what warm-ups run the networks on.
fn blank_frame() -> Result<RgbImage, VisionError> {
    RgbImage::from_raw(640, 480, vec![128; 640 * 480 * 3]).ok_or_else(|| internal("warm-up frame"))
}

/// The rejection of an image that cannot be decoded, by the decoder's reason.
pub fn decode_rejection(error: &ImageError) -> FaceRejection {
    let reason = match error {
        ImageError::UnsupportedFormat => FaceIssueReason::UnsupportedFormat,
        error if error.is_too_large() => FaceIssueReason::ImageTooLarge,
        ImageError::BadAspectRatio { .. } => FaceIssueReason::ImageBadAspectRatio,
        ImageError::Truncated(_) => FaceIssueReason::ImageTruncated,
        _ => FaceIssueReason::ImageUndecodable,
    };
    FaceRejection::new(reason, error.to_string())
}

/// A failure that is a bug or a model fault, with the message the services log.
fn internal(error: impl std::fmt::Display) -> VisionError {
    VisionError::Internal(error.to_string())
}

/// A detection in the wire format.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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

    #[test]
    fn a_timer_runs_each_stage_once_and_sees_its_name() {
        let seen = std::sync::Mutex::new(Vec::new());
        let seen = std::sync::Arc::new(seen);
        let record = std::sync::Arc::clone(&seen);
        let timer = Timer::new(move |stage: Stage, work: &mut dyn FnMut()| {
            record.lock().unwrap().push(stage);
            work();
        });
        let mut runs = 0;
        assert_eq!(
            timer.timed(Stage::Embed, || {
                runs += 1;
                7
            }),
            7
        );
        assert_eq!(runs, 1);
        assert_eq!(*seen.lock().unwrap(), vec![Stage::Embed]);
        // A timer that forgets to run the stage does not lose it.
        let lazy = Timer::new(|_: Stage, _: &mut dyn FnMut()| {});
        assert_eq!(lazy.timed(Stage::Decode, || 8), 8);
        assert_eq!(Timer::default().timed(Stage::Decode, || 9), 9);
    }
}
