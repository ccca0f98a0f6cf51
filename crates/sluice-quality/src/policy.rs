//! Deploy policies: how a new version of a pipeline replaces the running one (the spec's
//! `deploy:` section).
//!
//! - `recreate` (default): the old version's workers stop taking batches, then the new
//!   version's start.
//! - `rolling`: worker slots move to the new version a group at a time (`max_surge` extra,
//!   `max_unavailable` fewer), each group healthy for `healthy_batches` batches before the
//!   next.
//! - `canary`: the new version takes a share of the traffic set by `steps` (`set_weight`,
//!   `pause`, `analysis`), optionally split by a key column (`route_key`), while a background
//!   `analysis` watches the whole deployment.
//!
//! ```yaml
//! deploy:
//!   strategy: canary
//!   route_key: customer_id
//!   steps:
//!     - set_weight: 10
//!     - pause: {duration: 5m}
//!     - analysis:
//!         metrics:
//!           - name: errors
//!             count: 3
//!             success_condition: candidate.error_rate <= stable.error_rate + 0.01
//!     - set_weight: 50
//!     - pause: {}                  # until the deployment is promoted
//!   analysis:
//!     templates: [{name: latency, args: {max_ratio: 1.2}}]
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisSpec, FieldError, at_path};

/// How a new version replaces the running one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Stop the old version, then start the new one.
    #[default]
    Recreate,
    /// Move worker slots to the new version a group at a time.
    Rolling,
    /// Give the new version a growing share of the traffic, step by step.
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Recreate => "recreate",
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
        }
    }

    fn is_default(&self) -> bool {
        *self == Strategy::default()
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `pause:` in a canary's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// How long to wait; absent: until the deployment is promoted.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
}

/// One step of a canary: written as a one-key mapping (`- set_weight: 10`,
/// `- pause: {duration: 30s}`, `- pause: {}`, `- analysis: {...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepRepr", into = "StepRepr")]
pub enum Step {
    /// The share of traffic (percent, 0..=100) the new version takes from here on.
    SetWeight(u32),
    Pause(Pause),
    /// Measure; the step ends when the analysis is Successful, and the deployment aborts when
    /// it Fails (or pauses when it is Inconclusive).
    Analysis(AnalysisSpec),
}

/// The YAML shape of a step. yaml_serde reads externally tagged enums only from YAML tags, so
/// the one-key mapping is a struct of optional kinds (as the engine's checks are).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set_weight: Option<u32>,
    /// `Some(None)`: `pause:` with no value, which pauses until promoted as `pause: {}` does.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pause: Option<Option<Pause>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis: Option<AnalysisSpec>,
}

/// A field that is present, even as null.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Pause>>, D::Error> {
    Ok(Some(Option::<Pause>::deserialize(d)?))
}

impl TryFrom<StepRepr> for Step {
    type Error = String;
    fn try_from(r: StepRepr) -> Result<Step, String> {
        let mut found = Vec::new();
        if let Some(w) = r.set_weight {
            found.push(Step::SetWeight(w));
        }
        if let Some(p) = r.pause {
            found.push(Step::Pause(p.unwrap_or_default()));
        }
        if let Some(a) = r.analysis {
            found.push(Step::Analysis(a));
        }
        if found.len() > 1 {
            return Err(
                "a step does one thing: set_weight, pause or analysis; write each as its own `- ...` item".into(),
            );
        }
        found.pop().ok_or_else(|| {
            "a step is one of `set_weight: N`, `pause: {...}` or `analysis: {...}`".into()
        })
    }
}

impl From<Step> for StepRepr {
    fn from(s: Step) -> StepRepr {
        match s {
            Step::SetWeight(w) => StepRepr {
                set_weight: Some(w),
                ..StepRepr::default()
            },
            Step::Pause(p) => StepRepr {
                pause: Some(Some(p)),
                ..StepRepr::default()
            },
            Step::Analysis(a) => StepRepr {
                analysis: Some(a),
                ..StepRepr::default()
            },
        }
    }
}

/// A number of worker slots: a count (`1`) or a percentage of the pipeline's slots (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    Count(u32),
    Percent(u32),
}

impl Slots {
    /// The slots out of `total`: a percentage rounded up (`round_up`, as Kubernetes does for
    /// max surge) or down (for max unavailable).
    pub fn of(self, total: u32, round_up: bool) -> u32 {
        match self {
            Slots::Count(n) => n,
            Slots::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    fn is_zero(self) -> bool {
        matches!(self, Slots::Count(0) | Slots::Percent(0))
    }
}

impl std::fmt::Display for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slots::Count(n) => write!(f, "{n}"),
            Slots::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Slots::Count(n) => s.serialize_u32(*n),
            Slots::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slots, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Slots;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of worker slots (1) or a percentage (\"25%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Slots, E> {
                u32::try_from(v)
                    .map(Slots::Count)
                    .map_err(|_| E::custom(format!("{v} worker slots is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Slots, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} worker slots: use 0 or more")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Slots, E> {
                let t = v.trim();
                let bad = || {
                    E::custom(format!(
                        "{v:?} is not a number of worker slots (1) or a percentage (\"25%\")"
                    ))
                };
                match t.strip_suffix('%') {
                    Some(p) => p.trim().parse().map(Slots::Percent).map_err(|_| bad()),
                    None => t.parse().map(Slots::Count).map_err(|_| bad()),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The spec's `deploy:` section: the rules verify suites are judged by, and the policy of a
/// deployment. Every field has a default, and defaults are not written out, so a spec without
/// them keeps its text (and its version's hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// More WARN items than this in a suite means INVESTIGATE (default 2).
    #[serde(default = "default_max_warnings")]
    pub max_warnings: usize,
    /// `recreate` (default), `rolling` or `canary`.
    #[serde(default, skip_serializing_if = "Strategy::is_default")]
    pub strategy: Strategy,
    /// Canary only: split each batch's rows between the versions by a stable hash of this
    /// input column, instead of giving whole batches to one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key: Option<String>,
    /// Canary only: the steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Measured from the start of the deployment to its end, across steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// A deployment that makes no progress (no step done, no group healthy) for this long is
    /// aborted (default 10m).
    #[serde(
        default = "default_progress_deadline",
        with = "humantime_serde",
        skip_serializing_if = "is_default_progress_deadline"
    )]
    pub progress_deadline: Duration,
    /// Rolling: worker slots the new version may take beyond the pipeline's (default 25%).
    #[serde(
        default = "default_max_surge",
        skip_serializing_if = "is_default_max_surge"
    )]
    pub max_surge: Slots,
    /// Rolling: worker slots that may be idle during the switch (default 0).
    #[serde(
        default = "default_max_unavailable",
        skip_serializing_if = "is_default_max_unavailable"
    )]
    pub max_unavailable: Slots,
    /// Rolling: batches each new group must finish cleanly before the next (default 3).
    #[serde(
        default = "default_healthy_batches",
        skip_serializing_if = "is_default_healthy_batches"
    )]
    pub healthy_batches: u32,
    /// URLs told of the deployment's events, or asked to confirm its promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

fn default_max_warnings() -> usize {
    crate::DecisionRules::default().max_warnings
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}
fn is_default_progress_deadline(d: &Duration) -> bool {
    *d == default_progress_deadline()
}
fn default_max_surge() -> Slots {
    Slots::Percent(25)
}
fn is_default_max_surge(s: &Slots) -> bool {
    *s == default_max_surge()
}
fn default_max_unavailable() -> Slots {
    Slots::Count(0)
}
fn is_default_max_unavailable(s: &Slots) -> bool {
    *s == default_max_unavailable()
}
fn default_healthy_batches() -> u32 {
    3
}
fn is_default_healthy_batches(n: &u32) -> bool {
    *n == default_healthy_batches()
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            max_warnings: default_max_warnings(),
            strategy: Strategy::default(),
            route_key: None,
            steps: Vec::new(),
            analysis: None,
            progress_deadline: default_progress_deadline(),
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
            healthy_batches: default_healthy_batches(),
            webhooks: Vec::new(),
        }
    }
}

impl DeploySpec {
    pub fn rules(&self) -> crate::DecisionRules {
        crate::DecisionRules {
            max_warnings: self.max_warnings,
        }
    }

    /// Checks the policy. `checks` are the names of the pipeline's checks, which
    /// `check_failures.NAME` in a condition must name (`None`: not checked). Paths are
    /// relative to the `deploy:` mapping. Templates are only checked for well-formed names:
    /// they are resolved when a deployment starts.
    pub fn validate(&self, checks: Option<&[String]>) -> Result<(), FieldError> {
        if !self.steps.is_empty() && self.strategy != Strategy::Canary {
            return Err(FieldError::new(
                at_path!["steps"],
                format!(
                    "steps are for `strategy: canary`; a {} deployment takes none: remove them or set `strategy: canary`",
                    self.strategy
                ),
            ));
        }
        if let Some(key) = &self.route_key {
            if self.strategy != Strategy::Canary {
                return Err(FieldError::new(
                    at_path!["route_key"],
                    format!(
                        "route_key splits a canary's rows by key; a {} deployment has no split: set `strategy: canary` or remove it",
                        self.strategy
                    ),
                ));
            }
            if key.trim().is_empty() {
                return Err(FieldError::new(
                    at_path!["route_key"],
                    "route_key is empty: name an input column",
                ));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::SetWeight(w) if *w > 100 => {
                    return Err(FieldError::new(
                        at_path!["steps", i, "set_weight"],
                        format!("set_weight {w} is not a percentage: use 0 to 100"),
                    ));
                }
                Step::SetWeight(_) => {}
                Step::Pause(p) => {
                    if p.duration == Some(Duration::ZERO) {
                        return Err(FieldError::new(
                            at_path!["steps", i, "pause", "duration"],
                            "a pause's duration must be more than 0; write `pause: {}` to pause until promoted",
                        ));
                    }
                }
                Step::Analysis(a) => a
                    .validate(checks)
                    .map_err(|e| e.under(at_path!["steps", i, "analysis"]))?,
            }
        }
        if let Some(a) = &self.analysis {
            a.validate(checks)
                .map_err(|e| e.under(at_path!["analysis"]))?;
        }
        if self.progress_deadline < Duration::from_secs(1) {
            return Err(FieldError::new(
                at_path!["progress_deadline"],
                "progress_deadline must be at least 1s",
            ));
        }
        for (field, s) in [
            ("max_surge", self.max_surge),
            ("max_unavailable", self.max_unavailable),
        ] {
            if let Slots::Percent(p) = s
                && p > 100
            {
                return Err(FieldError::new(
                    at_path![field],
                    format!("{field} {p}% is more than 100%"),
                ));
            }
        }
        if self.strategy == Strategy::Rolling
            && self.max_surge.is_zero()
            && self.max_unavailable.is_zero()
        {
            return Err(FieldError::new(
                at_path!["max_surge"],
                "max_surge and max_unavailable are both 0: a rolling deployment could never move a slot; allow one of them",
            ));
        }
        if self.healthy_batches == 0 {
            return Err(FieldError::new(
                at_path!["healthy_batches"],
                "healthy_batches must be at least 1",
            ));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate().map_err(|e| e.under(at_path!["webhooks", i]))?;
        }
        Ok(())
    }

    /// The webhooks asked to confirm a promotion.
    pub fn confirm_hooks(&self) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().filter(|w| w.confirm_promotion)
    }
}

/// What happened to a deployment, as a webhook is told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookEvent {
    /// The deployment was created.
    Started,
    /// A canary step or a rolling group was reached.
    StepReached,
    /// An analysis failed (the deployment aborts).
    AnalysisFailed,
    /// The deployment paused: a pause step, an inconclusive analysis, a request, a deadline,
    /// or a confirm-promotion hook holding it.
    Paused,
    Promoted,
    /// The deployment ended aborted (its rows repaired).
    Aborted,
    /// A rollback ended (its rows repaired).
    RolledBack,
}

impl HookEvent {
    pub const ALL: [HookEvent; 7] = [
        HookEvent::Started,
        HookEvent::StepReached,
        HookEvent::AnalysisFailed,
        HookEvent::Paused,
        HookEvent::Promoted,
        HookEvent::Aborted,
        HookEvent::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Started => "started",
            HookEvent::StepReached => "step_reached",
            HookEvent::AnalysisFailed => "analysis_failed",
            HookEvent::Paused => "paused",
            HookEvent::Promoted => "promoted",
            HookEvent::Aborted => "aborted",
            HookEvent::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for HookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFormat {
    /// The event as a JSON object (see the README for its fields).
    #[default]
    Json,
    /// `{"text": "..."}`: what a Slack (or Mattermost, Discord `/slack`) incoming webhook takes.
    Slack,
}

impl HookFormat {
    fn is_default(&self) -> bool {
        *self == HookFormat::Json
    }
}

/// One `deploy.webhooks` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST, `http://` or `https://`.
    pub url: String,
    /// Which events to send. Absent: every event, except for a `confirm_promotion` hook,
    /// which then only confirms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<HookEvent>>,
    /// How long one request may take (default 5s, at most 60s).
    #[serde(
        default = "default_hook_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_hook_timeout"
    )]
    pub timeout: Duration,
    /// Attempts after the first before a delivery is recorded as failed (default 3); they
    /// back off from 1s, doubling, up to 30s.
    #[serde(
        default = "default_hook_retries",
        skip_serializing_if = "is_default_hook_retries"
    )]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "HookFormat::is_default")]
    pub format: HookFormat,
    /// Before promoting, the controller POSTs a confirm request here; anything but a 2xx
    /// answer holds the deployment paused, and it is asked again every tick until it says 2xx.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm_promotion: bool,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn is_default_hook_timeout(d: &Duration) -> bool {
    *d == default_hook_timeout()
}
fn default_hook_retries() -> u32 {
    3
}
fn is_default_hook_retries(n: &u32) -> bool {
    *n == default_hook_retries()
}

impl Webhook {
    /// A hook to `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Webhook {
        Webhook {
            url: url.into(),
            events: None,
            timeout: default_hook_timeout(),
            retries: default_hook_retries(),
            format: HookFormat::Json,
            confirm_promotion: false,
        }
    }

    /// Whether the hook is told of `event`.
    pub fn wants(&self, event: HookEvent) -> bool {
        match &self.events {
            Some(events) => events.contains(&event),
            None => !self.confirm_promotion,
        }
    }

    /// Checks the hook; paths are relative to it.
    pub fn validate(&self) -> Result<(), FieldError> {
        let url = self.url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => {}
            _ => {
                return Err(FieldError::new(
                    at_path!["url"],
                    format!(
                        "webhook url {:?} is not an http:// or https:// URL with a host",
                        self.url
                    ),
                ));
            }
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(
                at_path!["url"],
                format!(
                    "webhook url {:?} holds a space or control character",
                    self.url
                ),
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err(FieldError::new(
                at_path!["timeout"],
                format!(
                    "webhook timeout {} is out of range: give 100ms to 60s",
                    humantime::format_duration(self.timeout)
                ),
            ));
        }
        if self.retries > 20 {
            return Err(FieldError::new(
                at_path!["retries"],
                format!("webhook retries {} is more than 20", self.retries),
            ));
        }
        if let Some(events) = &self.events
            && events.is_empty()
            && !self.confirm_promotion
        {
            return Err(FieldError::new(
                at_path!["events"],
                "the webhook asks for no events: list some, or leave `events` out for all",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DeploySpec {
        yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn invalid(text: &str) -> FieldError {
        parse(text)
            .validate(Some(&["not_null(email)".to_string()]))
            .expect_err(text)
    }

    #[test]
    fn an_old_deploy_section_keeps_its_meaning_and_its_text() {
        let d = parse("max_warnings: 1\n");
        assert_eq!(
            d,
            DeploySpec {
                max_warnings: 1,
                ..DeploySpec::default()
            }
        );
        assert_eq!(d.strategy, Strategy::Recreate);
        assert_eq!(yaml_serde::to_string(&d).unwrap(), "max_warnings: 1\n");
        // Defaults written out explicitly are the same policy, written the same way.
        let explicit = parse(
            "max_warnings: 2\nstrategy: recreate\nprogress_deadline: 10m\nmax_surge: 25%\nmax_unavailable: 0\nhealthy_batches: 3\n",
        );
        assert_eq!(
            yaml_serde::to_string(&explicit).unwrap(),
            "max_warnings: 2\n"
        );
        assert!(d.validate(None).is_ok());
    }

    #[test]
    fn a_canary_policy_parses_and_round_trips() {
        let text = "strategy: canary\nroute_key: customer_id\nsteps:\n  - set_weight: 10\n  - pause: {duration: 30s}\n  - pause: {}\n  - pause:\n  - analysis:\n      templates: [{name: latency, args: {max: 1.5, on: true}}]\n      metrics:\n        - name: errors\n          success_condition: candidate.error_rate <= stable.error_rate\n          count: 2\n  - set_weight: 100\nanalysis:\n  args: [{name: window, value: 1m}]\n  templates: [{name: latency}]\nprogress_deadline: 30m\nmax_surge: 1\nmax_unavailable: \"10%\"\nhealthy_batches: 5\n";
        let d = parse(text);
        assert_eq!(d.strategy, Strategy::Canary);
        assert_eq!(d.steps.len(), 6);
        assert_eq!(d.steps[0], Step::SetWeight(10));
        assert_eq!(
            d.steps[1],
            Step::Pause(Pause {
                duration: Some(Duration::from_secs(30))
            })
        );
        assert_eq!(d.steps[2], Step::Pause(Pause { duration: None }));
        assert_eq!(d.steps[3], Step::Pause(Pause { duration: None }));
        let Step::Analysis(a) = &d.steps[4] else {
            panic!("{:?}", d.steps[4])
        };
        assert_eq!(a.templates[0].args["max"], "1.5");
        assert_eq!(a.templates[0].args["on"], "true");
        assert_eq!(a.metrics[0].count, Some(2));
        assert_eq!(d.max_surge, Slots::Count(1));
        assert_eq!(d.max_unavailable, Slots::Percent(10));
        assert_eq!(d.progress_deadline, Duration::from_secs(1800));
        d.validate(Some(&[])).unwrap();
        let back = parse(&yaml_serde::to_string(&d).unwrap());
        assert_eq!(back, d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DeploySpec>(&json).unwrap(), d);
    }

    #[test]
    fn a_step_is_exactly_one_known_kind() {
        for bad in [
            "steps:\n  - {}\n",
            "steps:\n  - set_wieght: 10\n",
            "steps:\n  - {set_weight: 10, pause: {}}\n",
            "steps:\n  - pause: {duration: 1s, until: x}\n",
        ] {
            assert!(
                yaml_serde::from_str::<DeploySpec>(&format!("strategy: canary\n{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn steps_and_route_key_belong_to_canaries() {
        let e = invalid("strategy: rolling\nsteps: [{set_weight: 10}]\n");
        assert_eq!(e.path, at_path!["steps"]);
        assert!(e.message.contains("rolling"), "{e}");
        assert!(e.message.contains("strategy: canary"), "{e}");
        let e = invalid("steps: [{set_weight: 10}]\n");
        assert!(e.message.contains("recreate"), "{e}");
        let e = invalid("strategy: rolling\nroute_key: id\n");
        assert_eq!(e.path, at_path!["route_key"]);
        let e = invalid("strategy: canary\nroute_key: ' '\n");
        assert_eq!(e.path, at_path!["route_key"]);
    }

    #[test]
    fn weights_pauses_and_deadlines_are_checked_where_they_are() {
        let e = invalid("strategy: canary\nsteps: [{set_weight: 10}, {set_weight: 101}]\n");
        assert_eq!(e.path, at_path!["steps", 1, "set_weight"]);
        assert!(e.message.contains("0 to 100"), "{e}");
        parse("strategy: canary\nsteps: [{set_weight: 0}, {set_weight: 100}]\n")
            .validate(None)
            .unwrap();
        let e = invalid("strategy: canary\nsteps: [{pause: {duration: 0s}}]\n");
        assert_eq!(e.path, at_path!["steps", 0, "pause", "duration"]);
        let e = invalid("progress_deadline: 500ms\n");
        assert_eq!(e.path, at_path!["progress_deadline"]);
        let e = invalid("healthy_batches: 0\n");
        assert_eq!(e.path, at_path!["healthy_batches"]);
        let e = invalid("max_surge: 150%\n");
        assert_eq!(e.path, at_path!["max_surge"]);
        let e = invalid("strategy: rolling\nmax_surge: 0\n");
        assert!(e.message.contains("both 0"), "{e}");
        parse("strategy: rolling\nmax_surge: 0\nmax_unavailable: 1\n")
            .validate(None)
            .unwrap();
        assert!(yaml_serde::from_str::<DeploySpec>("max_surge: lots\n").is_err());
        assert!(yaml_serde::from_str::<DeploySpec>("max_surge: -1\n").is_err());
    }

    #[test]
    fn analyses_are_checked_with_their_path() {
        let e = invalid(
            "strategy: canary\nsteps:\n  - set_weight: 5\n  - analysis:\n      metrics:\n        - name: p95\n          success_condition: candidate.p95_msx < 100\n",
        );
        assert_eq!(
            e.path,
            at_path!["steps", 1, "analysis", "metrics", 0, "success_condition"]
        );
        assert!(e.message.contains("p95_msx"), "{e}");
        assert_eq!(e.dotted(), "steps[1].analysis.metrics[0].success_condition");
        let e = invalid(
            "analysis:\n  metrics:\n    - name: q\n      failure_condition: check_failures.nope > 0\n",
        );
        assert_eq!(
            e.path,
            at_path!["analysis", "metrics", 0, "failure_condition"]
        );
        assert!(e.message.contains("not_null(email)"), "{e}");
        parse("analysis:\n  metrics:\n    - name: q\n      failure_condition: check_failures.\"not_null(email)\" > 0\n")
            .validate(Some(&["not_null(email)".to_string()]))
            .unwrap();
        let e = invalid("analysis: {}\n");
        assert_eq!(e.path, at_path!["analysis"]);
        let e = invalid("analysis:\n  templates: [{name: 'a b'}]\n");
        assert_eq!(e.path, at_path!["analysis", "templates", 0, "name"]);
        let e = invalid("analysis:\n  templates: [{name: t}]\n  args: [{name: x}]\n");
        assert_eq!(e.path, at_path!["analysis", "args", 0]);
        let e = invalid(
            "analysis:\n  metrics:\n    - {name: a, success_condition: batches > 0}\n    - {name: a, success_condition: batches > 1}\n",
        );
        assert_eq!(e.path, at_path!["analysis", "metrics", 1, "name"]);
        let e = invalid(
            "analysis:\n  metrics:\n    - {name: a, interval: 500ms, success_condition: batches > 0}\n",
        );
        assert_eq!(e.path, at_path!["analysis", "metrics", 0, "interval"]);
        let e = invalid("analysis:\n  metrics:\n    - {name: a}\n");
        assert_eq!(e.path, at_path!["analysis", "metrics", 0]);
    }

    #[test]
    fn slots_of_a_total_round_as_kubernetes_does() {
        assert_eq!(Slots::Percent(25).of(10, true), 3);
        assert_eq!(Slots::Percent(25).of(10, false), 2);
        assert_eq!(Slots::Percent(100).of(7, false), 7);
        assert_eq!(Slots::Count(2).of(10, true), 2);
        assert_eq!(Slots::Percent(25).of(0, true), 0);
    }

    #[test]
    fn webhooks_parse_with_defaults_and_are_checked_where_they_are() {
        let d = parse(
            "webhooks:\n  - url: http://127.0.0.1:9/hook\n  - url: https://hooks.slack.com/x\n    format: slack\n    events: [promoted, rolled_back]\n    timeout: 2s\n    retries: 1\n  - url: http://gate/confirm\n    confirm_promotion: true\n",
        );
        d.validate(None).unwrap();
        let [all, slack, gate] = &d.webhooks[..] else {
            panic!("three hooks: {d:?}")
        };
        assert!(HookEvent::ALL.iter().all(|e| all.wants(*e)));
        assert_eq!(all.timeout, Duration::from_secs(5));
        assert_eq!(all.retries, 3);
        assert_eq!(slack.format, HookFormat::Slack);
        assert!(slack.wants(HookEvent::RolledBack) && !slack.wants(HookEvent::Started));
        assert!(
            !HookEvent::ALL.iter().any(|e| gate.wants(*e)),
            "a confirm hook only confirms"
        );
        assert_eq!(d.confirm_hooks().count(), 1);
        // defaults are not written out, so the spec's text (and hash) stays as written
        let back = yaml_serde::to_string(&d).unwrap();
        assert!(
            !back.contains("timeout: 5s") && !back.contains("retries: 3"),
            "{back}"
        );
        assert_eq!(parse(&back), d);

        let e = invalid("webhooks:\n  - url: ftp://x/y\n");
        assert_eq!(e.path, at_path!["webhooks", 0, "url"]);
        let e = invalid("webhooks:\n  - url: http://a\n  - url: http://b\n    timeout: 5m\n");
        assert_eq!(e.path, at_path!["webhooks", 1, "timeout"]);
        let e = invalid("webhooks:\n  - url: http://a\n    events: []\n");
        assert_eq!(e.path, at_path!["webhooks", 0, "events"]);
        let e = yaml_serde::from_str::<DeploySpec>(
            "webhooks:\n  - url: http://a\n    events: [promotd]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("promotd") && e.contains("promoted"), "{e}");
    }
}
