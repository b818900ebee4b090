//! The models faceproof uses: the manifest (upstream source, checksums, licences), the set-up step
//! that fetches and verifies the upstream files, and the importers that convert them to safetensors.
//!
//! Networks get their weights with [`ModelStore::read_verified`] and load the bytes with
//! `candle_core::safetensors::load_buffer`; `faceproof models fetch` fills the store with [`fetch`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod atomic;
mod convert;
mod digest;
mod error;
mod fetch;
pub mod import;
mod manifest;
mod store;
mod upstream;

pub use convert::{Importer, UpstreamImporter, to_safetensors};
pub use digest::Sha256Digest;
pub use error::ModelError;
pub use fetch::{
    FetchEvent, FetchOptions, FetchReport, ModelAction, ModelReport, Origin, converted_checksums,
    fetch, fetch_with,
};
pub use manifest::{
    Artifact, ArtifactSource, BUILTIN_MANIFEST_TOML, Manifest, ModelEntry, ModelFormat, ModelName,
};
pub use store::{ConvertedState, MODEL_DIR_ENV, ModelStore, resolve_dir};
pub use upstream::{FetchLimits, PipCommand};
