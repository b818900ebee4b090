//! `faceproof eval liveness`: run the liveness service's pipeline on labelled live/spoof frames
//! and report ROC AUC and APCER/BPCER/ACER per threshold and per attack type.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use faceproof_imaging::Cancellation;
use faceproof_models::ModelName;
use faceproof_proto::common::v1::SearchMode;
use faceproof_vision::pipeline::{LivenessPipeline, LivenessSettings};
use rayon::prelude::*;

use super::input::{LabelledImage, parse_labels, read_text};
use super::metrics::{LivenessOutcome, PresentationErrors, roc_auc};
use super::progress::Progress;
use super::{CommonArgs, describe_input, mode_name, percent, print_table, rate};

/// The thresholds always reported beside the chosen one (the API's 0.52..1 range).
const REPORTED_THRESHOLDS: [f64; 5] = [0.52, 0.6, 0.7, 0.8, 0.9];

#[derive(Debug, clap::Args)]
pub struct LivenessArgs {
    /// Labels file: header with `path`, `label` (live | spoof) and optionally `attack_type`.
    #[arg(long, value_name = "CSV")]
    labels: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// The `liveness_min_score` to report per attack type (pass = score above it).
    #[arg(long, default_value_t = 0.6)]
    threshold: f64,
    /// Write one line per image and mode: score or the reason it was refused.
    #[arg(long, value_name = "CSV")]
    scores_out: Option<PathBuf>,
}

/// One image's result: the liveness score with each network's own score, or the quality gate
/// that refused it.
type Checked = Result<Scored, String>;

#[derive(Debug, Clone)]
struct Scored {
    score: f64,
    /// `(model, score)` of each network that ran, for `--scores-out`.
    per_model: Vec<(String, f64)>,
}

fn check_all(
    pipeline: &LivenessPipeline,
    common: &CommonArgs,
    pool: &rayon::ThreadPool,
    images: &[LabelledImage],
    mode: SearchMode,
) -> anyhow::Result<Vec<Checked>> {
    let progress = Progress::new(format!("liveness {}", mode_name(mode)), images.len());
    let results = pool.install(|| {
        images
            .par_iter()
            .map(|image| {
                let bytes = common.read_image(&image.path).map_err(anyhow::Error::msg)?;
                // No deadline in an offline evaluation.
                let never = Cancellation::never();
                let checked = match pipeline.check(&bytes, mode, None, &never) {
                    Ok(Ok(scores)) => Ok(Scored {
                        score: scores.liveness_score,
                        per_model: scores
                            .models
                            .into_iter()
                            .map(|model| (model.model, model.liveness_score))
                            .collect(),
                    }),
                    Ok(Err(rejection)) => Err(format!(
                        "{} ({})",
                        rejection.reason.code(),
                        rejection.detail
                    )),
                    Err(error) => return Err(anyhow::anyhow!("{}: {error}", image.path)),
                };
                progress.tick();
                Ok(checked)
            })
            .collect()
    });
    progress.finish();
    results
}

pub fn run_liveness(args: &LivenessArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!("--threshold must be within 0..1, got {}", args.threshold);
    }
    let images = parse_labels(&read_text(&args.labels)?)
        .with_context(|| format!("reading {}", args.labels.display()))?;
    let store = args.common.store()?;
    let pipeline = LivenessPipeline::from_weights(
        &CommonArgs::read_model(&store, ModelName::YuNet)?,
        &CommonArgs::read_model(&store, ModelName::MiniFasNetV2)?,
        &CommonArgs::read_model(&store, ModelName::MiniFasNetV1Se)?,
        LivenessSettings::default(),
    )?;
    let pool = args.common.pool()?;
    let modes = args.common.search_mode.modes();
    let mut results = Vec::new();
    for &mode in &modes {
        results.push((
            mode,
            check_all(&pipeline, &args.common, &pool, &images, mode)?,
        ));
    }
    if let Some(out) = &args.scores_out {
        // Each network's own score beside the ensemble's, so a user can see which one decided.
        let mut text = String::from("mode,path,label,attack_type,score,refused,models\n");
        for (mode, checked) in &results {
            for (image, result) in images.iter().zip(checked) {
                let (score, refused, models) = match result {
                    Ok(scored) => (
                        format!("{:.6}", scored.score),
                        String::new(),
                        scored
                            .per_model
                            .iter()
                            .map(|(model, score)| format!("{model}={score:.6}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    Err(reason) => (String::new(), reason.replace(',', ";"), String::new()),
                };
                let label = if image.is_attack { "spoof" } else { "live" };
                let _ = writeln!(
                    text,
                    "{},{},{label},{},{score},{refused},{models}",
                    mode_name(*mode),
                    image.path,
                    image.attack_type
                );
            }
        }
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    let attacks = images.iter().filter(|image| image.is_attack).count();
    outln!(
        "liveness on {}: {} images ({} live, {attacks} attacks); pass = score > threshold",
        describe_input(&args.common.root, &args.labels),
        images.len(),
        images.len() - attacks
    );
    let outcomes: Vec<Vec<LivenessOutcome>> = results
        .iter()
        .map(|(_, checked)| {
            images
                .iter()
                .zip(checked)
                .map(|(image, result)| LivenessOutcome {
                    is_attack: image.is_attack,
                    attack_type: image.attack_type.clone(),
                    score: result.as_ref().ok().map(|scored| scored.score),
                })
                .collect()
        })
        .collect();
    print_liveness(&modes, &outcomes, args.threshold);
    for ((mode, checked), _) in results.iter().zip(&outcomes) {
        for (image, result) in images.iter().zip(checked) {
            if let Err(reason) = result {
                outln!("refused ({}): {}: {reason}", mode_name(*mode), image.path);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_liveness(modes: &[SearchMode], outcomes: &[Vec<LivenessOutcome>], chosen: f64) {
    let header: Vec<String> = modes.iter().map(|m| mode_name(*m).to_owned()).collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, cell: &dyn Fn(&[LivenessOutcome]) -> String| {
        rows.push((label, outcomes.iter().map(|o| cell(o)).collect()));
    };
    let refused = |o: &[LivenessOutcome], attack: bool| {
        let of = o.iter().filter(|x| x.is_attack == attack).count();
        rate(
            o.iter()
                .filter(|x| x.is_attack == attack && x.score.is_none())
                .count(),
            of,
        )
    };
    row("refused genuine (count as rejected)".into(), &|o| {
        refused(o, false)
    });
    row("refused attacks (count as not accepted)".into(), &|o| {
        refused(o, true)
    });
    row("ROC AUC (scored images)".into(), &|o| {
        let scores = |attack: bool| -> Vec<f64> {
            o.iter()
                .filter(|x| x.is_attack == attack)
                .filter_map(|x| x.score)
                .collect()
        };
        roc_auc(&scores(false), &scores(true)).map_or("n/a".into(), |v| format!("{v:.5}"))
    });
    let mut thresholds = REPORTED_THRESHOLDS.to_vec();
    if !thresholds.iter().any(|t| (t - chosen).abs() < 1e-9) {
        thresholds.push(chosen);
        thresholds.sort_by(f64::total_cmp);
    }
    for threshold in thresholds {
        let mark = if (threshold - chosen).abs() < 1e-9 {
            " (chosen)"
        } else {
            ""
        };
        row(format!("> {threshold:.2}{mark}: APCER"), &|o| {
            let e = PresentationErrors::at(o, threshold);
            rate(e.accepted_attacks, e.attacks)
        });
        row(format!("> {threshold:.2}{mark}: BPCER"), &|o| {
            let e = PresentationErrors::at(o, threshold);
            rate(e.rejected_genuine, e.genuine)
        });
        row(format!("> {threshold:.2}{mark}: ACER"), &|o| {
            percent(PresentationErrors::at(o, threshold).acer())
        });
    }
    let mut attack_types: BTreeMap<String, ()> = BTreeMap::new();
    for o in outcomes {
        for (kind, _, _) in PresentationErrors::at(o, chosen).per_attack_type {
            attack_types.insert(kind, ());
        }
    }
    for kind in attack_types.keys() {
        row(format!("> {chosen:.2}: APCER {kind}"), &|o| {
            PresentationErrors::at(o, chosen)
                .per_attack_type
                .iter()
                .find(|(k, _, _)| k == kind)
                .map_or("n/a".into(), |(_, accepted, total)| rate(*accepted, *total))
        });
    }
    print_table(&header, &rows);
}
