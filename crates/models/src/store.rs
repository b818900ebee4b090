//! The model store: a folder of converted safetensors files, one per model, checked against the
//! manifest every time a network loads one.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Sha256Digest;
use crate::error::ModelError;
use crate::manifest::{Manifest, ModelName};

/// Environment variable naming the model store folder; it wins over discovery.
pub const MODEL_DIR_ENV: &str = "FACEPROOF_MODEL_DIR";

/// The state of one converted file in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertedState {
    /// No file.
    Missing,
    /// The file matches the pinned checksum.
    Verified { sha256: Sha256Digest, bytes: u64 },
    /// The file is there but the manifest pins no checksum for it, so it cannot be verified.
    Unpinned { sha256: Sha256Digest, bytes: u64 },
    /// The file does not match the pinned checksum (stale, corrupt or tampered with).
    Mismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
}

/// A folder of converted model files plus the manifest that pins them.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    manifest: Manifest,
}

impl ModelStore {
    /// The store from `FACEPROOF_MODEL_DIR` if set, else `models/store/` of the repository checkout
    /// that holds the current directory (so `cargo test` in any crate finds it).
    pub fn discover() -> Result<Self, ModelError> {
        let start = std::env::current_dir()
            .map_err(|source| ModelError::io("reading the current directory", ".", source))?;
        let env_value = std::env::var_os(MODEL_DIR_ENV);
        Self::at(resolve_dir(env_value.as_deref(), &start)?)
    }

    /// The store in `dir`, pinned by the built-in manifest.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self, ModelError> {
        Ok(Self::with_manifest(dir, Manifest::builtin()?))
    }

    /// The store in `dir`, pinned by `manifest` (tests and tools with their own manifest).
    pub fn with_manifest(dir: impl Into<PathBuf>, manifest: Manifest) -> Self {
        Self {
            dir: dir.into(),
            manifest,
        }
    }

    /// The folder holding the converted files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest pinning this store.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the converted file of `name` lives.
    pub fn path(&self, name: ModelName) -> PathBuf {
        self.dir.join(&self.manifest.model(name).converted)
    }

    /// Where fetched upstream files are cached by default (inside the store, so one git-ignored
    /// folder holds everything).
    pub fn upstream_cache_dir(&self) -> PathBuf {
        self.dir.join("upstream")
    }

    /// Reads the converted safetensors bytes of `name`, verified against the manifest's checksum.
    /// Load them with `candle_core::safetensors::load_buffer`.
    pub fn read_verified(&self, name: ModelName) -> Result<Vec<u8>, ModelError> {
        let path = self.path(name);
        let bytes = read_converted(&path)?.ok_or(ModelError::ConvertedMissing {
            model: name,
            path: path.clone(),
        })?;
        let actual = Sha256Digest::of(&bytes);
        match self.manifest.model(name).converted_sha256 {
            Some(expected) if expected != actual => Err(ModelError::ConvertedChecksumMismatch {
                model: name,
                path,
                expected,
                actual,
            }),
            Some(_) => Ok(bytes),
            None => {
                tracing::warn!(
                    model = %name,
                    path = %path.display(),
                    sha256 = %actual,
                    "converted model not verified: the manifest pins no converted_sha256"
                );
                Ok(bytes)
            }
        }
    }

    /// Checks the converted file of `name` without failing on a missing or wrong file.
    pub fn check(&self, name: ModelName) -> Result<ConvertedState, ModelError> {
        let Some(bytes) = read_converted(&self.path(name))? else {
            return Ok(ConvertedState::Missing);
        };
        let actual = Sha256Digest::of(&bytes);
        let size = bytes.len() as u64;
        Ok(match self.manifest.model(name).converted_sha256 {
            Some(expected) if expected == actual => ConvertedState::Verified {
                sha256: actual,
                bytes: size,
            },
            Some(expected) => ConvertedState::Mismatch { expected, actual },
            None => ConvertedState::Unpinned {
                sha256: actual,
                bytes: size,
            },
        })
    }
}

/// The file's bytes, or `None` when it does not exist.
fn read_converted(path: &Path) -> Result<Option<Vec<u8>>, ModelError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::io("reading", path, source)),
    }
}

/// The store folder: `env_value` when set and not empty, else `models/store` next to the nearest
/// `models/manifest.toml` at or above `start`.
pub fn resolve_dir(env_value: Option<&OsStr>, start: &Path) -> Result<PathBuf, ModelError> {
    if let Some(dir) = env_value.filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    start
        .ancestors()
        .find(|dir| dir.join("models").join("manifest.toml").is_file())
        .map(|root| root.join("models").join("store"))
        .ok_or_else(|| ModelError::ModelDirNotFound {
            start: start.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_discovery() {
        let dir = resolve_dir(Some(OsStr::new("/srv/models")), Path::new("/nowhere")).unwrap();
        assert_eq!(dir, PathBuf::from("/srv/models"));
    }

    #[test]
    fn discovery_walks_up_to_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("models")).unwrap();
        fs::write(root.path().join("models/manifest.toml"), "").unwrap();
        let deep = root.path().join("crates/vision/src");
        fs::create_dir_all(&deep).unwrap();
        let dir = resolve_dir(Some(OsStr::new("")), &deep).unwrap();
        assert_eq!(dir, root.path().join("models/store"));
    }

    #[test]
    fn discovery_without_a_manifest_says_what_to_set() {
        let root = tempfile::tempdir().unwrap();
        let error = resolve_dir(None, root.path()).unwrap_err();
        assert!(matches!(error, ModelError::ModelDirNotFound { .. }));
        assert!(error.to_string().contains("FACEPROOF_MODEL_DIR"));
    }

    #[test]
    fn this_repository_is_discovered_from_the_crate() {
        let dir = resolve_dir(None, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(dir.ends_with("models/store"));
        assert!(dir.parent().unwrap().join("manifest.toml").is_file());
    }

    #[test]
    fn missing_converted_file_names_the_file_and_the_command() {
        let root = tempfile::tempdir().unwrap();
        let store = ModelStore::at(root.path()).unwrap();
        let error = store.read_verified(ModelName::SFace).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&root.path().join("sface.safetensors").display().to_string()));
        assert!(message.contains("faceproof models fetch"));
        assert_eq!(
            store.check(ModelName::SFace).unwrap(),
            ConvertedState::Missing
        );
    }
}
