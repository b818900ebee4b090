//! The `faceproof.matcher.v1.Matcher` gRPC service: validates requests, runs the engine on the
//! inference pool (the probe and each gallery image as its own job, so idle workers share one
//! request) and maps the joined outcome to the response or to a status with rich details.

use std::sync::Arc;

use faceproof_imaging::Cancellation;
use faceproof_proto::common::v1::{FaceIssue, SearchMode};
use faceproof_proto::matcher::v1::matcher_server::Matcher as MatcherApi;
use faceproof_proto::matcher::v1::{
    CompareRequest, CompareResponse, GalleryItemResult, Match, gallery_item_result,
};
use faceproof_runtime::host::search_mode;
use faceproof_runtime::{Inference, ServiceError, check_image_bytes, respond};
use tonic::{Request, Response, Status};

use crate::calibration::Calibration;
use crate::engine::{
    CompareJob, CompareOutcome, EngineError, ImageRole, MatchEngine, SubjectEmbedding,
};

/// Request limits enforced before any work is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_image_bytes: usize,
    pub max_gallery_items: usize,
}

/// The gRPC handler; cheap to clone (everything shared is behind an `Arc`).
#[derive(Debug, Clone)]
pub struct MatcherService {
    inference: Inference<dyn MatchEngine>,
    calibration: Arc<Calibration>,
    limits: RequestLimits,
}

impl MatcherService {
    pub fn new(
        inference: Inference<dyn MatchEngine>,
        calibration: Arc<Calibration>,
        limits: RequestLimits,
    ) -> Self {
        Self {
            inference,
            calibration,
            limits,
        }
    }

    async fn compare_inner(
        &self,
        request: Request<CompareRequest>,
    ) -> Result<CompareResponse, ServiceError> {
        let (deadline, request) = self.inference.accept(request);
        let job = validate(request, self.limits)?;
        let (gallery_len, mode) = (job.gallery.len(), job.mode);
        // The probe first: its failure is the answer before any gallery image's, as when the
        // images ran one after another.
        let images = std::iter::once((job.probe, ImageRole::Probe))
            .chain(
                job.gallery
                    .into_iter()
                    .map(|image| (image, ImageRole::Gallery)),
            )
            .map(|(bytes, role)| ImageJob { bytes, role, mode })
            .collect();
        let subjects = self
            .inference
            .run_each(deadline, images, embed_image)
            .await?
            .map_err(|(error, cancel)| engine_error(error, &cancel))?;
        let mut subjects = subjects.into_iter();
        let Some(Ok(probe)) = subjects.next() else {
            return Err(ServiceError::internal("the probe's subject is missing"));
        };
        let outcome = CompareOutcome::from_subjects(probe, subjects.collect());
        build_response(outcome, gallery_len, &self.calibration, mode)
    }
}

#[tonic::async_trait]
impl MatcherApi for MatcherService {
    #[tracing::instrument(name = "matcher.compare", skip_all)]
    async fn compare(
        &self,
        request: Request<CompareRequest>,
    ) -> Result<Response<CompareResponse>, Status> {
        respond("compare", self.compare_inner(request).await)
    }
}

/// One image of a comparison, run as its own job on the inference pool.
struct ImageJob {
    bytes: Vec<u8>,
    role: ImageRole,
    mode: SearchMode,
}

/// One image's subject; a probe without one ends the comparison (a gallery image without one is
/// an entry of the answer).
fn embed_image(
    engine: &dyn MatchEngine,
    image: ImageJob,
    cancel: &Cancellation,
) -> Result<Result<SubjectEmbedding, crate::engine::FaceRejection>, EngineError> {
    let subject = engine.embed_subject(&image.bytes, image.mode, image.role, cancel)?;
    match (image.role, subject) {
        (ImageRole::Probe, Err(rejection)) => Err(EngineError::Probe(rejection)),
        (_, subject) => Ok(subject),
    }
}

/// Turns the wire request into a job, or names the offending field.
fn validate(request: CompareRequest, limits: RequestLimits) -> Result<CompareJob, ServiceError> {
    let mode = search_mode(request.search_mode)?;
    check_image_bytes(&request.probe, "probe", limits.max_image_bytes)?;
    if request.gallery.is_empty() {
        return Err(ServiceError::invalid_field(
            "empty_gallery",
            "gallery",
            "at least one gallery image is needed",
        ));
    }
    if request.gallery.len() > limits.max_gallery_items {
        return Err(ServiceError::invalid_field(
            "gallery_too_large",
            "gallery",
            format!(
                "{} images, the limit is {}",
                request.gallery.len(),
                limits.max_gallery_items
            ),
        ));
    }
    for (index, image) in request.gallery.iter().enumerate() {
        check_image_bytes(image, &format!("gallery[{index}]"), limits.max_image_bytes)?;
    }
    // The engine owns plain buffers (one copy of bytes the decoder reads many times over).
    Ok(CompareJob {
        probe: request.probe.into(),
        gallery: request.gallery.into_iter().map(Vec::from).collect(),
        mode,
    })
}

fn engine_error(error: EngineError, cancel: &Cancellation) -> ServiceError {
    match error {
        EngineError::Probe(rejection) => {
            ServiceError::invalid_field(rejection.reason.code(), "probe", rejection.detail)
        }
        EngineError::DeadlineExceeded(_) => ServiceError::deadline_exceeded(),
        EngineError::Cancelled(_) => ServiceError::stopped(cancel),
        EngineError::Internal(detail) => ServiceError::internal(detail),
    }
}

fn build_response(
    outcome: CompareOutcome,
    gallery_len: usize,
    calibration: &Calibration,
    mode: SearchMode,
) -> Result<CompareResponse, ServiceError> {
    if outcome.gallery.len() != gallery_len {
        return Err(ServiceError::internal(format!(
            "engine returned {} gallery results for {gallery_len} images",
            outcome.gallery.len()
        )));
    }
    let mut items = Vec::with_capacity(gallery_len);
    let mut best: Option<(u32, f64)> = None;
    let mut rejections = Vec::new();
    for (index, result) in outcome.gallery.into_iter().enumerate() {
        let index = u32::try_from(index)
            .map_err(|_| ServiceError::internal("gallery index overflows u32"))?;
        let field = format!("gallery[{index}]");
        let outcome = match result {
            Ok(matched) => {
                let score = calibration.score(matched.similarity);
                if best.is_none_or(|(_, best_score)| score > best_score) {
                    best = Some((index, score));
                }
                gallery_item_result::Outcome::Match(Match {
                    face: Some(matched.face),
                    similarity: matched.similarity,
                    score,
                    near_identical: crate::copy::is_near_identical(mode, matched.similarity),
                })
            }
            Err(rejection) => {
                rejections.push((field.clone(), rejection.clone()));
                gallery_item_result::Outcome::Issue(FaceIssue {
                    reason: rejection.reason.into(),
                    field,
                    detail: rejection.detail,
                })
            }
        };
        items.push(GalleryItemResult {
            index,
            outcome: Some(outcome),
        });
    }
    let Some((best_index, best_score)) = best else {
        // No gallery image has a usable face: nothing to compare with. ErrorInfo carries the
        // first item's reason; each item's own reason is on its field violation.
        let mut rejections = rejections.into_iter();
        let Some((first_field, first)) = rejections.next() else {
            return Err(ServiceError::internal("empty gallery reached the response"));
        };
        let mut error = ServiceError::new(
            faceproof_runtime::ErrorCode::InvalidArgument,
            first.reason.code(),
            "no gallery image has a usable face",
        )
        .with_violation(first.reason.code(), first_field, first.detail);
        for (field, rejection) in rejections {
            error = error.with_violation(rejection.reason.code(), field, rejection.detail);
        }
        return Err(error);
    };
    Ok(CompareResponse {
        probe_face: Some(outcome.probe_face),
        gallery: items,
        best_index,
        best_score,
        calibration: calibration.id().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use faceproof_proto::common::v1::{Face, FaceIssueReason};

    use super::*;
    use crate::engine::{FaceRejection, GalleryMatch};

    const LIMITS: RequestLimits = RequestLimits {
        max_image_bytes: 10,
        max_gallery_items: 2,
    };

    fn request(probe: &[u8], gallery: &[&[u8]]) -> CompareRequest {
        CompareRequest {
            probe: probe.to_vec().into(),
            gallery: gallery.iter().map(|g| g.to_vec().into()).collect(),
            search_mode: SearchMode::Accurate.into(),
        }
    }

    fn field_of(error: &ServiceError) -> &str {
        &error.violations[0].field
    }

    #[test]
    fn validation_names_the_offending_field() {
        let cases: [(CompareRequest, &str, &str); 5] = [
            (request(b"", &[b"x"]), "probe", "empty_image"),
            (request(b"x", &[]), "gallery", "empty_gallery"),
            (
                request(b"x", &[b"x", b"x", b"x"]),
                "gallery",
                "gallery_too_large",
            ),
            (
                request(b"x", &[b"x", b"01234567890"]),
                "gallery[1]",
                "image_too_large",
            ),
            (
                CompareRequest {
                    search_mode: 9,
                    ..request(b"x", &[b"x"])
                },
                "search_mode",
                "invalid_search_mode",
            ),
        ];
        for (request, field, reason) in cases {
            let error = validate(request, LIMITS).unwrap_err();
            assert_eq!(field_of(&error), field);
            assert_eq!(error.reason, reason);
        }
        let job = validate(request(b"p", &[b"g"]), LIMITS).unwrap();
        assert_eq!(job.mode, SearchMode::Accurate);
    }

    #[test]
    fn only_a_cosine_above_the_copy_threshold_is_near_identical() {
        let calibration = Calibration::builtin().unwrap();
        let threshold = crate::copy::copy_threshold(SearchMode::Accurate);
        let outcome = CompareOutcome {
            probe_face: Face::default(),
            gallery: [threshold, threshold + 1e-6, 0.6]
                .into_iter()
                .map(|similarity| {
                    Ok(GalleryMatch {
                        face: Face::default(),
                        similarity,
                    })
                })
                .collect(),
        };
        let response = build_response(outcome, 3, &calibration, SearchMode::Accurate).unwrap();
        let flags: Vec<bool> = response
            .gallery
            .iter()
            .map(|item| match &item.outcome {
                Some(gallery_item_result::Outcome::Match(matched)) => matched.near_identical,
                _ => panic!("every item matched"),
            })
            .collect();
        assert_eq!(flags, [false, true, false]);
    }

    #[test]
    fn best_item_is_the_highest_score_among_matches() {
        let calibration = Calibration::builtin().unwrap();
        let outcome = CompareOutcome {
            probe_face: Face::default(),
            gallery: vec![
                Ok(GalleryMatch {
                    face: Face::default(),
                    similarity: 0.2,
                }),
                Err(FaceRejection::new(FaceIssueReason::FaceTooSmall, "tiny")),
                Ok(GalleryMatch {
                    face: Face::default(),
                    similarity: 0.5,
                }),
            ],
        };
        let response = build_response(outcome, 3, &calibration, SearchMode::Fast).unwrap();
        assert_eq!(response.best_index, 2);
        assert_eq!(response.best_score, calibration.score(0.5));
        assert_eq!(response.gallery.len(), 3);
        let Some(gallery_item_result::Outcome::Issue(issue)) = &response.gallery[1].outcome else {
            panic!("item 1 should be an issue");
        };
        assert_eq!(issue.field, "gallery[1]");
        assert_eq!(issue.reason(), FaceIssueReason::FaceTooSmall);
    }

    #[test]
    fn mismatched_result_count_is_internal() {
        let calibration = Calibration::builtin().unwrap();
        let outcome = CompareOutcome {
            probe_face: Face::default(),
            gallery: vec![],
        };
        let error = build_response(outcome, 1, &calibration, SearchMode::Fast).unwrap_err();
        assert_eq!(error.code, faceproof_runtime::ErrorCode::Internal);
    }
}
