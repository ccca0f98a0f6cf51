//! Compatibility modes with Confluent Schema Registry semantics, and Avro-style
//! reader/writer resolution.
//!
//! "Reader `R` can read data written with writer `W`" is decided field by field:
//! a reader field missing from the writer needs a default or must be nullable; a writer
//! field missing from the reader is ignored; matching fields need the same type or a
//! promotion ([`FieldType::promotes_to`]), and a nullable writer field cannot feed a
//! required reader field. Structs and list elements are resolved member by member.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::schema::{Field, Schema, find_match};
use crate::types::FieldType;

/// Which earlier versions a new schema must be compatible with, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityMode {
    /// No checks.
    None,
    /// The new schema can read data written with the latest previous version.
    Backward,
    /// The new schema can read data written with every previous version.
    BackwardTransitive,
    /// The latest previous version can read data written with the new schema.
    Forward,
    /// Every previous version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest previous version.
    Full,
    /// Backward and forward against every previous version.
    FullTransitive,
}

impl CompatibilityMode {
    pub const ALL: [CompatibilityMode; 7] = [
        CompatibilityMode::None,
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
        CompatibilityMode::Forward,
        CompatibilityMode::ForwardTransitive,
        CompatibilityMode::Full,
        CompatibilityMode::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::None => "NONE",
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Backward
                | CompatibilityMode::BackwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Forward
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown compatibility mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility mode `{0}`; use one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct UnknownMode(pub String);

impl FromStr for CompatibilityMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace(['-', ' '], "_").to_ascii_uppercase();
        CompatibilityMode::ALL
            .into_iter()
            .find(|m| m.as_str() == wanted)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// Which reader/writer rule a [`Violation`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The reader has a field the writer lacks, with no default and not nullable.
    MissingFieldWithoutDefault,
    /// The writer's type is neither the reader's nor promotable to it.
    IncompatibleType,
    /// The writer may write nulls into a field the reader requires.
    NullableToRequired,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MissingFieldWithoutDefault => "missing_field_without_default",
            Rule::IncompatibleType => "incompatible_type",
            Rule::NullableToRequired => "nullable_to_required",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a reader version cannot read a writer version's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Path of the reader field (`address.city`, `tags[]`).
    pub field: String,
    pub rule: Rule,
    pub reader_version: u32,
    pub writer_version: u32,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} cannot read data written by v{}: field `{}`: {} ({})",
            self.reader_version, self.writer_version, self.field, self.message, self.rule
        )
    }
}

/// Checks `new` against `history` (versions `1..=n`, oldest first; `new` is `n + 1`).
/// Returns every violation; empty means compatible. An empty history is always compatible.
pub fn check_compatibility(
    mode: CompatibilityMode,
    new: &Schema,
    history: &[Schema],
) -> Vec<Violation> {
    let new_version = version_number(history.len() + 1);
    let against: Vec<(u32, &Schema)> = if mode.is_transitive() {
        history
            .iter()
            .enumerate()
            .map(|(i, s)| (version_number(i + 1), s))
            .collect()
    } else {
        history
            .last()
            .map(|s| (version_number(history.len()), s))
            .into_iter()
            .collect()
    };
    let mut violations = Vec::new();
    for (version, old) in against {
        if mode.checks_backward() {
            violations.extend(reader_violations(new, new_version, old, version));
        }
        if mode.checks_forward() {
            violations.extend(reader_violations(old, version, new, new_version));
        }
    }
    violations
}

fn version_number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Everything that stops `reader` (version `reader_version`) from reading data written
/// with `writer` (version `writer_version`).
pub fn reader_violations(
    reader: &Schema,
    reader_version: u32,
    writer: &Schema,
    writer_version: u32,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |field: String, rule: Rule, message: String| {
        out.push(Violation {
            field,
            rule,
            reader_version,
            writer_version,
            message,
        })
    };
    for reader_field in &reader.fields {
        match find_match(reader_field, writer, reader) {
            None => {
                if !reader_field.can_be_filled() {
                    push(
                        reader_field.name.clone(),
                        Rule::MissingFieldWithoutDefault,
                        format!(
                            "v{writer_version} has no field `{}` (nor an alias of it) and v{reader_version} declares it required with no default; add a default or make it nullable",
                            reader_field.name
                        ),
                    );
                }
            }
            Some(writer_field) => {
                resolve_field(writer_field, reader_field, &mut |path, rule, message| {
                    push(path, rule, message)
                });
            }
        }
    }
    out
}

/// Whether `reader` can read data written with `writer`.
pub fn can_read(reader: &Schema, writer: &Schema) -> bool {
    reader_violations(reader, 0, writer, 0).is_empty()
}

fn resolve_field(writer: &Field, reader: &Field, report: &mut dyn FnMut(String, Rule, String)) {
    let path = reader.name.clone();
    if writer.nullable && !reader.nullable {
        report(
            path.clone(),
            Rule::NullableToRequired,
            format!(
                "the writer's `{}` is nullable but the reader requires a value",
                writer.name
            ),
        );
    }
    resolve_type(&writer.field_type, &reader.field_type, &path, report);
}

/// Type resolution; recursion mirrors the type's nesting so a mismatch is reported at
/// the deepest member that differs.
fn resolve_type(
    writer: &FieldType,
    reader: &FieldType,
    path: &str,
    report: &mut dyn FnMut(String, Rule, String),
) {
    if writer == reader || writer.promotes_to(reader) {
        return;
    }
    match (writer, reader) {
        (FieldType::List(w), FieldType::List(r)) => {
            resolve_type(w, r, &format!("{path}[]"), report);
        }
        (FieldType::Struct(w_members), FieldType::Struct(r_members)) => {
            for r_member in r_members {
                let member_path = format!("{path}.{}", r_member.name);
                match w_members.iter().find(|m| m.name == r_member.name) {
                    None if r_member.nullable => {}
                    None => report(
                        member_path,
                        Rule::MissingFieldWithoutDefault,
                        format!(
                            "the writer's struct has no member `{}` and the reader requires it",
                            r_member.name
                        ),
                    ),
                    Some(w_member) => {
                        if w_member.nullable && !r_member.nullable {
                            report(
                                member_path.clone(),
                                Rule::NullableToRequired,
                                "the writer's member is nullable but the reader requires a value"
                                    .into(),
                            );
                        }
                        resolve_type(
                            &w_member.field_type,
                            &r_member.field_type,
                            &member_path,
                            report,
                        );
                    }
                }
            }
        }
        _ => report(
            path.to_string(),
            Rule::IncompatibleType,
            format!("{writer} cannot be read as {reader}: not the same type and not a promotion"),
        ),
    }
}
