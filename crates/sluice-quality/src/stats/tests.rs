//! Properties that try to break the statistics: degenerate inputs, symmetry, huge counts,
//! clustering that a row-level test would miss, and peeking. The numbers themselves are
//! checked against scipy and statsmodels in tests/stats_reference.rs.

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::keys::{Estimator, KeyMean, KeyRate, Weighting, compare_means, compare_rates};
use super::plan::{
    Baseline, Decision, Design, Method, decide, msprt, power, sample_ratio_p, sample_size,
};
use super::*;

fn design(method: Method) -> Design {
    Design {
        alpha: 0.05,
        power: 0.8,
        mde: 0.02,
        baseline: Baseline::Rate(0.1),
        direction: plan::Direction::Higher,
        method,
        sample_size: None,
        candidate_share: 0.5,
    }
}

fn finite(c: &Comparison) {
    for x in [c.effect, c.ci_low, c.ci_high, c.p_value, c.se] {
        assert!(x.is_finite(), "{c:?}");
    }
    assert!((0.0..=1.0).contains(&c.p_value), "{c:?}");
    assert!(c.ci_low <= c.effect && c.effect <= c.ci_high, "{c:?}");
}

#[test]
fn identical_variants_show_no_effect() {
    let p = Proportion {
        n: 5000,
        successes: 600,
    };
    let c = two_proportion_z(&p, &p, 0.05).unwrap();
    assert_eq!((c.effect, c.statistic, c.p_value), (0.0, Some(0.0), 1.0));
    assert!(c.ci_low < 0.0 && c.ci_high > 0.0);
    let m = MeanSummary {
        n: 40,
        mean: 12.5,
        variance: 4.0,
    };
    let w = welch_t(&m, &m, 0.05).unwrap();
    assert_eq!((w.effect, w.p_value), (0.0, 1.0));
    assert!((w.df.unwrap() - 78.0).abs() < 1e-9, "{w:?}");
    // At the horizon, the same data in both variants is no reason to ship.
    let keys: Vec<KeyRate> = (0..4000)
        .map(|i| KeyRate {
            rows: 1 + i % 3,
            successes: u64::from(i % 10 == 0),
        })
        .collect();
    let r = compare_rates(&keys, &keys, Weighting::Rows, 0.05).unwrap();
    assert_eq!(r.estimator, Estimator::DeltaMethod);
    let report = decide(
        &design(Method::FixedHorizon),
        [4000, 4000],
        Ok(r),
        None,
        false,
    );
    assert_eq!(report.decision, Decision::Stop, "{}", report.reason);
    assert!(report.reason.contains("no significant difference"));
}

#[test]
fn zero_variance_takes_the_limits_and_never_nan() {
    let same = MeanSummary {
        n: 10,
        mean: 3.0,
        variance: 0.0,
    };
    let w = welch_t(&same, &same, 0.05).unwrap();
    assert_eq!((w.statistic, w.df, w.p_value), (None, None, 1.0));
    let higher = MeanSummary { mean: 4.0, ..same };
    let w = welch_t(&same, &higher, 0.05).unwrap();
    assert_eq!((w.p_value, w.ci_low, w.ci_high), (0.0, 1.0, 1.0));
    // One side constant, the other not: an ordinary test with df = n - 1 of the other side.
    let spread = MeanSummary {
        variance: 2.0,
        ..higher
    };
    let w = welch_t(&same, &spread, 0.05).unwrap();
    assert!((w.df.unwrap() - 9.0).abs() < 1e-9);
    finite(&w);
    // Every key with the same ratio: the delta method has no variance either.
    let keys = vec![
        KeyMean {
            rows: 2,
            sum: 4.0,
            sum_sq: 8.0
        };
        5
    ];
    let c = compare_means(&keys, &keys, Weighting::Rows, 0.05).unwrap();
    assert_eq!(c.comparison.p_value, 1.0);
    assert_eq!(c.comparison.statistic, None);
    assert_eq!(c.design_effect, None);
}

#[test]
fn too_few_keys_keeps_testing_and_says_why() {
    let one = [KeyMean {
        rows: 3,
        sum: 3.0,
        sum_sq: 5.0,
    }];
    let many: Vec<KeyMean> = (0..10)
        .map(|i| KeyMean {
            rows: 2,
            sum: f64::from(i),
            sum_sq: f64::from(i * i),
        })
        .collect();
    for w in [Weighting::Rows, Weighting::Keys] {
        let err = compare_means(&one, &many, w, 0.05).unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::TooFewUnits {
                    variant: Variant::Control,
                    n: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let report = decide(
            &design(Method::Sequential),
            [1, 10],
            Err(err.clone()),
            None,
            false,
        );
        assert_eq!(report.decision, Decision::KeepTesting);
        assert!(
            report.reason.contains("the control has 1"),
            "{}",
            report.reason
        );
        let ended = decide(&design(Method::Sequential), [1, 10], Err(err), None, true);
        assert_eq!(ended.decision, Decision::Stop);
    }
    assert!(matches!(
        welch_t(
            &MeanSummary {
                n: 1,
                mean: 1.0,
                variance: 0.0
            },
            &MeanSummary {
                n: 5,
                mean: 1.0,
                variance: 1.0
            },
            0.05
        ),
        Err(StatsError::TooFewUnits { .. })
    ));
    let none = Proportion { n: 0, successes: 0 };
    assert!(two_proportion_z(&none, &none, 0.05).is_err());
}

#[test]
fn all_successes_and_all_failures() {
    let all = Proportion {
        n: 100,
        successes: 100,
    };
    let c = two_proportion_z(&all, &all, 0.05).unwrap();
    assert_eq!(
        (c.statistic, c.p_value, c.ci_low, c.ci_high),
        (None, 1.0, 0.0, 0.0)
    );
    let none = Proportion {
        n: 100,
        successes: 0,
    };
    let c = two_proportion_z(&none, &all, 0.05).unwrap();
    finite(&c);
    assert_eq!(c.effect, 1.0);
    assert!(c.p_value < 1e-40, "{c:?}");
    let c = two_proportion_z(&none, &none, 0.05).unwrap();
    assert_eq!((c.p_value, c.relative_effect), (1.0, None));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let bad = [KeyRate {
        rows: 2,
        successes: 3,
    }];
    let ok = [KeyRate {
        rows: 2,
        successes: 1,
    }; 3];
    let err = compare_rates(&bad, &ok, Weighting::Rows, 0.05).unwrap_err();
    assert!(err.to_string().contains("3 successes in 2 rows"), "{err}");
    let nan = [KeyMean {
        rows: 1,
        sum: f64::NAN,
        sum_sq: 1.0,
    }; 3];
    let fine = [KeyMean {
        rows: 1,
        sum: 1.0,
        sum_sq: 1.0,
    }; 3];
    assert!(matches!(
        compare_means(&fine, &nan, Weighting::Rows, 0.05),
        Err(StatsError::BadInput(_))
    ));
    for alpha in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(
            two_proportion_z(
                &Proportion { n: 5, successes: 1 },
                &Proportion { n: 5, successes: 1 },
                alpha
            )
            .is_err()
        );
    }
    let mut d = design(Method::FixedHorizon);
    d.power = 0.04;
    assert!(d.validate().unwrap_err().to_string().contains("power"));
    d.power = 0.8;
    d.baseline = Baseline::Rate(0.99);
    assert!(d.validate().unwrap_err().to_string().contains("at most 1"));
    let report = decide(
        &d,
        [10, 10],
        Err(StatsError::BadInput("x".into())),
        None,
        false,
    );
    assert_eq!(report.decision, Decision::Stop);
    assert!(
        report.reason.contains("design is invalid"),
        "{}",
        report.reason
    );
}

#[test]
fn clustered_keys_widen_the_interval_a_row_test_would_not() {
    // Each key's outcome is all-or-nothing over 10 rows: a row-level test would count 10x the
    // evidence. The delta method's variance is that of the 1-row keys; the design effect is ~10.
    let keys = |n: u64, hits: u64, rows: u64| -> Vec<KeyRate> {
        (0..n)
            .map(|i| KeyRate {
                rows,
                successes: if i < hits { rows } else { 0 },
            })
            .collect()
    };
    let single =
        compare_rates(&keys(500, 50, 1), &keys(500, 65, 1), Weighting::Rows, 0.05).unwrap();
    let clustered = compare_rates(
        &keys(500, 50, 10),
        &keys(500, 65, 10),
        Weighting::Rows,
        0.05,
    )
    .unwrap();
    assert_eq!(single.estimator, Estimator::OneRowPerKey);
    assert_eq!(clustered.estimator, Estimator::DeltaMethod);
    assert_eq!(clustered.rows, [5000, 5000]);
    let deff = clustered.design_effect.unwrap();
    assert!((9.0..11.0).contains(&deff), "design effect {deff}");
    let (a, b) = (&single.comparison, &clustered.comparison);
    assert!((a.effect - b.effect).abs() < 1e-12);
    assert!((b.se / a.se - 1.0).abs() < 0.01, "{} vs {}", b.se, a.se);
    assert!(
        b.p_value > 0.05,
        "clustering must not make 15 keys significant: {b:?}"
    );
    // Counted as 10,000 independent rows the same data would look significant.
    let rows = two_proportion_z(
        &Proportion {
            n: 5000,
            successes: 500,
        },
        &Proportion {
            n: 5000,
            successes: 650,
        },
        0.05,
    )
    .unwrap();
    assert!(rows.p_value < 0.001, "{rows:?}");
}

#[test]
fn key_weighting_counts_each_key_once() {
    // One heavy key dominates the ratio of sums but not the mean of key means.
    let mut control: Vec<KeyMean> = (0..50)
        .map(|i| KeyMean {
            rows: 1,
            sum: 10.0 + f64::from(i % 5),
            sum_sq: (10.0 + f64::from(i % 5)).powi(2),
        })
        .collect();
    let candidate = control.clone();
    control.push(KeyMean {
        rows: 1000,
        sum: 100_000.0,
        sum_sq: 1e7,
    });
    let rows = compare_means(&control, &candidate, Weighting::Rows, 0.05).unwrap();
    let keys = compare_means(&control, &candidate, Weighting::Keys, 0.05).unwrap();
    assert_eq!(keys.estimator, Estimator::KeyMean);
    assert!(rows.comparison.control > 90.0, "{rows:?}");
    assert!(keys.comparison.control < 15.0, "{keys:?}");
    assert_eq!(keys.comparison.test, TestKind::WelchT);
}

#[test]
fn sample_size_reaches_its_power_and_grows_as_the_effect_shrinks() {
    let mut last = 0.0;
    for mde in [0.05, 0.02, 0.01, 0.005, 0.001] {
        let d = Design {
            mde,
            ..design(Method::FixedHorizon)
        };
        let n = sample_size(d.effect_size(), 0.05, 0.8).unwrap();
        assert!(n > last, "{mde}: {n} <= {last}");
        assert!((power(d.effect_size(), n, 0.05) - 0.8).abs() < 1e-12);
        last = n;
    }
    assert!(sample_size(0.0, 0.05, 0.8).is_err());
    assert!(sample_size(0.1, 0.05, 0.05).is_err());
    // Huge samples for tiny effects stay finite and exact.
    let n = sample_size(1e-6, 0.05, 0.9).unwrap();
    assert!(n.is_finite() && n > 1e12, "{n}");
}

#[test]
fn fixed_horizon_waits_and_is_not_fooled_by_an_early_p_value() {
    let d = design(Method::FixedHorizon);
    let required = d.required_per_variant().unwrap();
    assert!(required > 3000, "{required}");
    let early = two_proportion_z(
        &Proportion {
            n: 500,
            successes: 40,
        },
        &Proportion {
            n: 500,
            successes: 80,
        },
        0.05,
    )
    .unwrap();
    assert!(early.p_value < 0.001);
    let wrap = |c: Comparison| keys::KeyComparison {
        comparison: c,
        estimator: Estimator::OneRowPerKey,
        keys: [500, 500],
        rows: [500, 500],
        design_effect: Some(1.0),
    };
    let r = decide(&d, [500, 500], Ok(wrap(early.clone())), None, false);
    assert_eq!(r.decision, Decision::KeepTesting);
    assert!(
        r.reason.contains(&format!("500 of {required}")),
        "{}",
        r.reason
    );
    let r = decide(&d, [500, 500], Ok(wrap(early.clone())), None, true);
    assert_eq!(r.decision, Decision::Stop);
    assert!(r.reason.contains("underpowered"), "{}", r.reason);
    let n = required;
    let r = decide(&d, [n, n], Ok(wrap(early.clone())), None, false);
    assert_eq!(r.decision, Decision::Ship, "{}", r.reason);
    let lower = Design {
        direction: plan::Direction::Lower,
        ..d
    };
    let r = decide(&lower, [n, n], Ok(wrap(early)), None, false);
    assert_eq!(r.decision, Decision::Stop);
    assert!(r.reason.contains("significantly worse"), "{}", r.reason);
}

#[test]
fn sample_ratio_mismatch_stops_the_test() {
    assert!((sample_ratio_p(500, 500, 0.5) - 1.0).abs() < 1e-12);
    assert!(sample_ratio_p(900, 100, 0.1) > 0.99);
    let p = sample_ratio_p(5300, 4700, 0.5);
    assert!(p < 1e-8, "{p}");
    let r = decide(
        &design(Method::Sequential),
        [5300, 4700],
        Err(StatsError::BadInput("unused".into())),
        None,
        false,
    );
    assert_eq!(r.decision, Decision::Stop);
    assert!(r.reason.contains("sample ratio mismatch"), "{}", r.reason);
}

#[test]
fn msprt_p_value_never_rises_and_its_interval_is_wider() {
    let first = msprt(0.02, 1e-4, 4e-4, 0.05, None);
    let second = msprt(0.0, 1e-4, 4e-4, 0.05, Some(first.p_value));
    assert_eq!(second.p_value, first.p_value);
    let z = two_proportion_z(
        &Proportion {
            n: 4000,
            successes: 400,
        },
        &Proportion {
            n: 4000,
            successes: 470,
        },
        0.05,
    )
    .unwrap();
    let av = msprt(z.effect, z.se * z.se, 4e-4, 0.05, None);
    assert!(av.p_value >= z.p_value, "{av:?} vs {z:?}");
    assert!(av.ci_low < z.ci_low && av.ci_high > z.ci_high);
    // The always-valid interval excludes 0 exactly when its p-value is below alpha.
    assert_eq!(av.p_value < 0.05, av.ci_low > 0.0 || av.ci_high < 0.0);
    assert_eq!(msprt(0.0, 0.0, 1e-4, 0.05, None).p_value, 1.0);
    assert_eq!(msprt(0.1, 0.0, 1e-4, 0.05, None).p_value, 0.0);
}

/// A/A tests (no effect) looked at every interval: acting on the fixed-horizon p-value at every
/// look ships far more often than alpha; the mSPRT stays under alpha.
#[test]
fn peeking_at_every_interval_keeps_msprt_false_positives_under_alpha() {
    let mut rng = StdRng::seed_from_u64(12);
    let (experiments, looks, per_look) = (400, 30, 100u64);
    let (mut naive_hits, mut msprt_hits) = (0, 0);
    for _ in 0..experiments {
        let (mut a, mut b) = (
            Proportion { n: 0, successes: 0 },
            Proportion { n: 0, successes: 0 },
        );
        let (mut naive, mut seq, mut prev) = (false, false, None);
        for _ in 0..looks {
            for p in [&mut a, &mut b] {
                p.n += per_look;
                p.successes += (0..per_look).filter(|_| rng.random_bool(0.2)).count() as u64;
            }
            let c = two_proportion_z(&a, &b, 0.05).unwrap();
            naive |= c.p_value < 0.05;
            let av = msprt(c.effect, c.se * c.se, 0.02f64.powi(2), 0.05, prev);
            prev = Some(av.p_value);
            seq |= av.p_value < 0.05;
        }
        naive_hits += usize::from(naive);
        msprt_hits += usize::from(seq);
    }
    let (naive_rate, msprt_rate) = (
        naive_hits as f64 / experiments as f64,
        msprt_hits as f64 / experiments as f64,
    );
    eprintln!("A/A with peeking: fixed-horizon p ships {naive_rate}, mSPRT {msprt_rate}");
    assert!(naive_rate > 0.12, "peeking should inflate: {naive_rate}");
    assert!(msprt_rate <= 0.05, "mSPRT false-positive rate {msprt_rate}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn proportions_are_finite_and_symmetric(
        na in 1u64..2_000_000_000_000, nb in 1u64..2_000_000_000_000,
        fa in 0.0f64..=1.0, fb in 0.0f64..=1.0, alpha in 0.001f64..0.5,
    ) {
        let a = Proportion { n: na, successes: (na as f64 * fa) as u64 };
        let b = Proportion { n: nb, successes: (nb as f64 * fb) as u64 };
        let ab = two_proportion_z(&a, &b, alpha).unwrap();
        let ba = two_proportion_z(&b, &a, alpha).unwrap();
        finite(&ab);
        prop_assert!((ab.effect + ba.effect).abs() < 1e-12);
        prop_assert!((ab.p_value - ba.p_value).abs() <= 1e-12 * ab.p_value.max(1e-300));
        prop_assert_eq!(ab.significant(), ab.p_value < alpha);
    }

    #[test]
    fn welch_is_finite_and_symmetric(
        na in 2u64..1_000_000_000_000, nb in 2u64..1_000_000_000_000,
        ma in -1e9f64..1e9, mb in -1e9f64..1e9, va in 0.0f64..1e12, vb in 0.0f64..1e12,
    ) {
        let a = MeanSummary { n: na, mean: ma, variance: va };
        let b = MeanSummary { n: nb, mean: mb, variance: vb };
        let ab = welch_t(&a, &b, 0.05).unwrap();
        let ba = welch_t(&b, &a, 0.05).unwrap();
        finite(&ab);
        if let Some(df) = ab.df {
            prop_assert!(df >= (na.min(nb) - 1) as f64 * (1.0 - 1e-9));
            prop_assert!(df <= (na + nb - 2) as f64 * (1.0 + 1e-9));
        }
        prop_assert!((ab.p_value - ba.p_value).abs() <= 1e-9);
        // The interval excludes 0 exactly when the test rejects (same statistic, same df).
        if ab.statistic.is_some() && (ab.p_value - 0.05).abs() > 1e-9 {
            prop_assert_eq!(ab.significant(), ab.ci_low > 0.0 || ab.ci_high < 0.0);
        }
    }

    #[test]
    fn per_key_comparisons_never_panic(
        a in prop::collection::vec((0u64..50, 0.0f64..=1.0), 0..40),
        b in prop::collection::vec((0u64..50, 0.0f64..=1.0), 0..40),
        keys_weighting in any::<bool>(),
    ) {
        let rates = |v: &[(u64, f64)]| v.iter().map(|&(rows, f)| KeyRate { rows, successes: (rows as f64 * f) as u64 }).collect::<Vec<_>>();
        let w = if keys_weighting { Weighting::Keys } else { Weighting::Rows };
        match compare_rates(&rates(&a), &rates(&b), w, 0.05) {
            Ok(c) => {
                finite(&c.comparison);
                prop_assert!((0.0..=1.0).contains(&c.comparison.control));
                if let Some(deff) = c.design_effect { prop_assert!(deff.is_finite() && deff >= 0.0); }
                let r = decide(&design(Method::Sequential), c.keys, Ok(c), None, false);
                prop_assert!(!r.reason.is_empty());
            }
            Err(e) => prop_assert!(matches!(e, StatsError::TooFewUnits { .. }), "{e:?}"),
        }
    }
}
