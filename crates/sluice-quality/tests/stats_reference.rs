//! The A/B statistics against scipy and statsmodels on fixed data: z, t, df, p-values,
//! intervals, delta-method variances (as statsmodels' cluster-robust OLS variance), sample
//! sizes (as `NormalIndPower.solve_power`) and the sample-ratio check, to 1e-6 relative.
//!
//! Python comes from the venv `.ci/setup` makes (`SLUICE_STATS_VENV`, default
//! `~/.cache/sluice-stats-venv`, pinned by `.ci/requirements-stats.txt`). Without it this test
//! fails and says how to make it: a reference check that skips itself checks nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice_quality::stats::keys::{Estimator, KeyMean, Weighting, compare_means};
use sluice_quality::stats::plan::{Baseline, Design, Direction, Method, sample_ratio_p};
use sluice_quality::stats::{Comparison, MeanSummary, Proportion, two_proportion_z, welch_t};

fn python() -> PathBuf {
    let venv = std::env::var_os("SLUICE_STATS_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sluice-stats-venv")
        },
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: the reference venv (scipy, statsmodels) is made by `bash .ci/setup`; run it, or point SLUICE_STATS_VENV at a venv with .ci/requirements-stats.txt installed",
        python.display()
    );
    python
}

/// One case's figures from the reference, by name.
type Figures = BTreeMap<String, f64>;

/// Our side of one case: compares our figures with the reference's.
type Check = Box<dyn Fn(&Figures)>;

fn reference(cases: &[Value]) -> Vec<Figures> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats_reference.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the reference python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(cases).expect("json").as_bytes())
        .expect("writing the cases");
    let out = child.wait_with_output().expect("the reference python");
    assert!(
        out.status.success(),
        "the reference python failed (are scipy and statsmodels installed? run `bash .ci/setup`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the reference's JSON");
    assert_eq!(v["versions"]["scipy"], "1.17.1", "pinned scipy: {v}");
    assert_eq!(v["versions"]["statsmodels"], "0.15.0", "pinned statsmodels");
    serde_json::from_value(v["results"].clone()).expect("results")
}

/// Relative agreement to 1e-6 (absolute below 1e-12, for figures that are 0 in both).
#[track_caller]
fn close(what: &str, ours: f64, theirs: f64) {
    let tol = 1e-6 * theirs.abs().max(1e-6);
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: ours {ours:e}, the reference {theirs:e} (relative error {:e})",
        ((ours - theirs) / theirs).abs()
    );
}

fn check(name: &str, c: &Comparison, r: &Figures, stat: &str) {
    close(
        &format!("{name} {stat}"),
        c.statistic.expect("a statistic"),
        r[stat],
    );
    close(&format!("{name} p"), c.p_value, r["p"]);
    close(&format!("{name} ci_low"), c.ci_low, r["ci_low"]);
    close(&format!("{name} ci_high"), c.ci_high, r["ci_high"]);
    if let Some(df) = c.df {
        close(&format!("{name} df"), df, r["df"]);
    }
}

#[test]
fn proportions_welch_delta_sample_sizes_and_srm_match_scipy_and_statsmodels() {
    let mut rng = StdRng::seed_from_u64(20261202);
    let mut cases = Vec::new();
    let mut ours: Vec<Check> = Vec::new();

    // Two proportions: small, lopsided, tiny p-values, huge n, alpha other than 0.05.
    for (ca, cb, alpha) in [
        ((1000, 100), (1000, 130), 0.05),
        ((50, 3), (70, 9), 0.1),
        ((20_000, 1_000), (20_000, 1_400), 0.05),
        ((3, 1), (400, 399), 0.01),
        (
            (10_000_000_000u64, 2_000_000_000u64),
            (9_000_000_000, 1_800_090_000),
            0.05,
        ),
    ] {
        cases.push(json!({"kind": "proportions", "control": [ca.0, ca.1], "candidate": [cb.0, cb.1], "alpha": alpha}));
        let c = two_proportion_z(
            &Proportion {
                n: ca.0,
                successes: ca.1,
            },
            &Proportion {
                n: cb.0,
                successes: cb.1,
            },
            alpha,
        )
        .unwrap();
        ours.push(Box::new(move |r| check("proportions", &c, r, "z")));
    }

    // Welch: per-key values of different sizes, spreads and offsets (one with a large mean).
    for (na, nb, offset, spread, shift) in [
        (12, 9, 0.0, 1.0, 0.8),
        (200, 350, 100.0, 20.0, 2.5),
        (2, 3, 0.0, 1.0, 1.0),
        (1000, 40, 1e6, 0.5, 0.01),
    ] {
        let draw = |rng: &mut StdRng, n: usize, mu: f64, sd: f64| -> Vec<f64> {
            (0..n)
                .map(|_| mu + sd * (rng.random::<f64>() * 2.0 - 1.0) * 1.7)
                .collect()
        };
        let a = draw(&mut rng, na, offset, spread);
        let b = draw(&mut rng, nb, offset + shift, spread * 1.6);
        cases.push(json!({"kind": "welch", "control": a, "candidate": b, "alpha": 0.05}));
        let c = welch_t(
            &MeanSummary::of(a.iter().copied()),
            &MeanSummary::of(b.iter().copied()),
            0.05,
        )
        .unwrap();
        ours.push(Box::new(move |r| check("welch", &c, r, "t")));
    }

    // Welch from summaries with huge n: degrees of freedom from 1e5 to 1e12, where the t
    // distribution needs care (see LARGE_DF in stats/mod.rs).
    for (n, shift) in [
        (60_000u64, 0.01),
        (600_000, 0.004),
        (1_500_000, 0.003),
        (700_000_000, 0.0002),
        (900_000_000_000, 0.000_005),
    ] {
        let a = MeanSummary {
            n,
            mean: 10.0,
            variance: 4.0,
        };
        let b = MeanSummary {
            n: n + n / 3,
            mean: 10.0 + shift,
            variance: 5.0,
        };
        cases.push(json!({"kind": "welch_stats", "control": [a.n, a.mean, a.variance], "candidate": [b.n, b.mean, b.variance], "alpha": 0.05}));
        let c = welch_t(&a, &b, 0.05).unwrap();
        ours.push(Box::new(move |r| check("welch (summaries)", &c, r, "t")));
    }

    // The delta method: rows clustered by key, the metric a 0/1 flag and an amount.
    for (keys, max_rows, rate_metric) in [(60, 8, true), (300, 20, false), (25, 3, false)] {
        let variant = |rng: &mut StdRng, lift: f64| {
            let mut rows = Vec::new();
            let mut per_key = Vec::new();
            for k in 0..keys {
                let n = rng.random_range(1..=max_rows);
                let level: f64 = rng.random::<f64>() + lift;
                let mut key = KeyMean {
                    rows: 0,
                    sum: 0.0,
                    sum_sq: 0.0,
                };
                for _ in 0..n {
                    let v = if rate_metric {
                        f64::from(u8::from(rng.random::<f64>() < 0.2 + 0.3 * level))
                    } else {
                        50.0 * level + 10.0 * rng.random::<f64>()
                    };
                    rows.push(json!([k, v]));
                    key.rows += 1;
                    key.sum += v;
                    key.sum_sq += v * v;
                }
                per_key.push(key);
            }
            (rows, per_key)
        };
        let (rows_a, a) = variant(&mut rng, 0.0);
        let (rows_b, b) = variant(&mut rng, 0.1);
        cases.push(json!({"kind": "delta", "control": rows_a, "candidate": rows_b, "alpha": 0.05}));
        let c = compare_means(&a, &b, Weighting::Rows, 0.05).unwrap();
        assert_eq!(c.estimator, Estimator::DeltaMethod);
        ours.push(Box::new(move |r| {
            close("delta control", c.comparison.control, r["control"]);
            close("delta candidate", c.comparison.candidate, r["candidate"]);
            let var = c.comparison.se * c.comparison.se;
            close("delta variance", var, r["var_control"] + r["var_candidate"]);
            close(
                "delta design effect",
                c.design_effect.unwrap(),
                r["design_effect"],
            );
            check("delta", &c.comparison, r, "z");
        }));
    }

    // Fixed-horizon sample sizes, rates (Cohen's h) and means (mde / sd).
    for (baseline, mde, alpha, power) in [
        (Baseline::Rate(0.1), 0.02, 0.05, 0.8),
        (Baseline::Rate(0.5), 0.01, 0.01, 0.9),
        (Baseline::Rate(0.02), 0.002, 0.05, 0.8),
        (Baseline::Rate(0.3), 0.25, 0.1, 0.95),
        (Baseline::Sd(12.0), 1.0, 0.05, 0.8),
        (Baseline::Sd(1.0), 0.9, 0.2, 0.5),
    ] {
        let design = Design {
            alpha,
            power,
            mde,
            baseline,
            direction: Direction::Higher,
            method: Method::FixedHorizon,
            sample_size: None,
            candidate_share: 0.5,
        };
        cases.push(match baseline {
            Baseline::Rate(p) => json!({"kind": "sample_size", "rate": p, "mde": mde, "alpha": alpha, "power": power}),
            Baseline::Sd(sd) => json!({"kind": "sample_size", "sd": sd, "mde": mde, "alpha": alpha, "power": power}),
        });
        ours.push(Box::new(move |r| {
            let es = design.effect_size();
            close("effect size", es, r["effect_size"]);
            let n = sluice_quality::stats::plan::sample_size(es, alpha, power).unwrap();
            close("sample size", n, r["n"]);
            assert_eq!(design.required_per_variant().unwrap(), r["n"].ceil() as u64);
        }));
    }

    for (a, b, share) in [
        (5300u64, 4700u64, 0.5),
        (910, 90, 0.1),
        (1, 0, 0.5),
        (480, 520, 0.5),
    ] {
        cases.push(json!({"kind": "srm", "control": a, "candidate": b, "share": share}));
        ours.push(Box::new(move |r| {
            close("srm p", sample_ratio_p(a, b, share), r["p"])
        }));
    }

    let results = reference(&cases);
    assert_eq!(results.len(), ours.len());
    for (check, r) in ours.iter().zip(&results) {
        check(r);
    }
}
