//! Helpers of the hostile-input suite (`tests/tests/hostile.rs`) and the request fuzzers
//! (`tests/tests/fuzz_requests.rs`), issue 10.
//!
//! - **Services as processes.** [`ServiceProcess::spawn`] re-executes the current test binary with
//!   [`CHILD_ENV`] naming one service; that process calls [`child_main_if_requested`] first thing,
//!   which runs the service's library code on `127.0.0.1:0` listeners and prints their addresses.
//!   Separate processes are what make each service's peak RSS ([`ServiceProcess::peak_rss_kib`],
//!   `VmHWM`) and a kill mid-call observable. A child exits when its stdin closes, so it never
//!   outlives the suite.
//! - **Hostile inputs, generated.** Images whose headers promise huge work for few bytes, cut or
//!   corrupted files; nothing is committed.
//! - **Raw wire access.** [`RawBytesCodec`] sends arbitrary bytes as a gRPC message and
//!   [`http_exchange`] speaks HTTP/1.1 over a plain socket, so malformed bodies, oversized headers
//!   and early answers (413 while the body is still arriving) are all visible.
//! - [`SplitMix64`] and [`mutate`]: the deterministic mutations the fuzzers use.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Parser as _;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Names the service a re-executed test binary must run (`matcher`, `liveness`, `gateway`);
/// its command-line arguments are that service's flags.
pub const CHILD_ENV: &str = "FACEPROOF_HOSTILE_CHILD";

/// The line a child prints once its listeners are bound.
const READY_PREFIX: &str = "FACEPROOF_HOSTILE_READY";

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Matcher,
    Liveness,
    Gateway,
}

impl ServiceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Matcher => "matcher",
            Self::Liveness => "liveness",
            Self::Gateway => "gateway",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Matcher, Self::Liveness, Self::Gateway]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// Call first thing in `main` of a test binary that spawns [`ServiceProcess`]es: `None` in the
/// test process itself; in a child, runs the service until stdin closes and returns its result.
pub fn child_main_if_requested() -> Option<anyhow::Result<()>> {
    let kind = std::env::var(CHILD_ENV).ok()?;
    let Some(kind) = ServiceKind::from_name(&kind) else {
        return Some(Err(anyhow!("{CHILD_ENV}={kind:?} names no service")));
    };
    let args: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return Some(Err(error.into())),
    };
    Some(runtime.block_on(run_child(kind, args)))
}

/// Resolves when the parent closes our stdin (or dies): the child's shutdown signal.
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    })
    .await;
}

async fn run_child(kind: ServiceKind, args: Vec<String>) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    match kind {
        ServiceKind::Matcher => {
            let config = faceproof_matcher::MatcherConfig::try_parse_from(args)?;
            let engine = tokio::task::spawn_blocking({
                let config = config.clone();
                move || faceproof_matcher::vision::load_engine(&config)
            })
            .await??;
            let app = faceproof_matcher::Application::build(config, listener, Arc::new(engine))?;
            announce(&[app.local_addr()])?;
            app.run_until_stopped(stdin_closed()).await?;
        }
        ServiceKind::Liveness => {
            let config = faceproof_liveness::LivenessConfig::try_parse_from(args)?;
            let engine = tokio::task::spawn_blocking({
                let config = config.clone();
                move || faceproof_liveness::vision::load_engine(&config)
            })
            .await??;
            let app = faceproof_liveness::Application::build(config, listener, Arc::new(engine))?;
            announce(&[app.local_addr()])?;
            app.run_until_stopped(stdin_closed()).await?;
        }
        ServiceKind::Gateway => {
            let config = faceproof_gateway::GatewayCli::try_parse_from(args)?.config;
            let http_listener = TcpListener::bind("127.0.0.1:0").await?;
            let app = faceproof_gateway::Application::build(config, listener, http_listener)?;
            announce(&[app.grpc_addr(), app.http_addr()])?;
            app.run_until_stopped(stdin_closed()).await?;
        }
    }
    Ok(())
}

fn announce(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_PREFIX} {}", addrs.join(" "))?;
    stdout.flush()?;
    Ok(())
}

/// A service running as a child process of the test.
pub struct ServiceProcess {
    pub kind: ServiceKind,
    child: Child,
    /// Closing it (drop) tells the child to shut down.
    stdin: Option<ChildStdin>,
    /// The listeners it bound: gRPC first (and the gateway's REST second).
    pub addrs: Vec<SocketAddr>,
}

impl ServiceProcess {
    /// Starts `kind` from the current executable with `args` (its flags, after the program name)
    /// and waits until it has bound its listeners (not until it is warm: follow its health).
    pub fn spawn(kind: ServiceKind, args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg0_compat(kind.name())
            .args(args)
            .env(CHILD_ENV, kind.name())
            // What `main` of the model services arranges: candle's own pool spins against ours.
            .env("CANDLE_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {}", kind.name()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .find(|line| line.starts_with(READY_PREFIX));
            let _ = sender.send(ready);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let ready = receiver
            .recv_timeout(crate::NETWORK_WAIT)
            .map_err(|_| anyhow!("the {} did not bind its listeners in time", kind.name()))?
            .ok_or_else(|| anyhow!("the {} exited before binding its listeners", kind.name()))?;
        let addrs = ready
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        Ok(Self {
            kind,
            child,
            stdin,
            addrs,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://addr` of its gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's peak resident set size so far (`VmHWM` of /proc/PID/status), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Its resident set size now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// SIGKILL, as the OOM killer or a crash would end it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // EOF on stdin: the child drains and exits; kill it if it lingers.
        drop(self.stdin.take());
        for _ in 0..50 {
            if !self.is_alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `arg0` without pulling in `CommandExt` at every call site.
trait Arg0Compat {
    fn arg0_compat(&mut self, name: &str) -> &mut Self;
}

impl Arg0Compat for Command {
    fn arg0_compat(&mut self, name: &str) -> &mut Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            self.arg0(format!("faceproof-{name}"))
        }
        #[cfg(not(unix))]
        {
            let _ = name;
            self
        }
    }
}

/// A `kB` line of /proc/PID/status.
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// The model store of this checkout (or `FACEPROOF_MODEL_DIR`).
pub fn model_dir() -> anyhow::Result<PathBuf> {
    let store = faceproof_models::ModelStore::discover().context(
        "no model store: run `cargo run -p faceproof-cli -- models fetch --from ../shared/models`",
    )?;
    Ok(store.dir().to_path_buf())
}

/// Writes `contents` to `dir/name` and returns the path as text (for a flag).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// An HS256 JWT with any `sub` (hostile ones included) and an hour of validity.
pub fn mint_token(secret: &str, sub: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            exp: chrono::Utc::now().timestamp() + 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// SHA-256 of `bytes`, lower-case hex (what signed records carry for each image).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// Generated hostile images.

/// The sample byte of every generated flat PNG (mid grey).
const FLAT_SAMPLE: u8 = 0x80;

/// A PNG of one flat colour (every sample byte [`FLAT_SAMPLE`], filter None) whose zlib stream
/// is written directly ([`flat_rows_zlib`]) instead of deflating the decoded image: the
/// 6300 x 6300 16-bit RGBA one is 318 MB decoded and the 1 x 39,999,999 one has 40 million
/// rows, and neither ever exists here. Fixed-Huffman copies compress flat rows about 150:1
/// (the tall one is about 500 KB), the ratio that makes these cheap to send and expensive to
/// decode.
pub fn flat_png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
) -> anyhow::Result<Vec<u8>> {
    let bits_per_pixel = color.samples() * depth as usize;
    let row_bytes = (width as usize * bits_per_pixel).div_ceil(8);
    let zlib = flat_rows_zlib(row_bytes, height as usize, FLAT_SAMPLE);
    let mut out = Vec::with_capacity(zlib.len() + 64);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let mut writer = encoder.write_header()?;
    writer.write_chunk(png::chunk::IDAT, &zlib)?;
    writer.finish()?;
    Ok(out)
}

/// The zlib stream (RFC 1950/1951) of `rows` PNG rows, each a filter byte 0 and `row_bytes`
/// bytes of `value`, as one fixed-Huffman block of literals and copies. Rows of 64 bytes or
/// more: per row, the filter byte and one sample as literals, then a copy at distance 1. Short
/// rows (the 1-pixel-wide PNG): the first row as literals, then one copy of everything else at
/// the row's distance. Costs O(output), not O(decoded size).
pub fn flat_rows_zlib(row_bytes: usize, rows: usize, value: u8) -> Vec<u8> {
    let mut bits = BitWriter::default();
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x01: the header check (0x7801 % 31 == 0).
    bits.out.extend_from_slice(&[0x78, 0x01]);
    // BFINAL = 1, BTYPE = 01 (fixed Huffman).
    bits.put(1, 1);
    bits.put(1, 2);
    let period = row_bytes + 1;
    if row_bytes >= 64 {
        for _ in 0..rows {
            bits.put_literal(0);
            bits.put_literal(u32::from(value));
            bits.put_copy(row_bytes - 1, 1);
        }
    } else if rows > 0 {
        let put_row = |bits: &mut BitWriter| {
            bits.put_literal(0);
            for _ in 0..row_bytes {
                bits.put_literal(u32::from(value));
            }
        };
        put_row(&mut bits);
        let rest = (rows - 1) * period;
        if rest >= 3 {
            bits.put_copy(rest, period);
        } else if rows > 1 {
            put_row(&mut bits);
        }
    }
    bits.put_literal(256); // end of block
    let mut out = bits.finish();
    let adler = adler32_of_flat_rows(row_bytes as u64, rows as u64, value);
    out.extend_from_slice(&adler.to_be_bytes());
    out
}

/// Adler-32 of `rows` rows of (0, `value` x `row_bytes`) in O(1): one row maps (a, b) to
/// (a + S, b + L*a + T), so n rows from (1, 0) give a = 1 + n*S and
/// b = n*L + L*S*n(n-1)/2 + n*T (all mod 65521).
pub fn adler32_of_flat_rows(row_bytes: u64, rows: u64, value: u8) -> u32 {
    const MODULUS: u128 = 65_521;
    let (k, n, v) = (u128::from(row_bytes), u128::from(rows), u128::from(value));
    let sum = k * v % MODULUS;
    let row_len = (k + 1) % MODULUS;
    let row_b = v * (k * (k + 1) / 2 % MODULUS) % MODULUS;
    let pairs = n * n.saturating_sub(1) / 2 % MODULUS;
    let a = (1 + n % MODULUS * sum) % MODULUS;
    let b =
        (n % MODULUS * row_len + row_len * sum % MODULUS * pairs + n % MODULUS * row_b) % MODULUS;
    ((b as u32) << 16) | a as u32
}

/// DEFLATE length codes 257..=285: base length and extra bits (RFC 1951 3.2.5).
const LENGTH_BASE: [usize; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// DEFLATE distance codes 0..=29: base distance and extra bits.
const DISTANCE_BASE: [usize; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// DEFLATE's bit order: values least-significant bit first, Huffman codes most-significant
/// bit first.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        self.pending |= u64::from(value) << self.pending_bits;
        self.pending_bits += bits;
        while self.pending_bits >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.pending_bits -= 8;
        }
    }

    fn put_code(&mut self, code: u32, bits: u32) {
        self.put(code.reverse_bits() >> (32 - bits), bits);
    }

    /// A literal/length symbol in the fixed Huffman code.
    fn put_literal(&mut self, symbol: u32) {
        match symbol {
            0..=143 => self.put_code(0x30 + symbol, 8),
            144..=255 => self.put_code(0x190 + symbol - 144, 9),
            256..=279 => self.put_code(symbol - 256, 7),
            _ => self.put_code(0xC0 + symbol - 280, 8),
        }
    }

    /// One copy of 3..=258 bytes.
    fn put_match(&mut self, length: usize, distance: usize) {
        let index = LENGTH_BASE
            .iter()
            .rposition(|&base| base <= length)
            .unwrap_or(0);
        self.put_literal(257 + index as u32);
        self.put((length - LENGTH_BASE[index]) as u32, LENGTH_EXTRA[index]);
        let code = DISTANCE_BASE
            .iter()
            .rposition(|&base| base <= distance)
            .unwrap_or(0);
        self.put_code(code as u32, 5);
        self.put(
            (distance - DISTANCE_BASE[code]) as u32,
            DISTANCE_EXTRA[code],
        );
    }

    /// A copy of any `length` >= 3 as matches of at most 258 bytes, none shorter than 3.
    fn put_copy(&mut self, mut length: usize, distance: usize) {
        while length > 0 {
            let take = match length {
                0..=258 => length,
                259..=260 => length - 3,
                _ => 258,
            };
            self.put_match(take, distance);
            length -= take;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.pending_bits > 0 {
            self.out.push(self.pending as u8);
        }
        self.out
    }
}

/// A small real baseline JPEG (a gradient), the base of the header-patched ones.
pub fn small_jpeg(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&image)?;
    Ok(out)
}

/// Offset of the first `FF marker` segment in a JPEG (after SOI).
fn jpeg_segment(jpeg: &[u8], marker: u8) -> Option<usize> {
    let mut at = 2;
    while at + 4 <= jpeg.len() {
        if jpeg[at] != 0xFF {
            return None;
        }
        if jpeg[at + 1] == marker {
            return Some(at);
        }
        let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        at += 2 + length;
    }
    None
}

/// `jpeg` with its SOF0 frame header claiming `width x height` (the scan data stays small).
pub fn jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> anyhow::Result<Vec<u8>> {
    let mut out = jpeg.to_vec();
    let sof = jpeg_segment(&out, 0xC0).context("no SOF0 in the JPEG")?;
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    Ok(out)
}

/// `jpeg` turned into a progressive one (SOF2) claiming `width x height`, its one scan a DC-only
/// first scan: a progressive decoder keeps coefficients for the whole claimed frame.
pub fn progressive_jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> anyhow::Result<Vec<u8>> {
    let mut out = jpeg_claiming(jpeg, width, height)?;
    let sof = jpeg_segment(&out, 0xC0).context("no SOF0 in the JPEG")?;
    out[sof + 1] = 0xC2;
    let sos = jpeg_segment(&out, 0xDA).context("no SOS in the JPEG")?;
    let components = usize::from(out[sos + 4]);
    let spectral = sos + 5 + 2 * components;
    // Ss = 0, Se = 0, Ah = Al = 0: the DC scan of a progressive frame.
    out[spectral] = 0;
    out[spectral + 1] = 0;
    out[spectral + 2] = 0;
    Ok(out)
}

/// The segments of `jpeg` up to and including its SOS header, then `garbage_len` pseudo-random
/// bytes and no EOI: a valid header with garbage for image data.
pub fn jpeg_with_garbage_after_header(jpeg: &[u8], garbage_len: usize) -> anyhow::Result<Vec<u8>> {
    let sos = jpeg_segment(jpeg, 0xDA).context("no SOS in the JPEG")?;
    let length = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    let mut out = jpeg[..sos + 2 + length].to_vec();
    let mut rng = SplitMix64(0x5EED);
    // 0xFF would start a marker; keep the garbage inside the entropy-coded segment.
    out.extend((0..garbage_len).map(|_| (rng.next_u64() % 255) as u8));
    Ok(out)
}

/// The first `percent` % of `bytes`.
pub fn truncated(bytes: &[u8], percent: usize) -> Vec<u8> {
    bytes[..bytes.len() * percent / 100].to_vec()
}

/// A PNG with its IEND chunk (the last 12 bytes) removed.
pub fn png_without_iend(png: &[u8]) -> anyhow::Result<Vec<u8>> {
    if png.len() < 12 || &png[png.len() - 8..png.len() - 4] != b"IEND" {
        bail!("the PNG does not end with IEND");
    }
    Ok(png[..png.len() - 12].to_vec())
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC messages.

/// A codec that sends its `Bytes` as the message verbatim and reads the answer as bytes:
/// malformed protobuf on the wire, whatever the method's message type.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawBytesCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct RawBytesCoder;

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawBytesCoder;
    type Decoder = RawBytesCoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytesCoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytesCoder
    }
}

impl tonic::codec::Encoder for RawBytesCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytesCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `message` verbatim to the unary method `path` (`/package.Service/Method`).
pub async fn raw_unary(
    url: &str,
    path: &'static str,
    message: bytes::Bytes,
    token: Option<&str>,
) -> anyhow::Result<Result<bytes::Bytes, tonic::Status>> {
    let channel = crate::connect(url).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let request = match token {
        Some(token) => crate::authorized(message, token),
        None => tonic::Request::new(message),
    };
    let answer = tokio::time::timeout(
        crate::NETWORK_WAIT,
        grpc.unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawBytesCodec,
        ),
    )
    .await
    .map_err(|_| anyhow!("{path} took over {:?}", crate::NETWORK_WAIT))?;
    Ok(answer.map(tonic::Response::into_inner))
}

/// The ErrorInfo reason of a status ("" when it has none), and its BadRequest field violations
/// as `(field, reason)`: the test kit's accessors, under the names the hostile suite reads.
pub use faceproof_testkit::fake_backend::{
    reason as status_reason, violations as status_violations,
};

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1.

/// One HTTP answer: status, raw header block and body text.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpAnswer {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// `reason` of a JSON error body ("" when there is none).
    pub fn reason(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|body| body["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One request over a fresh connection (`Connection: close`). The body is written while the
/// answer is read, so a server that answers early (413) and closes is seen, not a write error.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: bytes::Bytes,
) -> anyhow::Result<HttpAnswer> {
    let stream = tokio::time::timeout(crate::NETWORK_WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))??;
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(authorization) = authorization {
        head.push_str(&format!("authorization: {authorization}\r\n"));
    }
    head.push_str("\r\n");
    let write = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        // In slices, so an early answer stops the upload soon.
        for chunk in body.chunks(256 * 1024) {
            writer.write_all(chunk).await?;
        }
        writer.flush().await?;
        // Keep the write side open: closing it could end the exchange before the answer.
        Ok::<_, std::io::Error>(writer)
    });
    let mut raw = Vec::new();
    tokio::time::timeout(crate::NETWORK_WAIT, reader.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow!("{method} {path}: no complete answer in time"))?
        .or_else(|error| {
            // A reset after a complete answer (the server closed on an unread body) is fine.
            if raw.is_empty() {
                Err(error)
            } else {
                Ok(raw.len())
            }
        })?;
    write.abort();
    let text = String::from_utf8_lossy(&raw);
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP answer: {:?}", truncate_text(&text, 200)))?;
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {:?}", truncate_text(headers, 200)))?;
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpAnswer {
        status,
        headers: headers.to_owned(),
        body,
    })
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// At most `max` characters of `text`, for messages.
pub fn truncate_text(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

// ---------------------------------------------------------------------------------------------
// Deterministic mutation.

/// SplitMix64: small, deterministic, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// One to four random edits of `input`: bit flips, interesting bytes (0, 0x7f, 0x80, 0xff),
/// truncation, insertion and deletion of runs, duplication of a slice, a splice of `other`.
pub fn mutate(rng: &mut SplitMix64, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = [0x00, 0x7F, 0x80, 0xFF, b'"', b'{', b'\\'][rng.below(7)];
            }
            2 => out.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let run_len = 1 + rng.below(16);
                let run = rng.bytes(run_len);
                out.splice(at..at, run);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                out.drain(start..end);
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy = out[start..end].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                // A varint-ish big number: protobuf lengths and tags that overflow.
                let at = rng.below(len + 1);
                out.splice(at..at, [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_adler32(bytes: impl Iterator<Item = u8>) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for byte in bytes {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        (b << 16) | a
    }

    fn flat_rows(row_bytes: usize, rows: usize) -> impl Iterator<Item = u8> {
        (0..rows).flat_map(move |_| {
            std::iter::once(0).chain(std::iter::repeat_n(FLAT_SAMPLE, row_bytes))
        })
    }

    #[test]
    fn adler32_of_flat_rows_matches_the_definition() {
        for (row_bytes, rows) in [(1, 0), (1, 1), (1, 131), (1, 100_003), (30, 3), (2400, 70)] {
            assert_eq!(
                adler32_of_flat_rows(row_bytes as u64, rows as u64, FLAT_SAMPLE),
                naive_adler32(flat_rows(row_bytes, rows)),
                "{row_bytes} x {rows}"
            );
        }
    }

    #[test]
    fn flat_pngs_decode_to_their_flat_rows() {
        use png::{BitDepth, ColorType};
        let shapes = [
            (1, 2, ColorType::Grayscale, BitDepth::Eight),
            (1, 131, ColorType::Grayscale, BitDepth::Eight),
            (1, 100_003, ColorType::Grayscale, BitDepth::Eight),
            (10, 3, ColorType::Rgb, BitDepth::Eight),
            (70, 5, ColorType::Rgba, BitDepth::Sixteen),
            (300, 4, ColorType::Rgba, BitDepth::Eight),
        ];
        for (width, height, color, depth) in shapes {
            let bytes = flat_png(width, height, color, depth).expect("encodes");
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .expect("a valid header");
            let mut pixels = vec![0; reader.output_buffer_size().expect("fits")];
            let info = reader.next_frame(&mut pixels).expect("decodes");
            assert_eq!((info.width, info.height), (width, height));
            assert!(
                pixels.iter().all(|&byte| byte == FLAT_SAMPLE),
                "{width} x {height} {color:?}"
            );
        }
    }
}
