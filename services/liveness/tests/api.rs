//! The liveness service over real gRPC on 127.0.0.1:0, with a scripted fake engine behind the
//! same trait as the real one. The image bytes are the script: `block` waits for the test to
//! release it, `panic` panics, `noface`/`border` fail a capture-quality gate, `garbage` is
//! undecodable, `live:0.8` scores 0.8.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faceproof_imaging::Cancellation;
use faceproof_liveness::{
    AttackSplit, CheckJob, EngineError, FaceRejection, Liveness, LivenessConfig, LivenessEngine,
    LivenessVerdict, ModelVerdict,
};
use faceproof_proto::common::v1::{BoundingBox, Face, FaceIssueReason, SearchMode};
use faceproof_proto::liveness::v1::liveness_server::SERVICE_NAME;
use faceproof_proto::liveness::v1::{CheckRequest, CheckResponse, check_response};
use faceproof_runtime::ServingArgs;
use faceproof_testkit::model_service::{
    Gate, RunningService, Scripted, call, error_details as details, gate, scripted_face as face,
    within,
};
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const MAX_IMAGE_BYTES: usize = 64;

struct FakeEngine {
    check_calls: AtomicUsize,
    /// `block` jobs (and a gated warm-up) wait here for the test's release (or its end).
    gate: Gate,
    gate_warm_up: bool,
}

impl LivenessEngine for FakeEngine {
    fn check(&self, job: CheckJob, cancel: &Cancellation) -> Result<LivenessVerdict, EngineError> {
        self.check_calls.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&job.image).into_owned();
        let reject = |reason, face| {
            Err(EngineError::Rejected(FaceRejection {
                face,
                ..FaceRejection::new(reason, "scripted")
            }))
        };
        match text.as_str() {
            "block" => self.gate.hold(),
            "panic" => panic!("fake engine panicked"),
            "noface" => return reject(FaceIssueReason::NoFaceDetected, None),
            "border" => return reject(FaceIssueReason::FaceCloseToBorder, Some(face(0.0))),
            "garbage" => return reject(FaceIssueReason::ImageUndecodable, None),
            _ => {}
        }
        cancel.check()?;
        let score = text
            .strip_prefix("live:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.9);
        Ok(LivenessVerdict {
            // The hint wins, as the real engine does.
            face: job.face_hint.unwrap_or_else(|| face(5.0)),
            liveness_score: score,
            attack: Some(AttackSplit {
                print_probability: (1.0 - score) * 0.25,
                screen_probability: (1.0 - score) * 0.75,
            }),
            models: vec![ModelVerdict {
                model: "MiniFASNetV2@2.7".into(),
                liveness_score: score,
            }],
        })
    }

    fn warm_up(&self) -> Result<(), EngineError> {
        if self.gate_warm_up {
            self.gate.wait_for_release();
        }
        Ok(())
    }
}

/// The liveness service on 127.0.0.1:0 with the fake engine and the engine's gate lever.
type TestApp = Scripted<Liveness, FakeEngine>;

async fn spawn_app(queue_capacity: usize, gate_warm_up: bool) -> TestApp {
    let (gate, lever) = gate();
    let engine = Arc::new(FakeEngine {
        check_calls: AtomicUsize::new(0),
        gate,
        gate_warm_up,
    });
    let mut config = LivenessConfig::default();
    config.host.max_image_bytes = MAX_IMAGE_BYTES;
    config.host.serving = ServingArgs {
        inference_threads: Some(1),
        queue_capacity,
        ..ServingArgs::default()
    };
    let service = RunningService::<Liveness>::launch(config, engine.clone(), !gate_warm_up)
        .await
        .unwrap();
    TestApp::new(service, engine, lever)
}

/// Sends a request whose image blocks the single worker, and waits until it runs.
async fn occupy_worker(app: &mut TestApp) -> JoinHandle<Result<CheckResponse, Status>> {
    let mut client = app.service.client();
    app.hold_worker(async move { call(client.check(request(b"block"))).await })
        .await
}

fn request(image: &[u8]) -> CheckRequest {
    CheckRequest {
        image: image.to_vec().into(),
        search_mode: SearchMode::Accurate.into(),
        face_hint: None,
        os: "ANDROID".into(),
    }
}

#[tokio::test]
async fn health_is_not_serving_until_warm_up_completes() {
    let mut app = spawn_app(4, true).await;
    let status = app.service.health_status(SERVICE_NAME).await;
    assert_eq!(status, ServingStatus::NotServing);
    app.lever.release();
    app.service.wait_for_status(ServingStatus::Serving).await;
}

#[tokio::test]
async fn scores_the_hinted_face() {
    let app = spawn_app(4, false).await;
    let hint = face(42.0);
    let response = call(app.service.client().check(CheckRequest {
        face_hint: Some(hint.clone()),
        ..request(b"live:0.8")
    }))
    .await
    .unwrap();
    assert_eq!(response.face, Some(hint));
    let Some(check_response::Outcome::Score(score)) = response.outcome else {
        panic!("expected a score");
    };
    assert_eq!(score.liveness_score, 0.8);
    let attack = score.attack.unwrap();
    assert!((attack.print_probability + attack.screen_probability - 0.2).abs() < 1e-9);
    assert_eq!(score.models[0].model, "MiniFASNetV2@2.7");
}

#[tokio::test]
async fn quality_gates_are_issues_and_bad_images_are_invalid_argument() {
    let app = spawn_app(4, false).await;
    for (image, reason) in [
        (&b"noface"[..], FaceIssueReason::NoFaceDetected),
        (b"border", FaceIssueReason::FaceCloseToBorder),
    ] {
        let response = call(app.service.client().check(request(image)))
            .await
            .unwrap();
        let Some(check_response::Outcome::Issue(issue)) = response.outcome else {
            panic!("expected an issue for {reason:?}");
        };
        assert_eq!(issue.reason(), reason);
        assert_eq!(issue.field, "image");
    }

    let status = call(app.service.client().check(request(b"garbage")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        details(&status),
        (
            "image_undecodable".to_owned(),
            vec![("image".to_owned(), "image_undecodable".to_owned())]
        )
    );

    let calls_before = app.engine.check_calls.load(Ordering::SeqCst);
    let status = call(
        app.service
            .client()
            .check(request(&[b'x'; MAX_IMAGE_BYTES + 1])),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        details(&status).1,
        [("image".to_owned(), "image_too_large".to_owned())]
    );
    assert_eq!(app.engine.check_calls.load(Ordering::SeqCst), calls_before);
}

#[tokio::test]
async fn full_queue_answers_resource_exhausted_at_once() {
    let mut app = spawn_app(1, false).await;
    let blocked = occupy_worker(&mut app).await;
    let queued = {
        let mut client = app.service.client();
        tokio::spawn(async move { call(client.check(request(b"live:0.7"))).await })
    };
    // The queued request holds the only slot once the depth gauge says so.
    within(async {
        while app.service.pool_stats().queue_depth.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let sent = Instant::now();
    let status = call(app.service.client().check(request(b"live:0.7")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(sent.elapsed() < Duration::from_secs(1));

    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    within(queued).await.unwrap().unwrap();
}

#[tokio::test]
async fn deadline_passing_in_the_queue_is_deadline_exceeded() {
    let mut app = spawn_app(2, false).await;
    let blocked = occupy_worker(&mut app).await;
    let mut late = tonic::Request::new(request(b"live:0.7"));
    late.set_timeout(Duration::from_millis(200));
    let status = within(app.service.client().check(late)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    call(app.service.client().check(request(b"live:0.7")))
        .await
        .unwrap();
    assert_eq!(app.engine.check_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn engine_panic_is_internal_and_the_service_keeps_serving() {
    let app = spawn_app(4, false).await;
    let status = call(app.service.client().check(request(b"panic")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    call(app.service.client().check(request(b"live:0.7")))
        .await
        .unwrap();
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let mut app = spawn_app(4, false).await;
    let blocked = occupy_worker(&mut app).await;
    app.service.stop();
    app.lever.release();
    within(blocked).await.unwrap().unwrap();
    app.service.stopped().await.unwrap();
}

/// The real engine over the converted weights and the public-domain fixtures.
mod real_models {
    use faceproof_liveness::vision::{LivenessSettings, VisionLivenessEngine};
    use faceproof_models::{ModelName, ModelStore};
    use faceproof_testkit::model_service::{fixture, repo_path};

    use super::*;

    fn read(name: ModelName) -> Vec<u8> {
        ModelStore::at(repo_path("models/store"))
            .unwrap()
            .read_verified(name)
            .unwrap()
    }

    fn engine() -> VisionLivenessEngine {
        VisionLivenessEngine::from_weights(
            &read(ModelName::YuNet),
            &read(ModelName::MiniFasNetV2),
            &read(ModelName::MiniFasNetV1Se),
            LivenessSettings::default(),
        )
        .unwrap()
    }

    fn portrait() -> faceproof_imaging::RgbImage {
        let bytes = fixture("obama_2012_official_portrait.jpg");
        faceproof_imaging::decode(&bytes, &faceproof_imaging::DecodeOptions::default())
            .unwrap()
            .image
    }

    fn png(image: &faceproof_imaging::RgbImage) -> Vec<u8> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    fn check_job(image: Vec<u8>, face_hint: Option<Face>) -> CheckJob {
        CheckJob {
            image,
            mode: SearchMode::Fast,
            face_hint,
            os: "DESKTOP".into(),
        }
    }

    /// The reason the real engine refuses `job` with, or a panic naming what it did instead.
    fn refusal(engine: &VisionLivenessEngine, job: CheckJob) -> FaceIssueReason {
        match engine.check(job, &Cancellation::never()) {
            Err(EngineError::Rejected(rejection)) => rejection.reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Each capture-quality gate, on frames made from a committed photo, with the real models.
    #[test]
    fn quality_gates_refuse_unusable_frames_with_their_reason() {
        let engine = engine();
        let portrait = portrait();

        // The portrait itself is scored; its face is the one the gates are checked against.
        let scored = engine
            .check(check_job(png(&portrait), None), &Cancellation::never())
            .unwrap();
        let face = scored.face.r#box.unwrap();

        // No face: a plain grey frame.
        let grey = faceproof_imaging::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
        assert_eq!(
            refusal(&engine, check_job(png(&grey), None)),
            FaceIssueReason::NoFaceDetected
        );

        // Two equal faces side by side: which one is the person is ambiguous.
        let height = 400;
        let half = faceproof_imaging::resize_area(
            &portrait,
            portrait.width() * height / portrait.height(),
            height,
        );
        let mut two = faceproof_imaging::RgbImage::new(2 * half.width(), height);
        image::imageops::replace(&mut two, &half, 0, 0);
        image::imageops::replace(&mut two, &half, i64::from(half.width()), 0);
        assert_eq!(
            refusal(&engine, check_job(png(&two), None)),
            FaceIssueReason::MultipleFacesDetected
        );

        // The matcher's face, half outside the frame: the crops would lose their context.
        let cut = Face {
            r#box: Some(BoundingBox {
                x: portrait.width() as f32 - face.width / 2.0,
                ..face
            }),
            ..scored.face.clone()
        };
        assert_eq!(
            refusal(&engine, check_job(png(&portrait), Some(cut))),
            FaceIssueReason::FaceCloseToBorder
        );

        // Smaller than the configured minimum.
        let strict = VisionLivenessEngine::from_weights(
            &read(ModelName::YuNet),
            &read(ModelName::MiniFasNetV2),
            &read(ModelName::MiniFasNetV1Se),
            LivenessSettings {
                min_face_px: face.width.min(face.height).ceil() as u32 + 1,
                ..LivenessSettings::default()
            },
        )
        .unwrap();
        assert_eq!(
            refusal(&strict, check_job(png(&portrait), None)),
            FaceIssueReason::FaceTooSmall
        );
        // ... and the same face passes the default minimum of 32 px.
        assert!(face.width.min(face.height) > 32.0, "{face:?}");
    }

    #[tokio::test]
    async fn live_portraits_score_high_over_grpc() {
        let service = RunningService::<Liveness>::start_with_real_models(LivenessConfig::default())
            .await
            .unwrap();
        let mut client = service.client();
        let image = fixture("obama_2012_official_portrait.jpg");
        for mode in [SearchMode::Fast, SearchMode::Accurate] {
            let started = Instant::now();
            let response = tokio::time::timeout(
                Duration::from_secs(120),
                client.check(CheckRequest {
                    image: image.clone().into(),
                    search_mode: mode.into(),
                    face_hint: None,
                    os: "DESKTOP".into(),
                }),
            )
            .await
            .unwrap()
            .unwrap()
            .into_inner();
            eprintln!("{mode:?}: {:?}: {response:?}", started.elapsed());
            let Some(check_response::Outcome::Score(score)) = response.outcome else {
                panic!("{mode:?}: expected a score");
            };
            // onnxruntime reference on the raw box: V2 0.99999, V1SE 0.9996.
            assert!(score.liveness_score > 0.9, "{mode:?}: {score:?}");
            let expected_models = if mode == SearchMode::Fast { 1 } else { 2 };
            assert_eq!(score.models.len(), expected_models);
            assert!(response.face.is_some());
        }
        let status = within(client.check(request(b"not an image")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        service.stopped().await.unwrap();
    }
}
