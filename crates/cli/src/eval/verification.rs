//! `faceproof eval verification` and `faceproof eval calibrate`: embed every distinct image of a
//! pairs file once per search mode with the matcher's own pipeline, then score the pairs or fit
//! the calibration on all cross-identity pairs of the images.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use faceproof_models::ModelName;
use faceproof_proto::common::v1::SearchMode;
use faceproof_vision::pipeline::calibration::BUILTIN_TABLE;
use faceproof_vision::pipeline::{Calibration, MatchPipeline, MatchSettings};
use rayon::prelude::*;

use super::fit::{ImpostorDistribution, add_impostor_pairs, documented_far, dot, normalized};
use super::input::{Pair, parse_pairs, read_text};
use super::metrics::{ErrorCounts, best_accuracy, roc_auc, tar_at_far};
use super::progress::Progress;
use super::{CommonArgs, describe_input, mode_name, percent, print_table, rate};

/// The `compare_min_score` values the documentation quotes FARs for.
const DOCUMENTED_THRESHOLDS: [f64; 4] = [0.67, 0.75, 0.85, 0.95];
/// Exact largest impostor cosines kept while fitting (the rest go to a 1e-4 histogram).
const TAIL_CAPACITY: usize = 200_000;

#[derive(Debug, clap::Args)]
pub struct VerificationArgs {
    /// Pairs file: header `path1,path2,same`, paths relative to --root, same = 1 or 0.
    #[arg(long, value_name = "CSV")]
    pairs: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// Write one line per pair and mode: cosine, calibrated score and any failure.
    #[arg(long, value_name = "CSV")]
    scores_out: Option<PathBuf>,
    /// Calibration table to score with [default: the one compiled into the matcher].
    #[arg(long, value_name = "JSON")]
    calibration: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Pairs file whose images are the fitting set (identity = the image's folder name).
    #[arg(long, value_name = "CSV")]
    pairs: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// Where to write the table (the matcher compiles in crates/vision/calibration.json).
    #[arg(long, value_name = "JSON")]
    out: PathBuf,
    /// Identifier of the table [default: sface-<set>-<date>].
    #[arg(long)]
    id: Option<String>,
}

/// One image through the pipeline: its unit-length embedding, or why it has none.
#[derive(Debug, Clone)]
enum Embedded {
    Face {
        embedding: Vec<f32>,
        rival_face: bool,
    },
    Failed(String),
}

/// The matcher's pipeline with the matcher's default settings.
fn load_pipeline(common: &CommonArgs) -> anyhow::Result<MatchPipeline> {
    let store = common.store()?;
    let yunet = CommonArgs::read_model(&store, ModelName::YuNet)?;
    let sface = CommonArgs::read_model(&store, ModelName::SFace)?;
    Ok(MatchPipeline::from_weights(
        &yunet,
        &sface,
        MatchSettings::default(),
    )?)
}

/// The distinct image paths of the pairs, in first-seen order.
fn distinct_paths(pairs: &[Pair]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut paths = Vec::new();
    for pair in pairs {
        for path in [&pair.path1, &pair.path2] {
            if seen.insert(path.as_str()) {
                paths.push(path.clone());
            }
        }
    }
    paths
}

/// Embeds every path once in `mode`; unreadable files stop the run (the data set is wrong),
/// images without a usable face are `Failed` with the rejection code.
fn embed_all(
    pipeline: &MatchPipeline,
    common: &CommonArgs,
    pool: &rayon::ThreadPool,
    paths: &[String],
    mode: SearchMode,
) -> anyhow::Result<HashMap<String, Embedded>> {
    let progress = Progress::new(format!("embedding {}", mode_name(mode)), paths.len());
    let results: anyhow::Result<Vec<(String, Embedded)>> = pool.install(|| {
        paths
            .par_iter()
            .map(|path| {
                let bytes = common.read_image(path).map_err(anyhow::Error::msg)?;
                let embedded = match pipeline.embed_image(&bytes, mode) {
                    Ok(Ok(image)) => Embedded::Face {
                        embedding: normalized(&image.embedding),
                        rival_face: image.rival_face,
                    },
                    Ok(Err(rejection)) => Embedded::Failed(format!(
                        "{} ({})",
                        rejection.reason.code(),
                        rejection.detail
                    )),
                    Err(error) => return Err(anyhow::anyhow!("{path}: {error}")),
                };
                progress.tick();
                Ok((path.clone(), embedded))
            })
            .collect()
    });
    progress.finish();
    Ok(results?.into_iter().collect())
}

/// The tables of a calibration file: per mode when it has a `modes` section, else one for all.
struct Calibrations {
    id: String,
    default: Calibration,
    per_mode: HashMap<String, Calibration>,
}

impl Calibrations {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let default = Calibration::from_json(text)?;
        let value: serde_json::Value = serde_json::from_str(text)?;
        let mut per_mode = HashMap::new();
        if let Some(modes) = value.get("modes").and_then(|modes| modes.as_object()) {
            for (mode, table) in modes {
                let knots = table
                    .get("knots")
                    .with_context(|| format!("calibration mode {mode} has no knots"))?;
                let single = serde_json::json!({ "id": default.id(), "knots": knots });
                per_mode.insert(
                    mode.to_ascii_uppercase(),
                    Calibration::from_json(&single.to_string())
                        .with_context(|| format!("calibration mode {mode}"))?,
                );
            }
        }
        Ok(Self {
            id: default.id().to_owned(),
            default,
            per_mode,
        })
    }

    fn for_mode(&self, mode: SearchMode) -> &Calibration {
        self.per_mode.get(mode_name(mode)).unwrap_or(&self.default)
    }
}

/// The scores of one mode, split by label; failures sit at cosine -1 and score 0.
struct ModeScores {
    mode: SearchMode,
    failed: Vec<(String, String)>,
    rival_faces: usize,
    pairs_with_failure: usize,
    genuine_cosines: Vec<f64>,
    impostor_cosines: Vec<f64>,
    genuine_scores: Vec<f64>,
    impostor_scores: Vec<f64>,
    per_pair: Vec<(f64, f64, String)>,
}

fn score_pairs(
    pairs: &[Pair],
    embedded: &HashMap<String, Embedded>,
    calibration: &Calibration,
    mode: SearchMode,
) -> ModeScores {
    let mut scores = ModeScores {
        mode,
        failed: Vec::new(),
        rival_faces: 0,
        pairs_with_failure: 0,
        genuine_cosines: Vec::new(),
        impostor_cosines: Vec::new(),
        genuine_scores: Vec::new(),
        impostor_scores: Vec::new(),
        per_pair: Vec::with_capacity(pairs.len()),
    };
    let mut sorted: Vec<(&String, &Embedded)> = embedded.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, image) in sorted {
        match image {
            Embedded::Failed(reason) => scores.failed.push((path.clone(), reason.clone())),
            Embedded::Face { rival_face, .. } => scores.rival_faces += usize::from(*rival_face),
        }
    }
    for pair in pairs {
        let lookup = |path: &String| match embedded.get(path) {
            Some(Embedded::Face { embedding, .. }) => Ok(embedding),
            Some(Embedded::Failed(reason)) => Err(format!("{path}: {reason}")),
            None => Err(format!("{path}: not embedded")),
        };
        let (cosine, score, failure) = match (lookup(&pair.path1), lookup(&pair.path2)) {
            (Ok(a), Ok(b)) => {
                let cosine = f64::from(dot(a, b));
                (cosine, calibration.score(cosine), String::new())
            }
            (first, second) => {
                scores.pairs_with_failure += 1;
                let reasons: Vec<String> =
                    [first.err(), second.err()].into_iter().flatten().collect();
                (-1.0, 0.0, reasons.join("; "))
            }
        };
        if pair.same {
            scores.genuine_cosines.push(cosine);
            scores.genuine_scores.push(score);
        } else {
            scores.impostor_cosines.push(cosine);
            scores.impostor_scores.push(score);
        }
        scores.per_pair.push((cosine, score, failure));
    }
    scores
}

pub fn run_verification(args: &VerificationArgs) -> anyhow::Result<ExitCode> {
    let pairs = parse_pairs(&read_text(&args.pairs)?)
        .with_context(|| format!("reading {}", args.pairs.display()))?;
    let calibration_text = match &args.calibration {
        Some(path) => read_text(path)?,
        None => BUILTIN_TABLE.to_owned(),
    };
    let calibrations = Calibrations::parse(&calibration_text).context("calibration table")?;
    let pipeline = load_pipeline(&args.common)?;
    let pool = args.common.pool()?;
    let paths = distinct_paths(&pairs);
    let mut results = Vec::new();
    for mode in args.common.search_mode.modes() {
        let embedded = embed_all(&pipeline, &args.common, &pool, &paths, mode)?;
        results.push(score_pairs(
            &pairs,
            &embedded,
            calibrations.for_mode(mode),
            mode,
        ));
    }
    if let Some(out) = &args.scores_out {
        write_scores(out, &pairs, &results)?;
    }
    let genuine = pairs.iter().filter(|pair| pair.same).count();
    outln!(
        "verification on {}: {} pairs ({genuine} same, {} different), {} images; calibration {}",
        describe_input(&args.common.root, &args.pairs),
        pairs.len(),
        pairs.len() - genuine,
        paths.len(),
        calibrations.id
    );
    print_verification(&results, &calibrations);
    for result in &results {
        for (path, reason) in &result.failed {
            outln!("failed ({}): {path}: {reason}", mode_name(result.mode));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verification(results: &[ModeScores], calibrations: &Calibrations) {
    let header: Vec<String> = results
        .iter()
        .map(|r| mode_name(r.mode).to_owned())
        .collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, cell: &dyn Fn(&ModeScores) -> String| {
        rows.push((label.to_owned(), results.iter().map(cell).collect()));
    };
    row("images without a usable face", &|r| {
        r.failed.len().to_string()
    });
    row("images with a rival face (probe would be refused)", &|r| {
        r.rival_faces.to_string()
    });
    row("pairs with a failure (scored 0)", &|r| {
        format!("{}/{}", r.pairs_with_failure, r.per_pair.len())
    });
    row("ROC AUC", &|r| {
        roc_auc(&r.genuine_cosines, &r.impostor_cosines).map_or("n/a".into(), |v| format!("{v:.5}"))
    });
    row("best-threshold accuracy", &|r| {
        best_accuracy(&r.genuine_cosines, &r.impostor_cosines)
            .map_or("n/a".into(), |b| percent(b.accuracy))
    });
    row("  at cosine >=", &|r| {
        best_accuracy(&r.genuine_cosines, &r.impostor_cosines)
            .map_or("n/a".into(), |b| format!("{:.4}", b.threshold))
    });
    row("  at score >=", &|r| {
        best_accuracy(&r.genuine_cosines, &r.impostor_cosines).map_or("n/a".into(), |b| {
            format!("{:.4}", calibrations.for_mode(r.mode).score(b.threshold))
        })
    });
    for far in [1e-2, 1e-3] {
        row(&format!("TAR @ FAR {far:.0e}"), &|r| {
            tar_at_far(&r.genuine_cosines, &r.impostor_cosines, far).map_or("n/a".into(), |t| {
                format!("{} (cos > {:.4})", percent(t.tar), t.threshold)
            })
        });
    }
    for threshold in DOCUMENTED_THRESHOLDS {
        let documented = documented_far(threshold);
        row(
            &format!("score >= {threshold:.2}: FAR (documented {documented:.1e})"),
            &|r| {
                let counts = ErrorCounts::at(&r.genuine_scores, &r.impostor_scores, threshold);
                rate(counts.false_accepts, counts.impostors)
            },
        );
        row(&format!("score >= {threshold:.2}: FRR"), &|r| {
            let counts = ErrorCounts::at(&r.genuine_scores, &r.impostor_scores, threshold);
            rate(counts.false_rejects, counts.genuines)
        });
    }
    print_table(&header, &rows);
}

fn write_scores(out: &Path, pairs: &[Pair], results: &[ModeScores]) -> anyhow::Result<()> {
    let mut text = String::from("mode,path1,path2,same,cosine,score,failure\n");
    for result in results {
        for (pair, (cosine, score, failure)) in pairs.iter().zip(&result.per_pair) {
            let _ = writeln!(
                text,
                "{},{},{},{},{cosine:.6},{score:.6},{}",
                mode_name(result.mode),
                pair.path1,
                pair.path2,
                u8::from(pair.same),
                failure.replace(',', ";")
            );
        }
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// The identity of an image: its folder's name (LFW: `images/<Name>/<Name>_0001.jpg`).
fn identity_of(path: &str) -> &str {
    Path::new(path)
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("")
}

/// One mode's fit.
struct ModeFit {
    mode: SearchMode,
    embedded: usize,
    failed: usize,
    identities: usize,
    impostor_pairs: u64,
    knots: Vec<(f64, f64)>,
    /// (score, measured impostor FAR at the table's cosine for that score): a self-check.
    measured_far: Vec<(f64, f64)>,
}

/// Scores whose fitted cosine and measured FAR the calibrate report lists.
const REPORTED_SCORES: [f64; 9] = [0.2, 0.4, 0.6, 0.67, 0.75, 0.8, 0.85, 0.95, 1.0];

pub fn run_calibrate(args: &CalibrateArgs) -> anyhow::Result<ExitCode> {
    let pairs = parse_pairs(&read_text(&args.pairs)?)
        .with_context(|| format!("reading {}", args.pairs.display()))?;
    let paths = distinct_paths(&pairs);
    if paths.iter().any(|path| identity_of(path).is_empty()) {
        bail!("every image path needs a folder naming its identity (e.g. images/<name>/x.jpg)");
    }
    let pipeline = load_pipeline(&args.common)?;
    let pool = args.common.pool()?;
    let mut fits = Vec::new();
    let mut embedded_per_mode = Vec::new();
    for mode in args.common.search_mode.modes() {
        let embedded = embed_all(&pipeline, &args.common, &pool, &paths, mode)?;
        let mut embeddings = Vec::new();
        let mut identities = Vec::new();
        for path in &paths {
            if let Some(Embedded::Face { embedding, .. }) = embedded.get(path) {
                embeddings.push(embedding.clone());
                identities.push(identity_of(path));
            }
        }
        let mut distribution = ImpostorDistribution::new(TAIL_CAPACITY);
        add_impostor_pairs(&embeddings, &identities, &mut distribution);
        let impostor_pairs = distribution.total();
        if impostor_pairs == 0 {
            bail!("no cross-identity pairs: the fitting set needs at least two identities");
        }
        let knots = distribution.fit_knots();
        let measured_far = REPORTED_SCORES
            .iter()
            .filter_map(|&score| {
                cosine_for_score(&knots, score).map(|c| (score, distribution.survival(c)))
            })
            .collect();
        fits.push(ModeFit {
            mode,
            embedded: embeddings.len(),
            failed: paths.len() - embeddings.len(),
            identities: identities.iter().collect::<BTreeSet<_>>().len(),
            impostor_pairs,
            knots,
            measured_far,
        });
        embedded_per_mode.push((mode, embedded));
    }
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let set = describe_input(&args.common.root, &args.pairs);
    let id = args.id.clone().unwrap_or_else(|| {
        let slug: String = set
            .trim_end_matches(".csv")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("sface-{slug}-{date}")
    });
    let text = calibration_json(&id, &set, &date, paths.len(), &fits)?;
    // The matcher must accept what was written.
    Calibrations::parse(&text).context("the fitted table does not parse back")?;
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    print_fits(&fits);
    outln!("wrote {} ({id})", args.out.display());
    // The fitting set's own verification table with the new tables (genuine pairs included).
    let calibrations = Calibrations::parse(&text)?;
    let results: Vec<ModeScores> = embedded_per_mode
        .iter()
        .map(|(mode, embedded)| score_pairs(&pairs, embedded, calibrations.for_mode(*mode), *mode))
        .collect();
    outln!();
    outln!("verification on the fitting pairs {set} with the fitted tables:");
    print_verification(&results, &calibrations);
    Ok(ExitCode::SUCCESS)
}

/// The cosine where a table reaches `score`.
fn cosine_for_score(knots: &[(f64, f64)], score: f64) -> Option<f64> {
    knots.windows(2).find_map(|pair| {
        let ((c0, s0), (c1, s1)) = (pair[0], pair[1]);
        (s1 >= score && s1 > s0).then(|| c0 + (c1 - c0) * ((score - s0) / (s1 - s0)).max(0.0))
    })
}

fn print_fits(fits: &[ModeFit]) {
    let header: Vec<String> = fits.iter().map(|f| mode_name(f.mode).to_owned()).collect();
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "images embedded".into(),
            fits.iter().map(|f| f.embedded.to_string()).collect(),
        ),
        (
            "images without a usable face".into(),
            fits.iter().map(|f| f.failed.to_string()).collect(),
        ),
        (
            "identities".into(),
            fits.iter().map(|f| f.identities.to_string()).collect(),
        ),
        (
            "impostor pairs".into(),
            fits.iter().map(|f| f.impostor_pairs.to_string()).collect(),
        ),
        (
            "lowest measured FAR (score)".into(),
            fits.iter()
                .map(|f| {
                    let far = 1.0 / f.impostor_pairs as f64;
                    format!("{far:.1e} ({:.2})", -far.log10() / 5.0)
                })
                .collect(),
        ),
        (
            "knots".into(),
            fits.iter().map(|f| f.knots.len().to_string()).collect(),
        ),
    ];
    for score in REPORTED_SCORES {
        rows.push((
            format!(
                "score {score:.2} (FAR {:.1e}): cosine, measured FAR",
                documented_far(score)
            ),
            fits.iter()
                .map(|f| {
                    let cosine = cosine_for_score(&f.knots, score);
                    let measured = f.measured_far.iter().find(|(s, _)| *s == score);
                    match (cosine, measured) {
                        (Some(c), Some((_, far))) => format!("{c:.4}, {far:.2e}"),
                        _ => "n/a".into(),
                    }
                })
                .collect(),
        ));
    }
    print_table(&header, &rows);
}

fn knots_json(knots: &[(f64, f64)], indent: &str) -> String {
    let lines: Vec<String> = knots
        .iter()
        .map(|(cosine, score)| format!("{indent}  [{cosine}, {score}]"))
        .collect();
    format!("[\n{}\n{indent}]", lines.join(",\n"))
}

/// The table file: the matcher reads `id`, `provisional` and `knots` (the default mode's
/// table); `modes` holds the table of each search mode.
fn calibration_json(
    id: &str,
    set: &str,
    date: &str,
    images: usize,
    fits: &[ModeFit],
) -> anyhow::Result<String> {
    let default = fits
        .iter()
        .find(|f| f.mode == SearchMode::Accurate)
        .or_else(|| fits.first())
        .context("no search mode was fitted")?;
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let mut modes = BTreeMap::new();
    for fit in fits {
        modes.insert(
            mode_name(fit.mode),
            format!(
                "{{\n      \"images_embedded\": {},\n      \"identities\": {},\n      \"impostor_pairs\": {},\n      \"lowest_measured_far\": {:.3e},\n      \"knots\": {}\n    }}",
                fit.embedded,
                fit.identities,
                fit.impostor_pairs,
                1.0 / fit.impostor_pairs as f64,
                knots_json(&fit.knots, "      ")
            ),
        );
    }
    let modes: Vec<String> = modes
        .iter()
        .map(|(mode, body)| format!("    {}: {body}", quote(mode)))
        .collect();
    let description = "Fitted by `faceproof eval calibrate`: score = -log10(FAR(cosine)) / 5, FAR being the share of cross-identity (impostor) pairs of the fitting images whose cosine is at or above the given one; one knot per 0.01 of score, linear between knots, 0 below the first knot and 1 from the first knot at score 1 (FAR 1e-5) on. FARs hold for LFW-like populations (measured 15-50x higher among look-alikes or one office's staff).";
    Ok(format!(
        "{{\n  \"id\": {},\n  \"provisional\": false,\n  \"description\": {},\n  \"fitting_set\": {},\n  \"images\": {images},\n  \"date\": {},\n  \"default_mode\": {},\n  \"impostor_pairs\": {},\n  \"knots\": {},\n  \"modes\": {{\n{}\n  }}\n}}\n",
        quote(id),
        quote(description),
        quote(set),
        quote(date),
        quote(mode_name(default.mode)),
        default.impostor_pairs,
        knots_json(&default.knots, "  "),
        modes.join(",\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_folder_name() {
        assert_eq!(
            identity_of("images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"),
            "Aaron_Peirsol"
        );
        assert_eq!(identity_of("x.jpg"), "");
    }

    #[test]
    fn written_table_parses_back_per_mode() {
        let fit = |mode, knots: Vec<(f64, f64)>| ModeFit {
            mode,
            embedded: 3,
            failed: 0,
            identities: 2,
            impostor_pairs: 2,
            knots,
            measured_far: Vec::new(),
        };
        let fits = [
            fit(SearchMode::Fast, vec![(-1.0, 0.0), (0.3, 0.6), (1.0, 1.0)]),
            fit(
                SearchMode::Accurate,
                vec![(-1.0, 0.0), (0.4, 0.6), (1.0, 1.0)],
            ),
        ];
        let text = calibration_json("t", "set/pairs.csv", "2026-01-01", 3, &fits).unwrap();
        let tables = Calibrations::parse(&text).unwrap();
        assert_eq!(tables.id, "t");
        assert!((tables.for_mode(SearchMode::Fast).score(0.3) - 0.6).abs() < 1e-12);
        assert!((tables.for_mode(SearchMode::Accurate).score(0.4) - 0.6).abs() < 1e-12);
        // The top-level table (what the matcher reads today) is ACCURATE's.
        assert!((tables.default.score(0.4) - 0.6).abs() < 1e-12);
        assert!((cosine_for_score(&fits[0].knots, 0.6).unwrap() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn builtin_table_parses() {
        assert!(Calibrations::parse(BUILTIN_TABLE).is_ok());
    }

    #[test]
    fn failures_score_as_non_matches_at_the_bottom() {
        let pairs = vec![
            Pair {
                path1: "a/1".into(),
                path2: "a/2".into(),
                same: true,
            },
            Pair {
                path1: "a/1".into(),
                path2: "b/1".into(),
                same: false,
            },
        ];
        let mut embedded = HashMap::new();
        embedded.insert(
            "a/1".to_owned(),
            Embedded::Face {
                embedding: vec![1.0, 0.0],
                rival_face: false,
            },
        );
        embedded.insert(
            "a/2".to_owned(),
            Embedded::Failed("no_face_detected".into()),
        );
        embedded.insert(
            "b/1".to_owned(),
            Embedded::Face {
                embedding: vec![0.6, 0.8],
                rival_face: true,
            },
        );
        let calibration =
            Calibration::from_json(r#"{"id":"t","knots":[[-1.0,0.0],[1.0,1.0]]}"#).unwrap();
        let scores = score_pairs(&pairs, &embedded, &calibration, SearchMode::Fast);
        assert_eq!(scores.genuine_cosines, vec![-1.0]);
        assert_eq!(scores.genuine_scores, vec![0.0]);
        assert!((scores.impostor_cosines[0] - 0.6).abs() < 1e-6);
        assert_eq!(scores.pairs_with_failure, 1);
        assert_eq!(scores.rival_faces, 1);
        assert_eq!(scores.failed.len(), 1);
        assert!(scores.per_pair[0].2.contains("no_face_detected"));
    }
}
