//! `faceproof bench`: per-stage latency of the vision pipeline on the benchmark photos, on a
//! chosen number of threads, as a table or as JSON that `bench/compare.sh` sets beside the
//! onnxruntime/OpenCV reference (`bench/reference.py`) run on the same inputs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};
use faceproof_imaging::{DecodeOptions, RgbImage, decode, resize_bilinear};
use faceproof_models::{ModelName, ModelStore, resolve_dir};
use faceproof_vision::face::align::align_face;
use faceproof_vision::face::liveness_crop::liveness_crop;
use faceproof_vision::face::subject::choose_subject;
use faceproof_vision::face::{DetectedFace, DetectorConfig, FaceDetector};
use faceproof_vision::nets::minifasnet::{MiniFasNet, MiniFasNetVariant};
use faceproof_vision::nets::sface::{SFace, cosine_similarity, faces_to_batch};
use faceproof_vision::nets::yunet::YuNet;

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
fn time_stage<T>(
    runs: usize,
    mut stage: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Timing> {
    for _ in 0..3 {
        stage()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(stage()?);
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

/// The networks, loaded once from the model store.
struct Networks {
    detector_640: FaceDetector,
    detector_320: FaceDetector,
    sface: SFace,
    minifasnet_v2: MiniFasNet,
    minifasnet_v1se: MiniFasNet,
    device: Device,
}

impl Networks {
    fn load(store: &ModelStore) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let read = |name: ModelName| {
            store
                .read_verified(name)
                .with_context(|| format!("reading {name:?} (run `faceproof models fetch`)"))
        };
        let yunet = YuNet::from_safetensors(&read(ModelName::YuNet)?, &device)?;
        let detector = |side: u32| {
            let config = DetectorConfig {
                max_input_side: side,
                ..DetectorConfig::default()
            };
            FaceDetector::new(yunet.clone(), config, device.clone())
        };
        Ok(Self {
            detector_640: detector(640)?,
            detector_320: detector(320)?,
            sface: SFace::from_safetensors(&read(ModelName::SFace)?, &device)?,
            minifasnet_v2: MiniFasNet::from_safetensors(
                &read(ModelName::MiniFasNetV2)?,
                MiniFasNetVariant::V2,
                &device,
            )?,
            minifasnet_v1se: MiniFasNet::from_safetensors(
                &read(ModelName::MiniFasNetV1Se)?,
                MiniFasNetVariant::V1Se,
                &device,
            )?,
            device,
        })
    }

    /// The subject face of a full frame, detected at the default (640) size.
    fn subject(&self, image: &RgbImage) -> anyhow::Result<DetectedFace> {
        let faces = self.detector_640.detect(image)?;
        let index = choose_subject(&faces, image.width(), image.height())
            .context("no face found in a benchmark photo")?;
        Ok(faces[index].clone())
    }

    fn embed(&self, image: &RgbImage, face: &DetectedFace) -> anyhow::Result<Vec<f32>> {
        let aligned = align_face(image, &face.landmarks)?;
        let batch = faces_to_batch(&[aligned], &self.device)?;
        Ok(self.sface.embed(&batch)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Real-class probability of both anti-spoofing models on `face` of `image`, averaged.
    fn liveness(&self, image: &RgbImage, face: &DetectedFace) -> anyhow::Result<f32> {
        let mut real = 0.0;
        for (net, variant) in [
            (&self.minifasnet_v2, MiniFasNetVariant::V2),
            (&self.minifasnet_v1se, MiniFasNetVariant::V1Se),
        ] {
            let crop = liveness_crop(image, face.bbox, variant, &self.device)?.unsqueeze(0)?;
            let logits = net.forward(&crop)?.flatten_all()?.to_vec1::<f32>()?;
            real += softmax_real(&logits)?;
        }
        Ok(real / 2.0)
    }
}

/// Probability of class 1 ("real") from the 3 logits.
fn softmax_real(logits: &[f32]) -> anyhow::Result<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    match logits.get(1) {
        Some(real) if sum > 0.0 => Ok((real - max).exp() / sum),
        _ => bail!(
            "anti-spoofing output has {} logits, expected 3",
            logits.len()
        ),
    }
}

fn read_photo(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("reading {} (see --bench-dir)", path.display()))
}

fn decode_photo(bytes: &[u8]) -> anyhow::Result<RgbImage> {
    Ok(decode(bytes, &DecodeOptions::default())?.image)
}

fn run_stages(args: &Args, nets: &Networks) -> anyhow::Result<Vec<(&'static str, Timing)>> {
    let runs = args.iterations as usize;
    let probe_bytes = read_photo(&args.bench_dir, PROBE)?;
    let gallery_bytes = read_photo(&args.bench_dir, GALLERY)?;
    let large_bytes = read_photo(&args.bench_dir, LARGE)?;
    let probe = decode_photo(&probe_bytes)?;
    let probe_face = nets.subject(&probe)?;
    let aligned = align_face(&probe, &probe_face.landmarks)?;
    let face_batch = faces_to_batch(&[aligned], &nets.device)?;
    let crop = |variant| -> anyhow::Result<Tensor> {
        Ok(liveness_crop(&probe, probe_face.bbox, variant, &nets.device)?.unsqueeze(0)?)
    };
    let (crop_v2, crop_v1se) = (crop(MiniFasNetVariant::V2)?, crop(MiniFasNetVariant::V1Se)?);
    let square = |side: u32| resize_bilinear(&probe, side, side);
    let (probe_320, probe_640) = (square(320), square(640));

    let mut stages = vec![(
        "decode_640x480",
        time_stage(runs, || decode_photo(&probe_bytes))?,
    )];
    stages.push((
        "decode_3000x4000",
        time_stage((runs / 5).max(3), || decode_photo(&large_bytes))?,
    ));
    // As the matcher decodes it: at 1/2 scale in the DCT domain (2000x1500).
    let half_scale = DecodeOptions {
        min_long_side: Some(1600),
        ..DecodeOptions::default()
    };
    stages.push((
        "decode_3000x4000_half",
        time_stage((runs / 5).max(3), || {
            Ok(decode(&large_bytes, &half_scale)?.image)
        })?,
    ));
    stages.push((
        "detect_320",
        time_stage(runs, || Ok(nets.detector_320.detect(&probe_320)?))?,
    ));
    stages.push((
        "detect_640",
        time_stage(runs, || Ok(nets.detector_640.detect(&probe_640)?))?,
    ));
    stages.push((
        "embed_sface",
        time_stage(runs, || Ok(nets.sface.embed(&face_batch)?))?,
    ));
    stages.push((
        "liveness_minifasnet_v2",
        time_stage(runs, || Ok(nets.minifasnet_v2.forward(&crop_v2)?))?,
    ));
    stages.push((
        "liveness_minifasnet_v1se",
        time_stage(runs, || Ok(nets.minifasnet_v1se.forward(&crop_v1se)?))?,
    ));
    // The whole work of one compare: decode both, detect both, align and embed both, and (with
    // liveness) both anti-spoofing models on the probe.
    let compare = |with_liveness: bool| -> anyhow::Result<f32> {
        let probe = decode_photo(&probe_bytes)?;
        let gallery = decode_photo(&gallery_bytes)?;
        let probe_face = nets.subject(&probe)?;
        let gallery_face = nets.subject(&gallery)?;
        let similarity = cosine_similarity(
            &nets.embed(&probe, &probe_face)?,
            &nets.embed(&gallery, &gallery_face)?,
        );
        let liveness = if with_liveness {
            nets.liveness(&probe, &probe_face)?
        } else {
            1.0
        };
        Ok(similarity * liveness)
    };
    stages.push((
        "compare_without_liveness",
        time_stage(runs, || compare(false))?,
    ));
    stages.push(("compare_with_liveness", time_stage(runs, || compare(true))?));
    Ok(stages)
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
    let nets = Networks::load(&store)?;
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
