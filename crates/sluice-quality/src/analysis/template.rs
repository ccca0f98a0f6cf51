//! Analysis templates: named, stored analyses with `{{args.NAME}}` placeholders, so one set of
//! metrics serves many pipelines (Argo's AnalysisTemplate).
//!
//! ```yaml
//! args:
//!   - name: max_p95_ms
//!   - name: window
//!     value: 1m
//! metrics:
//!   - name: latency
//!     window: "{{args.window}}"
//!     success_condition: candidate.p95_ms < {{args.max_p95_ms}}
//! ```
//!
//! Placeholders are replaced in the text before it is read, so an argument may stand for any
//! scalar (a number, a duration, part of a condition).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{AnalysisSpec, Arg, MetricSpec, valid_name};

/// A parsed template: its text and the arguments it declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    name: String,
    text: String,
    args: Vec<Arg>,
}

/// What a template's text must declare, read before its placeholders have values.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default)]
    templates: Vec<serde::de::IgnoredAny>,
}

impl Template {
    /// Parses a template's text: YAML of an analysis (`args`, `metrics`), every placeholder
    /// `{{args.NAME}}` naming a declared argument. When every argument has a default the
    /// metrics are checked in full; otherwise that happens when a deployment instantiates it.
    pub fn parse(name: &str, text: &str) -> Result<Template, String> {
        if !valid_name(name) {
            return Err(format!(
                "analysis template name {name:?} is not valid: use letters, digits, '_', '-' and '.'"
            ));
        }
        let used = placeholders(text).map_err(|e| format!("analysis template {name:?}: {e}"))?;
        let neutral = substitute(text, &|_| Some("0".into()))
            .map_err(|e| format!("analysis template {name:?}: {e}"))?;
        let head: Head = yaml_serde::from_str(&neutral).map_err(|e| {
            format!("analysis template {name:?} is not valid YAML of an analysis: {e}")
        })?;
        if !head.templates.is_empty() {
            return Err(format!(
                "analysis template {name:?} names other templates: a template holds metrics only"
            ));
        }
        let mut declared = BTreeSet::new();
        for a in &head.args {
            if !valid_name(&a.name) {
                return Err(format!(
                    "analysis template {name:?}: argument name {:?} is not valid: use letters, digits, '_', '-' and '.'",
                    a.name
                ));
            }
            if !declared.insert(a.name.as_str()) {
                return Err(format!(
                    "analysis template {name:?} declares argument {:?} twice",
                    a.name
                ));
            }
        }
        if let Some(u) = used.iter().find(|u| !declared.contains(u.as_str())) {
            return Err(format!(
                "analysis template {name:?} uses {{{{args.{u}}}}} but does not declare it: add `- name: {u}` under `args`"
            ));
        }
        let t = Template {
            name: name.to_string(),
            text: text.to_string(),
            args: head.args,
        };
        if t.args.iter().all(|a| a.value.is_some()) {
            t.instantiate(&BTreeMap::new(), &BTreeMap::new())?;
        }
        Ok(t)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared arguments, with their defaults.
    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    /// The template's metrics with its placeholders filled: each argument's value is the one
    /// in `given` (the template reference's), else in `shared` (the analysis's `args`), else
    /// the template's default. An argument with none, or one in `given` the template does not
    /// declare, is an error naming it.
    pub fn instantiate(
        &self,
        shared: &BTreeMap<String, String>,
        given: &BTreeMap<String, String>,
    ) -> Result<Vec<MetricSpec>, String> {
        let name = &self.name;
        let declared: Vec<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
        if let Some(k) = given.keys().find(|k| !declared.contains(&k.as_str())) {
            return Err(format!(
                "analysis template {name:?} takes no argument {k:?} (it takes: {})",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ));
        }
        let mut values = BTreeMap::new();
        for a in &self.args {
            let v = given
                .get(&a.name)
                .or_else(|| shared.get(&a.name))
                .or(a.value.as_ref())
                .ok_or_else(|| {
                    format!(
                        "analysis template {name:?} needs argument {:?}: pass it as `templates: [{{name: {name}, args: {{{}: ...}}}}]` or give it a default in the template",
                        a.name, a.name
                    )
                })?;
            if v.chars().any(char::is_control) {
                return Err(format!(
                    "analysis template {name:?}: argument {:?} holds a line break or control character: give one line",
                    a.name
                ));
            }
            values.insert(a.name.as_str(), v.clone());
        }
        let text = substitute(&self.text, &|arg| values.get(arg).cloned())
            .map_err(|e| format!("analysis template {name:?}: {e}"))?;
        let spec: AnalysisSpec = yaml_serde::from_str(&text).map_err(|e| {
            format!("analysis template {name:?} (with its arguments filled in): {e}")
        })?;
        if spec.metrics.is_empty() {
            return Err(format!("analysis template {name:?} defines no metrics"));
        }
        let mut names = BTreeSet::new();
        for (i, m) in spec.metrics.iter().enumerate() {
            m.validate(None).map_err(|e| {
                format!(
                    "analysis template {name:?}: {}",
                    e.under(super::at_path!["metrics", i])
                )
            })?;
            if !names.insert(m.name.as_str()) {
                return Err(format!(
                    "analysis template {name:?} names metric {:?} twice",
                    m.name
                ));
            }
        }
        Ok(spec.metrics)
    }
}

/// A template's text, cut at its placeholders.
enum Piece<'a> {
    Text(&'a str),
    /// `{{args.NAME}}` (spaces allowed inside the braces): the argument's name.
    Arg(&'a str),
    /// `{{candidate}}`, `{{stable}}`, `{{pipeline}}`: filled in at each measurement of a
    /// Prometheus query, so kept as written.
    Kept(&'a str),
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "`{{{{` without `}}}}` at `{{{{{}`: write {{{{args.NAME}}}}",
                after.lines().next().unwrap_or("")
            )
        })?;
        let inner = after[..end].trim();
        if matches!(inner, "candidate" | "stable" | "pipeline") {
            out.push(Piece::Kept(&rest[start..start + 2 + end + 2]));
            rest = &after[end + 2..];
            continue;
        }
        let arg = inner
            .strip_prefix("args.")
            .filter(|a| valid_name(a))
            .ok_or_else(|| {
                format!("unknown placeholder `{{{{{inner}}}}}`: write {{{{args.NAME}}}} (or, in a prometheus query, {{{{candidate}}}}, {{{{stable}}}}, {{{{pipeline}}}})")
            })?;
        out.push(Piece::Arg(arg));
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The argument names of the placeholders in `text`.
fn placeholders(text: &str) -> Result<BTreeSet<String>, String> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Arg(a) => Some(a.to_string()),
            Piece::Text(_) | Piece::Kept(_) => None,
        })
        .collect())
}

/// `text` with each placeholder replaced by `value(NAME)`.
fn substitute(text: &str, value: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for p in pieces(text)? {
        match p {
            Piece::Text(t) | Piece::Kept(t) => out.push_str(t),
            Piece::Arg(a) => {
                out.push_str(&value(a).ok_or_else(|| format!("argument {a:?} has no value"))?)
            }
        }
    }
    Ok(out)
}

/// An argument value as written: a string, number or boolean, kept as its text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn scalar_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(|s| s.0))
}

pub(super) fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::<String, Scalar>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}
