use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn run(outcome: RunOutcome, duration_ms: u64, rows_in: u64, rows_out: u64) -> RunSample {
    RunSample {
        outcome,
        duration_ms,
        rows_in,
        rows_out,
        finished_at: 0,
        cpu_us: None,
        peak_memory_bytes: None,
    }
}

fn ok(ms: u64) -> RunSample {
    run(RunOutcome::Committed, ms, 100, 90)
}

fn check(name: &str, level: CheckLevel, considered: u64, failing: u64) -> CheckSample {
    CheckSample {
        check: name.into(),
        level,
        considered,
        failing,
    }
}

fn metric(yaml: &str) -> MetricSpec {
    yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn cond(text: &str) -> Condition {
    Condition::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    Condition::parse(text).expect_err(text)
}

// ---- measures -------------------------------------------------------------------------------

#[test]
fn measures_count_each_outcome_where_it_belongs() {
    let runs = [
        run(RunOutcome::Committed, 100, 1000, 900),
        run(RunOutcome::Committed, 300, 1000, 700),
        run(RunOutcome::AlreadyCommitted, 10, 1000, 0),
        run(RunOutcome::Failed, 5000, 1000, 0),
        run(RunOutcome::Expired, 9000, 1000, 0),
        run(RunOutcome::Quarantined, 50, 1000, 0),
    ];
    let checks = [
        check("not_null(email)", CheckLevel::Error, 1000, 10),
        check("not_null(email)", CheckLevel::Pass, 1000, 0),
        check("range(amount)", CheckLevel::Warn, 2000, 30),
    ];
    let m = Measures::of(&runs, &checks, 10_000);
    assert_eq!(m.get("batches"), Some(6.0));
    assert_eq!(m.get("error_rate"), Some(2.0 / 6.0), "failed and expired");
    assert_eq!(m.get("quarantine_rate"), Some(1.0 / 6.0));
    // Durations of successful runs only: 10, 100, 300.
    assert_eq!(m.get("p50_ms"), Some(100.0));
    assert_eq!(m.get("p95_ms"), Some(300.0));
    // Committed runs only: the already-committed run has no rows of its own.
    assert_eq!(m.get("rows_ratio"), Some(1600.0 / 2000.0));
    assert_eq!(m.get("throughput_rps"), Some(2000.0 / 10.0));
    assert_eq!(m.get("check_failures"), Some(1.0));
    assert_eq!(m.get("check_failure_rate"), Some(40.0 / 4000.0));
    assert_eq!(m.get("check_failures.not_null(email)"), Some(1.0));
    assert_eq!(m.get("check_failures.range(amount)"), Some(0.0));
    assert_eq!(m.get("check_failures.unique(id)"), None);
    assert_eq!(m.batches(), 6);
    assert_eq!(m.samples()["successful_runs"], 3);
    assert_eq!(m.samples()["committed_runs"], 2);
}

#[test]
fn what_cannot_be_measured_is_absent_not_zero() {
    let m = Measures::of(&[], &[], 10_000);
    assert_eq!(m.get("batches"), Some(0.0));
    for absent in [
        "error_rate",
        "quarantine_rate",
        "p50_ms",
        "p95_ms",
        "rows_ratio",
        "check_failure_rate",
    ] {
        assert_eq!(m.get(absent), None, "{absent}");
    }
    // Only failures: no latency, no ratio.
    let m = Measures::of(&[run(RunOutcome::Failed, 10, 5, 0)], &[], 0);
    assert_eq!(m.get("error_rate"), Some(1.0));
    assert_eq!(m.get("p95_ms"), None);
    assert_eq!(m.get("rows_ratio"), None);
    assert_eq!(m.get("throughput_rps"), None, "an empty window has no rate");
    assert!(m.why_absent("p95_ms").contains("no successful run"));
    assert!(m.why_absent("check_failures.x").contains("\"x\""));
}

/// CPU and memory are medians of the successful runs that were measured: unmeasured runs
/// (recorded before sluice measured them) are left out, not read as 0, and a window with none
/// measured has no value (so a condition on it is an error, never a pass).
#[test]
fn cpu_and_memory_are_medians_of_measured_successful_runs() {
    let used = |outcome, cpu_us: Option<u64>, bytes: Option<u64>| RunSample {
        cpu_us,
        peak_memory_bytes: bytes,
        ..run(outcome, 10, 100, 100)
    };
    let runs = [
        used(RunOutcome::Committed, Some(2_000), Some(1_000)),
        used(RunOutcome::Committed, Some(4_000), Some(3_000)),
        used(RunOutcome::AlreadyCommitted, Some(9_000), Some(9_000)),
        used(RunOutcome::Committed, None, None),
        // a failed run's cost is not the version's cost per batch
        used(RunOutcome::Failed, Some(1_000_000), Some(1 << 40)),
    ];
    let m = Measures::of(&runs, &[], 10_000);
    assert_eq!(m.get("cpu_ms"), Some(4.0));
    assert_eq!(m.get("peak_memory_bytes"), Some(3_000.0));
    assert_eq!(m.samples()["measured_cpu_runs"], 3);
    let unmeasured = Measures::of(&[ok(10), ok(20)], &[], 10_000);
    assert_eq!(unmeasured.get("cpu_ms"), None);
    assert_eq!(unmeasured.get("peak_memory_bytes"), None);
    assert!(unmeasured.why_absent("cpu_ms").contains("CPU time"));
    let metric = metric("name: cpu\nsuccess_condition: candidate.cpu_ms < 2 * stable.cpu_ms");
    let heavy = [
        used(RunOutcome::Committed, Some(30_000), Some(1)),
        used(RunOutcome::Committed, Some(31_000), Some(1)),
    ];
    let light = [
        used(RunOutcome::Committed, Some(10_000), Some(1)),
        used(RunOutcome::Committed, Some(11_000), Some(1)),
    ];
    let judged = |c: &[RunSample], s: &[RunSample]| {
        judge(
            &metric,
            &Measures::of(c, &[], 10_000),
            Some(&Measures::of(s, &[], 10_000)),
        )
        .phase
    };
    assert_eq!(judged(&heavy, &light), Phase::Failed);
    assert_eq!(judged(&light, &light), Phase::Successful);
    assert_eq!(judged(&[ok(1), ok(2)], &light), Phase::Error);
}

#[test]
fn outcomes_and_levels_parse_from_the_store_text() {
    assert_eq!("expired".parse::<RunOutcome>(), Ok(RunOutcome::Expired));
    assert_eq!(
        "already_committed".parse::<RunOutcome>(),
        Ok(RunOutcome::AlreadyCommitted)
    );
    assert!("done".parse::<RunOutcome>().is_err());
    assert_eq!("warn".parse::<CheckLevel>(), Ok(CheckLevel::Warn));
    assert!("fatal".parse::<CheckLevel>().is_err());
}

// ---- conditions -----------------------------------------------------------------------------

#[test]
fn conditions_read_both_sides_and_checks_by_name() {
    let c = cond("candidate.p95_ms < 1.2 * stable.p95_ms AND error_rate <= 0.01");
    assert!(c.needs_stable());
    assert_eq!(
        c.metrics(),
        vec![
            MetricRef {
                side: Side::Candidate,
                name: "p95_ms".into()
            },
            MetricRef {
                side: Side::Stable,
                name: "p95_ms".into()
            },
            MetricRef {
                side: Side::Candidate,
                name: "error_rate".into()
            },
        ]
    );
    assert!(!cond("p95_ms < 100").needs_stable());
    let c = cond("candidate.check_failures.not_null_email = 0");
    assert_eq!(c.metrics()[0].name, "check_failures.not_null_email");
    let c = cond(r#"stable.check_failures."not_null(email)" >= 0"#);
    assert_eq!(
        c.metrics()[0],
        MetricRef {
            side: Side::Stable,
            name: "check_failures.not_null(email)".into()
        }
    );
    // Keywords are case-insensitive, so are metric names; check names are kept as written.
    let c = cond("CANDIDATE.P95_MS < 1 and not BATCHES = 0");
    assert_eq!(c.metrics()[0].name, "p95_ms");
    let c = cond(r#"check_failures."Not_Null" > 0"#);
    assert_eq!(c.metrics()[0].name, "check_failures.Not_Null");
    for ok in [
        "-1 < batches",
        "(p50_ms + p95_ms) / 2 < 100",
        "batches <> 0",
        "batches != 0",
        "+batches >= 1e1",
        "NOT (error_rate > 0.1 OR quarantine_rate > 0.1)",
        "rows_ratio >= 0.9 * stable.rows_ratio - 0.05",
        "throughput_rps > 0 AND check_failure_rate < 0.001 AND check_failures = 0",
    ] {
        cond(ok);
    }
}

#[test]
fn unknown_metrics_and_constructs_are_refused_saying_what_is_allowed() {
    let e = parse_err("candidate.p95_msx < 100");
    assert!(e.contains("unknown metric `candidate.p95_msx`"), "{e}");
    assert!(e.contains("p95_ms"), "the list of metrics: {e}");
    let e = parse_err("canary.p95_ms < 1");
    assert!(e.contains("unknown metric"), "{e}");
    let e = parse_err("stable < 1");
    assert!(e.contains("names no metric"), "{e}");
    let e = parse_err("p95_ms");
    assert!(e.contains("not a test"), "{e}");
    let e = parse_err("p95_ms < 1 AND 2");
    assert!(e.contains("not a test"), "{e}");
    let e = parse_err("p95_ms * (batches > 1) < 3");
    assert!(e.contains("a number is expected"), "{e}");
    let e = parse_err("(p95_ms < 1) < 2");
    assert!(e.contains("a number is expected"), "{e}");
    let e = parse_err("p95_ms % 2 < 1");
    assert!(e.contains("operator `%`"), "{e}");
    let e = parse_err("abs(p95_ms) < 1");
    assert!(e.contains("not allowed"), "{e}");
    assert!(e.contains("AND, OR, NOT"), "says what is allowed: {e}");
    let e = parse_err("p95_ms < 'a'");
    assert!(e.contains("only numbers"), "{e}");
    let e = parse_err("p95_ms IS NULL");
    assert!(e.contains("not allowed"), "{e}");
    let e = parse_err("p95_ms < 1 2");
    assert!(e.contains("unexpected"), "{e}");
    let e = parse_err("p95_ms < 100; DROP TABLE t");
    assert!(e.contains("unexpected"), "{e}");
    let e = parse_err("p95_ms < ");
    assert!(e.contains("does not parse"), "{e}");
    assert!(parse_err("  ").contains("empty"));
    let e = parse_err("check_failures.a.b > 0");
    assert!(e.contains("unknown metric"), "{e}");
    let e = parse_err("p95_ms < true");
    assert!(e.contains("only numbers"), "{e}");
}

#[test]
fn hostile_conditions_are_refused_without_crashing() {
    let deep = format!("{}batches{} > 0", "(".repeat(400), ")".repeat(400));
    assert!(Condition::parse(&deep).is_err());
    let long = format!("batches > {}", "1 + ".repeat(300));
    assert!(parse_err(&long).contains("characters long"));
    // Long but under the limit: a deep left-leaning tree evaluates.
    let chain = format!("batches > 0{}", " + 0".repeat(240));
    let c = cond(&chain);
    let m = Measures::of(&[ok(1)], &[], 1000);
    assert_eq!(c.eval(&m, None), Ok(true));
}

#[test]
fn an_absent_value_is_an_error_never_a_pass() {
    let failed_only = Measures::of(&[run(RunOutcome::Failed, 10, 1, 0)], &[], 10_000);
    let e = cond("p95_ms < 100").eval(&failed_only, None).unwrap_err();
    assert!(e.contains("candidate.p95_ms could not be measured"), "{e}");
    assert!(e.contains("no successful run"), "{e}");
    // Not even where the rest of the expression would decide it.
    assert!(
        cond("batches > 0 OR p95_ms < 100")
            .eval(&failed_only, None)
            .is_err()
    );
    assert!(
        cond("batches < 0 AND p95_ms < 100")
            .eval(&failed_only, None)
            .is_err()
    );
    assert!(cond("NOT p95_ms < 100").eval(&failed_only, None).is_err());
    let e = cond("p95_ms < stable.p95_ms")
        .eval(&Measures::of(&[ok(5)], &[], 1000), None)
        .unwrap_err();
    assert!(e.contains("no stable version"), "{e}");
    let e = cond("check_failures.typo = 0")
        .eval(&failed_only, None)
        .unwrap_err();
    assert!(e.contains("typo"), "{e}");
}

#[test]
fn division_by_zero_is_an_error() {
    let m = Measures::of(&[ok(5)], &[], 1000);
    let e = cond("p95_ms / check_failures > 1")
        .eval(&m, None)
        .unwrap_err();
    assert!(e.contains("division by zero"), "{e}");
    assert!(cond("1 / 0 > 1").eval(&m, None).is_err());
    assert_eq!(cond("p95_ms / 5 = 1").eval(&m, None), Ok(true));
    // An overflow to infinity is not a number to compare either.
    assert!(cond("1e308 * 10 > 1").eval(&m, None).is_err());
}

#[test]
fn arithmetic_and_logic_evaluate_as_written() {
    let c = Measures::of(&[ok(100), ok(200)], &[], 1000);
    let s = Measures::of(&[ok(100), ok(100)], &[], 1000);
    let t = |text: &str| cond(text).eval(&c, Some(&s)).unwrap();
    assert!(t("candidate.p95_ms = 2 * stable.p95_ms"));
    assert!(t("p95_ms - stable.p95_ms = 100"));
    assert!(t("-p95_ms = -200"));
    assert!(t("1 + 2 * 3 = 7"));
    assert!(t("(1 + 2) * 3 = 9"));
    assert!(!t("p95_ms < 1.2 * stable.p95_ms"));
    assert!(t("NOT p95_ms < 1.2 * stable.p95_ms"));
    assert!(t("p95_ms > 1 AND batches = 2"));
    assert!(!t("p95_ms > 1 AND batches = 3"));
    assert!(t("p95_ms < 1 OR batches = 2"));
    assert!(t("p95_ms >= 200 AND p95_ms <= 200 AND p95_ms <> 201"));
}

// ---- metric specs ---------------------------------------------------------------------------

#[test]
fn metric_specs_default_as_argo_does_and_refuse_unknown_fields() {
    let m = metric("name: p95\nsuccess_condition: p95_ms < 100\n");
    assert_eq!(m.interval, Duration::from_secs(10));
    assert_eq!(m.window(), Duration::from_secs(10));
    assert_eq!(m.count, None);
    assert_eq!(m.initial_delay, Duration::ZERO);
    assert_eq!(m.failure_limit, 0);
    assert_eq!(m.inconclusive_limit, 0);
    assert_eq!(m.consecutive_error_limit, 4);
    assert!(!m.dry_run);
    assert_eq!(m.min_samples, 1);
    assert_eq!(
        m,
        MetricSpec {
            success_condition: Some("p95_ms < 100".into()),
            ..MetricSpec::new("p95")
        }
    );
    let m = metric("name: p95\ninterval: 1m\nsuccess_condition: p95_ms < 100\n");
    assert_eq!(
        m.window(),
        Duration::from_secs(60),
        "window follows interval"
    );
    let m = metric("name: p95\ninterval: 1m\nwindow: 5m\nsuccess_condition: p95_ms < 100\n");
    assert_eq!(m.window(), Duration::from_secs(300));
    assert!(
        yaml_serde::from_str::<MetricSpec>("name: a\nsucess_condition: batches > 0\n").is_err()
    );
    // And back: what is stored reads as the same metric.
    let m = metric("name: p95\ncount: 3\nwindow: 1m\nfailure_condition: p95_ms > 100\n");
    let text = yaml_serde::to_string(&m).unwrap();
    assert_eq!(metric(&text), m);
}

#[test]
fn metric_validation_points_at_the_field() {
    let bad = |yaml: &str| metric(yaml).validate(None).expect_err(yaml);
    assert_eq!(
        bad("name: a\nsuccess_condition: candidate.p95_msx < 100\n").path,
        at_path!["success_condition"]
    );
    assert_eq!(
        bad("name: a\nsuccess_condition: batches > 0\nfailure_condition: batches >\n").path,
        at_path!["failure_condition"]
    );
    assert_eq!(bad("name: a\n").path, at_path![]);
    assert_eq!(
        bad("name: 'a b'\nsuccess_condition: batches > 0\n").path,
        at_path!["name"]
    );
    assert_eq!(
        bad("name: a\ninterval: 999ms\nsuccess_condition: batches > 0\n").path,
        at_path!["interval"]
    );
    assert_eq!(
        bad("name: a\nwindow: 0s\nsuccess_condition: batches > 0\n").path,
        at_path!["window"]
    );
    assert_eq!(
        bad("name: a\ncount: 0\nsuccess_condition: batches > 0\n").path,
        at_path!["count"]
    );
    let m = metric("name: a\nsuccess_condition: check_failures.x = 0\n");
    assert!(m.validate(None).is_ok(), "check names unknown: not checked");
    let e = m.validate(Some(&["y".to_string()])).unwrap_err();
    assert!(e.message.contains("no check named \"x\""), "{e}");
    assert!(e.message.contains(": y"), "lists the checks: {e}");
    assert!(m.validate(Some(&["x".to_string()])).is_ok());
}

// ---- judge ----------------------------------------------------------------------------------

fn both(success: &str, failure: &str) -> MetricSpec {
    MetricSpec {
        success_condition: Some(success.into()),
        failure_condition: Some(failure.into()),
        ..MetricSpec::new("m")
    }
}

fn success_only(success: &str) -> MetricSpec {
    MetricSpec {
        success_condition: Some(success.into()),
        ..MetricSpec::new("m")
    }
}

fn failure_only(failure: &str) -> MetricSpec {
    MetricSpec {
        failure_condition: Some(failure.into()),
        ..MetricSpec::new("m")
    }
}

#[test]
fn judge_follows_argos_rules_for_the_two_conditions() {
    let m = Measures::of(&[ok(100)], &[], 10_000);
    let phase = |spec: MetricSpec| judge(&spec, &m, None).phase;
    const T: &str = "batches = 1";
    const F: &str = "batches = 2";
    assert_eq!(phase(success_only(T)), Phase::Successful);
    assert_eq!(phase(success_only(F)), Phase::Failed);
    assert_eq!(phase(failure_only(T)), Phase::Failed);
    assert_eq!(phase(failure_only(F)), Phase::Successful);
    assert_eq!(phase(both(T, F)), Phase::Successful);
    assert_eq!(phase(both(F, F)), Phase::Inconclusive);
    assert_eq!(phase(both(F, T)), Phase::Failed);
    assert_eq!(phase(both(T, T)), Phase::Failed, "failure wins");
    assert_eq!(phase(MetricSpec::new("none")), Phase::Error);
    assert_eq!(phase(success_only("p95_ms <")), Phase::Error);
}

#[test]
fn too_few_samples_are_inconclusive_even_where_nothing_fails() {
    let empty = Measures::of(&[], &[], 10_000);
    let m = judge(&failure_only("batches > 100"), &empty, None);
    assert_eq!(m.phase, Phase::Inconclusive);
    assert!(
        m.message.contains("fewer than min_samples 1"),
        "{}",
        m.message
    );
    let spec = MetricSpec {
        min_samples: 3,
        ..failure_only("error_rate > 0.5")
    };
    let two = Measures::of(&[ok(1), ok(2)], &[], 10_000);
    assert_eq!(judge(&spec, &two, None).phase, Phase::Inconclusive);
    let three = Measures::of(&[ok(1), ok(2), ok(3)], &[], 10_000);
    assert_eq!(judge(&spec, &three, None).phase, Phase::Successful);
    // min_samples 0 judges an empty window: what cannot be measured is an Error.
    let spec = MetricSpec {
        min_samples: 0,
        ..failure_only("error_rate > 0.5")
    };
    assert_eq!(judge(&spec, &empty, None).phase, Phase::Error);
}

#[test]
fn what_cannot_be_evaluated_is_an_error() {
    let c = Measures::of(&[run(RunOutcome::Failed, 1, 1, 0)], &[], 10_000);
    let m = judge(&failure_only("p95_ms > 100"), &c, None);
    assert_eq!(m.phase, Phase::Error);
    assert!(
        m.message.contains("p95_ms could not be measured"),
        "{}",
        m.message
    );
    let m = judge(
        &success_only("p95_ms < stable.p95_ms"),
        &Measures::of(&[ok(5)], &[], 10_000),
        None,
    );
    assert_eq!(m.phase, Phase::Error);
    assert!(m.message.contains("no stable version"), "{}", m.message);
    // An error in either condition, even when the other would decide.
    let m = judge(&both("batches = 1", "p95_ms > 1"), &c, None);
    assert_eq!(m.phase, Phase::Error);
}

#[test]
fn a_measurement_records_what_it_read() {
    let c = Measures::of(&[ok(120), ok(130)], &[], 60_000);
    let s = Measures::of(&[ok(100)], &[], 60_000);
    let spec = both("candidate.p95_ms < 1.2 * stable.p95_ms", "error_rate > 0.5");
    let m = judge(&spec, &c, Some(&s));
    assert_eq!(m.phase, Phase::Inconclusive, "{}", m.message);
    assert_eq!(m.value, Some(130.0));
    assert_eq!(m.stable_value, Some(100.0));
    assert_eq!(m.inputs["candidate"]["p95_ms"], 130.0);
    assert_eq!(m.inputs["candidate"]["error_rate"], 0.0);
    assert_eq!(m.inputs["stable"]["p95_ms"], 100.0);
    assert_eq!(m.inputs["window_ms"], 60_000);
    assert_eq!(m.inputs["samples"]["candidate"]["runs"], 2);
    assert_eq!(m.inputs["samples"]["stable"]["runs"], 1);
    assert_eq!(m.inputs["min_samples"], 1);
    assert!(
        m.message.contains("candidate.p95_ms = 130"),
        "{}",
        m.message
    );
    assert!(m.message.contains("stable.p95_ms = 100"), "{}", m.message);
    // Without a stable version its side is null, and the measurement says why it failed.
    let m = judge(&spec, &c, None);
    assert_eq!(m.inputs["stable"], serde_json::Value::Null);
    assert_eq!(m.stable_value, None);
    // It is stored as JSON and read back.
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"phase\":\"error\""), "{json}");
    assert_eq!(serde_json::from_str::<Measurement>(&json).unwrap(), m);
}

// ---- assess ---------------------------------------------------------------------------------

use Phase::{Error as E, Failed as F, Inconclusive as I, Successful as S};

fn limits(count: Option<u32>, failure: u32, inconclusive: u32, errors: u32) -> MetricSpec {
    MetricSpec {
        count,
        failure_limit: failure,
        inconclusive_limit: inconclusive,
        consecutive_error_limit: errors,
        ..success_only("batches > 0")
    }
}

fn failed(v: &Verdict) -> &str {
    match v {
        Verdict::Failed(r) => r,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn failures_beyond_the_limit_fail() {
    let m = limits(Some(5), 0, 0, 4);
    assert_eq!(assess(&m, &[]), Verdict::Running);
    assert_eq!(assess(&m, &[S, S]), Verdict::Running);
    let v = assess(&m, &[S, F]);
    assert!(
        failed(&v).contains("failed 1 time(s), more than failure_limit 0"),
        "{v}"
    );
    let m = limits(Some(5), 1, 0, 4);
    assert_eq!(assess(&m, &[F, S]), Verdict::Running);
    assert!(matches!(assess(&m, &[F, S, F]), Verdict::Failed(_)));
}

#[test]
fn inconclusives_beyond_the_limit_are_inconclusive() {
    let m = limits(Some(5), 0, 1, 4);
    assert_eq!(assess(&m, &[I]), Verdict::Running);
    let v = assess(&m, &[I, S, I]);
    assert!(
        matches!(&v, Verdict::Inconclusive(r) if r.contains("inconclusive 2 time(s), more than inconclusive_limit 1")),
        "{v}"
    );
}

#[test]
fn errors_fail_only_in_a_row_beyond_the_limit_and_do_not_count() {
    let m = limits(Some(2), 0, 0, 4);
    assert_eq!(assess(&m, &[E, E, E, E]), Verdict::Running);
    let v = assess(&m, &[E, E, E, E, E]);
    assert!(
        failed(&v).contains("could not be measured 5 times in a row"),
        "{v}"
    );
    // A measurement in between starts the count again.
    assert_eq!(assess(&m, &[E, E, E, E, S, E, E, E, E]), Verdict::Running);
    // Errors do not count toward `count`.
    assert_eq!(assess(&m, &[E, S]), Verdict::Running);
    assert_eq!(assess(&m, &[S, E, S]), Verdict::Successful);
    let d = assess_detail(&m, &[E, S, E, E]);
    assert_eq!((d.measured, d.errors, d.consecutive_errors), (1, 3, 2));
    let strict = limits(None, 0, 0, 0);
    assert!(matches!(assess(&strict, &[E]), Verdict::Failed(_)));
}

#[test]
fn count_completes_and_nothing_after_the_decision_changes_it() {
    let m = limits(Some(2), 0, 0, 4);
    assert_eq!(assess(&m, &[S]), Verdict::Running);
    assert_eq!(assess(&m, &[S, S]), Verdict::Successful);
    assert_eq!(assess(&m, &[S, S, F, F]), Verdict::Successful);
    let v = assess(&m, &[F, S, S]);
    assert!(matches!(v, Verdict::Failed(_)), "{v}");
    // Failures within the limit still complete at the count.
    let lenient = limits(Some(3), 2, 2, 4);
    assert_eq!(assess(&lenient, &[F, I, S]), Verdict::Successful);
    // Without a count it runs until something fails.
    let background = limits(None, 0, 0, 4);
    assert_eq!(assess(&background, &[S; 1000]), Verdict::Running);
}

#[test]
fn dry_run_metrics_report_but_never_fail() {
    let m = MetricSpec {
        dry_run: true,
        ..limits(Some(3), 0, 0, 1)
    };
    let d = assess_detail(&m, &[S, F]);
    assert_eq!(d.verdict, Verdict::Successful);
    assert!(matches!(d.would_have, Some(Verdict::Failed(_))), "{d:?}");
    let d = assess_detail(&m, &[I]);
    assert_eq!(d.verdict, Verdict::Successful);
    assert!(matches!(d.would_have, Some(Verdict::Inconclusive(_))));
    let d = assess_detail(&m, &[E, E]);
    assert_eq!(d.verdict, Verdict::Successful);
    assert!(matches!(d.would_have, Some(Verdict::Failed(ref r)) if r.contains("in a row")));
    let d = assess_detail(&m, &[S]);
    assert_eq!((d.verdict, d.would_have), (Verdict::Running, None));
    let d = assess_detail(&m, &[S, S, S]);
    assert_eq!((d.verdict, d.would_have), (Verdict::Successful, None));
}

#[test]
fn combine_takes_the_worst() {
    let f = Verdict::Failed("a".into());
    let i = Verdict::Inconclusive("b".into());
    let s = Verdict::Successful;
    let r = Verdict::Running;
    assert_eq!(combine([&s, &r, &i, &f]), Verdict::Failed("a".into()));
    assert_eq!(
        combine([&f, &Verdict::Failed("c".into())]),
        Verdict::Failed("a; c".into())
    );
    assert_eq!(combine([&s, &r, &i]), i);
    assert_eq!(combine([&s, &r]), Verdict::Running);
    assert_eq!(combine([&s, &s]), Verdict::Successful);
    assert_eq!(combine([]), Verdict::Successful);
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(json, r#"{"verdict":"failed","reason":"a"}"#);
}

// ---- templates ------------------------------------------------------------------------------

const LATENCY: &str = "args:\n  - name: max_ratio\n  - name: window\n    value: 1m\nmetrics:\n  - name: latency\n    window: \"{{args.window}}\"\n    success_condition: candidate.p95_ms < {{ args.max_ratio }} * stable.p95_ms\n";

fn store(name: &str) -> Option<String> {
    match name {
        "latency" => Some(LATENCY.into()),
        "errors" => {
            Some("metrics:\n  - name: errors\n    failure_condition: error_rate > 0.05\n".into())
        }
        _ => None,
    }
}

fn analysis(yaml: &str) -> AnalysisSpec {
    yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[test]
fn templates_resolve_with_their_arguments() {
    let a = analysis(
        "templates:\n  - name: latency\n    args: {max_ratio: 1.2}\n  - name: errors\nmetrics:\n  - name: held\n    failure_condition: quarantine_rate > 0\n",
    );
    a.validate(None).unwrap();
    let metrics = a.resolve(store, Scope::Background).unwrap();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["latency", "errors", "held"]);
    assert_eq!(
        metrics[0].success_condition.as_deref(),
        Some("candidate.p95_ms < 1.2 * stable.p95_ms")
    );
    assert_eq!(
        metrics[0].window,
        Some(Duration::from_secs(60)),
        "the default"
    );
    assert!(metrics[0].needs_stable());
    assert_eq!(metrics[0].count, None, "background: until the end");
    // In a step, a metric without a count is measured once.
    let metrics = a.resolve(store, Scope::Step).unwrap();
    assert!(metrics.iter().all(|m| m.count == Some(1)));
    // The reference's argument beats the analysis's, which beats the default.
    let a = analysis(
        "args: [{name: max_ratio, value: 2}, {name: window, value: 5m}]\ntemplates:\n  - name: latency\n    args: {window: 30s}\n",
    );
    let m = &a.resolve(store, Scope::Background).unwrap()[0];
    assert_eq!(m.window, Some(Duration::from_secs(30)));
    assert!(m.success_condition.as_deref().unwrap().contains("< 2 *"));
}

#[test]
fn template_errors_name_the_template_and_what_is_missing() {
    let e = analysis("templates: [{name: latency}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(
        e.contains("\"latency\" needs argument \"max_ratio\""),
        "{e}"
    );
    let e = analysis("templates: [{name: latency, args: {max_ratio: 1, max_ration: 2}}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(e.contains("takes no argument \"max_ration\""), "{e}");
    assert!(e.contains("max_ratio, window"), "{e}");
    let e = analysis("templates: [{name: latncy}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(e.contains("\"latncy\" is not in the store"), "{e}");
    let e = analysis("templates: [{name: errors}, {name: errors}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(e.contains("\"errors\" is defined twice"), "{e}");
    let e = analysis("templates: [{name: latency, args: {max_ratio: \"1 OR batches\"}}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(e.contains("metrics[0].success_condition"), "{e}");
    let e = analysis("templates: [{name: latency, args: {max_ratio: \"1\\nmetrics: []\"}}]")
        .resolve(store, Scope::Step)
        .unwrap_err();
    assert!(e.contains("line break"), "{e}");
}

#[test]
fn a_template_text_is_checked_as_far_as_it_can_be() {
    let t = Template::parse("latency", LATENCY).unwrap();
    assert_eq!(t.args().len(), 2);
    assert_eq!(t.args()[1].value.as_deref(), Some("1m"));
    let bad = |text: &str| Template::parse("t", text).expect_err(text);
    let e = bad("metrics:\n  - name: a\n    success_condition: p95_ms < {{args.max}}\n");
    assert!(e.contains("does not declare it"), "{e}");
    let e = bad("metrics:\n  - name: a\n    success_condition: p95_ms < {{max}}\n");
    assert!(e.contains("unknown placeholder `{{max}}`"), "{e}");
    let e = bad("metrics:\n  - name: a\n    success_condition: p95_ms < {{args.max\n");
    assert!(e.contains("without"), "{e}");
    let e = bad("templates: [{name: x}]\nmetrics: []\n");
    assert!(e.contains("names other templates"), "{e}");
    let e = bad("args: [{name: a}, {name: a}]\nmetrics: []\n");
    assert!(e.contains("twice"), "{e}");
    // With every argument defaulted, the metrics are checked now.
    let e = bad(
        "args: [{name: max, value: 3}]\nmetrics:\n  - name: a\n    success_condition: p95_msx < {{args.max}}\n",
    );
    assert!(e.contains("p95_msx"), "{e}");
    let e = bad("metrics:\n  - name: a\n    sucess_condition: batches > 0\n");
    assert!(e.contains("unknown field"), "{e}");
    let e = bad("metrics: []\n");
    assert!(e.contains("no metrics"), "{e}");
    assert!(Template::parse("a b", "metrics: []").is_err());
}

#[test]
fn template_arguments_take_scalars() {
    let r: TemplateRef =
        yaml_serde::from_str("name: t\nargs: {a: 1, b: 2.5, c: true, d: text}\n").unwrap();
    let want: BTreeMap<String, String> = [("a", "1"), ("b", "2.5"), ("c", "true"), ("d", "text")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(r.args, want);
    assert!(yaml_serde::from_str::<TemplateRef>("name: t\nargs: {a: [1]}\n").is_err());
}

// ---- properties -----------------------------------------------------------------------------

fn outcome() -> impl Strategy<Value = RunOutcome> {
    prop_oneof![
        Just(RunOutcome::Committed),
        Just(RunOutcome::AlreadyCommitted),
        Just(RunOutcome::Failed),
        Just(RunOutcome::Quarantined),
        Just(RunOutcome::Expired),
    ]
}

fn runs() -> impl Strategy<Value = Vec<RunSample>> {
    prop::collection::vec(
        (outcome(), 0u64..100_000, 0u64..10_000, 0u64..10_000)
            .prop_map(|(o, d, i, out)| run(o, d, i, out)),
        0..40,
    )
}

fn atom() -> impl Strategy<Value = String> {
    let side = prop_oneof![Just(""), Just("candidate."), Just("stable.")];
    let name = prop::sample::select(METRICS.to_vec());
    let op = prop::sample::select(vec!["<", "<=", ">", ">=", "=", "<>"]);
    (side, name, op, 0u32..2000).prop_map(|(s, n, o, k)| format!("{s}{n} {o} {}", k as f64 / 10.0))
}

fn condition_text() -> impl Strategy<Value = String> {
    atom().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) OR ({b})")),
            inner.prop_map(|a| format!("NOT ({a})")),
        ]
    })
}

proptest! {
    #[test]
    fn p95_is_never_below_p50(runs in runs()) {
        let m = Measures::of(&runs, &[], 10_000);
        match (m.get("p50_ms"), m.get("p95_ms")) {
            (Some(p50), Some(p95)) => prop_assert!(p95 >= p50),
            (None, None) => prop_assert!(!runs.iter().any(|r| matches!(r.outcome, RunOutcome::Committed | RunOutcome::AlreadyCommitted))),
            other => prop_assert!(false, "one percentile without the other: {:?}", other),
        }
        for rate in ["error_rate", "quarantine_rate"] {
            if let Some(r) = m.get(rate) {
                prop_assert!((0.0..=1.0).contains(&r));
            }
        }
    }

    #[test]
    fn a_condition_and_its_negation_never_both_pass(
        text in condition_text(),
        c in runs(),
        s in prop::option::of(runs()),
    ) {
        let candidate = Measures::of(&c, &[], 10_000);
        let stable = s.map(|s| Measures::of(&s, &[], 10_000));
        let yes = cond(&text).eval(&candidate, stable.as_ref());
        let no = cond(&format!("NOT ({text})")).eval(&candidate, stable.as_ref());
        match (yes, no) {
            (Ok(a), Ok(b)) => prop_assert_ne!(a, b),
            (Err(_), Err(_)) => {}
            other => prop_assert!(false, "one evaluated and the other not: {:?}", other),
        }
    }

    #[test]
    fn parsing_any_text_returns_rather_than_panics(text in "\\PC{0,120}") {
        let _ = Condition::parse(&text);
    }

    #[test]
    fn assess_is_monotone_once_decided(
        phases in prop::collection::vec(prop_oneof![Just(S), Just(F), Just(I), Just(E)], 0..30),
        extra in prop::collection::vec(prop_oneof![Just(S), Just(F), Just(I), Just(E)], 0..10),
        count in prop::option::of(1u32..6),
        fl in 0u32..3, il in 0u32..3, el in 0u32..3,
    ) {
        let m = limits(count, fl, il, el);
        let v = assess(&m, &phases);
        if v.is_done() {
            let mut more = phases.clone();
            more.extend(extra);
            prop_assert_eq!(assess(&m, &more), v);
        }
    }
}

// ---- prometheus metrics ---------------------------------------------------------------------

const PROM: &str = "name: errors\nprometheus:\n  address: http://127.0.0.1:9090\n  query: sum(x{version=\"{{candidate}}\"})\n";

#[test]
fn a_prometheus_metric_judges_its_result_and_only_that() {
    let m = metric(&format!("{PROM}failure_condition: result > 0.05\n"));
    m.validate(None).unwrap();
    // no batches of its own: min_samples does not hold it, the value decides
    let j = judge(&m, &Measures::single(RESULT, 0.01), None);
    assert_eq!(j.phase, Phase::Successful, "{}", j.message);
    assert_eq!(j.value, Some(0.01));
    let j = judge(&m, &Measures::single(RESULT, 0.2), None);
    assert_eq!(j.phase, Phase::Failed, "{}", j.message);
    let j = judge(&m, &Measures::single(RESULT, f64::NAN), None);
    assert_eq!(j.phase, Phase::Error, "NaN is never a pass: {}", j.message);

    let e = metric(&format!("{PROM}failure_condition: error_rate > 0.05\n"))
        .validate(None)
        .unwrap_err();
    assert_eq!(e.path, at_path!["failure_condition"]);
    assert!(e.message.contains("`result`"), "{e}");
    let e = metric(&format!("{PROM}success_condition: 1 < 2\n"))
        .validate(None)
        .unwrap_err();
    assert!(e.message.contains("does not read `result`"), "{e}");
    let e = metric("name: e\nsuccess_condition: result < 1\n")
        .validate(None)
        .unwrap_err();
    assert!(e.message.contains("prometheus"), "{e}");
    assert!(parse_err("stable.result < 1").contains("unknown metric"));
    let e = metric(&format!(
        "{}failure_condition: result > 0\n",
        PROM.replace("{{candidate}}", "{{canddate}}")
    ))
    .validate(None)
    .unwrap_err();
    assert_eq!(e.path, at_path!["prometheus", "query"]);
}

#[test]
fn a_template_keeps_version_placeholders_and_fills_its_arguments_in_a_query() {
    let t = Template::parse(
        "prom",
        "args: [{name: state}]\nmetrics:\n  - name: failed\n    interval: 1s\n    prometheus:\n      address: http://p:9090\n      query: 'sum(x{version=\"{{candidate}}\",state=\"{{args.state}}\"})'\n    failure_condition: result > 0\n",
    )
    .unwrap();
    let m = t
        .instantiate(
            &BTreeMap::new(),
            &BTreeMap::from([("state".into(), "failed".into())]),
        )
        .unwrap();
    assert_eq!(
        m[0].prometheus.as_ref().unwrap().query,
        "sum(x{version=\"{{candidate}}\",state=\"failed\"})"
    );
    // inline metrics take the analysis' arguments too
    let a: AnalysisSpec = yaml_serde::from_str(
        "args: [{name: w, value: 2m}]\nmetrics:\n  - name: e\n    prometheus: {address: 'http://p', query: 'rate(x[{{args.w}}])'}\n    failure_condition: result > 0\n",
    )
    .unwrap();
    a.validate(None).unwrap();
    let m = a.resolve(|_| None, Scope::Step).unwrap();
    assert_eq!(m[0].prometheus.as_ref().unwrap().query, "rate(x[2m])");
}
