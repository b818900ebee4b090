//! Verification and presentation-attack metrics on plain score lists. A pair or image is
//! accepted when its score is at or above the threshold (verification) or strictly above it
//! (liveness: "passes when the score is above `liveness_min_score`").

/// Every score with `true` for genuine and `false` for impostor, sorted by `order`.
fn labelled(
    genuine: &[f64],
    impostor: &[f64],
    order: impl Fn(f64, f64) -> std::cmp::Ordering,
) -> Vec<(f64, bool)> {
    let mut all: Vec<(f64, bool)> = genuine
        .iter()
        .map(|&s| (s, true))
        .chain(impostor.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| order(a.0, b.0));
    all
}

/// Area under the ROC curve: the probability that a random genuine score beats a random
/// impostor score, ties counting one half (Mann-Whitney U). `None` when a class is empty.
pub fn roc_auc(genuine: &[f64], impostor: &[f64]) -> Option<f64> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let all = labelled(genuine, impostor, |a, b| a.total_cmp(&b));
    // Average 1-based ranks over runs of tied scores.
    let mut genuine_rank_sum = 0.0;
    let mut start = 0;
    while start < all.len() {
        let mut end = start;
        while end + 1 < all.len() && all[end + 1].0 == all[start].0 {
            end += 1;
        }
        let average_rank = (start + end) as f64 / 2.0 + 1.0;
        let genuine_in_run = all[start..=end].iter().filter(|(_, g)| *g).count();
        genuine_rank_sum += average_rank * genuine_in_run as f64;
        start = end + 1;
    }
    let (n_genuine, n_impostor) = (genuine.len() as f64, impostor.len() as f64);
    Some((genuine_rank_sum - n_genuine * (n_genuine + 1.0) / 2.0) / (n_genuine * n_impostor))
}

/// The best accuracy over all thresholds (accept when score >= threshold) and the threshold,
/// placed halfway between the last accepted and the first rejected score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestAccuracy {
    pub accuracy: f64,
    pub threshold: f64,
}

pub fn best_accuracy(genuine: &[f64], impostor: &[f64]) -> Option<BestAccuracy> {
    let total = genuine.len() + impostor.len();
    if total == 0 {
        return None;
    }
    let all = labelled(genuine, impostor, |a, b| b.total_cmp(&a));
    // Threshold above everything: every impostor correctly rejected.
    let mut correct = impostor.len();
    let mut best = (correct, f64::INFINITY);
    let mut index = 0;
    while index < all.len() {
        let value = all[index].0;
        while index < all.len() && all[index].0 == value {
            if all[index].1 {
                correct += 1;
            } else {
                correct -= 1;
            }
            index += 1;
        }
        if correct > best.0 {
            let next_lower = all.get(index).map_or(value - 1e-3, |next| next.0);
            best = (correct, (value + next_lower) / 2.0);
        }
    }
    Some(BestAccuracy {
        accuracy: best.0 as f64 / total as f64,
        threshold: best.1,
    })
}

/// The true-accept rate at the lowest threshold whose false-accept rate is at most `far`:
/// accept when score > `threshold` (an impostor score, so at most floor(far x impostors) of them
/// are accepted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TarAtFar {
    pub tar: f64,
    pub threshold: f64,
    /// The false-accept rate actually reached (<= the target).
    pub far: f64,
}

pub fn tar_at_far(genuine: &[f64], impostor: &[f64], far: f64) -> Option<TarAtFar> {
    if genuine.is_empty() || impostor.is_empty() || !(0.0..=1.0).contains(&far) {
        return None;
    }
    let mut sorted = impostor.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (far * sorted.len() as f64 + 1e-9).floor() as usize;
    let threshold = match sorted.get(allowed) {
        Some(&score) => score,
        None => f64::NEG_INFINITY,
    };
    let accepted = |scores: &[f64]| scores.iter().filter(|&&s| s > threshold).count() as f64;
    Some(TarAtFar {
        tar: accepted(genuine) / genuine.len() as f64,
        threshold,
        far: accepted(impostor) / impostor.len() as f64,
    })
}

/// Error counts at one threshold (accept when score >= threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCounts {
    pub false_accepts: usize,
    pub impostors: usize,
    pub false_rejects: usize,
    pub genuines: usize,
}

impl ErrorCounts {
    pub fn at(genuine: &[f64], impostor: &[f64], threshold: f64) -> Self {
        Self {
            false_accepts: impostor.iter().filter(|&&s| s >= threshold).count(),
            impostors: impostor.len(),
            false_rejects: genuine.iter().filter(|&&s| s < threshold).count(),
            genuines: genuine.len(),
        }
    }
}

fn ratio(count: usize, of: usize) -> f64 {
    if of == 0 {
        f64::NAN
    } else {
        count as f64 / of as f64
    }
}

/// One scored liveness image; `score` is `None` when a quality gate refused the image.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessOutcome {
    pub is_attack: bool,
    pub attack_type: String,
    pub score: Option<f64>,
}

/// ISO/IEC 30107-3 error rates at one threshold (pass when score > threshold). A refused attack
/// is not an accepted attack (it counts in APCER's denominator only); a refused genuine user is
/// a rejection (it counts in BPCER's numerator).
#[derive(Debug, Clone, PartialEq)]
pub struct PresentationErrors {
    pub accepted_attacks: usize,
    pub attacks: usize,
    pub rejected_genuine: usize,
    pub genuine: usize,
    /// (attack type, accepted, total), sorted by attack type.
    pub per_attack_type: Vec<(String, usize, usize)>,
}

impl PresentationErrors {
    pub fn at(outcomes: &[LivenessOutcome], threshold: f64) -> Self {
        let passes = |outcome: &LivenessOutcome| outcome.score.is_some_and(|s| s > threshold);
        let mut per_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        let (mut accepted_attacks, mut attacks, mut rejected_genuine, mut genuine) = (0, 0, 0, 0);
        for outcome in outcomes {
            if outcome.is_attack {
                attacks += 1;
                let entry = per_type.entry(outcome.attack_type.as_str()).or_default();
                entry.1 += 1;
                if passes(outcome) {
                    accepted_attacks += 1;
                    entry.0 += 1;
                }
            } else {
                genuine += 1;
                if !passes(outcome) {
                    rejected_genuine += 1;
                }
            }
        }
        Self {
            accepted_attacks,
            attacks,
            rejected_genuine,
            genuine,
            per_attack_type: per_type
                .into_iter()
                .map(|(kind, (accepted, total))| (kind.to_owned(), accepted, total))
                .collect(),
        }
    }

    /// Attack presentation classification error rate: attacks accepted.
    pub fn apcer(&self) -> f64 {
        ratio(self.accepted_attacks, self.attacks)
    }

    /// Bona fide presentation classification error rate: genuine users rejected.
    pub fn bpcer(&self) -> f64 {
        ratio(self.rejected_genuine, self.genuine)
    }

    pub fn acer(&self) -> f64 {
        (self.apcer() + self.bpcer()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_a_known_example() {
        // Pairs (g, i): 0.9 beats all 3; 0.6 beats 0.3 and 0.5, ties nothing; 0.4 beats 0.3.
        let auc = roc_auc(&[0.9, 0.6, 0.4], &[0.3, 0.5, 0.7]).unwrap();
        assert!((auc - 6.0 / 9.0).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc(&[1.0, 2.0], &[0.0]), Some(1.0));
        assert_eq!(roc_auc(&[0.5], &[0.5]), Some(0.5));
        assert_eq!(roc_auc(&[], &[0.5]), None);
    }

    #[test]
    fn best_accuracy_finds_the_separating_threshold() {
        let best = best_accuracy(&[0.8, 0.9, 0.4], &[0.1, 0.2, 0.5]).unwrap();
        assert!((best.accuracy - 5.0 / 6.0).abs() < 1e-12);
        assert!(best.threshold > 0.5 && best.threshold < 0.8, "{best:?}");
        let perfect = best_accuracy(&[0.8, 0.9], &[0.1, 0.2]).unwrap();
        assert_eq!(perfect.accuracy, 1.0);
        assert!((perfect.threshold - 0.5).abs() < 1e-12);
    }

    #[test]
    fn tar_at_far_allows_floor_far_times_impostors() {
        let impostor: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let genuine = [0.985, 0.975, 0.5, 0.995];
        // FAR 1e-2 on 100 impostors: one may pass, the threshold is the second highest (0.98).
        let at = tar_at_far(&genuine, &impostor, 1e-2).unwrap();
        assert_eq!(at.threshold, 0.98);
        assert_eq!(at.far, 0.01);
        assert_eq!(at.tar, 0.5);
        // FAR 1e-3: none may pass.
        let at = tar_at_far(&genuine, &impostor, 1e-3).unwrap();
        assert_eq!(at.threshold, 0.99);
        assert_eq!(at.far, 0.0);
        assert_eq!(at.tar, 0.25);
    }

    #[test]
    fn error_counts_accept_at_the_threshold() {
        let counts = ErrorCounts::at(&[0.5, 0.7, 0.9], &[0.1, 0.5, 0.6], 0.5);
        assert_eq!(counts.false_accepts, 2);
        assert_eq!(counts.false_rejects, 0);
        assert_eq!(ErrorCounts::at(&[], &[], 0.5).impostors, 0);
    }

    #[test]
    fn presentation_errors_count_refusals_as_documented() {
        let outcome = |is_attack: bool, kind: &str, score: Option<f64>| LivenessOutcome {
            is_attack,
            attack_type: kind.into(),
            score,
        };
        let outcomes = [
            outcome(false, "none", Some(0.9)),
            outcome(false, "none", Some(0.5)),
            outcome(false, "none", None),
            outcome(false, "none", Some(0.95)),
            outcome(true, "print", Some(0.7)),
            outcome(true, "print", Some(0.1)),
            outcome(true, "screen", None),
            outcome(true, "screen", Some(0.6)),
        ];
        let errors = PresentationErrors::at(&outcomes, 0.6);
        // Pass is strictly above 0.6: the screen attack at 0.6 is rejected.
        assert_eq!((errors.accepted_attacks, errors.attacks), (1, 4));
        assert_eq!((errors.rejected_genuine, errors.genuine), (2, 4));
        assert!((errors.apcer() - 0.25).abs() < 1e-12);
        assert!((errors.bpcer() - 0.5).abs() < 1e-12);
        assert!((errors.acer() - 0.375).abs() < 1e-12);
        assert_eq!(
            errors.per_attack_type,
            vec![("print".to_owned(), 1, 2), ("screen".to_owned(), 0, 2)]
        );
    }
}
