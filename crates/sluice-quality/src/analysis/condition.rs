//! Analysis conditions: small arithmetic comparisons over a version's measures.
//!
//! A condition is an SQL expression (parsed by `sqlparser`, generic dialect) restricted to:
//!
//! - numbers (`100`, `0.5`, `1e3`);
//! - metrics: `candidate.METRIC`, `stable.METRIC`, or a bare `METRIC` (the candidate's), where
//!   METRIC is one of [`METRICS`], or `check_failures.NAME` for one check by name
//!   (`candidate.check_failures.not_null_email`; a name that is not a plain identifier is
//!   double-quoted: `stable.check_failures."not_null(email)"`);
//! - `result`: the value of a metric's Prometheus query (only in a metric with
//!   `prometheus:`, where it is the only value a condition may read);
//! - `+ - * /`, unary `-`, parentheses;
//! - comparisons `< <= > >= = <> !=` between numbers;
//! - `AND`, `OR`, `NOT` between comparisons.
//!
//! Evaluation never passes on missing data: a metric that could not be measured (a p95 with
//! no successful run, a stable value with no stable version) or a division by zero is an error.

use std::collections::BTreeSet;

use sqlparser::ast::{BinaryOperator, Expr, Ident, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::measures::{CHECK_FAILURES, METRICS, Measures, RESULT};

/// Conditions longer than this are refused: they are one-line rules, and the length bounds the
/// depth of the expression tree (so evaluating it cannot exhaust the stack).
pub const MAX_CONDITION_LEN: usize = 1000;

/// Which version a metric is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Candidate,
    Stable,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Candidate => "candidate",
            Side::Stable => "stable",
        }
    }
}

/// A metric a condition reads: the version and the measure's name (`p95_ms`,
/// `check_failures.NAME`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricRef {
    pub side: Side,
    pub name: String,
}

impl std::fmt::Display for MetricRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.side.as_str(), self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// A numeric expression.
#[derive(Debug, Clone, PartialEq)]
enum Num {
    Lit(f64),
    Metric(MetricRef),
    Neg(Box<Num>),
    Op(Box<Num>, Arith, Box<Num>),
}

/// A boolean expression.
#[derive(Debug, Clone, PartialEq)]
enum Bool {
    Cmp(Num, Cmp, Num),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
    Not(Box<Bool>),
}

/// A parsed condition; see the module docs for what it may contain.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    expr: Bool,
}

const ALLOWED: &str = "a condition may use numbers, candidate.METRIC, stable.METRIC or METRIC \
(the candidate's), check_failures.NAME, + - * /, comparisons (< <= > >= = <>), AND, OR, NOT and \
parentheses";

impl Condition {
    /// Parses a condition. The error says what is wrong and what is allowed.
    pub fn parse(text: &str) -> Result<Condition, String> {
        if text.trim().is_empty() {
            return Err(format!("the condition is empty: {ALLOWED}"));
        }
        if text.len() > MAX_CONDITION_LEN {
            return Err(format!(
                "the condition is {} characters long, more than {MAX_CONDITION_LEN}: split it into several metrics",
                text.len()
            ));
        }
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| format!("condition `{text}` does not parse: {e}"))?;
        let expr = parser
            .parse_expr()
            .map_err(|e| format!("condition `{text}` does not parse: {e}"))?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(format!(
                "condition `{text}`: unexpected `{}` after `{expr}`: write one expression ({ALLOWED})",
                next.token
            ));
        }
        Ok(Condition {
            text: text.to_string(),
            expr: to_bool(&expr, text)?,
        })
    }

    /// The text the condition was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the condition reads a metric of the stable version.
    pub fn needs_stable(&self) -> bool {
        self.metrics().iter().any(|m| m.side == Side::Stable)
    }

    /// The metrics the condition reads, in the order they first appear.
    pub fn metrics(&self) -> Vec<MetricRef> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        bool_metrics(&self.expr, &mut |m| {
            if seen.insert(m.clone()) {
                out.push(m.clone());
            }
        });
        out
    }

    /// Evaluates the condition. A metric that is absent (not measurable in the window, or no
    /// stable version given), a division by zero or a result that is not a finite number is
    /// an error, never a pass.
    pub fn eval(&self, candidate: &Measures, stable: Option<&Measures>) -> Result<bool, String> {
        eval_bool(&self.expr, candidate, stable)
            .map_err(|e| format!("condition `{}`: {e}", self.text))
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn to_bool(e: &Expr, text: &str) -> Result<Bool, String> {
    match e {
        Expr::Nested(inner) => to_bool(inner, text),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Ok(Bool::Not(Box::new(to_bool(expr, text)?))),
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And => {
                    return Ok(Bool::And(
                        Box::new(to_bool(left, text)?),
                        Box::new(to_bool(right, text)?),
                    ));
                }
                BinaryOperator::Or => {
                    return Ok(Bool::Or(
                        Box::new(to_bool(left, text)?),
                        Box::new(to_bool(right, text)?),
                    ));
                }
                BinaryOperator::Lt => Cmp::Lt,
                BinaryOperator::LtEq => Cmp::Le,
                BinaryOperator::Gt => Cmp::Gt,
                BinaryOperator::GtEq => Cmp::Ge,
                BinaryOperator::Eq => Cmp::Eq,
                BinaryOperator::NotEq => Cmp::Ne,
                BinaryOperator::Plus
                | BinaryOperator::Minus
                | BinaryOperator::Multiply
                | BinaryOperator::Divide => {
                    return Err(format!(
                        "condition `{text}`: `{e}` is a number, not a test: compare it (`{e} < 100`)"
                    ));
                }
                other => {
                    return Err(format!(
                        "condition `{text}`: operator `{other}` is not allowed: {ALLOWED}"
                    ));
                }
            };
            Ok(Bool::Cmp(to_num(left, text)?, cmp, to_num(right, text)?))
        }
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => {
            // Check it is a valid number first, so a typo is reported as such.
            to_num(e, text)?;
            Err(format!(
                "condition `{text}`: `{e}` is a number, not a test: compare it (`{e} < 100`)"
            ))
        }
        other => Err(unsupported(other, text)),
    }
}

fn to_num(e: &Expr, text: &str) -> Result<Num, String> {
    match e {
        Expr::Nested(inner) => to_num(inner, text),
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => match n.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Num::Lit(x)),
                _ => Err(format!("condition `{text}`: {n} is not a finite number")),
            },
            other => Err(format!(
                "condition `{text}`: `{other}` is not allowed, only numbers: {ALLOWED}"
            )),
        },
        Expr::Identifier(id) => metric(std::slice::from_ref(id), text),
        Expr::CompoundIdentifier(parts) => metric(parts, text),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => Ok(Num::Neg(Box::new(to_num(expr, text)?))),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => to_num(expr, text),
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Plus => Arith::Add,
                BinaryOperator::Minus => Arith::Sub,
                BinaryOperator::Multiply => Arith::Mul,
                BinaryOperator::Divide => Arith::Div,
                BinaryOperator::And
                | BinaryOperator::Or
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
                | BinaryOperator::Eq
                | BinaryOperator::NotEq => {
                    return Err(format!(
                        "condition `{text}`: `{e}` is a test where a number is expected: compare numbers, combine tests with AND / OR"
                    ));
                }
                other => {
                    return Err(format!(
                        "condition `{text}`: operator `{other}` is not allowed: {ALLOWED}"
                    ));
                }
            };
            Ok(Num::Op(
                Box::new(to_num(left, text)?),
                op,
                Box::new(to_num(right, text)?),
            ))
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            ..
        } => Err(format!(
            "condition `{text}`: `{e}` is a test where a number is expected: compare numbers, combine tests with AND / OR"
        )),
        other => Err(unsupported(other, text)),
    }
}

fn unsupported(e: &Expr, text: &str) -> String {
    format!("condition `{text}`: `{e}` is not allowed: {ALLOWED}")
}

/// `METRIC`, `candidate.METRIC`, `stable.METRIC`, `[side.]check_failures.NAME`.
fn metric(parts: &[Ident], text: &str) -> Result<Num, String> {
    let lower = |i: &Ident| {
        if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_ascii_lowercase()
        }
    };
    let written = parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".");
    let (side, rest) = match parts.first().map(lower).as_deref() {
        Some("candidate") if parts.len() > 1 => (Side::Candidate, &parts[1..]),
        Some("stable") if parts.len() > 1 => (Side::Stable, &parts[1..]),
        _ => (Side::Candidate, parts),
    };
    let name = match rest {
        [m] if METRICS.contains(&lower(m).as_str()) => lower(m),
        [m] if parts.len() == 1 && lower(m) == RESULT => RESULT.to_string(),
        [m, check] if lower(m) == CHECK_FAILURES => {
            if check.value.is_empty() {
                return Err(format!("condition `{text}`: `{written}` names no check"));
            }
            format!("{CHECK_FAILURES}.{}", check.value)
        }
        [m] if lower(m) == "candidate" || lower(m) == "stable" => {
            return Err(format!(
                "condition `{text}`: `{written}` names no metric: write {}.METRIC, one of {}",
                lower(m),
                METRICS.join(", ")
            ));
        }
        _ => {
            return Err(format!(
                "condition `{text}`: unknown metric `{written}`: use candidate.METRIC, stable.METRIC or METRIC, where METRIC is one of {}, or check_failures.NAME for one check",
                METRICS.join(", ")
            ));
        }
    };
    Ok(Num::Metric(MetricRef { side, name }))
}

fn bool_metrics(b: &Bool, f: &mut impl FnMut(&MetricRef)) {
    match b {
        Bool::Cmp(l, _, r) => {
            num_metrics(l, f);
            num_metrics(r, f);
        }
        Bool::And(l, r) | Bool::Or(l, r) => {
            bool_metrics(l, f);
            bool_metrics(r, f);
        }
        Bool::Not(inner) => bool_metrics(inner, f),
    }
}

fn num_metrics(n: &Num, f: &mut impl FnMut(&MetricRef)) {
    match n {
        Num::Lit(_) => {}
        Num::Metric(m) => f(m),
        Num::Neg(inner) => num_metrics(inner, f),
        Num::Op(l, _, r) => {
            num_metrics(l, f);
            num_metrics(r, f);
        }
    }
}

/// Both sides of AND / OR are evaluated, so an unmeasurable metric is an error wherever it
/// sits (a short circuit would let `false AND <missing>` pass as false one time and error the
/// next).
fn eval_bool(b: &Bool, c: &Measures, s: Option<&Measures>) -> Result<bool, String> {
    Ok(match b {
        Bool::Cmp(l, op, r) => {
            let (l, r) = (eval_num(l, c, s)?, eval_num(r, c, s)?);
            match op {
                Cmp::Lt => l < r,
                Cmp::Le => l <= r,
                Cmp::Gt => l > r,
                Cmp::Ge => l >= r,
                Cmp::Eq => l == r,
                Cmp::Ne => l != r,
            }
        }
        Bool::And(l, r) => {
            let (l, r) = (eval_bool(l, c, s)?, eval_bool(r, c, s)?);
            l && r
        }
        Bool::Or(l, r) => {
            let (l, r) = (eval_bool(l, c, s)?, eval_bool(r, c, s)?);
            l || r
        }
        Bool::Not(inner) => !eval_bool(inner, c, s)?,
    })
}

fn eval_num(n: &Num, c: &Measures, s: Option<&Measures>) -> Result<f64, String> {
    let v = match n {
        Num::Lit(x) => *x,
        Num::Metric(m) => {
            let measures = match m.side {
                Side::Candidate => c,
                Side::Stable => s.ok_or_else(|| {
                    format!("{m} is needed but there is no stable version to compare with")
                })?,
            };
            measures.get(&m.name).ok_or_else(|| {
                format!(
                    "{m} could not be measured ({})",
                    measures.why_absent(&m.name)
                )
            })?
        }
        Num::Neg(inner) => -eval_num(inner, c, s)?,
        Num::Op(l, op, r) => {
            let (l, r) = (eval_num(l, c, s)?, eval_num(r, c, s)?);
            match op {
                Arith::Add => l + r,
                Arith::Sub => l - r,
                Arith::Mul => l * r,
                Arith::Div => {
                    if r == 0.0 {
                        return Err(format!("division by zero ({l} / 0)"));
                    }
                    l / r
                }
            }
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("the result {v} is not a finite number"))
    }
}
