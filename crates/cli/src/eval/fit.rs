//! Fitting the cosine -> score calibration of DESIGN.md section 4.5:
//! `score = -log10(FAR(cosine)) / 5`, FAR being the impostor survival function (the share of
//! cross-identity pairs whose cosine is at or above the given one). Each 0.2 of score is one
//! decade of FAR.
//!
//! Millions of impostor cosines are summarised without keeping them all: a histogram at 1e-4
//! resolution for the bulk and the exact largest values for the tail, where the table's upper
//! knots (FAR 1e-2 and below) are read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Histogram resolution over -1..1.
const BIN_WIDTH: f64 = 1e-4;
const BINS: usize = 20_001;
/// Cosines are kept in the tail as integers of 1e-7 (exact order, more than enough resolution).
const TAIL_SCALE: f64 = 1e7;
/// Score step between knots: 0.01 = a tenth of a FAR decade every two knots.
const SCORE_STEP: f64 = 0.01;
/// Decades of FAR per unit of score (score = -log10(FAR) / DECADES).
pub const DECADES_PER_UNIT: f64 = 5.0;

/// The false-accept rate a score documents: 10^(-5 x score).
pub fn documented_far(score: f64) -> f64 {
    10f64.powf(-DECADES_PER_UNIT * score)
}

/// A summary of impostor cosines: exact above the tail's smallest kept value, histogram below.
#[derive(Debug, Clone)]
pub struct ImpostorDistribution {
    bins: Vec<u64>,
    /// The `tail_capacity` largest cosines (x 1e7), smallest on top.
    tail: BinaryHeap<Reverse<i32>>,
    tail_capacity: usize,
    total: u64,
}

impl ImpostorDistribution {
    pub fn new(tail_capacity: usize) -> Self {
        Self {
            bins: vec![0; BINS],
            tail: BinaryHeap::with_capacity(tail_capacity.saturating_add(1)),
            tail_capacity: tail_capacity.max(1),
            total: 0,
        }
    }

    /// Adds one impostor cosine (clamped to -1..1; NaN is ignored).
    pub fn add(&mut self, cosine: f32) {
        if cosine.is_nan() {
            return;
        }
        let cosine = f64::from(cosine).clamp(-1.0, 1.0);
        self.bins[bin_of(cosine)] += 1;
        self.total += 1;
        let key = (cosine * TAIL_SCALE).round() as i32;
        if self.tail.len() < self.tail_capacity {
            self.tail.push(Reverse(key));
        } else if self
            .tail
            .peek()
            .is_some_and(|Reverse(smallest)| key > *smallest)
        {
            self.tail.pop();
            self.tail.push(Reverse(key));
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The largest kept cosines, largest first.
    fn tail_descending(&self) -> Vec<f64> {
        let mut values: Vec<f64> = self
            .tail
            .iter()
            .map(|Reverse(key)| f64::from(*key) / TAIL_SCALE)
            .collect();
        values.sort_by(|a, b| b.total_cmp(a));
        values
    }

    /// The share of impostor cosines at or above `cosine` (exact in the tail, interpolated
    /// within a 1e-4 bin below it).
    pub fn survival(&self, cosine: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let tail = self.tail_descending();
        let tail_holds_all = tail.len() as u64 == self.total;
        let tail_min = tail.last().copied().unwrap_or(f64::INFINITY);
        let count = if tail_holds_all || cosine >= tail_min {
            tail.iter().filter(|&&value| value >= cosine).count() as f64
        } else {
            let bin = bin_of(cosine.clamp(-1.0, 1.0));
            let above: u64 = self.bins[bin + 1..].iter().sum();
            let bin_low = -1.0 + bin as f64 * BIN_WIDTH;
            let fraction_above = (1.0 - (cosine - bin_low) / BIN_WIDTH).clamp(0.0, 1.0);
            above as f64 + self.bins[bin] as f64 * fraction_above
        };
        count / self.total as f64
    }

    /// The cosine above which `count` impostor cosines lie (the inverse of the survival
    /// function times the total), `None` below one pair: the measured range ends there.
    fn cosine_at_count(&self, count: f64, tail: &[f64]) -> Option<f64> {
        if !(1.0..=self.total as f64).contains(&count) {
            return None;
        }
        let tail_holds_all = tail.len() as u64 == self.total;
        if count <= tail.len() as f64 || tail_holds_all {
            // tail[i] has i + 1 values at or above it; interpolate between ranks.
            let rank = count - 1.0;
            let low = rank.floor() as usize;
            let upper = tail.get(low).copied()?;
            let lower = tail.get(low + 1).copied().unwrap_or(upper);
            return Some(upper + (lower - upper) * (rank - low as f64));
        }
        let mut above = 0.0;
        for bin in (0..BINS).rev() {
            let in_bin = self.bins[bin] as f64;
            if above + in_bin >= count {
                let bin_low = -1.0 + bin as f64 * BIN_WIDTH;
                let fraction = if in_bin > 0.0 {
                    (count - above) / in_bin
                } else {
                    0.0
                };
                return Some(bin_low + BIN_WIDTH * (1.0 - fraction));
            }
            above += in_bin;
        }
        Some(-1.0)
    }

    /// The knot table (cosine, score), cosines strictly increasing, scores non-decreasing in
    /// 0..=1: one knot per 0.01 of score where the FAR is measured (down to one impostor pair),
    /// then, if the fitting set is too small to reach score 1 (FAR 1e-5), a straight-line
    /// extrapolation with the slope of the last measured FAR decade. Below the lowest impostor
    /// cosine the score is 0; beyond the last knot it stays at 1.
    pub fn fit_knots(&self) -> Vec<(f64, f64)> {
        let tail = self.tail_descending();
        let mut knots: Vec<(f64, f64)> = vec![(-1.0, 0.0)];
        let mut step = 0u32;
        loop {
            let score = f64::from(step) * SCORE_STEP;
            if score > 1.0 + 1e-9 {
                break;
            }
            let Some(cosine) =
                self.cosine_at_count(self.total as f64 * documented_far(score), &tail)
            else {
                break;
            };
            push_knot(&mut knots, cosine, score.min(1.0));
            step += 1;
        }
        let Some(&(last_cosine, last_score)) = knots.last() else {
            return knots;
        };
        if last_score < 1.0 {
            // One FAR decade back (0.2 of score), or the first knot if the set is tiny.
            let anchor = knots
                .iter()
                .rev()
                .find(|(_, score)| *score <= last_score - 0.2 + 1e-9)
                .or_else(|| knots.get(1))
                .copied()
                .unwrap_or((-1.0, 0.0));
            let slope = (last_score - anchor.1) / (last_cosine - anchor.0).max(1e-6);
            if slope > 0.0 {
                let reach = last_cosine + (1.0 - last_score) / slope;
                if reach < 1.0 {
                    push_knot(&mut knots, reach, 1.0);
                } else {
                    push_knot(&mut knots, 1.0, last_score + slope * (1.0 - last_cosine));
                }
            }
        }
        if knots.last().is_some_and(|(cosine, _)| *cosine < 1.0) {
            let score = knots.last().map_or(1.0, |(_, score)| *score);
            push_knot(&mut knots, 1.0, score);
        }
        knots
    }
}

fn bin_of(cosine: f64) -> usize {
    (((cosine + 1.0) / BIN_WIDTH).floor() as usize).min(BINS - 1)
}

/// Appends a knot when it moves right (equal cosines would make the table a step).
fn push_knot(knots: &mut Vec<(f64, f64)>, cosine: f64, score: f64) {
    let cosine = (cosine * 1e6).round() / 1e6;
    let score = (score.clamp(0.0, 1.0) * 1e4).round() / 1e4;
    match knots.last() {
        Some(&(last_cosine, last_score)) if cosine <= last_cosine || score < last_score => {}
        _ => knots.push((cosine, score)),
    }
}

/// Every cross-identity cosine of L2-normalised embeddings, added to `distribution`.
/// `identities[i]` labels `embeddings[i]`; returns the number of pairs added.
pub fn add_impostor_pairs(
    embeddings: &[Vec<f32>],
    identities: &[&str],
    distribution: &mut ImpostorDistribution,
) -> u64 {
    let mut pairs = 0;
    for (i, (a, identity_a)) in embeddings.iter().zip(identities).enumerate() {
        for (b, identity_b) in embeddings[i + 1..].iter().zip(&identities[i + 1..]) {
            if identity_a != identity_b {
                distribution.add(dot(a, b));
                pairs += 1;
            }
        }
    }
    pairs
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The vector scaled to unit length (zero stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of cosines: uniform over -0.5..0.5 in `n` steps.
    fn uniform(n: u32, tail: usize) -> ImpostorDistribution {
        let mut distribution = ImpostorDistribution::new(tail);
        for i in 0..n {
            distribution.add((-0.5 + f64::from(i) / f64::from(n)) as f32);
        }
        distribution
    }

    #[test]
    fn survival_matches_the_uniform_law_in_histogram_and_tail() {
        let distribution = uniform(100_000, 1_000);
        assert_eq!(distribution.total(), 100_000);
        assert!((distribution.survival(-1.0) - 1.0).abs() < 1e-9);
        assert!((distribution.survival(0.0) - 0.5).abs() < 1e-3);
        assert!((distribution.survival(0.25) - 0.25).abs() < 1e-3);
        // 0.4995 is inside the exact tail: 50 values of 1e-5 steps at or above it.
        assert!((distribution.survival(0.4995) - 50.0 / 100_000.0).abs() < 2e-5);
        assert_eq!(distribution.survival(0.6), 0.0);
    }

    #[test]
    fn fitted_table_is_monotone_bounded_and_follows_minus_log_far() {
        let distribution = uniform(200_000, 5_000);
        let knots = distribution.fit_knots();
        assert_eq!(knots.first(), Some(&(-1.0, 0.0)));
        assert_eq!(knots.last().map(|k| k.0), Some(1.0));
        for pair in knots.windows(2) {
            assert!(pair[1].0 > pair[0].0, "{pair:?}");
            assert!(pair[1].1 >= pair[0].1, "{pair:?}");
        }
        assert!(knots.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
        // Uniform law: FAR(c) = 0.5 - c, so score(c) = -log10(0.5 - c) / 5.
        for cosine in [-0.3f64, 0.0, 0.3, 0.49] {
            let expected = -(0.5 - cosine).log10() / 5.0;
            let fitted = interpolate(&knots, cosine);
            assert!(
                (fitted - expected).abs() < 0.01,
                "{cosine}: {fitted} vs {expected}"
            );
        }
    }

    #[test]
    fn small_sets_extrapolate_to_one_monotonically() {
        // 1,000 pairs measure FAR down to 1e-3 (score 0.6) only.
        let distribution = uniform(1_000, 100);
        let knots = distribution.fit_knots();
        assert_eq!(knots.last(), Some(&(1.0, 1.0)));
        for pair in knots.windows(2) {
            assert!(pair[1].0 > pair[0].0 && pair[1].1 >= pair[0].1, "{pair:?}");
        }
        let beyond = interpolate(&knots, 0.5);
        assert!(beyond > 0.6 && beyond <= 1.0, "{beyond}");
    }

    #[test]
    fn impostor_pairs_skip_same_identity() {
        let embeddings = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0]];
        let mut distribution = ImpostorDistribution::new(10);
        let pairs = add_impostor_pairs(&embeddings, &["a", "a", "b"], &mut distribution);
        // (0,2) and (1,2) cross identities: cosines 1 and 0.
        assert_eq!(pairs, 2);
        assert!((distribution.survival(0.5) - 0.5).abs() < 1e-9);
        assert_eq!(normalized(&[3.0, 4.0]), vec![0.6, 0.8]);
    }

    fn interpolate(knots: &[(f64, f64)], cosine: f64) -> f64 {
        for pair in knots.windows(2) {
            let ((c0, s0), (c1, s1)) = (pair[0], pair[1]);
            if cosine <= c1 {
                return s0 + (s1 - s0) * (cosine - c0) / (c1 - c0);
            }
        }
        1.0
    }
}
