//! When an A/B test may be read, and what it says: ship, stop or keep testing.
//!
//! Two designs, chosen in the spec:
//!
//! - [`Method::FixedHorizon`]: the sample size per variant comes first, from the minimum
//!   detectable effect, alpha, power and the baseline ([`sample_size`]), and the test is read
//!   once, when both variants have reached it. Until then the report says keep testing and does
//!   not act on the p-value: acting on a fixed-horizon p-value at every look inflates false
//!   positives far above alpha.
//! - [`Method::Sequential`]: the mixture sequential probability ratio test (mSPRT) of Johari,
//!   Pekelis & Walsh ("Always Valid Inference", 2017/2022) with a normal mixture of variance
//!   `tau^2 = mde^2` over the effect. Its p-value and interval are valid at every look, however
//!   often the controller reads them, so the test may stop as soon as the evidence is there.
//!
//! Either way a sample-ratio check runs first: keys not split as the weight says (a routing
//! bug, or one variant dropping keys) make any effect untrustworthy, and the test stops.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::keys::KeyComparison;
use super::{StatsError, check_alpha, standard_normal};

/// Which way of the metric is good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Higher,
    Lower,
}

/// How the test is read; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    FixedHorizon,
    Sequential,
}

/// What the metric looked like before the test, for the sample size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// A rate metric's control rate (0..1).
    Rate(f64),
    /// A mean metric's standard deviation per unit (per route key).
    Sd(f64),
}

/// The test's design, as the spec states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Design {
    pub alpha: f64,
    pub power: f64,
    /// The minimum detectable effect, absolute, in the metric's unit (0.01 = one point of a
    /// rate); the effect the test is sized to find with `power`.
    pub mde: f64,
    pub baseline: Baseline,
    pub direction: Direction,
    pub method: Method,
    /// Overrides the computed sample size per variant.
    pub sample_size: Option<u64>,
    /// The candidate's expected share of keys (0..1), for the sample-ratio check.
    pub candidate_share: f64,
}

/// Below this p-value the split of keys is taken to be broken (the threshold of Fabijan et
/// al., "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD 2019).
pub const SRM_ALPHA: f64 = 0.001;

impl Design {
    pub fn validate(&self) -> Result<(), StatsError> {
        check_alpha(self.alpha)?;
        let range = |what, range, value: f64, ok: bool| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(StatsError::OutOfRange { what, range, value })
            }
        };
        range(
            "power",
            "above alpha and below 1 (e.g. 0.8)",
            self.power,
            self.power > self.alpha && self.power < 1.0,
        )?;
        range(
            "the minimum detectable effect",
            "a positive number in the metric's unit",
            self.mde,
            self.mde > 0.0,
        )?;
        range(
            "candidate_share",
            "between 0 and 1",
            self.candidate_share,
            self.candidate_share > 0.0 && self.candidate_share < 1.0,
        )?;
        match self.baseline {
            Baseline::Rate(p) => {
                range("baseline_rate", "between 0 and 1", p, p > 0.0 && p < 1.0)?;
                let target = p + self.mde;
                range(
                    "baseline_rate + minimum detectable effect",
                    "at most 1 (lower the effect)",
                    target,
                    target <= 1.0,
                )?;
            }
            Baseline::Sd(sd) => range("baseline_sd", "a positive number", sd, sd > 0.0)?,
        }
        Ok(())
    }

    /// The standardised effect the test is sized for: Cohen's h for a rate (the arcsine
    /// transform, statsmodels' `proportion_effectsize`), `mde / sd` for a mean.
    pub fn effect_size(&self) -> f64 {
        match self.baseline {
            Baseline::Rate(p) => (2.0 * (p + self.mde).sqrt().asin() - 2.0 * p.sqrt().asin()).abs(),
            Baseline::Sd(sd) => self.mde / sd,
        }
    }

    /// Units (route keys) per variant for the fixed horizon.
    pub fn required_per_variant(&self) -> Result<u64, StatsError> {
        if let Some(n) = self.sample_size {
            return Ok(n);
        }
        self.validate()?;
        Ok(sample_size(self.effect_size(), self.alpha, self.power)?.ceil() as u64)
    }
}

/// The power of a two-sided two-sample z-test with `n` units per variant (equal split) for a
/// standardised effect `d`: both rejection tails, as statsmodels' `NormalIndPower`.
pub fn power(d: f64, n: f64, alpha: f64) -> f64 {
    let normal = standard_normal();
    let crit = normal.inverse_cdf(1.0 - alpha / 2.0);
    let shift = d * (n / 2.0).sqrt();
    normal.sf(crit - shift) + normal.cdf(-crit - shift)
}

/// The units per variant (continuous; round up) at which a two-sided two-sample z-test
/// reaches `target` power for a standardised effect `d`: the root of [`power`], as
/// statsmodels' `NormalIndPower().solve_power(effect_size=d, alpha=alpha, power=target)`.
pub fn sample_size(d: f64, alpha: f64, target: f64) -> Result<f64, StatsError> {
    check_alpha(alpha)?;
    if !(d.is_finite() && d > 0.0) {
        return Err(StatsError::OutOfRange {
            what: "the standardised effect",
            range: "a positive number",
            value: d,
        });
    }
    if !(target > alpha && target < 1.0) {
        return Err(StatsError::OutOfRange {
            what: "power",
            range: "above alpha and below 1 (e.g. 0.8)",
            value: target,
        });
    }
    let normal = standard_normal();
    // One tail alone needs this many; the other tail only adds power, so the root is below.
    let z = normal.inverse_cdf(1.0 - alpha / 2.0) + normal.inverse_cdf(target);
    let (mut lo, mut hi) = (0.0f64, 2.0 * (z / d).powi(2));
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if power(d, mid, alpha) < target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= hi * 1e-15 {
            break;
        }
    }
    Ok(hi)
}

/// An always-valid p-value and interval (mSPRT, normal mixture with variance `tau2`) for an
/// effect estimate `effect` whose variance is `variance`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlwaysValid {
    pub p_value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// mSPRT at one look. `previous_p` is the always-valid p-value of the look before (the
/// p-value is the running minimum of `1 / Lambda`, so it never rises).
pub fn msprt(
    effect: f64,
    variance: f64,
    tau2: f64,
    alpha: f64,
    previous_p: Option<f64>,
) -> AlwaysValid {
    if variance <= 0.0 {
        // No variance: the evidence is either total or none.
        let p = if effect == 0.0 { 1.0 } else { 0.0 };
        let p = previous_p.map_or(p, |q| q.min(p));
        return AlwaysValid {
            p_value: p,
            ci_low: effect,
            ci_high: effect,
        };
    }
    let sum = variance + tau2;
    // ln Lambda = 0.5 ln(V / (V + tau2)) + tau2 effect^2 / (2 V (V + tau2))
    let ln_lambda = 0.5 * (variance / sum).ln() + tau2 * effect * effect / (2.0 * variance * sum);
    let p = (-ln_lambda).exp().min(1.0);
    let p = previous_p.map_or(p, |q| q.min(p));
    let half = (variance * sum / tau2 * (-2.0 * alpha.ln() - (variance / sum).ln())).sqrt();
    AlwaysValid {
        p_value: p,
        ci_low: effect - half,
        ci_high: effect + half,
    }
}

/// The sample-ratio check: a chi-squared goodness-of-fit test (1 df) of the key counts
/// against the expected split, as scipy's `chisquare`. Returns the p-value.
pub fn sample_ratio_p(control: u64, candidate: u64, candidate_share: f64) -> f64 {
    let total = (control + candidate) as f64;
    if total == 0.0 {
        return 1.0;
    }
    let (ea, eb) = (total * (1.0 - candidate_share), total * candidate_share);
    let chi2 = (control as f64 - ea).powi(2) / ea + (candidate as f64 - eb).powi(2) / eb;
    ChiSquared::new(1.0).map_or(1.0, |d| d.sf(chi2))
}

/// What to do with the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The candidate is better on the metric: promote it.
    Ship,
    /// The candidate is worse, not shown better by the end, or the split is broken: roll back.
    Stop,
    /// Not enough evidence yet.
    KeepTesting,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Ship => "ship",
            Decision::Stop => "stop",
            Decision::KeepTesting => "keep testing",
        })
    }
}

/// One look at an A/B test: the decision, why, and every number it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub decision: Decision,
    pub reason: String,
    pub method: Method,
    pub keys: [u64; 2],
    pub required_per_variant: Option<u64>,
    pub sample_ratio_p: f64,
    pub comparison: Option<KeyComparison>,
    /// Sequential method only.
    pub always_valid: Option<AlwaysValid>,
}

/// Decides at one look. `keys` are the route keys seen per variant (control, candidate);
/// `result` is the comparison of the metric (or why there is none yet); `previous` is the
/// report of the look before (for the sequential p-value's running minimum); `ended` says the
/// test's duration is over (the candidate cannot have more time).
/// Significance is judged at the design's alpha, whatever alpha the comparison's interval used.
pub fn decide(
    design: &Design,
    keys: [u64; 2],
    result: Result<KeyComparison, StatsError>,
    previous: Option<&Report>,
    ended: bool,
) -> Report {
    let srm = sample_ratio_p(keys[0], keys[1], design.candidate_share);
    let required = design.required_per_variant();
    let mut report = Report {
        decision: Decision::KeepTesting,
        reason: String::new(),
        method: design.method,
        keys,
        required_per_variant: required.as_ref().ok().copied(),
        sample_ratio_p: srm,
        comparison: None,
        always_valid: None,
    };
    let stop_or_wait = |why: String| {
        if ended {
            (Decision::Stop, format!("{why}, and the test has ended"))
        } else {
            (Decision::KeepTesting, why)
        }
    };
    let required = match required {
        Ok(n) => n,
        Err(e) => {
            report.decision = Decision::Stop;
            report.reason = format!("the test's design is invalid: {e}");
            return report;
        }
    };
    if srm < SRM_ALPHA {
        report.decision = Decision::Stop;
        report.reason = format!(
            "sample ratio mismatch: {} control and {} candidate keys for an expected candidate share of {:.0}% (chi-squared p = {srm:.2e} < {SRM_ALPHA}); the split is broken and no effect can be trusted",
            keys[0],
            keys[1],
            design.candidate_share * 100.0
        );
        return report;
    }
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            (report.decision, report.reason) = stop_or_wait(format!("no comparison yet: {e}"));
            return report;
        }
    };
    let better = |effect: f64| match design.direction {
        Direction::Higher => effect > 0.0,
        Direction::Lower => effect < 0.0,
    };
    let effect = &c.comparison;
    let summary =
        format!(
            "effect {:+.6} ({}) with {:.0}% CI [{:.6}, {:.6}]",
            effect.effect,
            effect.relative_effect.map_or(
                "no relative effect: control is 0".to_string(),
                |r| format!("{:+.2}%", r * 100.0)
            ),
            (1.0 - design.alpha) * 100.0,
            effect.ci_low,
            effect.ci_high
        );
    match design.method {
        Method::FixedHorizon => {
            let seen = keys[0].min(keys[1]);
            if seen < required {
                (report.decision, report.reason) = stop_or_wait(format!(
                    "{seen} of {required} keys per variant for the fixed horizon; the p-value is not read before then"
                ));
                if ended {
                    report.reason.push_str(" (underpowered)");
                }
            } else if effect.p_value < design.alpha {
                let verdict = if better(effect.effect) {
                    Decision::Ship
                } else {
                    Decision::Stop
                };
                report.decision = verdict;
                report.reason = format!(
                    "the candidate is significantly {} at the horizon: {summary}, p = {:.3e} < {}",
                    if verdict == Decision::Ship {
                        "better"
                    } else {
                        "worse"
                    },
                    effect.p_value,
                    design.alpha
                );
            } else {
                report.decision = Decision::Stop;
                report.reason = format!(
                    "no significant difference at the horizon of {required} keys per variant: {summary}, p = {:.3} >= {}; the candidate is not shown better",
                    effect.p_value, design.alpha
                );
            }
        }
        Method::Sequential => {
            let av = msprt(
                effect.effect,
                effect.se * effect.se,
                design.mde * design.mde,
                design.alpha,
                previous.and_then(|r| r.always_valid.map(|a| a.p_value)),
            );
            report.always_valid = Some(av);
            if av.p_value < design.alpha {
                let ship = better(effect.effect);
                report.decision = if ship { Decision::Ship } else { Decision::Stop };
                report.reason = format!(
                    "the candidate is significantly {} (always-valid p = {:.3e} < {}, CI [{:.6}, {:.6}]): {summary}",
                    if ship { "better" } else { "worse" },
                    av.p_value,
                    design.alpha,
                    av.ci_low,
                    av.ci_high
                );
            } else {
                (report.decision, report.reason) = stop_or_wait(format!(
                    "no significant difference yet (always-valid p = {:.3} >= {}): {summary}",
                    av.p_value, design.alpha
                ));
            }
        }
    }
    report.comparison = Some(c);
    report
}
