//! A/B test statistics: two variants compared on a metric, with an effect, a confidence
//! interval and a p-value, and the decision they lead to (ship, stop or keep testing).
//!
//! The layers, bottom up:
//!
//! - Two-sample tests over summaries of independent units: [`two_proportion_z`] (pooled
//!   standard error for the p-value, unpooled for the interval, as statsmodels'
//!   `proportions_ztest` and `confint_proportions_2indep(method="wald")`), [`welch_t`]
//!   (unequal variances, Welch–Satterthwaite degrees of freedom, as scipy's
//!   `ttest_ind(equal_var=False)`) and [`z_compare`] (two estimates with known variances).
//! - [`keys`]: the unit of an A/B test split by `route_key` is the key, not the row: every row
//!   of a key goes to the same variant, and rows of one key (one customer's orders) are not
//!   independent. Rows are first aggregated per key, then compared with a test whose variance
//!   holds for key-randomised traffic (the delta method, or per-key values).
//! - [`plan`]: the fixed-horizon sample size (from a minimum detectable effect, alpha and
//!   power), the sequential test (mSPRT: always-valid p-values that may be read at every
//!   interval), the sample-ratio check, and [`plan::decide`], which turns all of it into a
//!   [`plan::Report`].
//!
//! Distributions come from `statrs`. Effects are always candidate minus control.
//!
//! ```
//! use sluice_quality::stats::{two_proportion_z, Proportion};
//! let control = Proportion { n: 1000, successes: 100 };
//! let candidate = Proportion { n: 1000, successes: 130 };
//! let c = two_proportion_z(&control, &candidate, 0.05).unwrap();
//! assert!((c.effect - 0.03).abs() < 1e-12);
//! assert!(c.p_value < 0.05 && c.ci_low > 0.0);
//! ```

pub mod keys;
pub mod plan;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use statrs::distribution::{Continuous, ContinuousCDF, Normal, StudentsT};

/// Why a comparison cannot be made (yet).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error(
        "the {variant} has {n} {unit}, and this test needs at least {need}: keep the test running until both variants have more"
    )]
    TooFewUnits {
        variant: Variant,
        n: u64,
        need: u64,
        unit: &'static str,
    },
    #[error("{what} must be {range}, not {value}")]
    OutOfRange {
        what: &'static str,
        range: &'static str,
        value: f64,
    },
    #[error("{0}")]
    BadInput(String),
}

/// Which side of the test a summary belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The stable version (A).
    Control,
    /// The new version (B).
    Candidate,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Control => "control",
            Variant::Candidate => "candidate",
        })
    }
}

/// Successes among `n` independent units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub n: u64,
    pub successes: u64,
}

/// `n` independent units: their mean and sample variance (divisor `n - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSummary {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
}

impl MeanSummary {
    /// The summary of `values`, by Welford's update (no cancellation for large means).
    pub fn of(values: impl IntoIterator<Item = f64>) -> MeanSummary {
        let (mut n, mut mean, mut m2) = (0u64, 0.0f64, 0.0f64);
        for x in values {
            n += 1;
            let d = x - mean;
            mean += d / n as f64;
            m2 += d * (x - mean);
        }
        let variance = if n > 1 {
            (m2 / (n - 1) as f64).max(0.0)
        } else {
            0.0
        };
        MeanSummary { n, mean, variance }
    }
}

/// Which test produced a [`Comparison`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    TwoProportionZ,
    WelchT,
    /// A z-test on two estimates with given variances (the delta method's).
    Z,
}

/// Candidate against control on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub test: TestKind,
    pub control: f64,
    pub candidate: f64,
    /// `candidate - control`.
    pub effect: f64,
    /// `effect / control`; none when the control is 0.
    pub relative_effect: Option<f64>,
    /// The two-sided interval for `effect` at `1 - alpha`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// The interval's bounds over the control (the control's own uncertainty is not in it);
    /// none when the control is 0.
    pub relative_ci: Option<(f64, f64)>,
    pub alpha: f64,
    /// The z or t statistic; none when both variants have no variance at all (then the
    /// p-value is 1 if their values agree and 0 if not: the limits as the variance goes to 0).
    pub statistic: Option<f64>,
    /// Welch–Satterthwaite degrees of freedom (t-test only).
    pub df: Option<f64>,
    /// Two-sided.
    pub p_value: f64,
    /// The standard error of `effect` used for the interval.
    pub se: f64,
}

impl Comparison {
    /// Whether the interval excludes 0.
    pub fn significant(&self) -> bool {
        self.p_value < self.alpha
    }
}

pub(crate) fn check_alpha(alpha: f64) -> Result<(), StatsError> {
    if alpha.is_finite() && alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(StatsError::OutOfRange {
            what: "alpha",
            range: "between 0 and 1 (e.g. 0.05)",
            value: alpha,
        })
    }
}

pub(crate) fn standard_normal() -> Normal {
    Normal::standard()
}

/// The two-sided p-value of a statistic `s` whose standard error is `se`, or the limit when
/// there is no variance.
fn two_sided(statistic: Option<f64>, effect: f64, sf: impl Fn(f64) -> f64) -> f64 {
    match statistic {
        Some(s) => (2.0 * sf(s.abs())).min(1.0),
        None if effect == 0.0 => 1.0,
        None => 0.0,
    }
}

#[allow(clippy::too_many_arguments)]
fn comparison(
    test: TestKind,
    control: f64,
    candidate: f64,
    statistic: Option<f64>,
    df: Option<f64>,
    p_value: f64,
    se: f64,
    half_width: f64,
    alpha: f64,
) -> Comparison {
    let effect = candidate - control;
    let (ci_low, ci_high) = (effect - half_width, effect + half_width);
    let relative = control != 0.0;
    Comparison {
        test,
        control,
        candidate,
        effect,
        relative_effect: relative.then(|| effect / control.abs()),
        ci_low,
        ci_high,
        relative_ci: relative.then(|| (ci_low / control.abs(), ci_high / control.abs())),
        alpha,
        statistic,
        df,
        p_value,
        se,
    }
}

/// The two-proportion z-test: the p-value from the pooled standard error (under the null
/// both variants share one rate), the interval from the unpooled one (Wald).
pub fn two_proportion_z(
    control: &Proportion,
    candidate: &Proportion,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    for (variant, p) in [(Variant::Control, control), (Variant::Candidate, candidate)] {
        if p.n == 0 {
            return Err(StatsError::TooFewUnits {
                variant,
                n: 0,
                need: 1,
                unit: "units",
            });
        }
        if p.successes > p.n {
            return Err(StatsError::BadInput(format!(
                "the {variant} has {} successes among {} units: a success count cannot exceed its units",
                p.successes, p.n
            )));
        }
    }
    let (na, nb) = (control.n as f64, candidate.n as f64);
    let (pa, pb) = (
        control.successes as f64 / na,
        candidate.successes as f64 / nb,
    );
    let pooled = (control.successes as f64 + candidate.successes as f64) / (na + nb);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    let se = (pa * (1.0 - pa) / na + pb * (1.0 - pb) / nb).sqrt();
    let z = (se_pooled > 0.0).then(|| (pb - pa) / se_pooled);
    let normal = standard_normal();
    let p = two_sided(z, pb - pa, |x| normal.sf(x));
    let crit = normal.inverse_cdf(1.0 - alpha / 2.0);
    Ok(comparison(
        TestKind::TwoProportionZ,
        pa,
        pb,
        z,
        None,
        p,
        se,
        crit * se,
        alpha,
    ))
}

/// Welch's t-test: means with unequal variances, degrees of freedom by Welch–Satterthwaite.
pub fn welch_t(
    control: &MeanSummary,
    candidate: &MeanSummary,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    for (variant, m) in [(Variant::Control, control), (Variant::Candidate, candidate)] {
        if m.n < 2 {
            return Err(StatsError::TooFewUnits {
                variant,
                n: m.n,
                need: 2,
                unit: "units",
            });
        }
        if !m.mean.is_finite() || !m.variance.is_finite() || m.variance < 0.0 {
            return Err(StatsError::BadInput(format!(
                "the {variant}'s mean {} or variance {} is not a finite number (variance >= 0): check the metric's SQL for NULLs or overflow",
                m.mean, m.variance
            )));
        }
    }
    let va = control.variance / control.n as f64;
    let vb = candidate.variance / candidate.n as f64;
    let se = (va + vb).sqrt();
    let effect = candidate.mean - control.mean;
    if se == 0.0 {
        let p = two_sided(None, effect, |_| 0.0);
        return Ok(comparison(
            TestKind::WelchT,
            control.mean,
            candidate.mean,
            None,
            None,
            p,
            0.0,
            0.0,
            alpha,
        ));
    }
    let df = (va + vb).powi(2)
        / (va.powi(2) / (control.n - 1) as f64 + vb.powi(2) / (candidate.n - 1) as f64);
    let t = effect / se;
    let p = two_sided(Some(t), effect, |x| t_sf(df, x));
    let crit = t_upper_quantile(df, alpha / 2.0);
    Ok(comparison(
        TestKind::WelchT,
        control.mean,
        candidate.mean,
        Some(t),
        Some(df),
        p,
        se,
        crit * se,
        alpha,
    ))
}

/// Above this many degrees of freedom statrs' Student's t is not accurate (its inverse CDF is
/// off by 4e-6 relative at 1e5 and 7% at 1e7, and does not return at 1e12; its survival
/// function is off by 1e-6 at 1e9), so the t tail is taken through Wallace's normalising
/// transform, whose error is O(1/df^2): below 1e-11 relative here.
const LARGE_DF: f64 = 1e6;

/// Wallace (1959): `z = sqrt(df ln(1 + t^2/df)) (8 df + 1) / (8 df + 3)` is standard normal
/// to O(1/df^2).
fn wallace_z(df: f64, t: f64) -> f64 {
    (df * (t * t / df).ln_1p()).sqrt() * (8.0 * df + 1.0) / (8.0 * df + 3.0)
}

/// `P(T > x)` for `x >= 0`.
fn t_sf(df: f64, x: f64) -> f64 {
    if df >= LARGE_DF || !df.is_finite() {
        standard_normal().sf(wallace_z(df, x))
    } else {
        student_t(df).sf(x)
    }
}

/// The `x > 0` with `P(T > x) = tail` (`tail < 0.5`).
fn t_upper_quantile(df: f64, tail: f64) -> f64 {
    let z = standard_normal().inverse_cdf(1.0 - tail);
    if df >= LARGE_DF || !df.is_finite() {
        // The exact inverse of Wallace's transform.
        let w = z * (8.0 * df + 3.0) / (8.0 * df + 1.0);
        return (df * (w * w / df).exp_m1()).sqrt();
    }
    // statrs' inverse, polished by Newton steps on its own (accurate) survival function.
    let dist = student_t(df);
    let mut x = dist.inverse_cdf(1.0 - tail);
    if !x.is_finite() || x <= 0.0 {
        x = z;
    }
    for _ in 0..50 {
        let step = (dist.sf(x) - tail) / dist.pdf(x);
        x += step;
        if step.abs() <= 1e-15 * x.abs() {
            break;
        }
    }
    x
}

/// Student's t with `df` degrees of freedom; `df` is finite and positive wherever it is
/// computed here (Welch–Satterthwaite with n >= 2 and a positive variance), and the standard
/// normal otherwise.
fn student_t(df: f64) -> StudentsT {
    StudentsT::new(0.0, 1.0, df).unwrap_or_else(|_| {
        StudentsT::new(0.0, 1.0, f64::INFINITY).expect("the standard normal as a t")
    })
}

/// A z-test of two independent estimates with the given variances (of the estimates, not of
/// the units), e.g. the delta method's.
pub fn z_compare(
    control: (f64, f64),
    candidate: (f64, f64),
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    for (variant, (est, var)) in [(Variant::Control, control), (Variant::Candidate, candidate)] {
        if !est.is_finite() || !var.is_finite() || var < 0.0 {
            return Err(StatsError::BadInput(format!(
                "the {variant}'s estimate {est} or its variance {var} is not a finite number (variance >= 0)"
            )));
        }
    }
    let se = (control.1 + candidate.1).sqrt();
    let effect = candidate.0 - control.0;
    let z = (se > 0.0).then(|| effect / se);
    let normal = standard_normal();
    let p = two_sided(z, effect, |x| normal.sf(x));
    let crit = normal.inverse_cdf(1.0 - alpha / 2.0);
    Ok(comparison(
        TestKind::Z,
        control.0,
        candidate.0,
        z,
        None,
        p,
        se,
        crit * se,
        alpha,
    ))
}
