//! The `faceproof.liveness.v1.Liveness` gRPC service: validates requests, runs the engine on the
//! inference pool and maps its verdict to the response or to a status with rich details.

use faceproof_proto::common::v1::{Face, FaceIssue};
use faceproof_proto::liveness::v1::liveness_server::Liveness as LivenessApi;
use faceproof_proto::liveness::v1::{
    AttackEvidence, CheckRequest, CheckResponse, LivenessScore, ModelScore, check_response,
};
use faceproof_runtime::host::search_mode;
use faceproof_runtime::{Inference, ServiceError, check_image_bytes, respond};
use tonic::{Request, Response, Status};

use crate::engine::{CheckJob, EngineError, LivenessEngine, LivenessVerdict};

/// Longest accepted `os` value: it is recorded, so it must stay small.
const MAX_OS_LEN: usize = 32;

/// Request limits enforced before any work is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_image_bytes: usize,
}

/// The gRPC handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct LivenessService {
    inference: Inference<dyn LivenessEngine>,
    limits: RequestLimits,
}

impl LivenessService {
    pub fn new(inference: Inference<dyn LivenessEngine>, limits: RequestLimits) -> Self {
        Self { inference, limits }
    }

    async fn check_inner(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<CheckResponse, ServiceError> {
        let (deadline, request) = self.inference.accept(request);
        let job = validate(request, self.limits)?;
        let (verdict, cancel) = self
            .inference
            .run(deadline, job, |engine, job, cancel| {
                engine.check(job, cancel)
            })
            .await?;
        match verdict {
            Ok(verdict) => scored_response(verdict),
            Err(EngineError::Rejected(rejection)) if !rejection.is_image_level() => {
                // A capture-quality gate: answered in the response rather than a silently low score.
                Ok(CheckResponse {
                    outcome: Some(check_response::Outcome::Issue(FaceIssue {
                        reason: rejection.reason.into(),
                        field: "image".to_owned(),
                        detail: rejection.detail,
                    })),
                    face: rejection.face,
                })
            }
            Err(EngineError::Rejected(rejection)) => Err(ServiceError::invalid_field(
                rejection.reason.code(),
                "image",
                rejection.detail,
            )),
            Err(EngineError::DeadlineExceeded(_)) => Err(ServiceError::deadline_exceeded()),
            Err(EngineError::Cancelled(_)) => Err(ServiceError::stopped(&cancel)),
            Err(EngineError::Internal(detail)) => Err(ServiceError::internal(detail)),
        }
    }
}

#[tonic::async_trait]
impl LivenessApi for LivenessService {
    #[tracing::instrument(name = "liveness.check", skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        respond("liveness check", self.check_inner(request).await)
    }
}

/// Turns the wire request into a job, or names the offending field.
fn validate(request: CheckRequest, limits: RequestLimits) -> Result<CheckJob, ServiceError> {
    let mode = search_mode(request.search_mode)?;
    check_image_bytes(&request.image, "image", limits.max_image_bytes)?;
    if request.os.len() > MAX_OS_LEN {
        return Err(ServiceError::invalid_field(
            "invalid_os",
            "os",
            format!("longer than {MAX_OS_LEN} bytes"),
        ));
    }
    if let Some(hint) = &request.face_hint {
        check_hint(hint)?;
    }
    Ok(CheckJob {
        image: request.image.into(),
        mode,
        face_hint: request.face_hint,
        os: request.os,
    })
}

/// A hint must describe a real box: the engine crops around it.
fn check_hint(hint: &Face) -> Result<(), ServiceError> {
    let invalid = |description: &str| {
        ServiceError::invalid_field("invalid_face_hint", "face_hint", description.to_owned())
    };
    let Some(bbox) = &hint.r#box else {
        return Err(invalid("the hint has no box"));
    };
    let finite = [bbox.x, bbox.y, bbox.width, bbox.height]
        .iter()
        .chain(hint.landmarks.iter().flat_map(|p| [&p.x, &p.y]))
        .all(|v| v.is_finite());
    if !finite {
        return Err(invalid("coordinates must be finite"));
    }
    if bbox.width <= 0.0 || bbox.height <= 0.0 {
        return Err(invalid("box width and height must be positive"));
    }
    if !hint.landmarks.is_empty() && hint.landmarks.len() != 5 {
        return Err(invalid("landmarks must be absent or exactly five"));
    }
    Ok(())
}

fn scored_response(verdict: LivenessVerdict) -> Result<CheckResponse, ServiceError> {
    let mut probabilities = vec![verdict.liveness_score];
    if let Some(attack) = verdict.attack {
        probabilities.extend([attack.print_probability, attack.screen_probability]);
    }
    let in_range = |p: &f64| p.is_finite() && (0.0..=1.0).contains(p);
    if !probabilities.iter().all(in_range)
        || !verdict
            .models
            .iter()
            .map(|m| m.liveness_score)
            .all(|p| in_range(&p))
    {
        return Err(ServiceError::internal(format!(
            "engine returned probabilities out of 0..1: {probabilities:?}"
        )));
    }
    Ok(CheckResponse {
        outcome: Some(check_response::Outcome::Score(LivenessScore {
            liveness_score: verdict.liveness_score,
            attack: verdict.attack.map(|attack| AttackEvidence {
                print_probability: attack.print_probability,
                screen_probability: attack.screen_probability,
            }),
            models: verdict
                .models
                .into_iter()
                .map(|m| ModelScore {
                    model: m.model,
                    liveness_score: m.liveness_score,
                })
                .collect(),
        })),
        face: Some(verdict.face),
    })
}

#[cfg(test)]
mod tests {
    use faceproof_proto::common::v1::{BoundingBox, Point, SearchMode};

    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_image_bytes: 10,
    };

    fn request() -> CheckRequest {
        CheckRequest {
            image: b"img".to_vec().into(),
            search_mode: SearchMode::Fast.into(),
            face_hint: None,
            os: "IOS".into(),
        }
    }

    fn hint(width: f32, landmarks: usize) -> Face {
        Face {
            r#box: Some(BoundingBox {
                x: 1.0,
                y: 1.0,
                width,
                height: 10.0,
            }),
            landmarks: vec![Point { x: 1.0, y: 1.0 }; landmarks],
            detection_score: 0.9,
        }
    }

    #[test]
    fn validation_names_the_offending_field() {
        let cases = [
            (
                CheckRequest {
                    image: Default::default(),
                    ..request()
                },
                "image",
                "empty_image",
            ),
            (
                CheckRequest {
                    image: vec![0; 11].into(),
                    ..request()
                },
                "image",
                "image_too_large",
            ),
            (
                CheckRequest {
                    search_mode: 7,
                    ..request()
                },
                "search_mode",
                "invalid_search_mode",
            ),
            (
                CheckRequest {
                    os: "X".repeat(33),
                    ..request()
                },
                "os",
                "invalid_os",
            ),
            (
                CheckRequest {
                    face_hint: Some(hint(0.0, 5)),
                    ..request()
                },
                "face_hint",
                "invalid_face_hint",
            ),
            (
                CheckRequest {
                    face_hint: Some(hint(f32::NAN, 5)),
                    ..request()
                },
                "face_hint",
                "invalid_face_hint",
            ),
            (
                CheckRequest {
                    face_hint: Some(hint(5.0, 3)),
                    ..request()
                },
                "face_hint",
                "invalid_face_hint",
            ),
            (
                CheckRequest {
                    face_hint: Some(Face::default()),
                    ..request()
                },
                "face_hint",
                "invalid_face_hint",
            ),
        ];
        for (request, field, reason) in cases {
            let error = validate(request, LIMITS).unwrap_err();
            assert_eq!(error.violations[0].field, field);
            assert_eq!(error.reason, reason);
        }
        assert!(
            validate(
                CheckRequest {
                    face_hint: Some(hint(5.0, 5)),
                    ..request()
                },
                LIMITS
            )
            .is_ok()
        );
        assert!(
            validate(
                CheckRequest {
                    face_hint: Some(hint(5.0, 0)),
                    ..request()
                },
                LIMITS
            )
            .is_ok()
        );
    }

    #[test]
    fn out_of_range_probabilities_are_internal() {
        let verdict = LivenessVerdict {
            face: Face::default(),
            liveness_score: 1.5,
            attack: None,
            models: vec![],
        };
        assert!(scored_response(verdict).is_err());
    }
}
