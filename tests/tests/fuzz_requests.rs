//! Deterministic mutation fuzzing of the request parsers (issue 10): the gateway's REST JSON body
//! parser and the protobuf decoding plus request validation of every service (gateway, matcher,
//! liveness). Properties: nothing panics, every failure is a typed error (an HTTP status with a
//! JSON `reason`, a gRPC status with an ErrorInfo reason; never 500 / INTERNAL / UNKNOWN), and
//! every case answers in bounded time.
//!
//! Each test runs a small count in the normal suite (seconds). For a long run:
//! `FACEPROOF_FUZZ_ITERATIONS=1000000 cargo test -p faceproof-tests --test fuzz_requests -- --nocapture`
//! (the counts are printed; `FACEPROOF_FUZZ_SEED` picks another mutation sequence).
//!
//! Entry points: the REST parser has no public function (it is private to
//! `faceproof_gateway::rest`), so [`rest_parse`] goes through the real HTTP endpoint of an
//! in-process gateway; when a public typed parser exists, point [`rest_parse`] at it. The proto
//! leg decodes in process (prost) and validates with `faceproof_gateway::validation::validate`;
//! the model services' validation is private to their gRPC handlers, so their leg sends the raw
//! mutated bytes to the real services over loopback ([`hostile::raw_unary`]).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use faceproof_proto::common::v1::SearchMode;
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_tests::hostile::{self, SplitMix64, http_exchange, mutate, raw_unary, status_reason};
use faceproof_tests::{Stack, StackOptions, spawn_stack};
use prost::Message as _;
use tonic::Code;

/// Cases per property when `FACEPROOF_FUZZ_ITERATIONS` is not set: the CI budget.
const QUICK_ITERATIONS: u64 = 300;
/// One case must never take longer (a generous bound: it guards hangs and super-linear work).
const CASE_BOUND: Duration = Duration::from_secs(5);

fn iterations(quick: u64) -> u64 {
    std::env::var("FACEPROOF_FUZZ_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(quick)
}

fn seed() -> u64 {
    std::env::var("FACEPROOF_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x0F00_D5EE_D000_0010)
}

/// A 16 x 16 grey PNG: a valid image with no face (cheap for the models).
fn tiny_png() -> Vec<u8> {
    let image = image::GrayImage::from_pixel(16, 16, image::Luma([128]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// Fragments that JSON parsers get wrong: duplicates, depth, escapes, numbers, types.
const JSON_FRAGMENTS: &[&str] = &[
    r#","probe":"AAAA""#,
    r#","gallery":[]"#,
    r#","gallery":[null,1,{}]"#,
    r#","os":"IOS","os":"ANDROID""#,
    r#""\ud800""#,
    r#""\u0000""#,
    "1e999999",
    "-0",
    "123456789012345678901234567890",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "]]]]]]]]",
    "{\"a\":{\"a\":{\"a\":",
    "null",
    "true",
    "\"data:image/png;base64,",
    "\"data:,\"",
    "\u{202E}",
    "\\",
    "\"",
];

fn mutate_json(rng: &mut SplitMix64, seed: &[u8], other: &[u8]) -> Vec<u8> {
    if rng.below(3) == 0 {
        let mut out = seed.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(out.len() + 1);
            let fragment = JSON_FRAGMENTS[rng.below(JSON_FRAGMENTS.len())].as_bytes();
            out.splice(at..at, fragment.iter().copied());
        }
        out
    } else {
        mutate(rng, seed, other)
    }
}

/// What one parser call gave: the status and the typed reason ("" when untyped).
struct Parsed {
    status: u16,
    reason: String,
}

/// The REST parser's entry point for the fuzzer: the real endpoint (auth, body limit, JSON
/// parsing, validation) of `stack`'s gateway.
async fn rest_parse(stack: &Stack, body: Vec<u8>) -> Parsed {
    let bearer = format!("Bearer {}", stack.token);
    let answer = http_exchange(
        stack.gateway_http_addr,
        "POST",
        "/v2/face-recognition/compare-with-liveness",
        Some(&bearer),
        body.into(),
    )
    .await
    .unwrap_or_else(|error| panic!("the gateway gave no HTTP answer: {error:#}"));
    Parsed {
        status: answer.status,
        reason: answer.reason(),
    }
}

#[tokio::test]
async fn rest_json_bodies_never_crash_and_every_refusal_is_typed() {
    let stack = spawn_stack(StackOptions::default()).await.unwrap();
    let image = BASE64.encode(tiny_png());
    let seeds: Vec<Vec<u8>> = vec![
        format!(
            r#"{{"os":"IOS","probe":"{image}","gallery":["{image}"],"search_mode":"FAST","compare_min_score":0.8,"liveness_min_score":0.5}}"#
        )
        .into_bytes(),
        format!(r#"{{"os":"ANDROID","probe":"data:image/png;base64,{image}","gallery":["{image}","{image}"],"search_mode":"ACCURATE"}}"#).into_bytes(),
        format!(r#"{{"probe":"{image}","probe":"{image}","gallery":["{image}"],"extra":{{"k":1,"k":2}}}}"#).into_bytes(),
        br#"{"os":"IOS","probe":"!!","gallery":"x","search_mode":7,"compare_min_score":"high"}"#.to_vec(),
    ];
    let count = iterations(QUICK_ITERATIONS);
    let mut rng = SplitMix64(seed());
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for case in 0..count {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let body = mutate_json(&mut rng, seed, other);
        let shown = hostile::truncate_text(&String::from_utf8_lossy(&body), 300);
        let start = Instant::now();
        let parsed = rest_parse(&stack, body).await;
        let took = start.elapsed();
        slowest = slowest.max(took);
        *by_status.entry(parsed.status).or_default() += 1;
        assert!(took < CASE_BOUND, "case {case} took {took:?}: {shown}");
        assert!(
            parsed.status < 500 || parsed.status == 503 || parsed.status == 504,
            "case {case}: HTTP {} ({:?}) for {shown}",
            parsed.status,
            parsed.reason
        );
        if parsed.status != 200 {
            assert!(
                !parsed.reason.is_empty(),
                "case {case}: HTTP {} without a typed reason for {shown}",
                parsed.status
            );
        }
    }
    println!(
        "rest fuzz: {count} bodies in {:.1} s, slowest {} ms, statuses {by_status:?}",
        started.elapsed().as_secs_f64(),
        slowest.as_millis()
    );
    stack.shutdown().await.unwrap();
}

/// Valid encodings of every request message, the seeds of the proto legs.
struct ProtoSeeds {
    gateway: Vec<Vec<u8>>,
    matcher: Vec<Vec<u8>>,
    liveness: Vec<Vec<u8>>,
}

fn proto_seeds() -> ProtoSeeds {
    let image = tiny_png();
    let jpeg = hostile::small_jpeg(16, 16).unwrap();
    ProtoSeeds {
        gateway: vec![
            pb::CompareWithLivenessRequest {
                os: "IOS".into(),
                probe: image.clone().into(),
                gallery: vec![image.clone().into(), jpeg.clone().into()],
                search_mode: "FAST".into(),
                compare_min_score: Some(0.8),
                liveness_min_score: Some(0.5),
            }
            .encode_to_vec(),
            pb::CompareWithLivenessRequest {
                os: "ANDROID".into(),
                probe: jpeg.clone().into(),
                gallery: vec![jpeg.clone().into()],
                search_mode: "ACCURATE".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ],
        matcher: vec![
            matcher_pb::CompareRequest {
                probe: image.clone().into(),
                gallery: vec![jpeg.clone().into()],
                search_mode: SearchMode::Fast as i32,
            }
            .encode_to_vec(),
        ],
        liveness: vec![
            liveness_pb::CheckRequest {
                image: jpeg.clone().into(),
                search_mode: SearchMode::Accurate as i32,
                os: "IOS".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            liveness_pb::CheckRequest {
                image: image.clone().into(),
                search_mode: SearchMode::Fast as i32,
                ..Default::default()
            }
            .encode_to_vec(),
        ],
    }
}

fn pick<'a>(rng: &mut SplitMix64, seeds: &'a [Vec<u8>]) -> &'a [u8] {
    &seeds[rng.below(seeds.len())]
}

/// Arbitrary and mutated bytes through prost decoding of every request message, then the
/// gateway's validation of what decodes: typed errors only, bounded time. In process, so the
/// long run reaches millions of cases.
#[test]
fn proto_request_decoding_and_gateway_validation_never_panic() {
    let seeds = proto_seeds();
    let limits = faceproof_gateway::config::Limits {
        max_gallery: 10,
        max_image_bytes: 8 * 1024 * 1024,
        max_image_pixels: 40_000_000,
    };
    let count = iterations(QUICK_ITERATIONS * 100);
    let mut rng = SplitMix64(seed());
    let (mut decoded, mut refused, mut valid) = (0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for case in 0..count {
        let start = Instant::now();
        let bytes = if rng.below(10) == 0 {
            let len = rng.below(64);
            rng.bytes(len)
        } else {
            let all = [&seeds.gateway, &seeds.matcher, &seeds.liveness];
            let family = all[rng.below(3)];
            let other = pick(&mut rng, &seeds.gateway).to_vec();
            let base = pick(&mut rng, family).to_vec();
            mutate(&mut rng, &base, &other)
        };
        // Every message type sees every input: a mutant of one is a hostile input of the others.
        let _ = matcher_pb::CompareRequest::decode(bytes.as_slice());
        let _ = liveness_pb::CheckRequest::decode(bytes.as_slice());
        match pb::CompareWithLivenessRequest::decode(bytes.as_slice()) {
            Err(_) => {}
            Ok(request) => {
                decoded += 1;
                match faceproof_gateway::validation::validate(request, &limits) {
                    Ok(_) => valid += 1,
                    Err(error) => {
                        refused += 1;
                        assert!(!error.reason().is_empty(), "case {case}: untyped {error}");
                        let status = tonic::Status::from(error);
                        assert_eq!(
                            status.code(),
                            Code::InvalidArgument,
                            "case {case}: {status:?}"
                        );
                    }
                }
            }
        }
        let took = start.elapsed();
        slowest = slowest.max(took);
        assert!(took < CASE_BOUND, "case {case} took {took:?}");
    }
    println!(
        "proto fuzz (in process): {count} inputs in {:.1} s, {decoded} decoded as gateway \
         requests ({valid} valid, {refused} refused), slowest {} us",
        started.elapsed().as_secs_f64(),
        slowest.as_micros()
    );
}

/// One service the wire fuzzer sends mutated messages to.
struct WireTarget<'a> {
    service: &'static str,
    method: &'static str,
    url: String,
    seeds: &'a [Vec<u8>],
    token: Option<&'a str>,
}

/// Mutated request bytes on the wire to the real gateway, matcher and liveness service (real
/// models): the server's own decoding and validation answer, typed, in bounded time.
#[tokio::test]
async fn proto_requests_on_the_wire_get_typed_answers_from_every_service() {
    let stack = spawn_stack(StackOptions::default()).await.unwrap();
    let seeds = proto_seeds();
    let targets = [
        WireTarget {
            service: "gateway",
            method: "/faceproof.gateway.v1.FaceVerification/CompareWithLiveness",
            url: stack.gateway_grpc_url.clone(),
            seeds: &seeds.gateway,
            token: Some(stack.token.as_str()),
        },
        WireTarget {
            service: "matcher",
            method: "/faceproof.matcher.v1.Matcher/Compare",
            url: stack.matcher_url.clone(),
            seeds: &seeds.matcher,
            token: None,
        },
        WireTarget {
            service: "liveness",
            method: "/faceproof.liveness.v1.Liveness/Check",
            url: stack.liveness_url.clone(),
            seeds: &seeds.liveness,
            token: None,
        },
    ];
    let count = iterations(QUICK_ITERATIONS / 2).div_ceil(3);
    let mut rng = SplitMix64(seed());
    let started = Instant::now();
    for WireTarget {
        service,
        method,
        url,
        seeds: service_seeds,
        token,
    } in targets
    {
        let mut by_code = std::collections::BTreeMap::<String, u64>::new();
        for case in 0..count {
            let other = pick(&mut rng, service_seeds).to_vec();
            let base = pick(&mut rng, service_seeds).to_vec();
            let bytes = mutate(&mut rng, &base, &other);
            let start = Instant::now();
            let answer = raw_unary(&url, method, bytes.into(), token).await.unwrap();
            let took = start.elapsed();
            assert!(took < CASE_BOUND, "{service} case {case} took {took:?}");
            let code = match &answer {
                Ok(_) => "OK".to_owned(),
                Err(status) => {
                    assert!(
                        !matches!(status.code(), Code::Internal | Code::Unknown),
                        "{service} case {case}: {status:?}"
                    );
                    assert!(
                        !status_reason(status).is_empty(),
                        "{service} case {case}: no ErrorInfo reason in {status:?}"
                    );
                    format!("{:?}", status.code())
                }
            };
            *by_code.entry(code).or_default() += 1;
        }
        println!("proto fuzz ({service}, on the wire): {count} requests, codes {by_code:?}");
    }
    println!(
        "proto wire fuzz took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stack.shutdown().await.unwrap();
}
