//! `faceproof eval`: the evaluation tools (verification, calibration fitting, liveness). They
//! read a labelled CSV and a folder of images, run exactly the services' pipelines
//! (faceproof-vision's match and liveness pipelines) and print the quality bars of DESIGN.md
//! section 6. See docs/evaluation.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use faceproof_models::{ModelName, ModelStore, resolve_dir};
use faceproof_proto::common::v1::SearchMode;

mod fit;
mod input;
mod liveness;
mod metrics;
mod progress;
mod verification;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Verification quality on labelled pairs: ROC AUC, accuracy, TAR at FAR, FAR/FRR per
    /// documented threshold.
    Verification(verification::VerificationArgs),
    /// Fit the cosine -> score calibration table on the impostor pairs of a labelled set.
    Calibrate(verification::CalibrateArgs),
    /// Liveness quality on labelled live/spoof images: APCER, BPCER, ACER per threshold.
    Liveness(liveness::LivenessArgs),
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Verification(args) => verification::run_verification(&args),
        Command::Calibrate(args) => verification::run_calibrate(&args),
        Command::Liveness(args) => liveness::run_liveness(&args),
    }
}

/// Which search modes to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    Fast,
    Accurate,
    Both,
}

impl ModeChoice {
    fn modes(self) -> Vec<SearchMode> {
        match self {
            ModeChoice::Fast => vec![SearchMode::Fast],
            ModeChoice::Accurate => vec![SearchMode::Accurate],
            ModeChoice::Both => vec![SearchMode::Fast, SearchMode::Accurate],
        }
    }
}

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Accurate => "ACCURATE",
        SearchMode::Fast | SearchMode::Unspecified => "FAST",
    }
}

/// Settings every evaluation shares.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Folder the CSV's paths are relative to.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Search mode(s) to run.
    #[arg(long, value_enum, default_value_t = ModeChoice::Both)]
    search_mode: ModeChoice,
    /// Worker threads (each runs one image through the pipeline at a time).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Model store folder [default: models/store of the repository holding the current directory].
    #[arg(long, env = "FACEPROOF_MODEL_DIR", value_name = "DIR")]
    model_dir: Option<PathBuf>,
}

impl CommonArgs {
    fn store(&self) -> anyhow::Result<ModelStore> {
        let dir = match &self.model_dir {
            Some(dir) => dir.clone(),
            None => resolve_dir(None, &std::env::current_dir()?)?,
        };
        Ok(ModelStore::at(dir)?)
    }

    fn read_model(store: &ModelStore, name: ModelName) -> anyhow::Result<Vec<u8>> {
        store
            .read_verified(name)
            .with_context(|| format!("loading {}", name.as_str()))
    }

    fn pool(&self) -> anyhow::Result<rayon::ThreadPool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads as usize)
            .build()
            .context("starting the thread pool")
    }

    fn read_image(&self, relative: &str) -> Result<Vec<u8>, String> {
        let path = self.root.join(relative);
        std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    }
}

/// `dir/file` of the input for reports (`lfw-view1/pairs-devtrain.csv`).
fn describe_input(root: &Path, csv: &Path) -> String {
    let name = |path: &Path| {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    format!("{}/{}", name(&root), name(csv))
}

/// A left-aligned label column and one right-aligned column per mode.
fn print_table(header: &[String], rows: &[(String, Vec<String>)]) {
    let label_width = rows
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let column_width = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(String::len))
        .chain(header.iter().map(String::len))
        .max()
        .unwrap_or(8)
        .max(10);
    let mut line = format!("{:label_width$}", "");
    for title in header {
        line.push_str(&format!("  {title:>column_width$}"));
    }
    outln!("{}", line.trim_end());
    for (label, cells) in rows {
        let mut line = format!("{label:label_width$}");
        for cell in cells {
            line.push_str(&format!("  {cell:>column_width$}"));
        }
        outln!("{}", line.trim_end());
    }
}

fn percent(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_owned()
    } else {
        format!("{:.2}%", value * 100.0)
    }
}

/// A rate with its counts: `0.20% (1/500)`.
fn rate(count: usize, of: usize) -> String {
    if of == 0 {
        return "n/a".to_owned();
    }
    format!("{} ({count}/{of})", percent(count as f64 / of as f64))
}
