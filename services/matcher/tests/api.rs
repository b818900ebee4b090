//! The matcher over real gRPC on 127.0.0.1:0, with a scripted fake engine behind the same trait
//! as the real one. The probe and gallery bytes are the script: `block` waits for the test to
//! release it, `panic` panics, `noface`/`small` are rejected, `cos:0.5` matches with that cosine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faceproof_imaging::Cancellation;
use faceproof_matcher::{
    Calibration, CompareJob, CompareOutcome, EngineError, FaceRejection, ImageRole, MatchEngine,
    Matcher, MatcherConfig, SubjectEmbedding, SubjectResult,
};
use faceproof_proto::common::v1::{FaceIssueReason, SearchMode};
use faceproof_proto::matcher::v1::matcher_server::SERVICE_NAME;
use faceproof_proto::matcher::v1::{CompareRequest, CompareResponse, gallery_item_result};
use faceproof_runtime::ServingArgs;
use faceproof_testkit::model_service::{
    Gate, RunningService, Scripted, call, error_details as details, gate, scripted_face as face,
    within,
};
use tokio::sync::mpsc as async_mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

struct FakeEngine {
    /// Images the engine was asked for (the probe and each gallery image are one each).
    embed_calls: AtomicUsize,
    /// `pair` images running now or done.
    pairing: AtomicUsize,
    /// `spin` jobs that saw their cancellation and stopped.
    stopped: AtomicUsize,
    /// `block` jobs (and a gated warm-up) wait here for the test's release (or its end).
    gate: Gate,
    gate_warm_up: bool,
}

impl MatchEngine for FakeEngine {
    fn embed_subject(
        &self,
        image: &[u8],
        _mode: SearchMode,
        role: ImageRole,
        cancel: &Cancellation,
    ) -> SubjectResult {
        self.embed_calls.fetch_add(1, Ordering::SeqCst);
        match image {
            b"block" => self.gate.hold(),
            b"panic" => panic!("fake engine panicked"),
            // A long stage that checks its cancellation, as the real engine's decode and
            // inference loops do.
            b"spin" => {
                while cancel.check().is_ok() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                self.stopped.fetch_add(1, Ordering::SeqCst);
            }
            // Waits (checking its cancellation) until another image of the request runs at the
            // same time: only a request spread over two workers gets past it.
            b"pair" => {
                self.pairing.fetch_add(1, Ordering::SeqCst);
                while self.pairing.load(Ordering::SeqCst) < 2 {
                    cancel.check()?;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            b"noface" => {
                return Ok(Err(FaceRejection::new(
                    FaceIssueReason::NoFaceDetected,
                    "no face found",
                )));
            }
            b"small" => {
                return Ok(Err(FaceRejection::new(
                    FaceIssueReason::FaceTooSmall,
                    "31 px",
                )));
            }
            _ => {}
        }
        cancel.check()?;
        // The probe's embedding is the unit x axis: a gallery image's cosine with it is the
        // first coordinate of its own unit embedding.
        let (face_x, cosine) = match role {
            ImageRole::Probe => (0.0, 1.0),
            ImageRole::Gallery => {
                let text = std::str::from_utf8(image).unwrap_or("");
                let cosine = text
                    .strip_prefix("cos:")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.9_f32);
                (1.0, cosine)
            }
        };
        Ok(Ok(SubjectEmbedding {
            face: face(face_x),
            embedding: vec![cosine, (1.0 - cosine * cosine).sqrt()],
        }))
    }

    fn warm_up(&self) -> Result<(), EngineError> {
        if self.gate_warm_up {
            self.gate.wait_for_release();
        }
        Ok(())
    }
}

struct Options {
    threads: usize,
    queue_capacity: usize,
    gate_warm_up: bool,
    shutdown_grace: Duration,
}

impl Options {
    fn one_worker_and_queue(queue_capacity: usize) -> Self {
        Self {
            threads: 1,
            queue_capacity,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            threads: 1,
            queue_capacity: 4,
            gate_warm_up: false,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The matcher on 127.0.0.1:0 with the fake engine and the engine's gate lever.
type TestApp = Scripted<Matcher, FakeEngine>;

const MAX_IMAGE_BYTES: usize = 64;

async fn spawn_app(options: Options) -> TestApp {
    let (gate, lever) = gate();
    let engine = Arc::new(FakeEngine {
        embed_calls: AtomicUsize::new(0),
        pairing: AtomicUsize::new(0),
        stopped: AtomicUsize::new(0),
        gate,
        gate_warm_up: options.gate_warm_up,
    });
    let mut config = MatcherConfig {
        max_gallery_items: 4,
        ..MatcherConfig::default()
    };
    config.host.max_image_bytes = MAX_IMAGE_BYTES;
    config.host.serving = ServingArgs {
        inference_threads: Some(options.threads),
        queue_capacity: options.queue_capacity,
        shutdown_grace_ms: u64::try_from(options.shutdown_grace.as_millis()).unwrap(),
        ..ServingArgs::default()
    };
    let service = RunningService::<Matcher>::launch(config, engine.clone(), !options.gate_warm_up)
        .await
        .unwrap();
    TestApp::new(service, engine, lever)
}

/// Sends a request whose probe blocks the single worker, and waits until it runs.
async fn occupy_worker(app: &mut TestApp) -> JoinHandle<Result<CompareResponse, Status>> {
    let mut client = app.service.client();
    app.hold_worker(async move { call(client.compare(request(b"block", &[b"cos:0.5"]))).await })
        .await
}

fn request(probe: &[u8], gallery: &[&[u8]]) -> CompareRequest {
    CompareRequest {
        probe: probe.to_vec().into(),
        gallery: gallery.iter().map(|item| item.to_vec().into()).collect(),
        search_mode: SearchMode::Fast.into(),
    }
}

/// One compare call on the app's matcher.
async fn compare(app: &TestApp, request: CompareRequest) -> Result<CompareResponse, Status> {
    call(app.service.client().compare(request)).await
}

#[tokio::test]
async fn health_is_not_serving_until_warm_up_completes() {
    let mut app = spawn_app(Options {
        gate_warm_up: true,
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.service.health_status(SERVICE_NAME).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        app.service.health_status("").await,
        ServingStatus::NotServing
    );
    app.lever.release();
    app.service.wait_for_status(ServingStatus::Serving).await;
    assert_eq!(app.service.health_status("").await, ServingStatus::Serving);
}

#[tokio::test]
async fn compare_returns_calibrated_scores_and_gallery_issues() {
    let app = spawn_app(Options::default()).await;
    let response = compare(&app, request(b"face", &[b"cos:0.2", b"noface", b"cos:0.5"]))
        .await
        .unwrap();
    let calibration = Calibration::builtin().unwrap();
    let similarity = |index: usize| match &response.gallery[index].outcome {
        Some(gallery_item_result::Outcome::Match(matched)) => matched.similarity,
        other => panic!("gallery[{index}] should match: {other:?}"),
    };
    assert!((similarity(2) - 0.5).abs() < 1e-6, "{}", similarity(2));
    assert_eq!(response.best_index, 2);
    assert_eq!(response.best_score, calibration.score(similarity(2)));
    assert_eq!(response.calibration, calibration.id());
    assert_eq!(response.probe_face, Some(face(0.0)));
    assert_eq!(response.gallery.len(), 3);
    for (index, item) in response.gallery.iter().enumerate() {
        assert_eq!(item.index as usize, index);
    }
    let Some(gallery_item_result::Outcome::Match(first)) = &response.gallery[0].outcome else {
        panic!("gallery[0] should match");
    };
    assert!(
        (first.similarity - 0.2).abs() < 1e-6,
        "{}",
        first.similarity
    );
    assert_eq!(first.score, calibration.score(first.similarity));
    let Some(gallery_item_result::Outcome::Issue(issue)) = &response.gallery[1].outcome else {
        panic!("gallery[1] should be an issue");
    };
    assert_eq!(issue.reason(), FaceIssueReason::NoFaceDetected);
    assert_eq!(issue.field, "gallery[1]");
}

#[tokio::test]
async fn probe_without_face_is_invalid_argument_on_probe() {
    let app = spawn_app(Options::default()).await;
    let status = compare(&app, request(b"noface", &[b"cos:0.5"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (reason, violations) = details(&status);
    assert_eq!(reason, "no_face_detected");
    assert_eq!(
        violations,
        [("probe".to_owned(), "no_face_detected".to_owned())]
    );
}

#[tokio::test]
async fn no_usable_gallery_face_names_every_item() {
    let app = spawn_app(Options::default()).await;
    let status = compare(&app, request(b"face", &[b"noface", b"small"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (reason, violations) = details(&status);
    assert_eq!(reason, "no_face_detected");
    assert_eq!(
        violations,
        [
            ("gallery[0]".to_owned(), "no_face_detected".to_owned()),
            ("gallery[1]".to_owned(), "face_too_small".to_owned()),
        ]
    );
}

#[tokio::test]
async fn malformed_requests_are_rejected_before_inference() {
    let app = spawn_app(Options::default()).await;
    let oversized = vec![b'x'; MAX_IMAGE_BYTES + 1];
    let cases: [(CompareRequest, &str, &str); 4] = [
        (request(b"", &[b"cos:0.5"]), "probe", "empty_image"),
        (request(b"face", &[]), "gallery", "empty_gallery"),
        (
            request(&oversized, &[b"cos:0.5"]),
            "probe",
            "image_too_large",
        ),
        (
            request(b"face", &[b"cos:0.5", &oversized]),
            "gallery[1]",
            "image_too_large",
        ),
    ];
    for (request, field, field_reason) in cases {
        let status = compare(&app, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let (reason, violations) = details(&status);
        assert_eq!(reason, field_reason);
        assert_eq!(violations, [(field.to_owned(), field_reason.to_owned())]);
    }
    assert_eq!(app.engine.embed_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn full_queue_answers_resource_exhausted_at_once() {
    let mut app = spawn_app(Options::one_worker_and_queue(1)).await;
    let blocked = occupy_worker(&mut app).await;

    // One of these takes the single queue slot; the other three must be refused immediately.
    let (results_tx, mut results) = async_mpsc::unbounded_channel();
    for _ in 0..4 {
        let mut client = app.service.client();
        let results_tx = results_tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = call(client.compare(request(b"face", &[b"cos:0.5"]))).await;
            let _ = results_tx.send((result, sent.elapsed()));
        });
    }
    for _ in 0..3 {
        let (result, elapsed) = within(results.recv()).await.unwrap();
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(details(&status).0, "inference_queue_full");
        assert!(elapsed < Duration::from_secs(1), "refusal took {elapsed:?}");
    }
    assert_eq!(
        app.service
            .pool_stats()
            .rejected_queue_full
            .load(Ordering::Relaxed),
        3
    );

    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    let (queued, _) = within(results.recv()).await.unwrap();
    queued.unwrap();
}

#[tokio::test]
async fn one_request_spreads_over_idle_workers() {
    let app = spawn_app(Options {
        threads: 2,
        ..Options::default()
    })
    .await;
    // Each `pair` image waits for the other: on one worker this would run into the deadline.
    let mut paired = tonic::Request::new(request(b"pair", &[b"pair"]));
    paired.set_timeout(Duration::from_secs(5));
    let response = within(app.service.client().compare(paired))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.gallery.len(), 1);
    assert_eq!(app.engine.embed_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_takes_one_place_in_the_queue_whatever_its_gallery_size() {
    let mut app = spawn_app(Options::one_worker_and_queue(1)).await;
    let blocked = occupy_worker(&mut app).await;
    // Five jobs wait in a queue of one request: admitted, not refused.
    let mut client = app.service.client();
    let queued = tokio::spawn(async move {
        call(client.compare(request(
            b"face",
            &[b"cos:0.1", b"cos:0.2", b"cos:0.3", b"cos:0.4"],
        )))
        .await
    });
    // It is waiting (all its jobs queued behind the blocked request's gallery image): the next
    // request is refused.
    within(async {
        while app.service.pool_stats().queue_depth.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let status = compare(&app, request(b"face", &[b"cos:0.5"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    let response = within(queued).await.unwrap().unwrap();
    assert_eq!(response.best_index, 3);
}

#[tokio::test]
async fn the_probe_s_rejection_wins_over_any_gallery_failure() {
    // As when the images ran one after another (the probe first), on one worker and on two.
    for threads in [1, 2] {
        let app = spawn_app(Options {
            threads,
            ..Options::default()
        })
        .await;
        let status = compare(&app, request(b"noface", &[b"panic", b"cos:0.5"]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{threads} workers");
        assert_eq!(details(&status).0, "no_face_detected");
    }
}

#[tokio::test]
async fn a_failing_image_stops_the_images_after_it() {
    // Two workers, the probe held: the request still waits for the probe, so the panicking
    // gallery image (on the other worker) is what stops the spinning image after it, not the
    // request's end. The answer is the panic's INTERNAL, the first failure in image order (the
    // spinning image's own "cancelled" comes after it).
    let mut app = spawn_app(Options {
        threads: 2,
        ..Options::default()
    })
    .await;
    let mut client = app.service.client();
    let answer = app
        .hold_worker(async move {
            let mut failing = tonic::Request::new(request(b"block", &[b"panic", b"spin"]));
            failing.set_timeout(Duration::from_secs(60));
            call(client.compare(failing)).await
        })
        .await;
    within(async {
        while app.engine.stopped.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    app.lever.release();
    let status = within(answer).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Internal);

    // One worker: the answer may come before the worker takes the spinning image, which is then
    // skipped unrun; if it was taken first, it stops at its first check. Either way the worker
    // is free long before the image's 60 s deadline: the next request, queued behind it, is
    // answered.
    let app = spawn_app(Options::default()).await;
    let mut failing = tonic::Request::new(request(b"face", &[b"panic", b"spin"]));
    failing.set_timeout(Duration::from_secs(60));
    let status = within(app.service.client().compare(failing))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    compare(&app, request(b"face", &[b"cos:0.5"]))
        .await
        .unwrap();
    let stats = app.service.pool_stats();
    let skipped = stats.abandoned.load(Ordering::SeqCst);
    let stopped = u64::try_from(app.engine.stopped.load(Ordering::SeqCst)).unwrap();
    assert_eq!(skipped + stopped, 1, "skipped {skipped}, stopped {stopped}");
}

#[tokio::test]
async fn a_running_job_stops_at_the_deadline_and_when_its_caller_goes_away() {
    let app = spawn_app(Options::default()).await;
    let mut late = tonic::Request::new(request(b"spin", &[b"cos:0.5"]));
    late.set_timeout(Duration::from_millis(200));
    let status = within(app.service.client().compare(late))
        .await
        .unwrap_err();
    // Our answer (DEADLINE_EXCEEDED, a few ms before the caller's deadline) races tonic's own
    // grpc-timeout handling, which answers CANCELLED "Timeout expired" when the machine is busy.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The engine saw the deadline inside its stage and stopped (not just the waiting side).
    let stopped = |app: &TestApp| app.engine.stopped.load(Ordering::SeqCst);
    within(async {
        while stopped(&app) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // A caller that goes away (its future dropped) cancels the running job too.
    let mut gone = tonic::Request::new(request(b"spin", &[b"cos:0.5"]));
    gone.set_timeout(Duration::from_secs(60));
    let mut client = app.service.client();
    let abandoned = tokio::spawn(async move { client.compare(gone).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    abandoned.abort();
    within(async {
        while stopped(&app) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn deadline_passing_in_the_queue_is_deadline_exceeded_and_never_runs() {
    let mut app = spawn_app(Options::one_worker_and_queue(2)).await;
    let blocked = occupy_worker(&mut app).await;

    let mut late = tonic::Request::new(request(b"face", &[b"cos:0.5"]));
    late.set_timeout(Duration::from_millis(200));
    let status = within(app.service.client().compare(late))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);

    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    // FIFO: once this one has run, the expired jobs have been taken from the queue and skipped:
    // two images of the blocked request and two of this one ran.
    compare(&app, request(b"face", &[b"cos:0.5"]))
        .await
        .unwrap();
    assert_eq!(app.engine.embed_calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn engine_panic_is_internal_and_the_service_keeps_serving() {
    let app = spawn_app(Options::default()).await;
    let status = compare(&app, request(b"panic", &[b"cos:0.5"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        !status.message().contains("fake engine"),
        "panic text must not leak"
    );
    compare(&app, request(b"face", &[b"cos:0.5"]))
        .await
        .unwrap();
    assert_eq!(app.service.pool_stats().panicked.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn graceful_shutdown_reports_not_serving_and_lets_in_flight_requests_finish() {
    let mut app = spawn_app(Options::default()).await;
    let blocked = occupy_worker(&mut app).await;
    let mut updates = within(app.service.health().watch(HealthCheckRequest {
        service: SERVICE_NAME.to_owned(),
    }))
    .await
    .unwrap()
    .into_inner();
    let first = within(updates.next()).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    app.service.stop();
    let next = within(updates.next()).await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(updates);

    app.lever.release();
    let response = within(blocked).await.unwrap().unwrap();
    assert_eq!(response.gallery.len(), 1);
    app.service.stopped().await.unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_requests_after_the_grace_period() {
    let mut app = spawn_app(Options {
        shutdown_grace: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    let _stuck = occupy_worker(&mut app).await;
    app.service.stop();
    app.service.stopped().await.unwrap();
}

/// The real engine over the converted weights and the public-domain fixtures.
mod real_models {
    use faceproof_matcher::vision::{VisionMatchEngine, VisionMatchSettings};
    use faceproof_models::{ModelName, ModelStore};
    use faceproof_testkit::model_service::{fixture, repo_path};

    use super::*;

    fn engine(fast_detector_side: u32) -> VisionMatchEngine {
        engine_with(VisionMatchSettings {
            fast_detector_side,
            ..VisionMatchSettings::default()
        })
    }

    fn engine_with(settings: VisionMatchSettings) -> VisionMatchEngine {
        let store = ModelStore::at(repo_path("models/store")).unwrap();
        VisionMatchEngine::from_weights(
            &store.read_verified(ModelName::YuNet).unwrap(),
            &store.read_verified(ModelName::SFace).unwrap(),
            settings,
        )
        .unwrap()
    }

    /// `--min-face-px` decides `face_too_small`: the portrait's face (about 260 px at full
    /// resolution) passes the default and is refused above its size.
    #[test]
    fn the_minimum_face_size_is_a_setting() {
        let deadline = Cancellation::never();
        let job = || CompareJob {
            probe: fixture("obama_2012_official_portrait.jpg"),
            gallery: vec![fixture("obama_2009_congress.jpg")],
            mode: SearchMode::Fast,
        };
        let default = engine(320).compare(job(), &deadline).unwrap();
        let side = {
            let face = default.probe_face.r#box.unwrap();
            face.width.min(face.height)
        };
        assert!(side > 100.0, "{side}");
        let strict = engine_with(VisionMatchSettings {
            min_face_px: side.ceil() as u32 + 1,
            ..VisionMatchSettings::default()
        });
        match strict.compare(job(), &deadline) {
            Err(EngineError::Probe(rejection)) => {
                assert_eq!(rejection.reason, FaceIssueReason::FaceTooSmall)
            }
            other => panic!("expected face_too_small, got {other:?}"),
        }
    }

    fn similarities(outcome: &CompareOutcome) -> Vec<f64> {
        outcome
            .gallery
            .iter()
            .map(|item| item.as_ref().unwrap().similarity)
            .collect()
    }

    fn job(mode: SearchMode) -> CompareJob {
        CompareJob {
            probe: fixture("obama_2009_congress.jpg"),
            gallery: vec![
                fixture("obama_2012_official_portrait.jpg"),
                fixture("biden_2010_blue_room.jpg"),
                b"not an image".to_vec(),
            ],
            mode,
        }
    }

    #[test]
    fn a_truncated_probe_is_refused_never_scored_on_grey() {
        let engine = engine(320);
        let whole = fixture("obama_2009_congress.jpg");
        for percent in [30, 50, 70] {
            let cut = whole[..whole.len() * percent / 100].to_vec();
            let job = CompareJob {
                probe: cut,
                ..job(SearchMode::Fast)
            };
            match engine.compare(job, &Cancellation::never()) {
                Err(EngineError::Probe(rejection)) => {
                    assert_eq!(
                        rejection.reason,
                        FaceIssueReason::ImageTruncated,
                        "{percent}%"
                    );
                    assert_eq!(rejection.reason.code(), "image_truncated");
                }
                other => panic!("cut at {percent}%: {other:?}"),
            }
        }
    }

    #[test]
    fn a_passed_deadline_stops_the_real_pipeline() {
        let engine = engine(320);
        let expired = Cancellation::with_deadline(std::time::Instant::now());
        assert!(matches!(
            engine.compare(job(SearchMode::Accurate), &expired),
            Err(EngineError::Cancelled(_))
        ));
    }

    /// The same portrait twice side by side, encoded as PNG: two faces of the same size.
    fn two_equal_faces_side_by_side() -> Vec<u8> {
        let options = faceproof_imaging::DecodeOptions::default();
        let left =
            faceproof_imaging::decode(&fixture("obama_2012_official_portrait.jpg"), &options)
                .unwrap()
                .image;
        let height = 400;
        let width = left.width() * height / left.height();
        let left = faceproof_imaging::resize_area(&left, width, height);
        let right = left.clone();
        let mut canvas = faceproof_imaging::RgbImage::new(left.width() + right.width(), height);
        image::imageops::replace(&mut canvas, &left, 0, 0);
        image::imageops::replace(&mut canvas, &right, i64::from(left.width()), 0);
        let mut png = Vec::new();
        canvas
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    #[test]
    fn a_probe_with_two_similar_faces_is_refused_but_a_gallery_image_keeps_its_subject() {
        let engine = engine(640);
        let two_faces = two_equal_faces_side_by_side();
        let deadline = Cancellation::never();
        let refused = engine.compare(
            CompareJob {
                probe: two_faces.clone(),
                gallery: vec![fixture("obama_2009_congress.jpg")],
                mode: SearchMode::Fast,
            },
            &deadline,
        );
        match refused {
            Err(EngineError::Probe(rejection)) => {
                assert_eq!(rejection.reason, FaceIssueReason::MultipleFacesDetected)
            }
            other => panic!("expected multiple_faces_detected, got {other:?}"),
        }
        let outcome = engine
            .compare(
                CompareJob {
                    probe: fixture("obama_2009_congress.jpg"),
                    gallery: vec![two_faces],
                    mode: SearchMode::Fast,
                },
                &deadline,
            )
            .unwrap();
        assert!(outcome.gallery[0].is_ok(), "{:?}", outcome.gallery[0]);
    }

    /// A large JPEG is decoded at reduced scale, yet its face comes back in full-resolution
    /// pixels and embeds as the original does.
    #[test]
    fn large_jpeg_is_decoded_reduced_and_reported_in_full_resolution_pixels() {
        let original = fixture("obama_2012_official_portrait.jpg");
        let options = faceproof_imaging::DecodeOptions::default();
        let portrait = faceproof_imaging::decode(&original, &options)
            .unwrap()
            .image;
        // 910x1137 -> 2730x3411: long enough to be decoded at 1/2.
        let factor = 3;
        let large = image::imageops::resize(
            &portrait,
            portrait.width() * factor,
            portrait.height() * factor,
            image::imageops::FilterType::Triangle,
        );
        let mut large_jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut large_jpeg, 95)
            .encode_image(&large)
            .unwrap();
        let reduced = faceproof_imaging::decode(
            &large_jpeg,
            &faceproof_imaging::DecodeOptions {
                min_long_side: Some(1600),
                ..options
            },
        )
        .unwrap();
        assert_eq!(
            reduced.scale, 0.5,
            "the service's decode options reduce this photo"
        );

        let engine = engine(640);
        let deadline = Cancellation::never();
        let run = |probe: Vec<u8>| {
            engine
                .compare(
                    CompareJob {
                        probe,
                        gallery: vec![original.clone(), fixture("obama_2009_congress.jpg")],
                        mode: SearchMode::Fast,
                    },
                    &deadline,
                )
                .unwrap()
        };
        let small = run(original.clone());
        let large = run(large_jpeg);
        let small_box = small.probe_face.r#box.unwrap();
        let large_box = large.probe_face.r#box.unwrap();
        let scaled = factor as f32;
        // Within 3% of the face size: the detector saw nearly the same 640 px image.
        let tolerance = 0.03 * small_box.width * scaled;
        for (got, want) in [
            (large_box.x, small_box.x * scaled),
            (large_box.y, small_box.y * scaled),
            (large_box.width, small_box.width * scaled),
            (large_box.height, small_box.height * scaled),
        ] {
            assert!(
                (got - want).abs() < tolerance,
                "box {large_box:?} vs 3 x {small_box:?}"
            );
        }
        for (got, want) in large
            .probe_face
            .landmarks
            .iter()
            .zip(&small.probe_face.landmarks)
        {
            assert!(
                (got.x - want.x * scaled).abs() < tolerance,
                "{got:?} vs 3 x {want:?}"
            );
            assert!(
                (got.y - want.y * scaled).abs() < tolerance,
                "{got:?} vs 3 x {want:?}"
            );
        }
        let [itself, other] = similarities(&large)[..] else {
            panic!("two matches expected");
        };
        assert!(
            itself > 0.9,
            "the enlarged portrait against itself: {itself}"
        );
        let reference = similarities(&small)[1];
        assert!(
            (other - reference).abs() < 0.05,
            "against another photo: {other} (full-size original: {reference})"
        );
    }

    /// `faceproof eval` embeds each image alone (`MatchPipeline::embed_image`), as the service
    /// now does: its embeddings, hence the scores it reports, are the service's bit for bit.
    #[test]
    fn the_service_embeds_each_image_exactly_as_faceproof_eval_does() {
        let store = ModelStore::at(repo_path("models/store")).unwrap();
        let pipeline = faceproof_vision::pipeline::MatchPipeline::from_weights(
            &store.read_verified(ModelName::YuNet).unwrap(),
            &store.read_verified(ModelName::SFace).unwrap(),
            VisionMatchSettings::default(),
        )
        .unwrap();
        let engine = engine_with(VisionMatchSettings::default());
        for mode in [SearchMode::Fast, SearchMode::Accurate] {
            for image in job(mode).gallery.iter().take(2) {
                let served = engine
                    .embed_subject(image, mode, ImageRole::Gallery, &Cancellation::never())
                    .unwrap()
                    .unwrap();
                let evaluated = pipeline.embed_image(image, mode).unwrap().unwrap();
                assert_eq!(served.embedding, evaluated.embedding, "{mode:?}");
                assert_eq!(served.face, evaluated.face, "{mode:?}");
            }
        }
    }

    #[test]
    fn detector_at_640_reproduces_the_reference_cosines() {
        let engine = engine(640);
        let outcome = engine
            .compare(job(SearchMode::Fast), &Cancellation::never())
            .unwrap();
        let [same, other] = similarities(&CompareOutcome {
            gallery: outcome.gallery[..2].to_vec(),
            ..outcome.clone()
        })[..] else {
            panic!("two matches expected");
        };
        eprintln!("detector 640, single embedding: same {same:.4}, different {other:.4}");
        // onnxruntime reference: 0.7434 (same person), 0.2611 (Obama vs Biden).
        assert!((same - 0.7434).abs() < 0.03, "same-person cosine {same}");
        assert!(
            (other - 0.2611).abs() < 0.03,
            "different-person cosine {other}"
        );
        let issue = outcome.gallery[2].as_ref().unwrap_err();
        assert_eq!(issue.reason, FaceIssueReason::UnsupportedFormat);
    }

    #[tokio::test]
    async fn both_modes_separate_same_and_different_people_over_grpc() {
        // The shared real engine has the default settings (FAST detector side 320).
        let service = RunningService::<Matcher>::start_with_real_models(MatcherConfig::default())
            .await
            .unwrap();
        let mut client = service.client();
        for mode in [SearchMode::Fast, SearchMode::Accurate] {
            let job = job(mode);
            let started = Instant::now();
            let response = tokio::time::timeout(
                Duration::from_secs(120),
                client.compare(CompareRequest {
                    probe: job.probe.into(),
                    gallery: job.gallery.into_iter().map(Into::into).collect(),
                    search_mode: mode.into(),
                }),
            )
            .await
            .unwrap()
            .unwrap()
            .into_inner();
            eprintln!(
                "{mode:?}: {:?} for 3 images, best score {:.3}, gallery {:?}",
                started.elapsed(),
                response.best_score,
                response
                    .gallery
                    .iter()
                    .map(|g| &g.outcome)
                    .collect::<Vec<_>>()
            );
            assert_eq!(response.best_index, 0, "{mode:?}");
            assert!(
                response.best_score > 0.6,
                "{mode:?}: {}",
                response.best_score
            );
            let Some(gallery_item_result::Outcome::Match(other)) = &response.gallery[1].outcome
            else {
                panic!("Biden's face should be found");
            };
            assert!(
                other.similarity < 0.33 && other.score < 0.6,
                "{mode:?}: {other:?}"
            );
            assert!(matches!(
                response.gallery[2].outcome,
                Some(gallery_item_result::Outcome::Issue(_))
            ));
        }
        service.stopped().await.unwrap();
    }
}

#[tokio::test]
async fn reflection_lists_the_matcher_and_health_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app(Options::default()).await;
    let mut reflection = ServerReflectionClient::new(app.service.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = within(reflection.server_reflection_info(tokio_stream::once(request)))
        .await
        .unwrap()
        .into_inner();
    let response = within(responses.next()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == SERVICE_NAME), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}
