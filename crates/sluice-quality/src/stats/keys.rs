//! Aggregation per route key, and the comparison that holds for key-randomised traffic.
//!
//! An A/B split by `route_key` randomises keys, not rows: a customer's orders all go to one
//! variant and resemble each other, so a test that counts rows as independent understates the
//! variance (by the design effect, reported as [`KeyComparison::design_effect`]) and declares
//! effects that are not there. Each variant's rows are therefore first summed per key
//! ([`KeyRate`]: rows and successes; [`KeyMean`]: rows, sum and sum of squares), and the key is
//! the unit of the test. Two estimands are offered, since they answer different questions:
//!
//! - [`Weighting::Rows`] (the default): the ratio of sums, `sum(successes) / sum(rows)` (or
//!   `sum(values) / sum(rows)`), the figure a dashboard over the table shows (the share of
//!   orders flagged, the mean order amount). Its variance comes from the delta method over keys
//!   (Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018):
//!   `Var(R) = sum_k (y_k - R n_k)^2 / ((K - 1) K nbar^2)`, which is the cluster-robust
//!   (by key) variance of the row mean with the `K / (K - 1)` correction. A z-test compares
//!   the two ratios. When every key has one row, rows are the units and the classic tests run
//!   instead: the two-proportion z-test for rates, Welch's t-test for means.
//! - [`Weighting::Keys`]: the mean of per-key values (each key's rate or mean weighs the
//!   same, however many rows it has), compared by Welch's t-test; it answers "does the typical
//!   customer do better", and is not pulled by a few heavy keys.

use serde::{Deserialize, Serialize};

use super::{
    Comparison, MeanSummary, Proportion, StatsError, Variant, check_alpha, two_proportion_z,
    welch_t, z_compare,
};

/// One key's rows of a rate metric: how many rows, and in how many the event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRate {
    pub rows: u64,
    pub successes: u64,
}

/// One key's rows of a mean metric: how many rows, the sum of the values, the sum of squares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeyMean {
    pub rows: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl From<KeyRate> for KeyMean {
    /// A rate is the mean of a 0/1 value: its sum of squares is its sum.
    fn from(k: KeyRate) -> KeyMean {
        KeyMean {
            rows: k.rows,
            sum: k.successes as f64,
            sum_sq: k.successes as f64,
        }
    }
}

/// What the test's estimate weighs: each row, or each key. See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    #[default]
    Rows,
    Keys,
}

/// Which estimator a [`KeyComparison`] used, so a report can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// Ratio of sums with the delta-method variance over keys.
    DeltaMethod,
    /// One row per key: the rows are independent units.
    OneRowPerKey,
    /// The mean of per-key values.
    KeyMean,
}

impl Estimator {
    pub fn describe(self) -> &'static str {
        match self {
            Estimator::DeltaMethod => {
                "ratio of sums over rows; variance by the delta method over route keys"
            }
            Estimator::OneRowPerKey => "one row per route key: rows are independent units",
            Estimator::KeyMean => "mean of per-key values; each route key weighs the same",
        }
    }
}

/// A comparison of two variants' per-key data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyComparison {
    pub comparison: Comparison,
    pub estimator: Estimator,
    pub keys: [u64; 2],
    pub rows: [u64; 2],
    /// The variance of the effect over what a test counting rows as independent would have
    /// used (rows weighting only): above 1, a row-level test would overstate significance.
    pub design_effect: Option<f64>,
}

/// Compares a rate metric (e.g. the share of orders flagged) between control and candidate.
pub fn compare_rates(
    control: &[KeyRate],
    candidate: &[KeyRate],
    weighting: Weighting,
    alpha: f64,
) -> Result<KeyComparison, StatsError> {
    for (variant, keys) in [(Variant::Control, control), (Variant::Candidate, candidate)] {
        if let Some(k) = keys.iter().find(|k| k.successes > k.rows) {
            return Err(StatsError::BadInput(format!(
                "a key of the {variant} has {} successes in {} rows: the rate metric's condition must count rows of the key",
                k.successes, k.rows
            )));
        }
    }
    let as_means = |keys: &[KeyRate]| keys.iter().map(|&k| KeyMean::from(k)).collect::<Vec<_>>();
    let (a, b) = (as_means(control), as_means(candidate));
    if weighting == Weighting::Rows && one_row_per_key(&a) && one_row_per_key(&b) {
        check_alpha(alpha)?;
        let count = |keys: &[KeyRate]| Proportion {
            n: keys.iter().filter(|k| k.rows > 0).count() as u64,
            successes: keys.iter().map(|k| k.successes).sum(),
        };
        let comparison = two_proportion_z(&count(control), &count(candidate), alpha)?;
        return Ok(KeyComparison {
            keys: [comparison_n(&a), comparison_n(&b)],
            rows: [rows(&a), rows(&b)],
            comparison,
            estimator: Estimator::OneRowPerKey,
            design_effect: Some(1.0),
        });
    }
    compare_means(&a, &b, weighting, alpha)
}

/// Compares a mean metric (e.g. the mean amount) between control and candidate.
pub fn compare_means(
    control: &[KeyMean],
    candidate: &[KeyMean],
    weighting: Weighting,
    alpha: f64,
) -> Result<KeyComparison, StatsError> {
    check_alpha(alpha)?;
    for (variant, keys) in [(Variant::Control, control), (Variant::Candidate, candidate)] {
        if let Some(k) = keys
            .iter()
            .find(|k| !k.sum.is_finite() || !k.sum_sq.is_finite())
        {
            return Err(StatsError::BadInput(format!(
                "a key of the {variant} has sum {} and sum of squares {}: the metric's values must be finite numbers",
                k.sum, k.sum_sq
            )));
        }
    }
    let keys = [comparison_n(control), comparison_n(candidate)];
    let rows = [rows(control), rows(candidate)];
    let per_key = |ks: &[KeyMean]| {
        MeanSummary::of(
            ks.iter()
                .filter(|k| k.rows > 0)
                .map(|k| k.sum / k.rows as f64),
        )
    };
    if weighting == Weighting::Keys || (one_row_per_key(control) && one_row_per_key(candidate)) {
        let comparison = welch_t(&per_key(control), &per_key(candidate), alpha)?;
        let estimator = if weighting == Weighting::Keys {
            Estimator::KeyMean
        } else {
            Estimator::OneRowPerKey
        };
        return Ok(KeyComparison {
            comparison,
            estimator,
            keys,
            rows,
            design_effect: (estimator == Estimator::OneRowPerKey).then_some(1.0),
        });
    }
    let a = Ratio::of(Variant::Control, control)?;
    let b = Ratio::of(Variant::Candidate, candidate)?;
    let comparison = z_compare((a.ratio, a.variance), (b.ratio, b.variance), alpha)?;
    let naive = a.naive_variance + b.naive_variance;
    let design_effect = (naive > 0.0).then(|| (a.variance + b.variance) / naive);
    Ok(KeyComparison {
        comparison,
        estimator: Estimator::DeltaMethod,
        keys,
        rows,
        design_effect,
    })
}

fn one_row_per_key(keys: &[KeyMean]) -> bool {
    keys.iter().all(|k| k.rows <= 1)
}

fn comparison_n(keys: &[KeyMean]) -> u64 {
    keys.iter().filter(|k| k.rows > 0).count() as u64
}

fn rows(keys: &[KeyMean]) -> u64 {
    keys.iter().map(|k| k.rows).sum()
}

/// One variant's ratio of sums and its delta-method variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub keys: u64,
    pub ratio: f64,
    /// The variance of `ratio` (delta method over keys, divisor `K - 1`).
    pub variance: f64,
    /// The variance a row-level test would use: the row variance over the row count.
    pub naive_variance: f64,
}

impl Ratio {
    pub fn of(variant: Variant, keys: &[KeyMean]) -> Result<Ratio, StatsError> {
        let keys: Vec<&KeyMean> = keys.iter().filter(|k| k.rows > 0).collect();
        let k = keys.len() as u64;
        if k < 2 {
            return Err(StatsError::TooFewUnits {
                variant,
                n: k,
                need: 2,
                unit: "route keys",
            });
        }
        let n_total: f64 = keys.iter().map(|k| k.rows as f64).sum();
        let y_total: f64 = keys.iter().map(|k| k.sum).sum();
        let ratio = y_total / n_total;
        // Sum of squared residuals y_k - R n_k; second pass, so no cancellation.
        let resid: f64 = keys
            .iter()
            .map(|key| (key.sum - ratio * key.rows as f64).powi(2))
            .sum();
        let kf = k as f64;
        let variance = resid * kf / ((kf - 1.0) * n_total * n_total);
        // Row variance: within-key sums of squares plus the between-key part.
        let within: f64 = keys
            .iter()
            .map(|key| (key.sum_sq - key.sum * key.sum / key.rows as f64).max(0.0))
            .sum();
        let between: f64 = keys
            .iter()
            .map(|key| key.rows as f64 * (key.sum / key.rows as f64 - ratio).powi(2))
            .sum();
        let naive_variance = if n_total > 1.0 {
            (within + between) / (n_total - 1.0) / n_total
        } else {
            0.0
        };
        Ok(Ratio {
            keys: k,
            ratio,
            variance,
            naive_variance,
        })
    }
}
