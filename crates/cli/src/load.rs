//! `faceproof load`: a bounded load test of a running gateway. Sends the same compare-with-liveness
//! request `--requests` times with `--concurrency` calls in flight, and reports throughput, latency
//! percentiles and the answers by gRPC code: what a deployment needs to size its replicas
//! (DESIGN.md: measure under concurrent load, not one request at a time). It stops by itself:
//! no request is sent after `--requests` have been, or once `--max-duration-s` (warm-up
//! included) has passed; those in flight then end within `--timeout-s`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use tonic::transport::Channel;

use crate::compare::{RequestArgs, prepared_call};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    request: RequestArgs,
    /// Calls in flight at once (streams on one HTTP/2 connection, as a client library sends them).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Timed requests in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,
    /// Untimed requests sent first, one at a time (connection set-up, first-call costs).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    warmup: u64,
    /// Send nothing more after this many seconds, warm-up included, even if requests remain
    /// (those in flight finish; the report says how many were sent).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_duration_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Two threads: enough to keep 256 calls in flight; the gateway, not this client, is measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(load(&args))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        outln!("{}", report.table());
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one timed call gave.
#[derive(Debug, Clone)]
struct Outcome {
    latency: Duration,
    /// `OK`, or the gRPC code's name.
    code: String,
    /// For an answer: whether liveness ran (the comparison reached `compare_min_score`).
    liveness_ran: bool,
}

async fn load(args: &Args) -> anyhow::Result<Report> {
    let request = &args.request;
    let message = Arc::new(request.message()?);
    let client = request.connect().await?;
    let stop_sending_at = Instant::now() + Duration::from_secs(args.max_duration_s);

    // One call at a time first; a failure here (a bad token, a rejected image) would only repeat.
    for _ in 0..args.warmup {
        if Instant::now() >= stop_sending_at {
            anyhow::bail!("the warm-up took all of --max-duration-s; nothing was measured");
        }
        let mut client = client.clone();
        if let Err(status) = client
            .compare_with_liveness(request.call((*message).clone())?)
            .await
        {
            crate::compare::report_status(&status);
            anyhow::bail!("the warm-up request failed; nothing was measured");
        }
    }

    let authorization = request.authorization()?;
    let timeout = request.timeout();
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let requests = args.requests;
    let concurrency = args.concurrency.min(requests);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let (message, claimed) = (Arc::clone(&message), Arc::clone(&claimed));
        let authorization = authorization.clone();
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            // Each worker claims the next request until none is left or time is up.
            while claimed.fetch_add(1, Ordering::Relaxed) < requests
                && Instant::now() < stop_sending_at
            {
                let call = prepared_call((*message).clone(), timeout, authorization.as_ref());
                outcomes.push(send(&mut client, call).await);
            }
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = workers.join_next().await {
        outcomes.extend(joined.context("a load worker failed")?);
    }
    Ok(Report {
        target: request.addr.clone(),
        concurrency,
        requested: requests,
        wall: started.elapsed(),
        outcomes,
    })
}

/// One call, timed from send to answer.
async fn send(
    client: &mut FaceVerificationClient<Channel>,
    call: tonic::Request<pb::CompareWithLivenessRequest>,
) -> Outcome {
    let sent = Instant::now();
    let answer = client.compare_with_liveness(call).await;
    let latency = sent.elapsed();
    match answer {
        Ok(response) => Outcome {
            latency,
            code: "OK".to_owned(),
            liveness_ran: response
                .into_inner()
                .data
                .is_some_and(|data| data.liveness.is_some()),
        },
        Err(status) => Outcome {
            latency,
            code: code_name(status.code()),
            liveness_ran: false,
        },
    }
}

/// The measured run.
#[derive(Debug)]
struct Report {
    target: String,
    /// Calls in flight at once (`--concurrency`, or fewer when fewer requests were asked for).
    concurrency: u64,
    /// `--requests`; fewer were sent when `--max-duration-s` ran out first.
    requested: u64,
    wall: Duration,
    outcomes: Vec<Outcome>,
}

impl Report {
    fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|outcome| outcome.code == "OK")
    }

    /// True when `--max-duration-s` stopped the run before every request was sent.
    fn truncated(&self) -> bool {
        (self.outcomes.len() as u64) < self.requested
    }

    fn by_code(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for outcome in &self.outcomes {
            *counts.entry(outcome.code.as_str()).or_default() += 1;
        }
        counts
    }

    fn throughput(&self) -> f64 {
        self.outcomes.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Latency percentiles in ms over every call, answered or not (nearest rank).
    fn percentiles(&self) -> Vec<(&'static str, f64)> {
        let mut ms: Vec<f64> = self
            .outcomes
            .iter()
            .map(|outcome| outcome.latency.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)]
            .into_iter()
            .map(|(name, q)| (name, nearest_rank(&ms, q)))
            .collect()
    }

    fn liveness_ran(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| outcome.liveness_ran)
            .count()
    }

    fn table(&self) -> String {
        let mut text = format!(
            "{} requests to {} with {} in flight: {:.2} s, {:.2} requests/s\n",
            self.outcomes.len(),
            self.target,
            self.concurrency,
            self.wall.as_secs_f64(),
            self.throughput()
        );
        if self.truncated() {
            text.push_str(&format!(
                "  stopped by --max-duration-s: {} of {} requests sent\n",
                self.outcomes.len(),
                self.requested
            ));
        }
        for (code, count) in self.by_code() {
            text.push_str(&format!("  {code:<20} {count}\n"));
        }
        text.push_str(&format!("  liveness ran on      {}\n", self.liveness_ran()));
        let latency: Vec<String> = self
            .percentiles()
            .into_iter()
            .map(|(name, ms)| format!("{name} {ms:.1}"))
            .collect();
        text.push_str(&format!("latency ms: {}", latency.join("  ")));
        text
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "concurrency": self.concurrency,
            "requests": self.outcomes.len(),
            "requested": self.requested,
            "truncated": self.truncated(),
            "seconds": self.wall.as_secs_f64(),
            "requests_per_second": self.throughput(),
            "by_code": self.by_code(),
            "liveness_ran": self.liveness_ran(),
            "latency_ms": self.percentiles().into_iter().collect::<BTreeMap<_, _>>(),
        })
    }
}

/// The canonical gRPC name of `code` (`RESOURCE_EXHAUSTED`), as in the gRPC docs and other tools.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The smallest value with at least `q` of the sorted values at or below it; 0 when empty.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use clap::Parser as _;
    use faceproof_proto::gateway::v1::face_verification_server::{
        FaceVerification, FaceVerificationServer,
    };
    use tonic::{Request, Response, Status};

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), 5.0);
        assert_eq!(nearest_rank(&sorted, 0.9), 9.0);
        assert_eq!(nearest_rank(&sorted, 0.99), 10.0);
        assert_eq!(nearest_rank(&sorted, 1.0), 10.0);
        assert_eq!(nearest_rank(&[7.0], 0.5), 7.0);
        assert_eq!(nearest_rank(&[], 0.5), 0.0);
    }

    /// A gateway stand-in: checks the token, takes 30 ms per call, records the most calls it had
    /// in flight at once, and answers RESOURCE_EXHAUSTED after `accept` calls.
    #[derive(Default)]
    struct FakeGateway {
        accept: usize,
        calls: AtomicUsize,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    /// The served handle to a [`FakeGateway`] the test keeps reading.
    struct FakeService(Arc<FakeGateway>);

    #[tonic::async_trait]
    impl FaceVerification for FakeService {
        async fn compare_with_liveness(
            &self,
            request: Request<pb::CompareWithLivenessRequest>,
        ) -> Result<Response<pb::CompareWithLivenessResponse>, Status> {
            let fake = &self.0;
            if request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes())
                != Some(b"Bearer t0ken".as_slice())
            {
                return Err(Status::unauthenticated("bad token"));
            }
            assert!(!request.get_ref().probe.is_empty());
            let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            fake.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            fake.in_flight.fetch_sub(1, Ordering::SeqCst);
            if fake.calls.fetch_add(1, Ordering::SeqCst) >= fake.accept {
                return Err(Status::resource_exhausted("busy"));
            }
            Ok(Response::new(pb::CompareWithLivenessResponse {
                data: Some(pb::ResponseData {
                    liveness: Some(pb::LivenessRecord::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }

        async fn get_signing_keys(
            &self,
            _: Request<pb::GetSigningKeysRequest>,
        ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
    }

    async fn serve(fake: Arc<FakeGateway>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FaceVerificationServer::new(FakeService(fake)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(addr: &str, token: &str, extra: &[&str]) -> Args {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
        let probe = format!("{fixtures}/obama_2012_official_portrait.jpg");
        let gallery = format!("{fixtures}/obama_2009_congress.jpg");
        let mut argv = vec![
            "load",
            "--probe",
            &probe,
            "--gallery",
            &gallery,
            "--search-mode",
            "fast",
            "--addr",
            addr,
            "--token",
            token,
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_every_request_with_the_chosen_concurrency_and_counts_the_answers() {
        let fake = Arc::new(FakeGateway {
            accept: 1 + 8, // the warm-up and 8 of the 10 timed calls
            ..Default::default()
        });
        let addr = serve(Arc::clone(&fake)).await;
        let args = args(
            &addr,
            "t0ken",
            &["--concurrency", "3", "--requests", "10", "--warmup", "1"],
        );
        let report = load(&args).await.unwrap();
        assert_eq!(report.outcomes.len(), 10);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 11);
        assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 3);
        let by_code = report.by_code();
        assert_eq!(by_code.get("OK"), Some(&8), "{by_code:?}");
        assert_eq!(by_code.get("RESOURCE_EXHAUSTED"), Some(&2), "{by_code:?}");
        assert!(!report.truncated());
        assert_eq!(report.liveness_ran(), 8);
        assert!(!report.all_ok());
        // 10 calls of 30 ms, 3 at a time: at least 4 rounds.
        assert!(
            report.wall >= Duration::from_millis(120),
            "{:?}",
            report.wall
        );
        let percentiles = report.percentiles();
        assert!(
            percentiles.iter().all(|(_, ms)| *ms >= 30.0),
            "{percentiles:?}"
        );
        let json = report.to_json();
        assert_eq!(json["requests"], 10);
        assert_eq!(json["by_code"]["OK"], 8);
        assert!(report.table().contains("10 requests to http://127.0.0.1:"));
    }

    #[tokio::test]
    async fn a_failing_warm_up_measures_nothing() {
        let fake = Arc::new(FakeGateway::default());
        let addr = serve(Arc::clone(&fake)).await;
        let error = load(&args(&addr, "wrong", &["--requests", "50"]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("warm-up"), "{error}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_duration_stops_a_long_run_and_says_so() {
        let fake = Arc::new(FakeGateway {
            accept: usize::MAX,
            ..Default::default()
        });
        let addr = serve(Arc::clone(&fake)).await;
        let args = args(
            &addr,
            "t0ken",
            &[
                "--requests",
                "1000000",
                "--max-duration-s",
                "1",
                "--warmup",
                "0",
            ],
        );
        let started = Instant::now();
        let report = load(&args).await.unwrap();
        // Two workers, 30 ms a call: about 66 calls in the second, then the last ones finish.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(report.truncated());
        assert!(
            (10..200).contains(&report.outcomes.len()),
            "{}",
            report.outcomes.len()
        );
        assert!(report.table().contains("stopped by --max-duration-s"));
        assert_eq!(report.to_json()["truncated"], true);
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
    }

    #[test]
    fn bounds_are_enforced_by_the_parser() {
        let base = [
            "load",
            "--probe",
            "p",
            "--gallery",
            "g",
            "--search-mode",
            "fast",
        ];
        assert!(Cli::try_parse_from(base).is_ok());
        for bad in [
            ["--concurrency", "0"],
            ["--concurrency", "1000"],
            ["--requests", "0"],
            ["--max-duration-s", "0"],
        ] {
            let mut argv = base.to_vec();
            argv.extend_from_slice(&bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
