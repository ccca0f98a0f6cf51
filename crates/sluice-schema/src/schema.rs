//! The dataset schema: fields with stable ids, defaults, docs, aliases and constraints.
//!
//! A schema is written in YAML by people and stored by the registry with ids filled in by
//! [`assign_ids`]. Ids follow Iceberg: a rename keeps its id, a name that is dropped and
//! added again gets a new one, so old data is never read into the wrong column.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_schema::{Field as ArrowField, Schema as ArrowSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::{FieldType, TypeError};
use crate::value;

/// Arrow field metadata key holding a field's stable id (Parquet writers copy it into
/// `PARQUET:field_id` when asked; both are read back).
pub const FIELD_ID_KEY: &str = "sluice.field_id";
/// The Parquet field id key, accepted when reading Arrow schemas of Parquet/Iceberg files.
pub const PARQUET_FIELD_ID_KEY: &str = "PARQUET:field_id";
const DOC_KEY: &str = "sluice.doc";
const DEFAULT_KEY: &str = "sluice.default";
const ALIASES_KEY: &str = "sluice.aliases";
const DEPRECATED_KEY: &str = "sluice.deprecated";
const CONSTRAINTS_KEY: &str = "sluice.constraints";
const DATASET_KEY: &str = "sluice.dataset";
const SCHEMA_DOC_KEY: &str = "sluice.schema_doc";

/// An immutable description of a dataset's records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// The dataset this schema belongs to, e.g. `orders`.
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    pub fields: Vec<Field>,
}

/// One top-level field of a [`Schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Stable id, set by [`assign_ids`] at registration; absent in hand-written files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// Value used when data written without this field is read. JSON-shaped: numbers,
    /// strings (decimals, dates and timestamps as text), booleans, lists, objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// Former names; data written under one of them is read into this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deprecated: bool,
    /// Smallest allowed value (numbers, decimals, dates, timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    /// Largest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    /// Regular expression a string value must match somewhere (anchor with `^...$` for a
    /// whole-value match).
    #[serde(default, alias = "regex", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The only values allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Value>>,
}

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Problems loading or checking a schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error("{source_name}:{line}:{column}: {message}")]
    Yaml {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    /// A check failed on a schema read from a file; `line` is where the field is declared
    /// when it can be found.
    #[error("{}{}: {error}", .source_name, .line.map(|l| format!(":{l}")).unwrap_or_default())]
    InFile {
        source_name: String,
        line: Option<usize>,
        #[source]
        error: Box<SchemaError>,
    },
    #[error("schema of dataset `{dataset}`, field `{field}`: {reason}")]
    InvalidField {
        dataset: String,
        field: String,
        reason: String,
    },
    #[error("schema of dataset `{dataset}`: {reason}")]
    Invalid { dataset: String, reason: String },
    #[error("Arrow field `{field}`: {source}")]
    ArrowType {
        field: String,
        #[source]
        source: TypeError,
    },
    #[error("Arrow field `{field}`: metadata `{key}` is not valid: {reason}")]
    ArrowMetadata {
        field: String,
        key: String,
        reason: String,
    },
}

impl Field {
    /// A nullable field with no default, doc or constraints.
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Field {
        Field {
            id: None,
            name: name.into(),
            field_type,
            nullable: true,
            default: None,
            doc: None,
            aliases: Vec::new(),
            deprecated: false,
            min: None,
            max: None,
            pattern: None,
            allowed: None,
        }
    }

    pub fn required(mut self) -> Field {
        self.nullable = false;
        self
    }

    pub fn with_default(mut self, default: Value) -> Field {
        self.default = Some(default);
        self
    }

    pub fn with_aliases<I, S>(mut self, aliases: I) -> Field
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.aliases = aliases.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_id(mut self, id: u32) -> Field {
        self.id = Some(id);
        self
    }

    /// Whether a reader of this field can fill it when the data has no such field.
    pub fn can_be_filled(&self) -> bool {
        self.default.is_some() || self.nullable
    }

    pub fn has_constraints(&self) -> bool {
        self.min.is_some() || self.max.is_some() || self.pattern.is_some() || self.allowed.is_some()
    }

    /// The Arrow field, with id, doc, default, aliases and constraints in its metadata so
    /// [`Schema::from_arrow`] gives the same field back.
    pub fn to_arrow(&self) -> ArrowField {
        let mut metadata = HashMap::new();
        if let Some(id) = self.id {
            metadata.insert(FIELD_ID_KEY.to_string(), id.to_string());
        }
        if let Some(doc) = &self.doc {
            metadata.insert(DOC_KEY.to_string(), doc.clone());
        }
        if let Some(default) = &self.default {
            metadata.insert(DEFAULT_KEY.to_string(), default.to_string());
        }
        if !self.aliases.is_empty() {
            metadata.insert(
                ALIASES_KEY.to_string(),
                Value::from(self.aliases.clone()).to_string(),
            );
        }
        if self.deprecated {
            metadata.insert(DEPRECATED_KEY.to_string(), "true".to_string());
        }
        if self.has_constraints() {
            let mut constraints = serde_json::Map::new();
            if let Some(min) = &self.min {
                constraints.insert("min".into(), min.clone());
            }
            if let Some(max) = &self.max {
                constraints.insert("max".into(), max.clone());
            }
            if let Some(pattern) = &self.pattern {
                constraints.insert("pattern".into(), Value::from(pattern.clone()));
            }
            if let Some(allowed) = &self.allowed {
                constraints.insert("allowed".into(), Value::from(allowed.clone()));
            }
            metadata.insert(
                CONSTRAINTS_KEY.to_string(),
                Value::Object(constraints).to_string(),
            );
        }
        ArrowField::new(&self.name, self.field_type.to_arrow(), self.nullable)
            .with_metadata(metadata)
    }

    /// The field of an Arrow field, reading sluice metadata where present.
    pub fn from_arrow(arrow: &ArrowField) -> Result<Field, SchemaError> {
        let name = arrow.name();
        let field_type =
            FieldType::from_arrow(arrow.data_type()).map_err(|source| SchemaError::ArrowType {
                field: name.clone(),
                source,
            })?;
        let metadata = arrow.metadata();
        let bad = |key: &str, reason: String| SchemaError::ArrowMetadata {
            field: name.clone(),
            key: key.to_string(),
            reason,
        };
        let id = match metadata
            .get(FIELD_ID_KEY)
            .map(|v| (FIELD_ID_KEY, v))
            .or_else(|| {
                metadata
                    .get(PARQUET_FIELD_ID_KEY)
                    .map(|v| (PARQUET_FIELD_ID_KEY, v))
            }) {
            Some((key, text)) => Some(
                text.trim()
                    .parse::<u32>()
                    .map_err(|e| bad(key, format!("`{text}` is not a field id: {e}")))?,
            ),
            None => None,
        };
        let json = |key: &str| -> Result<Option<Value>, SchemaError> {
            metadata
                .get(key)
                .map(|text| {
                    serde_json::from_str::<Value>(text).map_err(|e| bad(key, e.to_string()))
                })
                .transpose()
        };
        let mut field = Field::new(name.clone(), field_type);
        field.id = id;
        field.nullable = arrow.is_nullable();
        field.doc = metadata.get(DOC_KEY).cloned();
        field.default = json(DEFAULT_KEY)?;
        if let Some(aliases) = json(ALIASES_KEY)? {
            field.aliases = serde_json::from_value(aliases)
                .map_err(|e| bad(ALIASES_KEY, format!("expected a list of names: {e}")))?;
        }
        field.deprecated = metadata.get(DEPRECATED_KEY).is_some_and(|v| v == "true");
        if let Some(Value::Object(mut constraints)) = json(CONSTRAINTS_KEY)? {
            field.min = constraints.remove("min");
            field.max = constraints.remove("max");
            field.pattern = match constraints.remove("pattern") {
                Some(Value::String(p)) => Some(p),
                Some(other) => {
                    return Err(bad(
                        CONSTRAINTS_KEY,
                        format!("pattern {other} is not a string"),
                    ));
                }
                None => None,
            };
            field.allowed = match constraints.remove("allowed") {
                Some(Value::Array(values)) => Some(values),
                Some(other) => {
                    return Err(bad(
                        CONSTRAINTS_KEY,
                        format!("allowed {other} is not a list"),
                    ));
                }
                None => None,
            };
        }
        Ok(field)
    }
}

impl Schema {
    pub fn new(dataset: impl Into<String>, fields: Vec<Field>) -> Schema {
        Schema {
            dataset: dataset.into(),
            doc: None,
            fields,
        }
    }

    /// Parses and checks a schema file. `source_name` (usually the path) prefixes errors,
    /// which carry the YAML line and column.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Schema, SchemaError> {
        let schema: Schema = yaml_serde::from_str(text).map_err(|e| match e.location() {
            Some(at) => {
                // yaml_serde appends "at line L column C"; the prefix already says where.
                let mut message = e.to_string();
                if let Some(cut) = message.rfind(" at line ") {
                    message.truncate(cut);
                }
                SchemaError::Yaml {
                    source_name: source_name.to_string(),
                    line: at.line(),
                    column: at.column(),
                    message,
                }
            }
            None => SchemaError::Syntax {
                source_name: source_name.to_string(),
                message: e.to_string(),
            },
        })?;
        schema.check().map_err(|error| {
            let line = match &error {
                SchemaError::InvalidField { field, .. } => declaration_line(text, field),
                _ => None,
            };
            SchemaError::InFile {
                source_name: source_name.to_string(),
                line,
                error: Box::new(error),
            }
        })?;
        Ok(schema)
    }

    pub fn to_yaml(&self) -> Result<String, SchemaError> {
        yaml_serde::to_string(self).map_err(|e| SchemaError::Invalid {
            dataset: self.dataset.clone(),
            reason: format!("cannot be written as YAML: {e}"),
        })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn field_by_id(&self, id: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.id == Some(id))
    }

    /// Whether every field has an id, so matching by id is trustworthy.
    pub fn has_ids(&self) -> bool {
        !self.fields.is_empty() && self.fields.iter().all(|f| f.id.is_some())
    }

    pub fn max_id(&self) -> u32 {
        self.fields.iter().filter_map(|f| f.id).max().unwrap_or(0)
    }

    /// Checks what serde cannot: unique names, aliases that do not collide, defaults and
    /// constraints that fit the type, patterns that compile.
    pub fn check(&self) -> Result<(), SchemaError> {
        let invalid = |reason: String| SchemaError::Invalid {
            dataset: self.dataset.clone(),
            reason,
        };
        if self.dataset.trim().is_empty() {
            return Err(invalid("the dataset name is empty".into()));
        }
        let mut names = BTreeSet::new();
        for field in &self.fields {
            if field.name.is_empty() {
                return Err(invalid("a field has an empty name".into()));
            }
            if !names.insert(field.name.as_str()) {
                return Err(invalid(format!("field `{}` is declared twice", field.name)));
            }
        }
        let mut ids = BTreeSet::new();
        let mut aliases_seen: HashMap<&str, &str> = HashMap::new();
        for field in &self.fields {
            let field_error = |reason: String| SchemaError::InvalidField {
                dataset: self.dataset.clone(),
                field: field.name.clone(),
                reason,
            };
            if let Some(id) = field.id
                && !ids.insert(id)
            {
                return Err(field_error(format!("id {id} is used by two fields")));
            }
            for alias in &field.aliases {
                if alias == &field.name {
                    return Err(field_error(format!(
                        "alias `{alias}` is the field's own name"
                    )));
                }
                if names.contains(alias.as_str()) {
                    return Err(field_error(format!(
                        "alias `{alias}` is the name of another field; an alias names a former field"
                    )));
                }
                if let Some(other) = aliases_seen.insert(alias, &field.name) {
                    return Err(field_error(format!(
                        "alias `{alias}` is also an alias of `{other}`"
                    )));
                }
            }
            check_field_values(field).map_err(field_error)?;
        }
        Ok(())
    }

    /// The Arrow schema, with field ids and sluice metadata on every field.
    pub fn to_arrow(&self) -> ArrowSchema {
        let mut metadata = HashMap::new();
        metadata.insert(DATASET_KEY.to_string(), self.dataset.clone());
        if let Some(doc) = &self.doc {
            metadata.insert(SCHEMA_DOC_KEY.to_string(), doc.clone());
        }
        ArrowSchema::new_with_metadata(
            self.fields
                .iter()
                .map(|f| Arc::new(f.to_arrow()))
                .collect::<Vec<_>>(),
            metadata,
        )
    }

    /// A schema from an Arrow schema. `dataset` is used when the Arrow schema does not
    /// name one in its metadata.
    pub fn from_arrow(dataset: &str, arrow: &ArrowSchema) -> Result<Schema, SchemaError> {
        let fields = arrow
            .fields()
            .iter()
            .map(|f| Field::from_arrow(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schema {
            dataset: arrow
                .metadata()
                .get(DATASET_KEY)
                .cloned()
                .unwrap_or_else(|| dataset.to_string()),
            doc: arrow.metadata().get(SCHEMA_DOC_KEY).cloned(),
            fields,
        })
    }
}

/// The 1-based line declaring field `name` (`name: x`, quoted or not), if any.
fn declaration_line(text: &str, name: &str) -> Option<usize> {
    let forms = [
        format!("name: {name}"),
        format!("name: \"{name}\""),
        format!("name: '{name}'"),
    ];
    text.lines()
        .position(|line| {
            forms.iter().any(|form| {
                line.match_indices(form.as_str()).any(|(at, _)| {
                    let after = line[at + form.len()..].chars().next();
                    !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            })
        })
        .map(|i| i + 1)
}

fn check_field_values(field: &Field) -> Result<(), String> {
    let t = &field.field_type;
    if let Some(default) = &field.default {
        if default.is_null() {
            return Err("default is null; leave it out and make the field nullable".into());
        }
        value::json_to_array(std::slice::from_ref(default), t)
            .map_err(|e| format!("default {default} does not fit type {t}: {}", e.reason))?;
    }
    for (name, bound) in [("min", &field.min), ("max", &field.max)] {
        if let Some(bound) = bound {
            if !t.is_ordered() {
                return Err(format!(
                    "`{name}` applies to numbers, decimals, dates and timestamps, not {t}"
                ));
            }
            value::json_to_array(std::slice::from_ref(bound), t)
                .map_err(|e| format!("{name} {bound} does not fit type {t}: {}", e.reason))?;
        }
    }
    if let (Some(min), Some(max)) = (&field.min, &field.max) {
        let ordering = value::compare_json(min, max, t).map_err(|e| e.reason)?;
        if ordering == std::cmp::Ordering::Greater {
            return Err(format!("min {min} is greater than max {max}"));
        }
    }
    if let Some(pattern) = &field.pattern {
        if !matches!(t, FieldType::String) {
            return Err(format!("`pattern` applies to strings, not {t}"));
        }
        regex::Regex::new(pattern).map_err(|e| format!("pattern does not compile: {e}"))?;
    }
    if let Some(allowed) = &field.allowed {
        if matches!(t, FieldType::List(_) | FieldType::Struct(_)) {
            return Err(format!("`allowed` applies to single values, not {t}"));
        }
        if allowed.is_empty() {
            return Err("`allowed` is empty, so no value could pass".into());
        }
        value::json_to_array(allowed, t).map_err(|e| {
            format!(
                "allowed value {} does not fit type {t}: {}",
                allowed.get(e.row).unwrap_or(&Value::Null),
                e.reason
            )
        })?;
    }
    Ok(())
}

/// Gives every field of `new` its stable id. A field keeps the id of the `previous` field
/// with the same name, or else of the previous field one of its aliases names; any other
/// field gets `last_id + 1` and `last_id` moves on. `last_id` never goes below the highest
/// id in `previous`, so ids are never reused even if the caller passes a stale counter.
///
/// Exact names are matched before aliases, so when a name is both kept and claimed as a
/// former name by another field, the field that kept the name keeps the id.
pub fn assign_ids(previous: Option<&Schema>, new: &mut Schema, last_id: &mut u32) {
    if let Some(prev) = previous {
        *last_id = (*last_id).max(prev.max_id());
    }
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut ids: Vec<Option<u32>> = vec![None; new.fields.len()];
    if let Some(prev) = previous {
        for (slot, field) in ids.iter_mut().zip(&new.fields) {
            if let Some(id) = prev.field(&field.name).and_then(|p| p.id)
                && taken.insert(id)
            {
                *slot = Some(id);
            }
        }
        for (slot, field) in ids.iter_mut().zip(&new.fields) {
            if slot.is_some() {
                continue;
            }
            let by_alias = field
                .aliases
                .iter()
                .filter_map(|alias| prev.field(alias).and_then(|p| p.id))
                .find(|id| !taken.contains(id));
            if let Some(id) = by_alias {
                taken.insert(id);
                *slot = Some(id);
            }
        }
    }
    for (slot, field) in ids.into_iter().zip(new.fields.iter_mut()) {
        field.id = Some(match slot {
            Some(id) => id,
            None => {
                *last_id += 1;
                *last_id
            }
        });
    }
}

/// How a field of one schema corresponds to a field of another, used by compatibility,
/// diff and conversion alike so they never disagree.
///
/// With ids on both sides, ids decide (Iceberg semantics: a re-added name is a new field).
/// Without, a field matches by name, then by an alias of the `to` field naming the `from`
/// field (an upgrade across a rename), then by an alias of the `from` field naming the
/// `to` field (a downgrade across a rename).
pub fn find_match<'a>(to_field: &Field, from: &'a Schema, to: &Schema) -> Option<&'a Field> {
    if from.has_ids() && to.has_ids() {
        return to_field.id.and_then(|id| from.field_by_id(id));
    }
    from.field(&to_field.name)
        .or_else(|| to_field.aliases.iter().find_map(|alias| from.field(alias)))
        .or_else(|| {
            from.fields.iter().find(|f| {
                f.aliases.iter().any(|a| a == &to_field.name) && to.field(&f.name).is_none()
            })
        })
}
