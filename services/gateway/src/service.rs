//! The orchestration of one compare-with-liveness request: rate limit, validation, matcher call,
//! the skip rule, liveness call, records and signature, under one overall deadline.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use faceproof_proto::common::v1::FaceIssue;
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_client::LivenessClient;
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_client::MatcherClient;
use faceproof_signing::{Signer, false_accept_rate_for_threshold};
use faceproof_telemetry::{CompareOutcome, LivenessOutcome, Metrics, TraceContextInterceptor};
use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::auth::ClientId;
use crate::balancer::ReplicaPool;
use crate::config::Limits;
use crate::error::{Backend, ServiceError};
use crate::in_flight::InFlightLimiter;
use crate::rate_limit::RateLimiter;
use crate::validation::{SearchMode, ValidRequest, validate};

/// Liveness `result.reason` (status `skipped`) when the comparison score is below
/// `compare_min_score`.
pub const SKIP_REASON_BELOW_THRESHOLD: &str = "comparison_below_threshold";
/// Liveness `result.reason` (status `failed`, the check not run) when the probe is a copy of a
/// gallery image: the same bytes, or an embedding closer than any genuine pair of distinct photos.
pub const REASON_PROBE_IS_GALLERY_COPY: &str = "probe_is_gallery_copy";
/// The threshold `comparison.result.passed` is judged against when the caller sent no
/// `compare_min_score`: the lowest one the API accepts.
pub const DEFAULT_COMPARE_PASS_SCORE: f64 = crate::validation::COMPARE_MIN_SCORE_RANGE.0;

/// Overall request deadline per search mode.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub fast: Duration,
    pub accurate: Duration,
}

/// The gateway's request handling, shared by the gRPC and REST front ends.
#[derive(Debug)]
pub struct Gateway {
    pub limits: Limits,
    pub deadlines: Deadlines,
    pub rate_limiter: RateLimiter,
    /// Per-client requests in flight (`--max-in-flight-per-client`).
    pub in_flight: InFlightLimiter,
    pub matchers: ReplicaPool,
    pub liveness: ReplicaPool,
    pub signer: Signer,
    /// Decision counters (`faceproof_compare_decisions_total`, `faceproof_liveness_decisions_total`).
    pub metrics: Metrics,
}

impl Gateway {
    /// The public keys that verify this gateway's signatures.
    pub fn signing_keys(&self) -> pb::GetSigningKeysResponse {
        pb::GetSigningKeysResponse {
            keys: vec![self.signer.public_key()],
        }
    }

    /// Handles one request for `client`; `caller_timeout` is the caller's own deadline
    /// (grpc-timeout), which shortens ours when it is tighter.
    pub async fn compare_with_liveness(
        &self,
        client: &ClientId,
        request: pb::CompareWithLivenessRequest,
        caller_timeout: Option<Duration>,
    ) -> Result<pb::CompareWithLivenessResponse, ServiceError> {
        let _in_flight = self.admit(client)?;
        let request = validate(request, &self.limits)?;
        self.compare_valid(client, request, caller_timeout).await
    }

    /// The per-client admission of a request, before any of its work: the rate limit, then a
    /// place among the client's requests in flight. The returned slot is held until it is
    /// dropped, however the request ends (the caller going away included).
    pub fn admit(&self, client: &ClientId) -> Result<crate::in_flight::Slot, ServiceError> {
        self.rate_limiter
            .check(&client.0)
            .map_err(|retry_after| ServiceError::RateLimited { retry_after })?;
        self.in_flight
            .try_acquire(&client.0)
            .ok_or_else(|| ServiceError::TooManyInFlight {
                limit: self.in_flight.limit(),
                retry_after: crate::in_flight::RETRY_AFTER,
            })
    }

    /// Handles a request that was already admitted and validated (the REST front end does
    /// both before and while it reads the body).
    pub async fn compare_valid(
        &self,
        client: &ClientId,
        request: ValidRequest,
        caller_timeout: Option<Duration>,
    ) -> Result<pb::CompareWithLivenessResponse, ServiceError> {
        let started = Instant::now();
        let created_at = Utc::now();
        let budget = match request.search_mode {
            SearchMode::Fast => self.deadlines.fast,
            SearchMode::Accurate => self.deadlines.accurate,
        };
        let deadline = started + caller_timeout.map_or(budget, |caller| caller.min(budget));
        // Sizes and decisions only: never images, scores or the caller's credentials.
        let span = tracing::info_span!(
            "gateway.compare_with_liveness",
            search_mode = request.search_mode.as_str(),
            gallery_size = request.gallery.len(),
            compare_threshold_set = request.compare_min_score.is_some(),
            compare_outcome = tracing::field::Empty,
            liveness_outcome = tracing::field::Empty,
        );
        let result = self
            .orchestrate(client, request, created_at, deadline)
            .instrument(span)
            .await;
        match &result {
            Ok(response) => tracing::info!(
                client = %client.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                response_id = %response.id,
                "compare-with-liveness answered"
            ),
            Err(error) => tracing::info!(
                client = %client.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                reason = %error.reason(),
                "compare-with-liveness failed"
            ),
        }
        result
    }

    async fn orchestrate(
        &self,
        client: &ClientId,
        request: ValidRequest,
        created_at: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<pb::CompareWithLivenessResponse, ServiceError> {
        let ValidRequest {
            os,
            search_mode,
            compare_min_score,
            liveness_min_score,
            probe,
            gallery,
        } = request;
        // Over the exact bytes received, once per request: they bind the signed result to its
        // photos (`faceproof verify --probe --gallery`) and reveal a probe identical to a gallery
        // image.
        let probe_sha256 = sha256_hex(&probe);
        let gallery_sha256: Vec<String> = gallery.iter().map(|image| sha256_hex(image)).collect();
        let matcher_request = matcher_pb::CompareRequest {
            probe: probe.clone(),
            gallery,
            search_mode: search_mode.to_proto().into(),
        };
        let compared = self
            .matchers
            .call(deadline, matcher_request, |channel, request| {
                let mut matcher = MatcherClient::new(traced_channel(channel))
                    .max_encoding_message_size(usize::MAX);
                async move { matcher.compare(request).await }
                    .instrument(client_span(MATCHER_COMPARE))
            })
            .await
            .inspect_err(|error| {
                if is_probe_face_issue(error) {
                    self.record_compare(CompareOutcome::FaceIssue);
                }
            })?;
        let compared_at = Utc::now();
        check_score(Backend::Matcher, compared.best_score)?;
        self.record_compare(match compare_min_score {
            None => CompareOutcome::Unthresholded,
            Some(threshold) if compared.best_score >= threshold => CompareOutcome::Match,
            Some(_) => CompareOutcome::NoMatch,
        });

        let gallery: Vec<pb::GalleryItem> = compared
            .gallery
            .iter()
            .map(|item| gallery_item(item, &probe_sha256, &gallery_sha256))
            .collect();
        let probe_is_gallery_copy = gallery.iter().any(|item| item.probe_copy);
        let below_threshold =
            compare_min_score.filter(|threshold| compared.best_score < *threshold);
        let liveness_record =
            |status: &str, result: pb::LivenessResult, started: DateTime<Utc>| pb::LivenessRecord {
                id: new_id(),
                client: client.0.clone(),
                r#type: "liveness".to_owned(),
                status: status.to_owned(),
                search_mode: search_mode.as_str().to_owned(),
                os: os.as_str().to_owned(),
                liveness_min_score,
                result: Some(result),
                created_at: timestamp(started),
                updated_at: timestamp(Utc::now()),
            };
        let liveness = if probe_is_gallery_copy {
            // A copy of the ID photo is not a live capture whatever the model says: not run.
            self.record_liveness(LivenessOutcome::Failed);
            liveness_record(
                "failed",
                not_run(liveness_min_score, REASON_PROBE_IS_GALLERY_COPY, None),
                Utc::now(),
            )
        } else if below_threshold.is_some() {
            self.record_liveness(LivenessOutcome::Skipped);
            liveness_record(
                "skipped",
                not_run(
                    liveness_min_score,
                    SKIP_REASON_BELOW_THRESHOLD,
                    Some(compared.best_score),
                ),
                Utc::now(),
            )
        } else {
            let liveness_started = Utc::now();
            let check_request = liveness_pb::CheckRequest {
                image: probe,
                search_mode: search_mode.to_proto().into(),
                face_hint: compared.probe_face.clone(),
                os: os.as_str().to_owned(),
            };
            let checked = self
                .liveness
                .call(deadline, check_request, |channel, request| {
                    let mut liveness = LivenessClient::new(traced_channel(channel))
                        .max_encoding_message_size(usize::MAX);
                    async move { liveness.check(request).await }
                        .instrument(client_span(LIVENESS_CHECK))
                })
                .await?;
            let result = liveness_result(checked, liveness_min_score)?;
            self.record_liveness(if result.passed {
                LivenessOutcome::Passed
            } else {
                LivenessOutcome::Failed
            });
            let status = if result.issue.is_some() {
                "failed"
            } else {
                "success"
            };
            liveness_record(status, result, liveness_started)
        };
        let compare_pass_score = compare_min_score.unwrap_or(DEFAULT_COMPARE_PASS_SCORE);
        let finished_at = Utc::now();
        let comparison = pb::ComparisonRecord {
            id: new_id(),
            client: client.0.clone(),
            r#type: "compareLive".to_owned(),
            search_mode: search_mode.as_str().to_owned(),
            status: "success".to_owned(),
            result: Some(pb::ComparisonResult {
                score: compared.best_score,
                false_accept_rate: compare_min_score.map(false_accept_rate_for_threshold),
                best_gallery_index: compared.best_index,
                probe_face: compared.probe_face,
                gallery,
                passed: compared.best_score >= compare_pass_score,
                min_score: compare_pass_score,
                probe_sha256,
                probe_is_gallery_copy,
            }),
            compared_at: timestamp(compared_at),
            created_at: timestamp(created_at),
            updated_at: timestamp(finished_at),
        };
        let mut response = pb::CompareWithLivenessResponse {
            id: new_id(),
            data: Some(pb::ResponseData {
                comparison: Some(comparison),
                liveness: Some(liveness),
            }),
            signature: None,
        };
        self.signer
            .sign(&mut response, human_date_time(finished_at))
            .map_err(|error| ServiceError::Internal(format!("signing failed: {error}")))?;
        Ok(response)
    }
}

impl Gateway {
    fn record_compare(&self, outcome: CompareOutcome) {
        self.metrics.record_compare(outcome);
        tracing::Span::current().record("compare_outcome", outcome.as_str());
    }

    fn record_liveness(&self, outcome: LivenessOutcome) {
        self.metrics.record_liveness(outcome);
        tracing::Span::current().record("liveness_outcome", outcome.as_str());
    }
}

/// The matcher refuses a request that passed the gateway's validation only for its images: no
/// usable face in the probe (or an image it cannot decode).
fn is_probe_face_issue(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::BackendRejected { service: Backend::Matcher, status }
            if status.code() == Code::InvalidArgument
    )
}

/// The model service RPCs the gateway makes, as (gRPC service, method).
const MATCHER_COMPARE: (&str, &str) = ("faceproof.matcher.v1.Matcher", "Compare");
const LIVENESS_CHECK: (&str, &str) = ("faceproof.liveness.v1.Liveness", "Check");

/// A replica's channel that sends the current span's context in `traceparent`.
fn traced_channel(channel: Channel) -> InterceptedService<Channel, TraceContextInterceptor> {
    InterceptedService::new(channel, TraceContextInterceptor)
}

/// The client-side span of one backend call: its context travels in `traceparent`
/// ([`TraceContextInterceptor`]), so the model service's server span becomes its child.
fn client_span((service, method): (&'static str, &'static str)) -> tracing::Span {
    tracing::info_span!(
        "grpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    )
}

/// One gallery entry of the comparison record. The probe is a copy of this image when the bytes
/// are the same (same SHA-256) or the matcher found the embeddings near-identical.
fn gallery_item(
    item: &matcher_pb::GalleryItemResult,
    probe_sha256: &str,
    gallery_sha256: &[String],
) -> pb::GalleryItem {
    let sha256 = usize::try_from(item.index)
        .ok()
        .and_then(|index| gallery_sha256.get(index))
        .cloned()
        .unwrap_or_default();
    let mut entry = pb::GalleryItem {
        index: item.index,
        score: 0.0,
        face: None,
        issue: None,
        similarity: None,
        probe_copy: !sha256.is_empty() && sha256 == probe_sha256,
        sha256,
    };
    match &item.outcome {
        Some(matcher_pb::gallery_item_result::Outcome::Match(matched)) => {
            entry.score = matched.score;
            entry.similarity = Some(matched.similarity);
            entry.face = matched.face.clone();
            entry.probe_copy |= matched.near_identical;
        }
        Some(matcher_pb::gallery_item_result::Outcome::Issue(issue)) => {
            entry.issue = Some(issue.clone());
        }
        None => {}
    }
    entry
}

/// The result of a liveness check that did not run: not passed, no score, the reason.
fn not_run(min_score: f64, reason: &str, comparison_score: Option<f64>) -> pb::LivenessResult {
    pb::LivenessResult {
        liveness_score: None,
        passed: false,
        min_score,
        attack: None,
        issue: None,
        reason: reason.to_owned(),
        comparison_score,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `liveness_score > min_score` (strictly above, as the reference API); a capture-quality issue
/// fails the check without a score.
fn liveness_result(
    checked: liveness_pb::CheckResponse,
    min_score: f64,
) -> Result<pb::LivenessResult, ServiceError> {
    match checked.outcome {
        Some(liveness_pb::check_response::Outcome::Score(score)) => {
            check_score(Backend::Liveness, score.liveness_score)?;
            Ok(pb::LivenessResult {
                liveness_score: Some(score.liveness_score),
                passed: score.liveness_score > min_score,
                min_score,
                attack: score.attack.map(|attack| pb::AttackEvidence {
                    print_probability: attack.print_probability,
                    screen_probability: attack.screen_probability,
                }),
                issue: None,
                reason: String::new(),
                comparison_score: None,
            })
        }
        Some(liveness_pb::check_response::Outcome::Issue(issue)) => Ok(pb::LivenessResult {
            liveness_score: Some(0.0),
            passed: false,
            min_score,
            attack: None,
            // The liveness service names its own field (`image`): the caller sent `probe`.
            issue: Some(FaceIssue {
                field: "probe".to_owned(),
                ..issue
            }),
            reason: String::new(),
            comparison_score: None,
        }),
        None => Err(ServiceError::BackendFailed {
            service: Backend::Liveness,
            detail: "the answer has neither a score nor an issue".into(),
        }),
    }
}

fn check_score(service: Backend, score: f64) -> Result<(), ServiceError> {
    if (0.0..=1.0).contains(&score) {
        Ok(())
    } else {
        Err(ServiceError::BackendFailed {
            service,
            detail: format!("score {score} is outside 0..1"),
        })
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// RFC 3339, UTC, milliseconds: `2026-11-28T06:41:02.123Z`.
pub fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The human-readable `signature.dateTime`: `2026-11-28 06:41:02 UTC`.
pub fn human_date_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use faceproof_proto::common::v1::FaceIssueReason;

    fn score(value: f64) -> liveness_pb::CheckResponse {
        liveness_pb::CheckResponse {
            outcome: Some(liveness_pb::check_response::Outcome::Score(
                liveness_pb::LivenessScore {
                    liveness_score: value,
                    attack: None,
                    models: Vec::new(),
                },
            )),
            face: None,
        }
    }

    #[test]
    fn liveness_passes_strictly_above_the_threshold() {
        assert!(!liveness_result(score(0.6), 0.6).expect("scored").passed);
        assert!(
            liveness_result(score(0.6000001), 0.6)
                .expect("scored")
                .passed
        );
        assert!(liveness_result(score(f64::NAN), 0.6).is_err());
    }

    #[test]
    fn a_liveness_issue_fails_without_a_score() {
        let checked = liveness_pb::CheckResponse {
            outcome: Some(liveness_pb::check_response::Outcome::Issue(FaceIssue {
                reason: FaceIssueReason::FaceTooSmall.into(),
                field: "image".into(),
                detail: "small".into(),
            })),
            face: None,
        };
        let result = liveness_result(checked, 0.6).expect("issue is a result");
        assert!(!result.passed);
        assert_eq!(
            result.issue.map(|issue| issue.field),
            Some("probe".to_owned())
        );
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let time = DateTime::parse_from_rfc3339("2026-11-28T06:41:02.123456Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(timestamp(time), "2026-11-28T06:41:02.123Z");
        assert_eq!(human_date_time(time), "2026-11-28 06:41:02 UTC");
    }
}
