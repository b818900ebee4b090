//! The whole system, for real: matcher and liveness with the converted models behind the
//! gateway, all in this process on 127.0.0.1:0, talking gRPC (and REST to the gateway).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::Cursor;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use faceproof_proto::common::v1::FaceIssueReason;
use faceproof_proto::gateway::v1 as pb;
use faceproof_testkit::fake_backend::{is_rfc3339_millis_utc, reason, violation_fields};
use faceproof_tests::{
    NETWORK_WAIT, Stack, StackOptions, engines, fixture, run_in_process, spawn_stack,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

const OBAMA_2009: &str = "obama_2009_congress.jpg";
const OBAMA_2012: &str = "obama_2012_official_portrait.jpg";
const BIDEN: &str = "biden_2010_blue_room.jpg";
const COMPARE_MIN_SCORE: f64 = 0.8;

/// Fails the test instead of hanging when a network await does not finish.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(NETWORK_WAIT, future)
        .await
        .expect("timed out waiting for the network")
}

async fn stack() -> Stack {
    spawn_stack(StackOptions::default())
        .await
        .expect("the stack starts")
}

fn request(probe: &str, gallery: &str, mode: &str) -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: fixture(probe).unwrap().into(),
        gallery: vec![fixture(gallery).unwrap().into()],
        search_mode: mode.into(),
        compare_min_score: Some(COMPARE_MIN_SCORE),
        liveness_min_score: None,
    }
}

/// A plain grey PNG: a valid image without any face.
fn grey_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    png(&image)
}

fn png(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

/// The astronaut photo enlarged 3x inside a PNG with every pixel perturbed by pseudo-random
/// noise, so the file stays big (PNG cannot compress noise): about 6 MB with a real face.
fn big_noisy_png() -> Vec<u8> {
    let astronaut = image::load_from_memory(&fixture("astronaut.png").unwrap())
        .unwrap()
        .to_rgb8();
    let (width, height) = (astronaut.width() * 3, astronaut.height() * 3);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let source = astronaut.get_pixel(x / 3, y / 3);
        image::Rgb(std::array::from_fn(|channel| {
            // xorshift64: cheap, deterministic noise of +-24.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 49) as i16 - 24;
            (i16::from(source[channel]) + noise).clamp(0, 255) as u8
        }))
    });
    png(&image)
}

fn is_uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The signature verifies against the keys the gateway publishes, which are the harness's key.
async fn assert_verifies(stack: &Stack, response: &pb::CompareWithLivenessResponse) {
    let published = stack.fetch_signing_keys().await.unwrap();
    assert_eq!(published.key_ids(), vec![stack.signing_key_id.clone()]);
    let envelope = faceproof_signing::response_to_json(response).unwrap();
    let verified = faceproof_signing::verify_response_json(&envelope, &published).unwrap();
    assert_eq!(verified.response_id, response.id);
    assert_eq!(verified.key_id, stack.signing_key_id);
    faceproof_signing::verify_response_json(&envelope, &stack.public_keys).unwrap();
}

// ---------------------------------------------------------------- the happy paths

#[tokio::test]
async fn same_person_matches_passes_liveness_and_verifies_in_both_modes() {
    let stack = stack().await;
    for mode in ["FAST", "ACCURATE"] {
        let started = Instant::now();
        let response = stack
            .compare(request(OBAMA_2012, OBAMA_2009, mode))
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("{mode}: {status:?}"));
        let elapsed = started.elapsed();
        let data = response.data.clone().unwrap();
        let comparison = data.comparison.unwrap();
        let result = comparison.result.clone().unwrap();
        let liveness = data.liveness.expect("liveness ran");
        let liveness_result = liveness.result.clone().unwrap();
        eprintln!(
            "{mode}: same person: score {:.4}, liveness {:.4} (attack {:?}), {elapsed:?}",
            result.score,
            liveness_result.liveness_score.unwrap_or_default(),
            liveness_result.attack
        );

        assert!(result.score > COMPARE_MIN_SCORE, "{mode}: {result:?}");
        assert_eq!(result.gallery.len(), 1);
        assert!(result.gallery[0].issue.is_none());
        assert!(result.gallery[0].face.is_some() && result.probe_face.is_some());
        assert!((result.false_accept_rate.unwrap() - 1e-4).abs() < 1e-12);
        assert!(is_uuid_like(&comparison.id), "{}", comparison.id);
        assert_eq!(comparison.client, stack.client_id);
        assert_eq!(comparison.r#type, "compareLive");
        assert_eq!(comparison.status, "success");
        assert_eq!(comparison.search_mode, mode);
        for time in [
            &comparison.compared_at,
            &comparison.created_at,
            &comparison.updated_at,
        ] {
            assert!(is_rfc3339_millis_utc(time), "{time}");
        }

        assert!(result.passed && !result.probe_is_gallery_copy);
        assert!(!result.gallery[0].probe_copy);
        let similarity = result.gallery[0]
            .similarity
            .expect("a matched item has a cosine");
        assert!(
            similarity > 0.3 && similarity < 0.95,
            "{mode}: {similarity}"
        );
        assert_eq!(result.probe_sha256.len(), 64);
        assert!(is_uuid_like(&liveness.id));
        assert_ne!(liveness.id, comparison.id);
        assert_ne!(response.id, comparison.id);
        assert_eq!(liveness.client, stack.client_id);
        assert_eq!(liveness.r#type, "liveness");
        assert_eq!(liveness.status, "success");
        assert_eq!(liveness.search_mode, mode);
        assert_eq!(liveness.os, "IOS");
        assert_eq!(liveness.liveness_min_score, 0.6);
        assert!(is_rfc3339_millis_utc(&liveness.created_at));
        assert!(is_rfc3339_millis_utc(&liveness.updated_at));
        assert!(liveness_result.issue.is_none());
        assert_eq!(liveness_result.min_score, 0.6);
        // The 2012 official portrait is a live capture.
        assert!(
            liveness_result.liveness_score.unwrap_or_default() > 0.9,
            "{liveness_result:?}"
        );
        assert!(liveness_result.passed);

        assert_verifies(&stack, &response).await;
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn different_people_score_low_and_skip_liveness() {
    let stack = stack().await;
    for mode in ["FAST", "ACCURATE"] {
        let response = stack
            .compare(request(OBAMA_2012, BIDEN, mode))
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("{mode}: {status:?}"));
        let data = response.data.clone().unwrap();
        let score = data.comparison.unwrap().result.unwrap().score;
        eprintln!("{mode}: different people: score {score:.4}");
        assert!(score < COMPARE_MIN_SCORE, "{mode}: {score}");
        let liveness = data
            .liveness
            .expect("the liveness record is always present");
        assert_eq!(liveness.status, "skipped", "{mode}: liveness must not run");
        let skipped = liveness.result.unwrap();
        assert_eq!(skipped.reason, "comparison_below_threshold");
        assert_eq!(skipped.comparison_score, Some(score));
        assert_eq!(skipped.liveness_score, None);
        assert!(!skipped.passed);
        assert_verifies(&stack, &response).await;
    }
    stack.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- REST

struct HttpAnswer {
    status: u16,
    body: Value,
}

/// A minimal HTTP/1.1 exchange over a plain TCP stream (`Connection: close`).
async fn http(stack: &Stack, method: &str, path: &str, body: &[u8]) -> HttpAnswer {
    let address = stack.gateway_http_addr;
    let mut stream = within(tokio::net::TcpStream::connect(address))
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\
         authorization: Bearer {}\r\n\r\n",
        body.len(),
        stack.token
    );
    within(async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await
    })
    .await
    .unwrap();
    let mut raw = Vec::new();
    within(stream.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    HttpAnswer {
        status: headers.split(' ').nth(1).unwrap().parse().unwrap(),
        body: serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
    }
}

#[tokio::test]
async fn rest_json_gives_the_reference_envelope_and_verifies() {
    let stack = stack().await;
    let body = json!({
        "os": "ANDROID",
        "probe": STANDARD.encode(fixture(OBAMA_2012).unwrap()),
        "gallery": [format!("data:image/jpeg;base64,{}", STANDARD.encode(fixture(OBAMA_2009).unwrap()))],
        "search_mode": "FAST",
        "compare_min_score": COMPARE_MIN_SCORE,
        "liveness_min_score": 0.7,
    });
    let answer = http(
        &stack,
        "POST",
        "/v2/face-recognition/compare-with-liveness",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let envelope = &answer.body;
    assert!(envelope["id"].as_str().is_some_and(is_uuid_like));
    let comparison = &envelope["data"]["comparison"];
    assert_eq!(comparison["client"], stack.client_id.as_str());
    assert_eq!(comparison["type"], "compareLive");
    assert_eq!(comparison["search_mode"], "FAST");
    assert_eq!(comparison["status"], "success");
    assert!(comparison["result"]["score"].as_f64().unwrap() > COMPARE_MIN_SCORE);
    for time in ["comparedAt", "createdAt", "updatedAt"] {
        assert!(
            comparison[time].as_str().is_some_and(is_rfc3339_millis_utc),
            "{time}: {comparison}"
        );
    }
    let liveness = &envelope["data"]["liveness"];
    assert_eq!(liveness["type"], "liveness");
    assert_eq!(liveness["os"], "ANDROID");
    assert_eq!(liveness["client"], stack.client_id.as_str());
    assert_eq!(liveness["liveness_min_score"], 0.7);
    assert_eq!(liveness["result"]["min_score"], 0.7);
    assert_eq!(liveness["result"]["passed"], true);
    assert!(liveness["result"]["liveness_score"].as_f64().unwrap() > 0.9);
    assert!(envelope["signature"]["dateTime"].is_string());
    assert!(envelope["signature"]["message"].is_string());

    let published = stack.fetch_signing_keys().await.unwrap();
    faceproof_signing::verify_response_text(&envelope.to_string(), &published).unwrap();
    // The envelope as saved by a client, pretty-printed, still verifies; a changed score does not.
    let pretty = serde_json::to_string_pretty(envelope).unwrap();
    faceproof_signing::verify_response_text(&pretty, &stack.public_keys).unwrap();
    let mut tampered = envelope.clone();
    tampered["data"]["comparison"]["result"]["score"] = json!(0.99999);
    assert!(faceproof_signing::verify_response_text(&tampered.to_string(), &published).is_err());
    stack.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- bad images

#[tokio::test]
async fn missing_faces_and_bad_images_are_reported_per_field() {
    let stack = stack().await;

    // A faceless probe: the matcher's verdict travels through the gateway unchanged.
    let mut faceless = request(OBAMA_2012, OBAMA_2009, "FAST");
    faceless.probe = grey_png(320, 240).into();
    let status = stack.compare(faceless).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status), "no_face_detected", "{status:?}");
    assert_eq!(violation_fields(&status), ["probe"], "{status:?}");

    // An undecodable gallery item is caught at the gateway by its magic bytes.
    let mut undecodable = request(OBAMA_2012, OBAMA_2009, "FAST");
    undecodable.gallery = vec![b"definitely not an image".to_vec().into()];
    let status = stack.compare(undecodable).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violation_fields(&status), ["gallery[0]"], "{status:?}");
    assert!(status.message().contains("gallery[0]"), "{status:?}");

    // One good and one faceless gallery item: the faceless one gets its issue, the match stands.
    let mut mixed = request(OBAMA_2012, OBAMA_2009, "FAST");
    mixed.gallery.push(grey_png(320, 240).into());
    let response = stack.compare(mixed).await.unwrap().unwrap();
    let result = response
        .data
        .clone()
        .unwrap()
        .comparison
        .unwrap()
        .result
        .unwrap();
    assert!(result.score > COMPARE_MIN_SCORE, "{result:?}");
    assert_eq!(result.best_gallery_index, 0);
    assert_eq!(result.gallery.len(), 2);
    assert!(result.gallery[0].issue.is_none() && result.gallery[0].score > COMPARE_MIN_SCORE);
    let issue = result.gallery[1]
        .issue
        .clone()
        .expect("the faceless item has an issue");
    assert_eq!(issue.reason(), FaceIssueReason::NoFaceDetected, "{issue:?}");
    assert_eq!(issue.field, "gallery[1]");
    assert_eq!(result.gallery[1].score, 0.0);
    assert!(response.data.clone().unwrap().liveness.is_some());
    assert_verifies(&stack, &response).await;
    stack.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- failures and limits

#[tokio::test]
async fn a_stopped_liveness_service_gives_unavailable_naming_it_quickly() {
    let mut stack = stack().await;
    // First a request that opens the gateway's connection to the liveness service.
    let response = stack
        .compare(request(OBAMA_2012, OBAMA_2009, "FAST"))
        .await
        .unwrap()
        .unwrap();
    assert!(response.data.unwrap().liveness.is_some());

    stack.stop_liveness().await.unwrap();
    let started = Instant::now();
    let status = stack
        .compare(request(OBAMA_2012, OBAMA_2009, "FAST"))
        .await
        .unwrap()
        .unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("liveness down: {:?} after {elapsed:?}", status.code());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "liveness_unavailable", "{status:?}");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        info.metadata.get("service").map(String::as_str),
        Some("liveness")
    );
    // The matcher still runs first (a few seconds in debug builds); the liveness failure itself
    // must not wait for the request deadline (60 s here)
    // nor hang on connection attempts.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    // A different-people request never needs liveness and still succeeds.
    stack
        .compare(request(OBAMA_2012, BIDEN, "FAST"))
        .await
        .unwrap()
        .unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn image_size_limits_hold_and_a_6_mb_probe_goes_through_every_hop() {
    let stack = stack().await;
    let limit = 8 * 1024 * 1024; // the gateway's default --max-image-bytes

    let mut oversized = request(OBAMA_2012, OBAMA_2009, "FAST");
    let mut padded = fixture(OBAMA_2012).unwrap();
    padded.resize(limit + 1, 0);
    oversized.probe = padded.into();
    let status = stack.compare(oversized).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violation_fields(&status), ["probe"], "{status:?}");
    let violation = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations[0]
        .clone();
    assert!(
        violation.description.contains(&limit.to_string()),
        "the error names the limit: {violation:?}"
    );

    let big = big_noisy_png();
    eprintln!("big probe: {} bytes", big.len());
    assert!(
        (5_500_000..limit).contains(&big.len()),
        "{} bytes",
        big.len()
    );
    let mut large = request(OBAMA_2012, OBAMA_2009, "ACCURATE");
    large.probe = big.into();
    large.gallery = vec![fixture("astronaut.png").unwrap().into()];
    large.compare_min_score = None;
    let response = stack
        .compare(large)
        .await
        .unwrap()
        .unwrap_or_else(|status| panic!("a 6 MB probe must pass every hop: {status:?}"));
    let data = response.data.clone().unwrap();
    let score = data.comparison.unwrap().result.unwrap().score;
    let liveness = data
        .liveness
        .expect("liveness always runs without compare_min_score");
    eprintln!(
        "big probe: score {score:.4} against the original, liveness {:?}",
        liveness.result
    );
    assert!(score > COMPARE_MIN_SCORE, "{score}");
    assert_verifies(&stack, &response).await;
    stack.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- the hops change nothing

/// Through gateway, matcher and liveness service the answer carries exactly what the engines
/// find in process on the same photos: the similarity, the probe's face, the liveness score and
/// attack split, and the pass decisions taken on them. (How much the hops cost is measured by
/// `cargo bench -p faceproof-tests`, benches/stack.rs.)
#[tokio::test]
async fn the_stack_carries_the_engines_findings_unchanged() {
    let stack = stack().await;
    let engines = engines().unwrap();
    let (probe, gallery) = (fixture(OBAMA_2012).unwrap(), fixture(OBAMA_2009).unwrap());
    let in_process = tokio::task::spawn_blocking(move || run_in_process(engines, probe, gallery))
        .await
        .unwrap()
        .unwrap();
    let expected_similarity = in_process.compared.gallery[0]
        .as_ref()
        .expect("the gallery photo has a face")
        .similarity;

    let mut full = request(OBAMA_2012, OBAMA_2009, "FAST");
    full.compare_min_score = None;
    let response = stack.compare(full).await.unwrap().unwrap();
    let data = response.data.clone().unwrap();
    let result = data.comparison.unwrap().result.unwrap();
    let similarity = result.gallery[0]
        .similarity
        .expect("a match has a similarity");
    assert!(
        (similarity - expected_similarity).abs() < 1e-6,
        "stack {similarity} against in process {expected_similarity}"
    );
    assert_eq!(
        result.probe_face.as_ref(),
        Some(&in_process.compared.probe_face)
    );
    assert!(result.score > COMPARE_MIN_SCORE, "{result:?}");

    let liveness = data.liveness.expect("liveness ran").result.unwrap();
    let expected = &in_process.checked;
    let score = liveness.liveness_score.expect("a scored face");
    assert!(
        (score - expected.liveness_score).abs() < 1e-6,
        "stack {score} against in process {}",
        expected.liveness_score
    );
    assert!((0.0..=1.0).contains(&score), "{score}");
    assert_eq!(liveness.passed, score > liveness.min_score, "{liveness:?}");
    match (&liveness.attack, &expected.attack) {
        (Some(attack), Some(split)) => {
            assert!((attack.print_probability - split.print_probability).abs() < 1e-6);
            assert!((attack.screen_probability - split.screen_probability).abs() < 1e-6);
        }
        (None, None) => {}
        other => panic!("the attack split was not carried over: {other:?}"),
    }
    assert_verifies(&stack, &response).await;
    stack.shutdown().await.unwrap();
}
