//! `faceproof bench`: per-stage latency of the vision pipelines on the benchmark photos, on a
//! chosen number of threads, as a table or as JSON that `bench/compare.sh` sets beside the
//! onnxruntime/OpenCV reference (`bench/reference.py`) run on the same inputs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};
use faceproof_imaging::{Cancellation, DecodeOptions, RgbImage, decode, resize_bilinear};
use faceproof_models::{ModelName, ModelStore, resolve_dir};
use faceproof_proto::common::v1::SearchMode;
use faceproof_vision::face::align::align_face;
use faceproof_vision::face::liveness_crop::liveness_crop;
use faceproof_vision::face::subject::choose_subject;
use faceproof_vision::face::{DetectorConfig, FaceDetector};
use faceproof_vision::nets::minifasnet::MiniFasNetVariant;
use faceproof_vision::nets::sface::faces_to_batch;
use faceproof_vision::nets::yunet::YuNet;
use faceproof_vision::pipeline::matching::DECODE_MIN_LONG_SIDE;
use faceproof_vision::pipeline::{
    LivenessPipeline, LivenessSettings, MatchPipeline, MatchSettings,
};

const PROBE: &str = "probe_640x480.jpg";
const GALLERY: &str = "gallery_640x480.jpg";
const LARGE: &str = "photo_3000x4000.jpg";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed runs per stage (after 3 warm-up runs; the 12 MP decode runs a fifth as often).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Threads for the network kernels (rayon pool size).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Folder holding probe_640x480.jpg, gallery_640x480.jpg and photo_3000x4000.jpg.
    #[arg(long, value_name = "DIR", default_value = "../shared/bench")]
    bench_dir: PathBuf,
    /// Model store folder [default: models/store of the repository holding the current directory].
    #[arg(long, env = "FACEPROOF_MODEL_DIR", value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Print JSON (the schema bench/reference.py prints) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Median and 90th percentile of one stage.
#[derive(Debug, Clone, Copy)]
struct Timing {
    median_ms: f64,
    p90_ms: f64,
    runs: usize,
}

/// Runs `stage` 3 times untimed, then `runs` times timed.
fn time_stage(
    runs: usize,
    mut stage: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Timing> {
    for _ in 0..3 {
        stage()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        stage()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> f64 {
        // Linear interpolation between closest ranks (numpy's default).
        let rank = p * (samples.len() - 1) as f64;
        let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
        samples[low] + (samples[high] - samples[low]) * (rank - low as f64)
    };
    Ok(Timing {
        median_ms: percentile(0.5),
        p90_ms: percentile(0.9),
        runs,
    })
}

/// The pipelines, loaded once from the model store, and the one detector they do not hold.
struct Pipelines {
    /// The matcher's pipeline detecting at 640 in FAST mode (one embedding per face), as the
    /// reference does.
    matcher: MatchPipeline,
    liveness: LivenessPipeline,
    detector_320: FaceDetector,
    device: Device,
}

impl Pipelines {
    fn load(store: &ModelStore) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let read = |name: ModelName| {
            store
                .read_verified(name)
                .with_context(|| format!("reading {name:?} (run `faceproof models fetch`)"))
        };
        let yunet = read(ModelName::YuNet)?;
        let settings = MatchSettings {
            fast_detector_side: 640,
            ..MatchSettings::default()
        };
        let config = DetectorConfig {
            max_input_side: 320,
            ..DetectorConfig::default()
        };
        Ok(Self {
            matcher: MatchPipeline::from_weights(&yunet, &read(ModelName::SFace)?, settings)?,
            liveness: LivenessPipeline::from_weights(
                &yunet,
                &read(ModelName::MiniFasNetV2)?,
                &read(ModelName::MiniFasNetV1Se)?,
                LivenessSettings::default(),
            )?,
            detector_320: FaceDetector::new(
                YuNet::from_safetensors(&yunet, &device)?,
                config,
                device.clone(),
            )?,
            device,
        })
    }

    /// The whole work of one compare as the services do it: the matcher's pipeline on both
    /// photos and, with liveness, the liveness pipeline (both networks) on the probe with the
    /// matcher's face as its hint. The product of the similarity and the liveness score.
    fn compare(
        &self,
        probe: &[u8],
        gallery: &[Vec<u8>],
        with_liveness: bool,
    ) -> anyhow::Result<f64> {
        let never = Cancellation::never();
        let outcome = self
            .matcher
            .compare(probe, gallery, SearchMode::Fast, &never)?
            .map_err(|rejection| anyhow::anyhow!("probe: {}", rejection.detail))?;
        let Some(Ok(matched)) = outcome.gallery.first() else {
            bail!("no usable face in the gallery photo");
        };
        if !with_liveness {
            return Ok(matched.similarity);
        }
        let hint = Some(outcome.probe_face.clone());
        let scores = self
            .liveness
            .check(probe, SearchMode::Accurate, hint, &never)?
            .map_err(|rejection| anyhow::anyhow!("liveness: {}", rejection.detail))?;
        Ok(matched.similarity * scores.liveness_score)
    }
}

fn read_photo(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("reading {} (see --bench-dir)", path.display()))
}

fn decode_photo(bytes: &[u8], options: &DecodeOptions) -> anyhow::Result<RgbImage> {
    Ok(decode(bytes, options)?.image)
}

/// One timed stage: its name, its timed runs and the work of one run.
type StageWork<'a> = (
    &'static str,
    usize,
    Box<dyn FnMut() -> anyhow::Result<()> + 'a>,
);

fn run_stages(args: &Args, nets: &Pipelines) -> anyhow::Result<Vec<(&'static str, Timing)>> {
    let runs = args.iterations as usize;
    let rare = (runs / 5).max(3);
    let probe_bytes = read_photo(&args.bench_dir, PROBE)?;
    let gallery_bytes = vec![read_photo(&args.bench_dir, GALLERY)?];
    let large_bytes = read_photo(&args.bench_dir, LARGE)?;
    let full = DecodeOptions::default();
    // As the matcher decodes it: at 1/2 scale in the DCT domain (2000x1500).
    let half_scale = DecodeOptions {
        min_long_side: Some(DECODE_MIN_LONG_SIDE),
        ..DecodeOptions::default()
    };
    let probe = decode_photo(&probe_bytes, &full)?;
    let faces = nets.matcher.detector(SearchMode::Fast).detect(&probe)?;
    let subject = choose_subject(&faces, probe.width(), probe.height())
        .context("no face found in the probe photo")?;
    let probe_face = &faces[subject];
    let aligned = align_face(&probe, &probe_face.landmarks)?;
    let face_batch = faces_to_batch(&[aligned], &nets.device)?;
    let crop = |variant| -> anyhow::Result<Tensor> {
        Ok(liveness_crop(&probe, probe_face.bbox, variant, &nets.device)?.unsqueeze(0)?)
    };
    let (crop_v2, crop_v1se) = (crop(MiniFasNetVariant::V2)?, crop(MiniFasNetVariant::V1Se)?);
    let square = |side: u32| resize_bilinear(&probe, side, side);
    let (probe_320, probe_640) = (square(320), square(640));
    let network = |variant| nets.liveness.network(variant);

    let work: Vec<StageWork<'_>> = vec![
        (
            "decode_640x480",
            runs,
            Box::new(|| done(decode_photo(&probe_bytes, &full)?)),
        ),
        (
            "decode_3000x4000",
            rare,
            Box::new(|| done(decode_photo(&large_bytes, &full)?)),
        ),
        (
            "decode_3000x4000_half",
            rare,
            Box::new(|| done(decode_photo(&large_bytes, &half_scale)?)),
        ),
        (
            "detect_320",
            runs,
            Box::new(|| done(nets.detector_320.detect(&probe_320)?)),
        ),
        (
            "detect_640",
            runs,
            Box::new(|| done(nets.matcher.detector(SearchMode::Fast).detect(&probe_640)?)),
        ),
        (
            "embed_sface",
            runs,
            Box::new(|| done(nets.matcher.embedder().embed(&face_batch)?)),
        ),
        (
            "liveness_minifasnet_v2",
            runs,
            Box::new(|| done(network(MiniFasNetVariant::V2).forward(&crop_v2)?)),
        ),
        (
            "liveness_minifasnet_v1se",
            runs,
            Box::new(|| done(network(MiniFasNetVariant::V1Se).forward(&crop_v1se)?)),
        ),
        (
            "compare_without_liveness",
            runs,
            Box::new(|| done(nets.compare(&probe_bytes, &gallery_bytes, false)?)),
        ),
        (
            "compare_with_liveness",
            runs,
            Box::new(|| done(nets.compare(&probe_bytes, &gallery_bytes, true)?)),
        ),
    ];
    work.into_iter()
        .map(|(name, runs, stage)| Ok((name, time_stage(runs, stage)?)))
        .collect()
}

/// A stage's result, kept from being optimised away.
fn done<T>(output: T) -> anyhow::Result<()> {
    std::hint::black_box(output);
    Ok(())
}

/// The environment variables that change candle's threading, recorded with every result:
/// candle 0.11 runs elementwise ops of 64K+ elements on its own spinning pool beside rayon's,
/// which on 2 cores made the pipeline 2-3x slower (`CANDLE_NUM_THREADS=1` keeps them inline).
fn candle_environment() -> String {
    ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .map(|name| {
            let value = std::env::var(name).unwrap_or_else(|_| "unset".to_owned());
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = match &args.model_dir {
        Some(dir) => dir.clone(),
        None => resolve_dir(None, &std::env::current_dir()?)?,
    };
    let store = ModelStore::at(dir)?;
    let nets = Pipelines::load(&store)?;
    // Every kernel (candle's matmul and convolutions, faceproof's ops) runs on rayon's current
    // pool: run the whole benchmark inside a pool of the requested size.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads as usize)
        .build()
        .context("starting the thread pool")?;
    let stages = pool.install(|| run_stages(&args, &nets))?;
    if args.json {
        let stages: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .map(|(name, t)| {
                let timing = serde_json::json!({
                    "candle": {
                        "median_ms": (t.median_ms * 1e3).round() / 1e3,
                        "p90_ms": (t.p90_ms * 1e3).round() / 1e3,
                        "runs": t.runs,
                    }
                });
                ((*name).to_owned(), timing)
            })
            .collect();
        let report = serde_json::json!({
            "tool": "faceproof",
            "threads": args.threads,
            "environment": candle_environment(),
            "iterations": args.iterations,
            "stages": stages,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} thread(s), {} runs per stage, {}",
            args.threads,
            args.iterations,
            candle_environment()
        );
        outln!("{:<28} {:>10} {:>10}", "stage", "median ms", "p90 ms");
        for (name, t) in &stages {
            outln!("{name:<28} {:>10.2} {:>10.2}", t.median_ms, t.p90_ms);
        }
    }
    Ok(ExitCode::SUCCESS)
}
