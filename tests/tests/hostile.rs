//! The hostile-input suite of issue 10: the matcher, the liveness service and the gateway run as
//! three child processes of this binary (real models, loopback, port 0), and every hostile
//! case is sent as an attacker with a valid token would. Each case asserts its gRPC code or
//! HTTP status, its reason (ErrorInfo or field violation, docs: tasks/VOCAB.md) and field, and a
//! generous time bound; afterwards the services must be alive, answer a normal request, and
//! have stayed under their peak-RSS bound (`VmHWM`): matcher and liveness 512 MiB over the
//! hostile images, gateway 512 MiB while three 90 MB bodies arrive at once.
//!
//! Every input is generated here. The suite runs every case and prints a table before it fails,
//! so one run shows the whole picture: `cargo test -p faceproof-tests --test hostile`.
//! `FACEPROOF_HOSTILE_ONLY=substring` runs the cases whose name contains it (plus the set-up).

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use faceproof_proto::common::v1::{FaceIssueReason, SearchMode};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_tests::hostile::{
    self, HttpAnswer, ServiceKind, ServiceProcess, http_exchange, raw_unary, status_reason,
    status_violations,
};
use faceproof_tests::{authorized, connect, fixture, wait_until_serving};
use serde_json::json;
use tonic::Code;

const PROBE: &str = "obama_2012_official_portrait.jpg";
const GALLERY: &str = "obama_2009_congress.jpg";
const COMPARE_PATH: &str = "/v2/face-recognition/compare-with-liveness";
/// The issue's bound on every service's peak RSS under hostile input.
const PEAK_RSS_LIMIT_KIB: u64 = 512 * 1024;
/// A hostile image must be answered within this (the tall PNG within 1.5 s); generous for a
/// loaded 2-core CI machine, far below the seconds today's unbounded decoding takes.
const IMAGE_ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// Refusals that need no model work (auth, parsing, limits).
const QUICK_ANSWER_WITHIN: Duration = Duration::from_secs(2);

const GATEWAY_METHOD: &str = "/faceproof.gateway.v1.FaceVerification/CompareWithLiveness";
const MATCHER_METHOD: &str = "/faceproof.matcher.v1.Matcher/Compare";
const LIVENESS_METHOD: &str = "/faceproof.liveness.v1.Liveness/Check";

fn main() -> ExitCode {
    if let Some(result) = hostile::child_main_if_requested() {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hostile-suite child failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // libtest flags (`--list`, filters) arrive here too: this binary is one test.
    if std::env::args().any(|arg| arg == "--list") {
        println!("hostile_input_suite: test");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("no tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    let run = runtime.block_on(run_suite(&mut report));
    report.print();
    match run {
        Err(error) => {
            eprintln!("the hostile suite stopped early: {error:#}");
            ExitCode::FAILURE
        }
        Ok(()) if report.failed() > 0 => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes.

struct Outcome {
    name: String,
    expected: String,
    observed: String,
    elapsed: Duration,
    passed: bool,
}

#[derive(Default)]
struct Report {
    outcomes: Vec<Outcome>,
    measurements: Vec<String>,
}

impl Report {
    fn record(
        &mut self,
        name: &str,
        expected: String,
        elapsed: Duration,
        result: Result<String, String>,
    ) {
        let (observed, passed) = match result {
            Ok(observed) => (observed, true),
            Err(observed) => (observed, false),
        };
        println!(
            "{} {name} ({} ms): {observed}",
            if passed { "ok  " } else { "FAIL" },
            elapsed.as_millis()
        );
        self.outcomes.push(Outcome {
            name: name.to_owned(),
            expected,
            observed,
            elapsed,
            passed,
        });
    }

    fn measure(&mut self, line: String) {
        println!("measured: {line}");
        self.measurements.push(line);
    }

    fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| !outcome.passed)
            .count()
    }

    fn print(&self) {
        println!(
            "\n== hostile-input suite: {} cases, {} failed ==",
            self.outcomes.len(),
            self.failed()
        );
        for outcome in &self.outcomes {
            println!(
                "{} {:<46} {:>6} ms  expected {}\n{:>60}got {}",
                if outcome.passed { "ok  " } else { "FAIL" },
                outcome.name,
                outcome.elapsed.as_millis(),
                outcome.expected,
                "",
                hostile::truncate_text(&outcome.observed, 300)
            );
        }
        for line in &self.measurements {
            println!("measured: {line}");
        }
    }
}

/// Whether the answer's reason, or one of its violations' reasons, is `allowed` (any reason when
/// `allowed` is empty).
fn reason_allowed<'a>(
    allowed: &[&str],
    reason: &str,
    mut violation_reasons: impl Iterator<Item = &'a str>,
) -> bool {
    allowed.is_empty()
        || allowed.contains(&reason)
        || violation_reasons.any(|reason| allowed.contains(&reason))
}

/// A case's outcome: `observed` as the evidence, a failure when the answer does not `match` or
/// came later than its bound (`(elapsed, within)`).
fn verdict(
    matches: bool,
    (elapsed, within): (Duration, Duration),
    observed: String,
) -> Result<String, String> {
    if elapsed > within {
        Err(format!("too slow ({} ms): {observed}", elapsed.as_millis()))
    } else if matches {
        Ok(observed)
    } else {
        Err(observed)
    }
}

/// What a gRPC answer must be.
#[derive(Clone)]
struct GrpcExpect {
    code: Code,
    /// The ErrorInfo reason or a field violation's reason must be one of these (any if empty).
    reasons: &'static [&'static str],
    /// A field violation must name this field.
    field: Option<&'static str>,
    within: Duration,
}

impl GrpcExpect {
    fn describe(&self) -> String {
        format!(
            "{:?} reason {:?} field {:?} within {} ms",
            self.code,
            self.reasons,
            self.field,
            self.within.as_millis()
        )
    }

    fn check<T>(
        &self,
        answer: &Result<T, tonic::Status>,
        elapsed: Duration,
    ) -> Result<String, String> {
        let status = match answer {
            Ok(_) => return Err("OK (a success)".to_owned()),
            Err(status) => status,
        };
        let reason = status_reason(status);
        let violations = status_violations(status);
        let observed = format!(
            "{:?} reason {reason:?} violations {violations:?}: {}",
            status.code(),
            hostile::truncate_text(status.message(), 160)
        );
        let reason_ok = reason_allowed(
            self.reasons,
            &reason,
            violations.iter().map(|(_, reason)| reason.as_str()),
        );
        let field_ok = self
            .field
            .is_none_or(|field| violations.iter().any(|(name, _)| name == field));
        verdict(
            status.code() == self.code && reason_ok && field_ok,
            (elapsed, self.within),
            observed,
        )
    }
}

/// What a REST answer must be.
#[derive(Clone)]
struct RestExpect {
    statuses: &'static [u16],
    reasons: &'static [&'static str],
    /// The body (message or violations) must mention this (e.g. the duplicated key).
    mentions: Option<&'static str>,
    within: Duration,
}

impl RestExpect {
    fn describe(&self) -> String {
        format!(
            "HTTP {:?} reason {:?}{} within {} ms",
            self.statuses,
            self.reasons,
            self.mentions
                .map(|text| format!(" naming {text:?}"))
                .unwrap_or_default(),
            self.within.as_millis()
        )
    }

    fn check(&self, answer: &HttpAnswer, elapsed: Duration) -> Result<String, String> {
        let reason = answer.reason();
        let observed = format!(
            "{} reason {reason:?}: {}",
            answer.status,
            hostile::truncate_text(&answer.body, 200)
        );
        let violation_reasons: Vec<String> =
            serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|body| body["violations"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|violation| violation["reason"].as_str().map(str::to_owned))
                .collect();
        let reason_ok = reason_allowed(
            self.reasons,
            &reason,
            violation_reasons.iter().map(String::as_str),
        );
        let mention_ok = self.mentions.is_none_or(|text| answer.body.contains(text));
        verdict(
            self.statuses.contains(&answer.status) && reason_ok && mention_ok,
            (elapsed, self.within),
            observed,
        )
    }
}

async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let value = future.await;
    (value, start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// The stack.

struct Stack {
    matcher: ServiceProcess,
    liveness: ServiceProcess,
    gateway: ServiceProcess,
    token: String,
    jwt_secret: String,
    only: Option<String>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// The services with their default limits, as `faceproof up` starts them; the gateway with
    /// a dev HS256 secret, a generous rate limit (cases come fast) and default deadlines.
    async fn start() -> anyhow::Result<Self> {
        let models = hostile::model_dir()?.display().to_string();
        let model_args = |listen: &str| {
            vec![
                "--listen".to_owned(),
                listen.to_owned(),
                "--model-dir".to_owned(),
                models.clone(),
            ]
        };
        let matcher = ServiceProcess::spawn(ServiceKind::Matcher, &model_args("127.0.0.1:0"))?;
        let liveness = ServiceProcess::spawn(ServiceKind::Liveness, &model_args("127.0.0.1:0"))?;
        let dir = tempfile::tempdir()?;
        let jwt_secret = hex_secret();
        let secret_file = hostile::write_file(dir.path(), "jwt-secret", &jwt_secret)?;
        let signer = faceproof_signing::Signer::generate();
        let key_file = hostile::write_file(dir.path(), "signing.pem", &signer.to_pkcs8_pem()?)?;
        let gateway_args: Vec<String> = [
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--matcher-url",
            &matcher.grpc_url(),
            "--liveness-url",
            &liveness.grpc_url(),
            "--jwt-algorithm",
            "HS256",
            "--jwt-secret-file",
            &secret_file,
            "--signing-key-file",
            &key_file,
            "--rate-limit-per-second",
            "1000",
            "--rate-limit-burst",
            "1000",
            "--shutdown-grace-ms",
            "2000",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let gateway = ServiceProcess::spawn(ServiceKind::Gateway, &gateway_args)?;
        wait_until_serving(&matcher.grpc_url())
            .await
            .context("matcher")?;
        wait_until_serving(&liveness.grpc_url())
            .await
            .context("liveness")?;
        // The gateway reports SERVING once it has seen a ready replica of each backend; a
        // request before that is refused UNAVAILABLE (no ready matcher replica).
        wait_until_serving(&gateway.grpc_url())
            .await
            .context("gateway")?;
        let token = hostile::mint_token(&jwt_secret, "hostile-client")?;
        Ok(Self {
            matcher,
            liveness,
            gateway,
            token,
            jwt_secret,
            only: std::env::var("FACEPROOF_HOSTILE_ONLY").ok(),
            _dir: dir,
        })
    }

    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| name.contains(only))
    }

    fn gateway_grpc_url(&self) -> String {
        self.gateway.grpc_url()
    }

    fn gateway_http(&self) -> std::net::SocketAddr {
        self.gateway.addrs[1]
    }

    async fn compare(
        &self,
        request: pb::CompareWithLivenessRequest,
        token: &str,
    ) -> anyhow::Result<Result<pb::CompareWithLivenessResponse, tonic::Status>> {
        let mut client = pb::face_verification_client::FaceVerificationClient::new(
            connect(&self.gateway_grpc_url()).await?,
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(usize::MAX);
        let answer = tokio::time::timeout(
            faceproof_tests::NETWORK_WAIT,
            client.compare_with_liveness(authorized(request, token)),
        )
        .await
        .map_err(|_| anyhow!("CompareWithLiveness did not answer"))?;
        Ok(answer.map(tonic::Response::into_inner))
    }

    async fn rest(
        &self,
        authorization: Option<&str>,
        body: impl Into<bytes::Bytes>,
    ) -> anyhow::Result<HttpAnswer> {
        http_exchange(
            self.gateway_http(),
            "POST",
            COMPARE_PATH,
            authorization,
            body.into(),
        )
        .await
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// One gRPC case through the gateway with `probe` as the probe and a real gallery photo.
    async fn image_case(
        &self,
        report: &mut Report,
        name: &str,
        probe: &[u8],
        expect: &GrpcExpect,
    ) -> anyhow::Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        let request = request_with(probe.to_vec(), "FAST");
        let (answer, elapsed) = timed(self.compare(request, &self.token)).await;
        let answer = answer?;
        report.record(
            name,
            expect.describe(),
            elapsed,
            expect.check(&answer, elapsed),
        );
        Ok(())
    }

    /// The same image straight to the matcher (as probe) and to the liveness service, so each
    /// model service decodes it whatever the gateway does first.
    async fn image_case_direct(
        &self,
        report: &mut Report,
        name: &str,
        image: &[u8],
        matcher_reasons: &'static [&'static str],
    ) -> anyhow::Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        let gallery = fixture(GALLERY)?;
        let expect = |field| GrpcExpect {
            code: Code::InvalidArgument,
            reasons: matcher_reasons,
            field: Some(field),
            within: IMAGE_ANSWER_WITHIN,
        };
        let mut matcher = matcher_pb::matcher_client::MatcherClient::new(
            connect(&self.matcher.grpc_url()).await?,
        )
        .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(matcher_pb::CompareRequest {
            probe: image.to_vec().into(),
            gallery: vec![gallery.into()],
            search_mode: SearchMode::Fast as i32,
        });
        request.set_timeout(Duration::from_secs(10));
        let (answer, elapsed) = timed(matcher.compare(request)).await;
        let expected = expect("probe");
        report.record(
            &format!("{name} -> matcher"),
            expected.describe(),
            elapsed,
            expected.check(&answer, elapsed),
        );

        let mut liveness = liveness_pb::liveness_client::LivenessClient::new(
            connect(&self.liveness.grpc_url()).await?,
        )
        .max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(liveness_pb::CheckRequest {
            image: image.to_vec().into(),
            search_mode: SearchMode::Fast as i32,
            os: "IOS".to_owned(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(10));
        let (answer, elapsed) = timed(liveness.check(request)).await;
        let expected = expect("image");
        // The liveness service reports what it found in a decoded image (no face, ...) as the
        // answer's `issue`, not as an error: that issue's code counts as the reason.
        let issue = answer
            .as_ref()
            .ok()
            .and_then(|response| match &response.get_ref().outcome {
                Some(liveness_pb::check_response::Outcome::Issue(issue)) => Some(issue),
                _ => None,
            });
        let result = match issue {
            Some(issue) => {
                let code = FaceIssueReason::try_from(issue.reason)
                    .map_or("unknown", FaceIssueReason::code);
                let observed = format!("OK with issue {code:?}: {}", issue.detail);
                if matcher_reasons.contains(&code) && elapsed <= expected.within {
                    Ok(observed)
                } else {
                    Err(observed)
                }
            }
            None => expected.check(&answer, elapsed),
        };
        report.record(
            &format!("{name} -> liveness"),
            format!("{} (or OK with that issue)", expected.describe()),
            elapsed,
            result,
        );
        Ok(())
    }

    async fn rest_case(
        &self,
        report: &mut Report,
        name: &str,
        authorization: Option<&str>,
        body: impl Into<bytes::Bytes>,
        expect: &RestExpect,
    ) -> anyhow::Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        let (answer, elapsed) = timed(self.rest(authorization, body)).await;
        let result = match answer {
            Ok(answer) => expect.check(&answer, elapsed),
            Err(error) => Err(format!("no HTTP answer: {error:#}")),
        };
        report.record(name, expect.describe(), elapsed, result);
        Ok(())
    }

    /// A normal request still succeeds, and every service process is still running.
    async fn still_serving(&mut self, report: &mut Report, after: &str) -> anyhow::Result<()> {
        let name = format!("alive and serving after {after}");
        let (answer, elapsed) = timed(self.compare(normal_request(), &self.token)).await;
        let mut dead = Vec::new();
        for process in [&mut self.matcher, &mut self.liveness, &mut self.gateway] {
            if !process.is_alive() {
                dead.push(process.kind.name());
            }
        }
        let result = match (answer?, dead.is_empty()) {
            (Ok(response), true) => Ok(format!("OK, {}", summarize(&response))),
            (Ok(_), false) => Err(format!("exited: {dead:?}")),
            (Err(status), _) => Err(format!(
                "{:?} {:?} {}; exited: {dead:?}",
                status.code(),
                status_reason(&status),
                status.message()
            )),
        };
        report.record(
            &name,
            "OK and all three processes running".into(),
            elapsed,
            result,
        );
        Ok(())
    }

    fn peak_rss_case(&self, report: &mut Report, process: &ServiceProcess, during: &str) {
        let name = format!("{} peak RSS over {during}", process.kind.name());
        let result = match process.peak_rss_kib() {
            Ok(peak) => {
                let text = format!(
                    "VmHWM {} MiB (VmRSS now {} MiB)",
                    peak / 1024,
                    process.rss_kib().unwrap_or(0) / 1024
                );
                if peak < PEAK_RSS_LIMIT_KIB {
                    Ok(text)
                } else {
                    Err(text)
                }
            }
            Err(error) => Err(format!("cannot read: {error:#}")),
        };
        report.record(&name, "VmHWM < 512 MiB".into(), Duration::ZERO, result);
    }
}

fn hex_secret() -> String {
    let mut rng = hostile::SplitMix64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|time| time.as_nanos() as u64)
            .unwrap_or(7),
    );
    hex::encode(rng.bytes(32))
}

fn request_with(probe: Vec<u8>, mode: &str) -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: probe.into(),
        gallery: vec![fixture(GALLERY).unwrap_or_default().into()],
        search_mode: mode.into(),
        compare_min_score: Some(0.8),
        liveness_min_score: None,
    }
}

fn normal_request() -> pb::CompareWithLivenessRequest {
    request_with(fixture(PROBE).unwrap_or_default(), "FAST")
}

fn summarize(response: &pb::CompareWithLivenessResponse) -> String {
    let data = response.data.as_ref();
    let score = data
        .and_then(|data| data.comparison.as_ref())
        .and_then(|comparison| comparison.result.as_ref())
        .map(|result| result.score);
    let live = data
        .and_then(|data| data.liveness.as_ref())
        .and_then(|liveness| liveness.result.as_ref())
        .map(|result| result.passed);
    format!("score {score:?}, live {live:?}")
}

/// A reference JSON body around already-encoded image strings.
fn rest_body(probe_b64: &str, gallery_b64: &str) -> String {
    json!({
        "os": "ANDROID",
        "probe": probe_b64,
        "gallery": [gallery_b64],
        "search_mode": "FAST",
        "compare_min_score": 0.8,
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn run_suite(report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stack = Stack::start().await?;
    report.measure(format!(
        "stack up (3 processes, models warm) in {} ms",
        started.elapsed().as_millis()
    ));
    for process in [&stack.matcher, &stack.liveness, &stack.gateway] {
        report.measure(format!(
            "{} VmHWM after warm-up: {} MiB",
            process.kind.name(),
            process.peak_rss_kib()? / 1024
        ));
    }
    normal_timings(&stack, report).await?;
    image_cases(&stack, report).await?;
    stack.still_serving(report, "the hostile images").await?;
    stack.peak_rss_case(report, &stack.matcher, "the hostile images");
    stack.peak_rss_case(report, &stack.liveness, "the hostile images");
    rest_cases(&stack, report).await?;
    token_cases(&stack, report).await?;
    malformed_protobuf_cases(&stack, report).await?;
    stack
        .still_serving(report, "the REST, token and protobuf cases")
        .await?;
    big_bodies_case(&stack, report).await?;
    stack.peak_rss_case(report, &stack.gateway, "three 90 MB bodies at once");
    stack.still_serving(report, "three 90 MB bodies").await?;
    killed_matcher_cases(&mut stack, report).await?;
    report.measure(format!("whole suite {} ms", started.elapsed().as_millis()));
    Ok(())
}

/// A few normal requests: the side-by-side timing of the closing note, and the signed record
/// carries the probe's SHA-256 (issue 10: signatures bound to their photos).
async fn normal_timings(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let (answer, elapsed) = timed(stack.compare(normal_request(), &stack.token)).await;
        answer?.map_err(|status| anyhow!("a normal request failed: {status:?}"))?;
        times.push(elapsed.as_millis());
    }
    report.measure(format!(
        "normal gRPC FAST compare-with-liveness: {times:?} ms"
    ));

    let probe = fixture(PROBE)?;
    let gallery = fixture(GALLERY)?;
    let name = "REST normal request: 200, signed data holds the probe's SHA-256";
    if stack.wants(name) {
        let body = rest_body(&BASE64.encode(&probe), &BASE64.encode(&gallery));
        let bearer = stack.bearer();
        let (answer, elapsed) = timed(stack.rest(Some(&bearer), body)).await;
        let answer = answer?;
        let digest = hostile::sha256_hex(&probe);
        let signed_message = serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|body| body["signature"]["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let result = if answer.status != 200 {
            Err(format!(
                "{}: {}",
                answer.status,
                hostile::truncate_text(&answer.body, 200)
            ))
        } else if answer.body.contains(&digest) || signed_message.contains(&digest) {
            Ok(format!("200, probe sha256 {} present", &digest[..12]))
        } else {
            Err(format!("200 but no {digest} in the response"))
        };
        report.record(
            name,
            "200 with the probe's sha256 hex".into(),
            elapsed,
            result,
        );
    }
    Ok(())
}

async fn image_cases(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    use png::{BitDepth, ColorType};
    let too_large: &'static [&'static str] = &["image_too_large", "image_bad_aspect_ratio"];
    // Non-interlaced PNGs over the decoded-bytes budget are streamed row by row into a
    // downscaled buffer (crates/imaging header.rs, `ImageLimits`): a flat 40 MP one is refused
    // by its budget or decoded small and found faceless, never a success; the peak-RSS cases
    // below are what bound its cost.
    let streamed: &'static [&'static str] = &["image_too_large", "no_face_detected"];
    let broken: &'static [&'static str] = &["image_truncated", "image_undecodable"];
    let refused = |reasons, within| GrpcExpect {
        code: Code::InvalidArgument,
        reasons,
        field: Some("probe"),
        within,
    };

    let generated = Instant::now();
    let tall = hostile::flat_png(1, 39_999_999, ColorType::Grayscale, BitDepth::Eight)?;
    let deep = hostile::flat_png(6300, 6300, ColorType::Rgba, BitDepth::Sixteen)?;
    let bomb = hostile::flat_png(6324, 6324, ColorType::Rgba, BitDepth::Eight)?;
    let small = hostile::small_jpeg(64, 64)?;
    let claims_6000 = hostile::jpeg_claiming(&small, 6000, 6600)?;
    let claims_65500 = hostile::jpeg_claiming(&small, 65500, 65500)?;
    let progressive = hostile::progressive_jpeg_claiming(&small, 6000, 6000)?;
    report.measure(format!(
        "generated: tall PNG {} KB, 16-bit RGBA PNG {} KB, bomb PNG {} KB in {} ms",
        tall.len() / 1000,
        deep.len() / 1000,
        bomb.len() / 1000,
        generated.elapsed().as_millis()
    ));

    // Cost bounded from the header.
    stack
        .image_case(
            report,
            "PNG 1 x 39,999,999 px",
            &tall,
            &refused(too_large, Duration::from_millis(1500)),
        )
        .await?;
    let bearer = stack.bearer();
    stack
        .rest_case(
            report,
            "REST PNG 1 x 39,999,999 px probe",
            Some(&bearer),
            rest_body(&BASE64.encode(&tall), &BASE64.encode(fixture(GALLERY)?)),
            &RestExpect {
                statuses: &[412],
                reasons: too_large,
                mentions: Some("probe"),
                within: Duration::from_millis(1500),
            },
        )
        .await?;
    stack
        .image_case(
            report,
            "PNG 6300 x 6300 16-bit RGBA",
            &deep,
            &refused(streamed, IMAGE_ANSWER_WITHIN),
        )
        .await?;
    stack
        .image_case(
            report,
            "JPEG header claiming 6000 x 6600",
            &claims_6000,
            &refused(
                &["image_too_large", "image_truncated", "image_undecodable"],
                IMAGE_ANSWER_WITHIN,
            ),
        )
        .await?;
    stack
        .image_case(
            report,
            "JPEG header claiming 65500 x 65500",
            &claims_65500,
            &refused(too_large, IMAGE_ANSWER_WITHIN),
        )
        .await?;
    stack
        .image_case(
            report,
            "progressive JPEG claiming 6000 x 6000",
            &progressive,
            &refused(
                &["image_too_large", "image_truncated", "image_undecodable"],
                IMAGE_ANSWER_WITHIN,
            ),
        )
        .await?;
    stack
        .image_case(
            report,
            "decompression-bomb PNG 6324 x 6324 RGBA",
            &bomb,
            &refused(streamed, IMAGE_ANSWER_WITHIN),
        )
        .await?;
    // The same through each model service directly: their own bounds, their own memory.
    stack
        .image_case_direct(report, "PNG 1 x 39,999,999 px", &tall, too_large)
        .await?;
    stack
        .image_case_direct(report, "PNG 6300 x 6300 16-bit RGBA", &deep, streamed)
        .await?;
    stack
        .image_case_direct(
            report,
            "JPEG claiming 6000 x 6600",
            &claims_6000,
            &["image_too_large", "image_truncated", "image_undecodable"],
        )
        .await?;
    stack
        .image_case_direct(
            report,
            "JPEG claiming 65500 x 65500",
            &claims_65500,
            too_large,
        )
        .await?;
    stack
        .image_case_direct(
            report,
            "progressive JPEG claiming 6000 x 6000",
            &progressive,
            &["image_too_large", "image_truncated", "image_undecodable"],
        )
        .await?;
    stack
        .image_case_direct(report, "bomb PNG 6324 x 6324 RGBA", &bomb, streamed)
        .await?;

    // Broken images never succeed on grey pixels.
    let photo = fixture(PROBE)?;
    for percent in [30, 50, 70] {
        stack
            .image_case(
                report,
                &format!("JPEG probe cut to {percent} %"),
                &hostile::truncated(&photo, percent),
                &refused(&["image_truncated"], IMAGE_ANSWER_WITHIN),
            )
            .await?;
    }
    let half = hostile::truncated(&photo, 50);
    stack
        .image_case_direct(report, "JPEG cut to 50 %", &half, &["image_truncated"])
        .await?;
    let astronaut = fixture("astronaut.png")?;
    stack
        .image_case(
            report,
            "PNG without IEND",
            &hostile::png_without_iend(&astronaut)?,
            &refused(&["image_truncated"], IMAGE_ANSWER_WITHIN),
        )
        .await?;
    stack
        .image_case(
            report,
            "PNG cut inside IDAT",
            &hostile::truncated(&astronaut, 60),
            &refused(&["image_truncated"], IMAGE_ANSWER_WITHIN),
        )
        .await?;
    stack
        .image_case(
            report,
            "JPEG header then garbage, no EOI",
            &hostile::jpeg_with_garbage_after_header(&photo, 64 * 1024)?,
            &refused(broken, IMAGE_ANSWER_WITHIN),
        )
        .await?;
    for (name, bytes) in [
        ("non-image: text", b"hello, this is not an image".to_vec()),
        (
            "non-image: GIF header",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
        ),
        (
            "non-image: PDF header",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj".to_vec(),
        ),
        (
            "non-image: random bytes",
            hostile::SplitMix64(42).bytes(4096),
        ),
    ] {
        stack
            .image_case(
                report,
                name,
                &bytes,
                &refused(&["unsupported_format"], QUICK_ANSWER_WITHIN),
            )
            .await?;
    }
    Ok(())
}

async fn rest_cases(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    let probe = BASE64.encode(fixture(PROBE)?);
    let gallery = BASE64.encode(fixture(GALLERY)?);
    let bearer = stack.bearer();
    let auth = Some(bearer.as_str());
    let quick = |statuses, reasons, mentions| RestExpect {
        statuses,
        reasons,
        mentions,
        within: QUICK_ANSWER_WITHIN,
    };

    // A fake probe first, the real one second: "last wins" would compare the real one.
    let fake = BASE64.encode(hostile::small_jpeg(32, 32)?);
    let duplicated = format!(
        r#"{{"os":"ANDROID","probe":"{fake}","probe":"{probe}","gallery":["{gallery}"],"search_mode":"FAST"}}"#
    );
    stack
        .rest_case(
            report,
            "REST duplicated top-level key (probe)",
            auth,
            duplicated,
            &quick(&[409], &["duplicate_key"], Some("probe")),
        )
        .await?;
    let nested = format!(
        r#"{{"os":"ANDROID","probe":"{probe}","gallery":["{gallery}"],"search_mode":"FAST","extra":{{"score":1,"score":0.01}}}}"#
    );
    stack
        .rest_case(
            report,
            "REST duplicated nested key (extra.score)",
            auth,
            nested,
            &quick(&[409], &["duplicate_key"], Some("score")),
        )
        .await?;
    let duplicated_mode = format!(
        r#"{{"os":"ANDROID","probe":"{probe}","gallery":["{gallery}"],"search_mode":"FAST","search_mode":"ACCURATE"}}"#
    );
    stack
        .rest_case(
            report,
            "REST duplicated key (search_mode)",
            auth,
            duplicated_mode,
            &quick(&[409], &["duplicate_key"], Some("search_mode")),
        )
        .await?;

    // Unknown fields are skipped, not built: a 5 MB unknown array of numbers, then a normal
    // request: must still succeed.
    let mut unknown = String::from(r#"{"unknown_huge":["#);
    for index in 0..1_000_000 {
        if index > 0 {
            unknown.push(',');
        }
        unknown.push_str("1234");
    }
    unknown.push_str(&format!(
        r#"],"os":"ANDROID","probe":"{probe}","gallery":["{gallery}"],"search_mode":"FAST"}}"#
    ));
    stack
        .rest_case(
            report,
            "REST unknown 5 MB field, otherwise valid",
            auth,
            unknown,
            &RestExpect {
                statuses: &[200],
                reasons: &[],
                mentions: None,
                within: Duration::from_secs(10),
            },
        )
        .await?;

    stack
        .rest_case(
            report,
            "REST body without a token",
            None,
            rest_body(&probe, &gallery),
            &quick(&[401], &["missing_token"], None),
        )
        .await?;
    stack
        .rest_case(
            report,
            "REST invalid base64 probe",
            auth,
            rest_body("!!!not*base64~~~", &gallery),
            &quick(&[412], &["only_images_in_base64"], Some("probe")),
        )
        .await?;
    stack
        .rest_case(
            report,
            "REST URL instead of base64",
            auth,
            rest_body("https://example.com/selfie.jpg", &gallery),
            &quick(&[412], &["only_images_in_base64"], Some("probe")),
        )
        .await?;
    // Found by the REST fuzzer: a multi-byte character across byte 64 of an image string (the
    // URL sniffing looks at its first 64 bytes) must be refused as not base64, not panic.
    let multibyte = format!("{}\u{202E}{}", "A".repeat(63), &gallery[..64]);
    stack
        .rest_case(
            report,
            "REST probe with U+202E across byte 64",
            auth,
            rest_body(&multibyte, &gallery),
            &quick(&[412], &["only_images_in_base64"], Some("probe")),
        )
        .await?;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_body = format!(r#"{{"os":"ANDROID","probe":{deep},"gallery":["{gallery}"]}}"#);
    stack
        .rest_case(
            report,
            "REST 100,000-deep nested JSON",
            auth,
            deep_body,
            &quick(&[400, 409], &["malformed_request"], None),
        )
        .await?;
    stack
        .rest_case(
            report,
            "REST body not JSON",
            auth,
            "probe=abc&gallery=def",
            &quick(&[400], &["malformed_request"], None),
        )
        .await?;
    stack
        .rest_case(
            report,
            "REST body a JSON array",
            auth,
            "[1,2,3]",
            &quick(&[400, 409], &["malformed_request", "invalid_request"], None),
        )
        .await?;
    Ok(())
}

async fn token_cases(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    let probe = BASE64.encode(fixture(PROBE)?);
    let gallery = BASE64.encode(fixture(GALLERY)?);
    let body = rest_body(&probe, &gallery);
    let unauthenticated = |reasons| RestExpect {
        statuses: &[401],
        reasons,
        mentions: None,
        within: QUICK_ANSWER_WITHIN,
    };
    let huge_header = format!("Bearer {}", "A".repeat(133 * 1024));
    stack
        .rest_case(
            report,
            "REST 133 KB Authorization header",
            Some(&huge_header),
            body.clone(),
            &unauthenticated(&["authorization_header_too_large"]),
        )
        .await?;

    let subjects = [
        ("control characters", "client\u{0}\n\u{7}x".to_owned()),
        ("U+202E", "client\u{202E}nimda".to_owned()),
        ("300 bytes", "c".repeat(300)),
    ];
    for (what, sub) in &subjects {
        let token = hostile::mint_token(&stack.jwt_secret, sub)?;
        let bearer = format!("Bearer {token}");
        stack
            .rest_case(
                report,
                &format!("REST JWT sub with {what}"),
                Some(&bearer),
                body.clone(),
                &unauthenticated(&["invalid_subject"]),
            )
            .await?;
        let name = format!("gRPC JWT sub with {what}");
        if stack.wants(&name) {
            let expect = GrpcExpect {
                code: Code::Unauthenticated,
                reasons: &["invalid_subject"],
                field: None,
                within: QUICK_ANSWER_WITHIN,
            };
            let (answer, elapsed) = timed(stack.compare(normal_request(), &token)).await;
            report.record(
                &name,
                expect.describe(),
                elapsed,
                expect.check(&answer?, elapsed),
            );
        }
    }
    // gRPC refuses 64 KB metadata at the transport; with a 9 KB header it must be the 8 KiB rule.
    let name = "gRPC 9 KB Authorization header";
    if stack.wants(name) {
        let expect = GrpcExpect {
            code: Code::Unauthenticated,
            reasons: &["authorization_header_too_large"],
            field: None,
            within: QUICK_ANSWER_WITHIN,
        };
        let long_token = "A".repeat(9 * 1024);
        let (answer, elapsed) = timed(stack.compare(normal_request(), &long_token)).await;
        report.record(
            name,
            expect.describe(),
            elapsed,
            expect.check(&answer?, elapsed),
        );
    }
    Ok(())
}

async fn malformed_protobuf_cases(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    // Field 1 (os / probe / image: length-delimited in all three) sent as a varint: a wire-type
    // error; then a length far past the end.
    let wrong_wire_type = bytes::Bytes::from_static(&[0x08, 0x01]);
    let overlong = bytes::Bytes::from_static(&[0x12, 0xFF, 0xFF, 0xFF, 0x7F, 0x00]);
    let expect = GrpcExpect {
        code: Code::InvalidArgument,
        reasons: &["malformed_request"],
        field: None,
        within: QUICK_ANSWER_WITHIN,
    };
    let targets = [
        (
            "gateway",
            stack.gateway_grpc_url(),
            GATEWAY_METHOD,
            Some(stack.token.as_str()),
        ),
        ("matcher", stack.matcher.grpc_url(), MATCHER_METHOD, None),
        ("liveness", stack.liveness.grpc_url(), LIVENESS_METHOD, None),
    ];
    for (service, url, method, token) in &targets {
        for (what, message) in [
            ("wrong wire type", &wrong_wire_type),
            ("length past the end", &overlong),
        ] {
            let name = format!("malformed protobuf ({what}) to the {service}");
            if !stack.wants(&name) {
                continue;
            }
            let (answer, elapsed) = timed(raw_unary(url, method, message.clone(), *token)).await;
            report.record(
                &name,
                expect.describe(),
                elapsed,
                expect.check(&answer?, elapsed),
            );
        }
    }
    Ok(())
}

/// Three 90 MB bodies at once from one client. The REST body limit is derived from the image
/// limits (11 images of 8 MiB, base64: about 117 MiB with the defaults), so a 90 MB body is read
/// (once, streamed into one buffer) and its 67.5 MB probe refused by the per-image byte limit
/// (412 `image_too_large` on `probe`); a smaller limit would answer 413 first. What the case
/// bounds is the gateway's peak RSS, checked right after it. A body over the limit is
/// refused before it is read.
async fn big_bodies_case(stack: &Stack, report: &mut Report) -> anyhow::Result<()> {
    let name = "REST body of 130 MB (over the body limit)";
    if stack.wants(name) {
        let gallery = BASE64.encode(fixture(GALLERY)?);
        let body = rest_body(&"A".repeat(130_000_000), &gallery);
        let bearer = stack.bearer();
        stack
            .rest_case(
                report,
                name,
                Some(&bearer),
                body,
                &RestExpect {
                    statuses: &[413],
                    reasons: &["request_body_too_large"],
                    mentions: None,
                    within: QUICK_ANSWER_WITHIN,
                },
            )
            .await?;
    }
    let name = "REST three 90 MB bodies at once";
    if !stack.wants(name) {
        return Ok(());
    }
    let gallery = BASE64.encode(fixture(GALLERY)?);
    let filler = "A".repeat(90_000_000);
    let body = bytes::Bytes::from(rest_body(&filler, &gallery));
    drop(filler);
    let bearer = stack.bearer();
    let expect = RestExpect {
        statuses: &[412, 413],
        reasons: &["image_too_large", "request_body_too_large"],
        mentions: None,
        within: Duration::from_secs(10),
    };
    let started = Instant::now();
    let sends = (0..3).map(|_| {
        let body = body.clone();
        let bearer = bearer.clone();
        let addr = stack.gateway_http();
        tokio::spawn(async move {
            let (answer, elapsed) = timed(http_exchange(
                addr,
                "POST",
                COMPARE_PATH,
                Some(&bearer),
                body,
            ))
            .await;
            (answer, elapsed)
        })
    });
    let mut answers = Vec::new();
    for send in sends.collect::<Vec<_>>() {
        answers.push(send.await?);
    }
    let elapsed = started.elapsed();
    let mut observed = Vec::new();
    let mut passed = true;
    for (answer, took) in answers {
        match answer {
            Ok(answer) => match expect.check(&answer, took) {
                Ok(text) => observed.push(text),
                Err(text) => {
                    passed = false;
                    observed.push(text);
                }
            },
            Err(error) => {
                passed = false;
                observed.push(format!("no answer: {error:#}"));
            }
        }
    }
    let observed = observed.join(" | ");
    report.record(
        name,
        expect.describe(),
        elapsed,
        if passed { Ok(observed) } else { Err(observed) },
    );
    Ok(())
}

/// Last: the matcher is SIGKILLed during a call (UNAVAILABLE, not INTERNAL), then the gateway's
/// readiness must say so while its liveness (`/healthz`) stays up.
async fn killed_matcher_cases(stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    let name = "matcher killed mid-call";
    if !stack.wants(name) && !stack.wants("readiness") {
        return Ok(());
    }
    // An ACCURATE request with a ten-photo gallery keeps the matcher busy for a while.
    let mut request = request_with(fixture(PROBE)?, "ACCURATE");
    let photo = fixture(GALLERY)?;
    request.gallery = (0..10).map(|_| photo.clone().into()).collect();
    let url = stack.gateway_grpc_url();
    let token = stack.token.clone();
    let call = tokio::spawn(async move {
        let mut client =
            pb::face_verification_client::FaceVerificationClient::new(connect(&url).await?)
                .max_encoding_message_size(usize::MAX);
        let (answer, elapsed) =
            timed(client.compare_with_liveness(authorized(request, &token))).await;
        Ok::<_, anyhow::Error>((answer.map(tonic::Response::into_inner), elapsed))
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_at = Instant::now();
    stack.matcher.kill()?;
    let (answer, _) = call.await??;
    let after_kill = killed_at.elapsed();
    let expect = GrpcExpect {
        code: Code::Unavailable,
        reasons: &["matcher_unavailable"],
        field: None,
        within: QUICK_ANSWER_WITHIN,
    };
    let mut result = expect.check(&answer, after_kill);
    if let Ok(response) = &answer {
        result = Err(format!(
            "OK before the kill landed ({}): make the request slower",
            summarize(response)
        ));
    }
    report.record(
        name,
        format!("{} (timed from the kill)", expect.describe()),
        after_kill,
        result,
    );

    let expect = GrpcExpect {
        code: Code::Unavailable,
        reasons: &["matcher_unavailable"],
        field: None,
        within: QUICK_ANSWER_WITHIN,
    };
    let (answer, elapsed) = timed(stack.compare(normal_request(), &stack.token)).await;
    report.record(
        "request with the matcher down",
        expect.describe(),
        elapsed,
        expect.check(&answer?, elapsed),
    );

    // Readiness: the gateway's health and /readyz follow its backends; /healthz is the process.
    let addr = stack.gateway_http();
    let readiness = async {
        let start = Instant::now();
        loop {
            let answer = http_exchange(addr, "GET", "/readyz", None, bytes::Bytes::new()).await?;
            if answer.status == 503 || start.elapsed() > Duration::from_secs(15) {
                return Ok::<_, anyhow::Error>((answer, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (ready, elapsed) = readiness.await?;
    let result = if ready.status == 503 {
        Ok(format!("503 after {} ms", elapsed.as_millis()))
    } else {
        Err(format!(
            "{} {}",
            ready.status,
            hostile::truncate_text(&ready.body, 100)
        ))
    };
    report.record(
        "readiness: /readyz 503 with the matcher down",
        "503 within 15 s".into(),
        elapsed,
        result,
    );

    let health = async {
        let mut client = tonic_health::pb::health_client::HealthClient::new(
            connect(&stack.gateway_grpc_url()).await?,
        );
        let start = Instant::now();
        loop {
            let status = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|answer| answer.into_inner().status);
            let not_serving = matches!(status, Ok(code) if code == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
            if not_serving || start.elapsed() > Duration::from_secs(15) {
                return Ok::<_, anyhow::Error>((status, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (status, elapsed) = health.await?;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let result = match status {
        Ok(code) if code == not_serving => Ok("NOT_SERVING".to_owned()),
        other => Err(format!("{other:?}")),
    };
    report.record(
        "readiness: gRPC health NOT_SERVING with the matcher down",
        "NOT_SERVING within 15 s".into(),
        elapsed,
        result,
    );

    let (live, elapsed) = timed(http_exchange(
        addr,
        "GET",
        "/healthz",
        None,
        bytes::Bytes::new(),
    ))
    .await;
    let live = live?;
    let result = if live.status == 200 {
        Ok("200".to_owned())
    } else {
        Err(live.status.to_string())
    };
    report.record(
        "liveness: /healthz 200 with the matcher down",
        "200".into(),
        elapsed,
        result,
    );
    Ok(())
}
