//! Change classification: what changed between two schema versions and how risky it is.
//!
//! Every change has a stable code (`SL101`...) that scripts and docs can refer to, a
//! severity, the path of the field it touches and a reason a person can act on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::schema::{Field, Schema, find_match};
use crate::types::{FieldType, StructField};

/// How much a change can hurt, from harmless to losing data. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Metadata only (docs, deprecation markers, aliases).
    Info,
    /// Every reader and writer keeps working.
    Safe,
    /// Works for sluice, but depends on data or on rollout order, or breaks name-based
    /// readers.
    Warning,
    /// Existing readers or data stop working without a migration.
    Breaking,
    /// Data is removed.
    Destructive,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Safe => "safe",
            Severity::Warning => "warning",
            Severity::Breaking => "breaking",
            Severity::Destructive => "destructive",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a change; each has a stable code and a fixed severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    AddNullableField,
    AddDefaultedField,
    AddRequiredField,
    DropField,
    RenameField,
    WidenType,
    NarrowType,
    ChangeType,
    MakeRequired,
    MakeNullable,
    ChangeDefault,
    DeprecateField,
    UndeprecateField,
    ChangeDoc,
    ChangeConstraints,
    ChangeAliases,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 16] = [
        ChangeKind::AddNullableField,
        ChangeKind::AddDefaultedField,
        ChangeKind::AddRequiredField,
        ChangeKind::DropField,
        ChangeKind::RenameField,
        ChangeKind::WidenType,
        ChangeKind::NarrowType,
        ChangeKind::ChangeType,
        ChangeKind::MakeRequired,
        ChangeKind::MakeNullable,
        ChangeKind::ChangeDefault,
        ChangeKind::DeprecateField,
        ChangeKind::UndeprecateField,
        ChangeKind::ChangeDoc,
        ChangeKind::ChangeConstraints,
        ChangeKind::ChangeAliases,
    ];

    /// Stable code; never renumber, only add.
    pub fn code(self) -> &'static str {
        match self {
            ChangeKind::AddNullableField => "SL101",
            ChangeKind::AddDefaultedField => "SL102",
            ChangeKind::AddRequiredField => "SL103",
            ChangeKind::DropField => "SL201",
            ChangeKind::RenameField => "SL202",
            ChangeKind::WidenType => "SL301",
            ChangeKind::NarrowType => "SL302",
            ChangeKind::ChangeType => "SL303",
            ChangeKind::MakeRequired => "SL401",
            ChangeKind::MakeNullable => "SL402",
            ChangeKind::ChangeDefault => "SL501",
            ChangeKind::DeprecateField => "SL502",
            ChangeKind::UndeprecateField => "SL503",
            ChangeKind::ChangeDoc => "SL504",
            ChangeKind::ChangeConstraints => "SL505",
            ChangeKind::ChangeAliases => "SL506",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::AddNullableField => "add_nullable_field",
            ChangeKind::AddDefaultedField => "add_defaulted_field",
            ChangeKind::AddRequiredField => "add_required_field",
            ChangeKind::DropField => "drop_field",
            ChangeKind::RenameField => "rename_field",
            ChangeKind::WidenType => "widen_type",
            ChangeKind::NarrowType => "narrow_type",
            ChangeKind::ChangeType => "change_type",
            ChangeKind::MakeRequired => "make_required",
            ChangeKind::MakeNullable => "make_nullable",
            ChangeKind::ChangeDefault => "change_default",
            ChangeKind::DeprecateField => "deprecate_field",
            ChangeKind::UndeprecateField => "undeprecate_field",
            ChangeKind::ChangeDoc => "change_doc",
            ChangeKind::ChangeConstraints => "change_constraints",
            ChangeKind::ChangeAliases => "change_aliases",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            ChangeKind::AddNullableField
            | ChangeKind::AddDefaultedField
            | ChangeKind::WidenType => Severity::Safe,
            ChangeKind::AddRequiredField | ChangeKind::NarrowType | ChangeKind::ChangeType => {
                Severity::Breaking
            }
            ChangeKind::DropField => Severity::Destructive,
            ChangeKind::RenameField
            | ChangeKind::MakeRequired
            | ChangeKind::MakeNullable
            | ChangeKind::ChangeDefault
            | ChangeKind::ChangeConstraints => Severity::Warning,
            ChangeKind::DeprecateField
            | ChangeKind::UndeprecateField
            | ChangeKind::ChangeDoc
            | ChangeKind::ChangeAliases => Severity::Info,
        }
    }
}

/// One classified difference between two schema versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Stable code, e.g. `SL101`.
    pub code: String,
    pub kind: ChangeKind,
    pub severity: Severity,
    /// Path in the new schema (in the old one for drops): `amount`, `address.city`, `tags[]`.
    pub field: String,
    /// The field's name in the old schema when it differs (renames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_field: Option<String>,
    /// Old and new values of what changed (type, default, ...), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub reason: String,
}

impl Change {
    fn new(kind: ChangeKind, field: impl Into<String>, reason: impl Into<String>) -> Change {
        Change {
            code: kind.code().to_string(),
            kind,
            severity: kind.severity(),
            field: field.into(),
            old_field: None,
            before: None,
            after: None,
            reason: reason.into(),
        }
    }

    fn values(mut self, before: impl Into<String>, after: impl Into<String>) -> Change {
        self.before = Some(before.into());
        self.after = Some(after.into());
        self
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} [{}] {}: {}",
            self.code,
            self.kind.name(),
            self.severity,
            self.field,
            self.reason
        )
    }
}

/// The highest severity among `changes` (`Info` when there are none).
pub fn max_severity(changes: &[Change]) -> Severity {
    changes
        .iter()
        .map(|c| c.severity)
        .max()
        .unwrap_or(Severity::Info)
}

/// Classifies every difference from `old` to `new`. Fields are matched the same way
/// compatibility and conversion match them (id, then name and aliases), so a rename is
/// one change, not a drop plus an add. Changes come in the new schema's field order,
/// drops last.
pub fn diff(old: &Schema, new: &Schema) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut matched_old: Vec<&str> = Vec::new();
    for new_field in &new.fields {
        match find_match(new_field, old, new) {
            None => changes.push(added(new_field)),
            Some(old_field) => {
                matched_old.push(old_field.name.as_str());
                field_changes(old_field, new_field, &mut changes);
            }
        }
    }
    for old_field in &old.fields {
        if !matched_old.contains(&old_field.name.as_str()) {
            changes.push(Change::new(
                ChangeKind::DropField,
                &old_field.name,
                format!(
                    "`{}` ({}) is removed; its data is no longer readable through this dataset",
                    old_field.name, old_field.field_type
                ),
            ));
        }
    }
    changes
}

fn added(field: &Field) -> Change {
    let t = &field.field_type;
    if let Some(default) = &field.default {
        Change::new(
            ChangeKind::AddDefaultedField,
            &field.name,
            format!("new {t} field; old data reads as the default {default}"),
        )
    } else if field.nullable {
        Change::new(
            ChangeKind::AddNullableField,
            &field.name,
            format!("new nullable {t} field; old data reads as null"),
        )
    } else {
        Change::new(
            ChangeKind::AddRequiredField,
            &field.name,
            format!(
                "new required {t} field with no default: data written before this version has no value for it; add a default or make it nullable"
            ),
        )
    }
}

fn field_changes(old: &Field, new: &Field, out: &mut Vec<Change>) {
    let path = new.name.as_str();
    if old.name != new.name {
        let mut change = Change::new(
            ChangeKind::RenameField,
            path,
            format!(
                "renamed from `{}`; sluice readers follow it by field id or alias, but readers that select columns by name (SQL, BI tools) break",
                old.name
            ),
        )
        .values(&old.name, &new.name);
        change.old_field = Some(old.name.clone());
        out.push(change);
    }
    type_changes(&old.field_type, &new.field_type, path, out);
    nullability_change(old.nullable, new.nullable, path, out);
    if old.default != new.default {
        let show = |v: &Option<serde_json::Value>| {
            v.as_ref().map_or("none".to_string(), |v| v.to_string())
        };
        out.push(
            Change::new(
                ChangeKind::ChangeDefault,
                path,
                "the default changed: old data read through this version gets the new default, so results differ from earlier reads",
            )
            .values(show(&old.default), show(&new.default)),
        );
    }
    if old.deprecated != new.deprecated {
        out.push(if new.deprecated {
            Change::new(
                ChangeKind::DeprecateField,
                path,
                "deprecated: readers should stop using it before it is dropped",
            )
        } else {
            Change::new(ChangeKind::UndeprecateField, path, "no longer deprecated")
        });
    }
    if old.doc != new.doc {
        out.push(
            Change::new(ChangeKind::ChangeDoc, path, "documentation changed").values(
                old.doc.clone().unwrap_or_default(),
                new.doc.clone().unwrap_or_default(),
            ),
        );
    }
    if old.min != new.min
        || old.max != new.max
        || old.pattern != new.pattern
        || old.allowed != new.allowed
    {
        out.push(
            Change::new(
                ChangeKind::ChangeConstraints,
                path,
                "constraints changed: rows valid before may now fail validation (or the reverse)",
            )
            .values(constraints_text(old), constraints_text(new)),
        );
    }
    // A rename adds the old name as an alias; that is part of the rename, not news.
    let mut expected_aliases = old.aliases.clone();
    if old.name != new.name && !expected_aliases.contains(&old.name) {
        expected_aliases.push(old.name.clone());
    }
    let mut a = expected_aliases;
    let mut b = new.aliases.clone();
    a.sort();
    b.sort();
    if a != b && old.aliases != new.aliases {
        out.push(
            Change::new(
                ChangeKind::ChangeAliases,
                path,
                "aliases (former names) changed",
            )
            .values(old.aliases.join(", "), new.aliases.join(", ")),
        );
    }
}

fn constraints_text(f: &Field) -> String {
    let mut parts = Vec::new();
    if let Some(min) = &f.min {
        parts.push(format!("min={min}"));
    }
    if let Some(max) = &f.max {
        parts.push(format!("max={max}"));
    }
    if let Some(p) = &f.pattern {
        parts.push(format!("pattern={p}"));
    }
    if let Some(a) = &f.allowed {
        parts.push(format!("allowed={}", serde_json::Value::from(a.clone())));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

fn nullability_change(old_nullable: bool, new_nullable: bool, path: &str, out: &mut Vec<Change>) {
    match (old_nullable, new_nullable) {
        (true, false) => out.push(
            Change::new(
                ChangeKind::MakeRequired,
                path,
                "nullable -> required: safe only if no null exists in the data; check before applying",
            )
            .values("nullable", "required"),
        ),
        (false, true) => out.push(
            Change::new(
                ChangeKind::MakeNullable,
                path,
                "required -> nullable: safe for readers, but readers that assume a value break if writers are upgraded first; upgrade readers before writers",
            )
            .values("required", "nullable"),
        ),
        _ => {}
    }
}

fn type_changes(old: &FieldType, new: &FieldType, path: &str, out: &mut Vec<Change>) {
    if old == new {
        return;
    }
    match (old, new) {
        (FieldType::List(o), FieldType::List(n)) => type_changes(o, n, &format!("{path}[]"), out),
        (FieldType::Struct(o), FieldType::Struct(n)) => struct_changes(o, n, path, out),
        _ if old.promotes_to(new) => out.push(
            Change::new(
                ChangeKind::WidenType,
                path,
                format!("{old} widens to {new}: every old value is representable"),
            )
            .values(old.to_string(), new.to_string()),
        ),
        _ if new.promotes_to(old) => out.push(
            Change::new(
                ChangeKind::NarrowType,
                path,
                format!("{old} narrows to {new}: values outside {new} would be lost; validate the data first"),
            )
            .values(old.to_string(), new.to_string()),
        ),
        _ => out.push(
            Change::new(
                ChangeKind::ChangeType,
                path,
                format!("{old} changes to {new}, which is not a promotion: every value must be converted"),
            )
            .values(old.to_string(), new.to_string()),
        ),
    }
}

fn struct_changes(old: &[StructField], new: &[StructField], path: &str, out: &mut Vec<Change>) {
    for n in new {
        let member_path = format!("{path}.{}", n.name);
        match old.iter().find(|o| o.name == n.name) {
            None if n.nullable => out.push(Change::new(
                ChangeKind::AddNullableField,
                member_path,
                format!("new nullable {} member; old data reads as null", n.field_type),
            )),
            None => out.push(Change::new(
                ChangeKind::AddRequiredField,
                member_path,
                format!(
                    "new required {} member: old data has no value for it (struct members cannot have defaults)",
                    n.field_type
                ),
            )),
            Some(o) => {
                type_changes(&o.field_type, &n.field_type, &member_path, out);
                nullability_change(o.nullable, n.nullable, &member_path, out);
            }
        }
    }
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            out.push(Change::new(
                ChangeKind::DropField,
                format!("{path}.{}", o.name),
                format!("struct member `{}` ({}) is removed", o.name, o.field_type),
            ));
        }
    }
}
