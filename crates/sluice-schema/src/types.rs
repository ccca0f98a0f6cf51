//! The logical type model: [`FieldType`], its human syntax, and its Arrow mapping.
//!
//! Types are written the way people say them (`int64`, `decimal(12,2)`,
//! `struct<a: int32, b: string not null>`) and always print in one canonical form, so a
//! type read from YAML, stored in the registry and printed in a diff looks the same
//! everywhere. [`Columns`] is the light "name -> type" list that pipeline specs use.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_schema::{DataType, Field as ArrowField, Fields, Schema as ArrowSchema};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The type names [`FieldType::from_str`] accepts, quoted in every parse error.
pub const ACCEPTED_TYPES: &str = "bool, int8, int16, int32, int64, float32, float64, \
decimal(p,s), string, binary, date, timestamp, timestamp(unit), timestamp(unit, tz), \
timestamptz, list<T>, struct<name: T, ...> (aliases: boolean; tinyint; smallint; \
int, integer, long, bigint; float; double; numeric; utf8, text; bytes; \
units: s, ms, us, ns)";

/// Deepest nesting of `list<>`/`struct<>` the parser accepts; keeps hostile input from
/// overflowing the stack.
const MAX_NESTING: usize = 64;

/// Largest decimal precision Arrow can hold (Decimal256).
pub const MAX_DECIMAL_PRECISION: u8 = 76;

/// Resolution of a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    Second,
    Millisecond,
    Microsecond,
    Nanosecond,
}

impl TimeUnit {
    /// The short name used in type strings: `s`, `ms`, `us`, `ns`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Second => "s",
            TimeUnit::Millisecond => "ms",
            TimeUnit::Microsecond => "us",
            TimeUnit::Nanosecond => "ns",
        }
    }

    fn parse(word: &str) -> Option<TimeUnit> {
        match word {
            "s" | "sec" | "second" | "seconds" => Some(TimeUnit::Second),
            "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => {
                Some(TimeUnit::Millisecond)
            }
            "us" | "micro" | "micros" | "microsecond" | "microseconds" => {
                Some(TimeUnit::Microsecond)
            }
            "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => Some(TimeUnit::Nanosecond),
            _ => None,
        }
    }

    pub fn to_arrow(self) -> arrow_schema::TimeUnit {
        match self {
            TimeUnit::Second => arrow_schema::TimeUnit::Second,
            TimeUnit::Millisecond => arrow_schema::TimeUnit::Millisecond,
            TimeUnit::Microsecond => arrow_schema::TimeUnit::Microsecond,
            TimeUnit::Nanosecond => arrow_schema::TimeUnit::Nanosecond,
        }
    }

    pub fn from_arrow(unit: &arrow_schema::TimeUnit) -> TimeUnit {
        match unit {
            arrow_schema::TimeUnit::Second => TimeUnit::Second,
            arrow_schema::TimeUnit::Millisecond => TimeUnit::Millisecond,
            arrow_schema::TimeUnit::Microsecond => TimeUnit::Microsecond,
            arrow_schema::TimeUnit::Nanosecond => TimeUnit::Nanosecond,
        }
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of a `struct<...>` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StructField {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
}

impl StructField {
    pub fn new(name: impl Into<String>, field_type: FieldType, nullable: bool) -> Self {
        StructField {
            name: name.into(),
            field_type,
            nullable,
        }
    }

    pub fn to_arrow(&self) -> ArrowField {
        ArrowField::new(&self.name, self.field_type.to_arrow(), self.nullable)
    }
}

/// The logical type of a field. Physical encodings (Utf8 vs LargeUtf8, Date32 vs Date64,
/// dictionary encoding) collapse into one logical type; [`FieldType::to_arrow`] picks the
/// canonical physical type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `scale` is within `0..=precision`; precision is `1..=76`.
    Decimal {
        precision: u8,
        scale: i8,
    },
    String,
    Binary,
    Date,
    Timestamp {
        unit: TimeUnit,
        tz: Option<String>,
    },
    /// Elements are always nullable, as in Spark and Delta.
    List(Box<FieldType>),
    Struct(Vec<StructField>),
}

/// Errors turning text or Arrow types into a [`FieldType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error(
        "invalid type `{input}` at character {position}: {reason}. Accepted types: {accepted}",
        position = position + 1,
        accepted = ACCEPTED_TYPES
    )]
    Parse {
        input: String,
        /// Byte offset into `input` where the problem was found.
        position: usize,
        reason: String,
    },
    #[error("Arrow type {arrow} has no sluice type: {hint}")]
    UnsupportedArrow { arrow: String, hint: String },
}

impl FieldType {
    /// `timestamp` with no arguments: microseconds, no time zone (Spark's TIMESTAMP_NTZ).
    pub fn timestamp() -> FieldType {
        FieldType::Timestamp {
            unit: TimeUnit::Microsecond,
            tz: None,
        }
    }

    pub fn list(element: FieldType) -> FieldType {
        FieldType::List(Box::new(element))
    }

    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            FieldType::Int8 | FieldType::Int16 | FieldType::Int32 | FieldType::Int64
        )
    }

    pub fn is_float(&self) -> bool {
        matches!(self, FieldType::Float32 | FieldType::Float64)
    }

    /// Types whose values are ordered, so `min`/`max` constraints make sense.
    pub fn is_ordered(&self) -> bool {
        self.is_integer()
            || self.is_float()
            || matches!(
                self,
                FieldType::Decimal { .. } | FieldType::Date | FieldType::Timestamp { .. }
            )
    }

    fn integer_width(&self) -> Option<u8> {
        match self {
            FieldType::Int8 => Some(8),
            FieldType::Int16 => Some(16),
            FieldType::Int32 => Some(32),
            FieldType::Int64 => Some(64),
            _ => None,
        }
    }

    /// Whether data written as `self` can be read as `reader` by promotion (Avro resolution
    /// rules adapted to sluice's types). Identity is not a promotion; nested types are not
    /// handled here because they need per-member resolution (see [`crate::compat`]).
    pub fn promotes_to(&self, reader: &FieldType) -> bool {
        use FieldType as T;
        if let (Some(w), Some(r)) = (self.integer_width(), reader.integer_width()) {
            return w < r;
        }
        match (self, reader) {
            (T::Int8 | T::Int16, T::Float32) => true,
            (T::Int8 | T::Int16 | T::Int32 | T::Int64, T::Float64) => true,
            (T::Float32, T::Float64) => true,
            (
                T::Decimal {
                    precision: wp,
                    scale: ws,
                },
                T::Decimal {
                    precision: rp,
                    scale: rs,
                },
            ) => ws == rs && wp < rp,
            (T::Date, T::Timestamp { .. }) => true,
            (T::String, T::Binary) | (T::Binary, T::String) => true,
            _ => false,
        }
    }

    /// The canonical Arrow type for this logical type.
    pub fn to_arrow(&self) -> DataType {
        match self {
            FieldType::Bool => DataType::Boolean,
            FieldType::Int8 => DataType::Int8,
            FieldType::Int16 => DataType::Int16,
            FieldType::Int32 => DataType::Int32,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float32 => DataType::Float32,
            FieldType::Float64 => DataType::Float64,
            FieldType::Decimal { precision, scale } => {
                if *precision <= arrow_schema::DECIMAL128_MAX_PRECISION {
                    DataType::Decimal128(*precision, *scale)
                } else {
                    DataType::Decimal256(*precision, *scale)
                }
            }
            FieldType::String => DataType::Utf8,
            FieldType::Binary => DataType::Binary,
            FieldType::Date => DataType::Date32,
            FieldType::Timestamp { unit, tz } => {
                DataType::Timestamp(unit.to_arrow(), tz.as_deref().map(Arc::from))
            }
            FieldType::List(element) => DataType::List(Arc::new(ArrowField::new_list_field(
                element.to_arrow(),
                true,
            ))),
            FieldType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(StructField::to_arrow)
                    .collect::<Vec<_>>()
                    .into(),
            ),
        }
    }

    /// The logical type of an Arrow type. Unsigned integers map to the next wider signed
    /// type so every value still fits; `UInt64` has none and is refused.
    pub fn from_arrow(data_type: &DataType) -> Result<FieldType, TypeError> {
        let unsupported = |hint: &str| TypeError::UnsupportedArrow {
            arrow: data_type.to_string(),
            hint: hint.to_string(),
        };
        Ok(match data_type {
            DataType::Boolean => FieldType::Bool,
            DataType::Int8 => FieldType::Int8,
            DataType::Int16 | DataType::UInt8 => FieldType::Int16,
            DataType::Int32 | DataType::UInt16 => FieldType::Int32,
            DataType::Int64 | DataType::UInt32 => FieldType::Int64,
            DataType::UInt64 => {
                return Err(unsupported(
                    "values above i64::MAX do not fit int64; cast to decimal(20,0) first",
                ));
            }
            DataType::Float16 | DataType::Float32 => FieldType::Float32,
            DataType::Float64 => FieldType::Float64,
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) => {
                check_decimal(*p, *s).map_err(|reason| unsupported(&reason))?;
                FieldType::Decimal {
                    precision: *p,
                    scale: *s,
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::String,
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => FieldType::Binary,
            DataType::Date32 | DataType::Date64 => FieldType::Date,
            DataType::Timestamp(unit, tz) => FieldType::Timestamp {
                unit: TimeUnit::from_arrow(unit),
                tz: tz.as_deref().map(str::to_string),
            },
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::FixedSizeList(f, _) => {
                FieldType::list(FieldType::from_arrow(f.data_type())?)
            }
            DataType::Struct(fields) => FieldType::Struct(
                fields
                    .iter()
                    .map(|f| {
                        Ok(StructField::new(
                            f.name(),
                            FieldType::from_arrow(f.data_type())?,
                            f.is_nullable(),
                        ))
                    })
                    .collect::<Result<_, TypeError>>()?,
            ),
            DataType::Dictionary(_, values) => FieldType::from_arrow(values)?,
            DataType::RunEndEncoded(_, values) => FieldType::from_arrow(values.data_type())?,
            DataType::Null => {
                return Err(unsupported(
                    "a column of only nulls has no type; cast it to the intended type",
                ));
            }
            DataType::Time32(_) | DataType::Time64(_) => {
                return Err(unsupported(
                    "time of day is not supported; use string or int64",
                ));
            }
            DataType::Duration(_) | DataType::Interval(_) => {
                return Err(unsupported("durations are not supported; use int64"));
            }
            DataType::Map(_, _) => {
                return Err(unsupported(
                    "maps are not supported; use list<struct<key: ..., value: ...>>",
                ));
            }
            DataType::Union(_, _) => {
                return Err(unsupported("unions are not supported; use a struct"));
            }
        })
    }
}

fn check_decimal(precision: u8, scale: i8) -> Result<(), String> {
    if precision == 0 || precision > MAX_DECIMAL_PRECISION {
        return Err(format!(
            "decimal precision must be between 1 and {MAX_DECIMAL_PRECISION}, got {precision}"
        ));
    }
    // Negative scales exist in Arrow but not in Spark, Delta or PostgreSQL.
    if scale < 0 || scale as u8 > precision {
        return Err(format!(
            "decimal scale must be between 0 and the precision ({precision}), got {scale}"
        ));
    }
    Ok(())
}

/// Whether a struct member name prints bare; anything else is backtick-quoted.
fn is_bare_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_bare_timezone(tz: &str) -> bool {
    !tz.is_empty()
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '+' | '-' | ':' | '.'))
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    use fmt::Write;
    f.write_char(quote)?;
    for c in text.chars() {
        if c == quote {
            f.write_char(quote)?;
        }
        f.write_char(c)?;
    }
    f.write_char(quote)
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Bool => f.write_str("bool"),
            FieldType::Int8 => f.write_str("int8"),
            FieldType::Int16 => f.write_str("int16"),
            FieldType::Int32 => f.write_str("int32"),
            FieldType::Int64 => f.write_str("int64"),
            FieldType::Float32 => f.write_str("float32"),
            FieldType::Float64 => f.write_str("float64"),
            FieldType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            FieldType::String => f.write_str("string"),
            FieldType::Binary => f.write_str("binary"),
            FieldType::Date => f.write_str("date"),
            FieldType::Timestamp { unit, tz: None } => write!(f, "timestamp({unit})"),
            FieldType::Timestamp { unit, tz: Some(tz) } => {
                write!(f, "timestamp({unit}, ")?;
                if is_bare_timezone(tz) {
                    f.write_str(tz)?;
                } else {
                    write_quoted(f, tz, '\'')?;
                }
                f.write_str(")")
            }
            FieldType::List(element) => write!(f, "list<{element}>"),
            FieldType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if is_bare_identifier(&field.name) {
                        f.write_str(&field.name)?;
                    } else {
                        write_quoted(f, &field.name, '`')?;
                    }
                    write!(f, ": {}", field.field_type)?;
                    if !field.nullable {
                        f.write_str(" not null")?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

impl FromStr for FieldType {
    type Err = TypeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut parser = TypeParser::new(input);
        let parsed = parser.field_type(0)?;
        parser.skip_ws();
        if !parser.at_end() {
            return Err(parser.error("unexpected text after the type"));
        }
        Ok(parsed)
    }
}

/// Parses a type that may end in `not null`, as used by [`Columns`] mappings
/// (`order_id: int64 not null`). Returns the type and its nullability.
pub fn parse_type_with_nullability(input: &str) -> Result<(FieldType, bool), TypeError> {
    let mut parser = TypeParser::new(input);
    let parsed = parser.field_type(0)?;
    let nullable = parser.nullability()?;
    parser.skip_ws();
    if !parser.at_end() {
        return Err(parser.error("unexpected text after the type"));
    }
    Ok((parsed, nullable))
}

/// Recursive-descent parser over the type syntax. Positions are byte offsets.
struct TypeParser<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> TypeParser<'a> {
    fn new(input: &'a str) -> Self {
        TypeParser { input, pos: 0 }
    }

    fn error(&self, reason: impl Into<String>) -> TypeError {
        TypeError::Parse {
            input: self.input.to_string(),
            position: self.pos,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &'a str {
        self.input.get(self.pos..).unwrap_or("")
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    /// Consumes `expected` (after whitespace) or fails naming what was wanted.
    fn expect(&mut self, expected: char, what: &str) -> Result<(), TypeError> {
        self.skip_ws();
        match self.peek() {
            Some(c) if c == expected => {
                self.pos += c.len_utf8();
                Ok(())
            }
            Some(c) => Err(self.error(format!("expected {what} but found `{c}`"))),
            None => Err(self.error(format!("expected {what} but the type ended"))),
        }
    }

    fn eat(&mut self, expected: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    /// A run of ASCII letters, digits and underscores (may be empty).
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn number(&mut self, what: &str) -> Result<i64, TypeError> {
        self.skip_ws();
        let start = self.pos;
        let negative = self.eat('-');
        let digits = self.word();
        let value = if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            digits.parse::<i64>().ok()
        } else {
            None
        };
        match value {
            Some(v) => Ok(if negative { -v } else { v }),
            None => {
                self.pos = start;
                Err(self.error(format!("expected a number for {what}")))
            }
        }
    }

    /// A quoted string with the quote doubled inside; the opening quote is next.
    fn quoted(&mut self, quote: char) -> Result<String, TypeError> {
        let start = self.pos;
        self.pos += quote.len_utf8();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = start;
                    return Err(self.error(format!("unterminated {quote}quoted{quote} text")));
                }
                Some(c) if c == quote => {
                    self.pos += c.len_utf8();
                    if self.peek() == Some(quote) {
                        self.pos += c.len_utf8();
                        out.push(quote);
                    } else {
                        return Ok(out);
                    }
                }
                Some(c) => {
                    self.pos += c.len_utf8();
                    out.push(c);
                }
            }
        }
    }

    /// An optional trailing `not null`; returns the nullability.
    fn nullability(&mut self) -> Result<bool, TypeError> {
        let save = self.pos;
        let word = self.word();
        if word.eq_ignore_ascii_case("not") {
            let null = self.word();
            if null.eq_ignore_ascii_case("null") {
                return Ok(false);
            }
            return Err(self.error("expected `null` after `not`"));
        }
        if word.eq_ignore_ascii_case("null") {
            return Ok(true);
        }
        self.pos = save;
        Ok(true)
    }

    fn field_type(&mut self, depth: usize) -> Result<FieldType, TypeError> {
        if depth > MAX_NESTING {
            return Err(self.error(format!("types nest deeper than {MAX_NESTING} levels")));
        }
        self.skip_ws();
        let start = self.pos;
        let word = self.word();
        if word.is_empty() {
            return Err(match self.peek() {
                Some(c) => self.error(format!("expected a type name but found `{c}`")),
                None => self.error("expected a type name but the type is empty"),
            });
        }
        let name = word.to_ascii_lowercase();
        let parsed = match name.as_str() {
            "bool" | "boolean" => FieldType::Bool,
            "int8" | "tinyint" => FieldType::Int8,
            "int16" | "smallint" => FieldType::Int16,
            "int32" => FieldType::Int32,
            "int64" | "int" | "integer" | "long" | "bigint" => FieldType::Int64,
            "float32" | "float" => FieldType::Float32,
            "float64" | "double" => FieldType::Float64,
            "string" | "utf8" | "text" => FieldType::String,
            "binary" | "bytes" => FieldType::Binary,
            "date" => FieldType::Date,
            "decimal" | "numeric" => self.decimal_args()?,
            "timestamp" => self.timestamp_args(None)?,
            "timestamptz" => self.timestamp_args(Some("UTC".to_string()))?,
            "list" | "array" => {
                self.expect('<', "`<` after list")?;
                let element = self.field_type(depth + 1)?;
                self.expect('>', "`>` to close list<...>")?;
                FieldType::List(Box::new(element))
            }
            "struct" => self.struct_members(depth)?,
            _ => {
                self.pos = start;
                return Err(self.error(format!("unknown type `{word}`")));
            }
        };
        Ok(parsed)
    }

    fn decimal_args(&mut self) -> Result<FieldType, TypeError> {
        self.expect(
            '(',
            "`(precision, scale)` after decimal, e.g. decimal(10,2)",
        )?;
        let at = self.pos;
        let precision = self.number("the decimal precision")?;
        let scale = if self.eat(',') {
            self.number("the decimal scale")?
        } else {
            0
        };
        self.expect(')', "`)` to close decimal(...)")?;
        let (Ok(p), Ok(s)) = (u8::try_from(precision), i8::try_from(scale)) else {
            self.pos = at;
            return Err(self.error(format!(
                "decimal({precision},{scale}) is out of range: precision must be between 1 and {MAX_DECIMAL_PRECISION}"
            )));
        };
        if let Err(reason) = check_decimal(p, s) {
            self.pos = at;
            return Err(self.error(reason));
        }
        Ok(FieldType::Decimal {
            precision: p,
            scale: s,
        })
    }

    fn timestamp_args(&mut self, default_tz: Option<String>) -> Result<FieldType, TypeError> {
        if !self.eat('(') {
            return Ok(FieldType::Timestamp {
                unit: TimeUnit::Microsecond,
                tz: default_tz,
            });
        }
        let at = self.pos;
        let unit_word = self.word().to_ascii_lowercase();
        let Some(unit) = TimeUnit::parse(&unit_word) else {
            self.pos = at;
            self.skip_ws();
            return Err(self.error(format!(
                "unknown timestamp unit `{unit_word}`; use s, ms, us or ns"
            )));
        };
        let mut tz = default_tz;
        if self.eat(',') {
            self.skip_ws();
            let zone = match self.peek() {
                Some(q @ ('\'' | '"')) => self.quoted(q)?,
                _ => {
                    let rest = self.rest();
                    let len = rest.find(')').unwrap_or(rest.len());
                    self.pos += len;
                    rest[..len].trim().to_string()
                }
            };
            if zone.is_empty() {
                return Err(self.error("expected a time zone after `,`, e.g. UTC or +02:00"));
            }
            tz = Some(zone);
        }
        self.expect(')', "`)` to close timestamp(...)")?;
        Ok(FieldType::Timestamp { unit, tz })
    }

    fn struct_members(&mut self, depth: usize) -> Result<FieldType, TypeError> {
        self.expect('<', "`<` after struct")?;
        let mut fields: Vec<StructField> = Vec::new();
        loop {
            if self.eat('>') {
                break;
            }
            self.skip_ws();
            let at = self.pos;
            let name = match self.peek() {
                Some(q @ ('`' | '"')) => self.quoted(q)?,
                _ => self.word().to_string(),
            };
            if name.is_empty() {
                return Err(self.error("expected a struct member name, e.g. struct<id: int64>"));
            }
            if fields.iter().any(|f| f.name == name) {
                self.pos = at;
                return Err(self.error(format!("struct member `{name}` appears twice")));
            }
            self.expect(':', &format!("`:` after struct member `{name}`"))?;
            let field_type = self.field_type(depth + 1)?;
            let nullable = self.nullability()?;
            fields.push(StructField {
                name,
                field_type,
                nullable,
            });
            if self.eat('>') {
                break;
            }
            self.expect(',', "`,` or `>` in struct<...>")?;
        }
        Ok(FieldType::Struct(fields))
    }
}

impl Serialize for FieldType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = FieldType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type name such as int64, string or decimal(10,2)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldType, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(TypeVisitor)
    }
}

/// A named, typed column: the light schema used where stable ids and constraints are not
/// needed (pipeline inputs, SQL outputs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

impl Column {
    pub fn new(name: impl Into<String>, field_type: FieldType, nullable: bool) -> Self {
        Column {
            name: name.into(),
            field_type,
            nullable,
        }
    }

    pub fn to_arrow(&self) -> ArrowField {
        ArrowField::new(&self.name, self.field_type.to_arrow(), self.nullable)
    }
}

/// An ordered list of columns. In YAML it is either a mapping, in order
/// (`{order_id: int64 not null, amount: "decimal(10,2)"}`; a value may also be
/// `{type: ..., nullable: ...}`), or a list of `{name, type, nullable}`. Columns are
/// nullable unless said otherwise. Serializes as the list form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns(pub Vec<Column>);

impl Columns {
    pub fn iter(&self) -> std::slice::Iter<'_, Column> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Column> {
        self.0.iter().find(|c| c.name == name)
    }

    pub fn to_arrow_schema(&self) -> ArrowSchema {
        ArrowSchema::new(self.0.iter().map(Column::to_arrow).collect::<Fields>())
    }

    /// Columns of an Arrow schema; fails on the first column whose type has no sluice type.
    pub fn from_arrow_schema(schema: &ArrowSchema) -> Result<Columns, TypeError> {
        schema
            .fields()
            .iter()
            .map(|f| {
                Ok(Column::new(
                    f.name(),
                    FieldType::from_arrow(f.data_type())?,
                    f.is_nullable(),
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Columns)
    }
}

impl<'a> IntoIterator for &'a Columns {
    type Item = &'a Column;
    type IntoIter = std::slice::Iter<'a, Column>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Columns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The value side of the mapping form: a type string or `{type, nullable}`.
struct ColumnSpec {
    field_type: FieldType,
    nullable: bool,
}

impl<'de> Deserialize<'de> for ColumnSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(rename = "type")]
            field_type: FieldType,
            #[serde(default = "default_true")]
            nullable: bool,
        }

        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ColumnSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type such as `int64 not null` or {type: int64, nullable: false}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ColumnSpec, E> {
                let (field_type, nullable) = parse_type_with_nullability(v).map_err(E::custom)?;
                Ok(ColumnSpec {
                    field_type,
                    nullable,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ColumnSpec, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ColumnSpec {
                    field_type: full.field_type,
                    nullable: full.nullable,
                })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "columns as a mapping {name: type, ...} or a list of {name, type, nullable}",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut columns: Vec<Column> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let spec: ColumnSpec = map.next_value()?;
                    if columns.iter().any(|c| c.name == name) {
                        return Err(de::Error::custom(format!(
                            "column `{name}` is declared twice"
                        )));
                    }
                    columns.push(Column::new(name, spec.field_type, spec.nullable));
                }
                Ok(Columns(columns))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Columns, A::Error> {
                let mut columns: Vec<Column> = Vec::new();
                while let Some(column) = seq.next_element::<Column>()? {
                    if columns.iter().any(|c| c.name == column.name) {
                        return Err(de::Error::custom(format!(
                            "column `{}` is declared twice",
                            column.name
                        )));
                    }
                    columns.push(column);
                }
                Ok(Columns(columns))
            }
        }
        deserializer.deserialize_any(ColumnsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> FieldType {
        match s.parse::<FieldType>() {
            Ok(t) => t,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn aliases_parse_to_the_documented_types() {
        let cases: &[(&str, FieldType)] = &[
            ("bool", FieldType::Bool),
            ("BOOLEAN", FieldType::Bool),
            ("tinyint", FieldType::Int8),
            ("smallint", FieldType::Int16),
            ("int32", FieldType::Int32),
            ("int", FieldType::Int64),
            ("integer", FieldType::Int64),
            ("long", FieldType::Int64),
            ("BigInt", FieldType::Int64),
            ("float", FieldType::Float32),
            ("double", FieldType::Float64),
            ("utf8", FieldType::String),
            ("text", FieldType::String),
            ("bytes", FieldType::Binary),
            ("date", FieldType::Date),
            ("timestamp", FieldType::timestamp()),
            (
                "timestamp(ms)",
                FieldType::Timestamp {
                    unit: TimeUnit::Millisecond,
                    tz: None,
                },
            ),
            (
                " timestamp ( us , UTC ) ",
                FieldType::Timestamp {
                    unit: TimeUnit::Microsecond,
                    tz: Some("UTC".into()),
                },
            ),
            (
                "timestamptz",
                FieldType::Timestamp {
                    unit: TimeUnit::Microsecond,
                    tz: Some("UTC".into()),
                },
            ),
            (
                "Decimal( 10 , 2 )",
                FieldType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            (
                "numeric(7)",
                FieldType::Decimal {
                    precision: 7,
                    scale: 0,
                },
            ),
            ("LIST<Int32>", FieldType::list(FieldType::Int32)),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse(text), expected, "{text}");
        }
    }

    #[test]
    fn nested_struct_parses_with_nullability_and_quoted_names() {
        let t =
            parse("struct<a: int32, `b c`: list<struct<x: string not null>>, d: date NOT NULL>");
        let expected = FieldType::Struct(vec![
            StructField::new("a", FieldType::Int32, true),
            StructField::new(
                "b c",
                FieldType::list(FieldType::Struct(vec![StructField::new(
                    "x",
                    FieldType::String,
                    false,
                )])),
                true,
            ),
            StructField::new("d", FieldType::Date, false),
        ]);
        assert_eq!(t, expected);
        assert_eq!(
            t.to_string(),
            "struct<a: int32, `b c`: list<struct<x: string not null>>, d: date not null>"
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = "decimal(10,x)"
            .parse::<FieldType>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("decimal scale"), "{err}");
        assert!(err.contains("character 12"), "{err}");
        assert!(err.contains("Accepted types"), "{err}");

        let err = "strng".parse::<FieldType>().unwrap_err().to_string();
        assert!(err.contains("unknown type `strng`"), "{err}");

        let err = "decimal(80,2)"
            .parse::<FieldType>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("precision"), "{err}");
        let err = "decimal(5,6)".parse::<FieldType>().unwrap_err().to_string();
        assert!(err.contains("scale"), "{err}");
        assert!("list<int32".parse::<FieldType>().is_err());
        assert!("struct<a: int32, a: int64>".parse::<FieldType>().is_err());
        assert!("int64 garbage".parse::<FieldType>().is_err());
        assert!("timestamp(hours)".parse::<FieldType>().is_err());
        assert!("".parse::<FieldType>().is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}int32{}", "list<".repeat(10_000), ">".repeat(10_000));
        let err = deep.parse::<FieldType>().unwrap_err().to_string();
        assert!(err.contains("nest deeper"), "{err}");
    }

    #[test]
    fn arrow_physical_variants_collapse() {
        assert_eq!(
            FieldType::from_arrow(&DataType::LargeUtf8),
            Ok(FieldType::String)
        );
        assert_eq!(
            FieldType::from_arrow(&DataType::Utf8View),
            Ok(FieldType::String)
        );
        assert_eq!(
            FieldType::from_arrow(&DataType::BinaryView),
            Ok(FieldType::Binary)
        );
        assert_eq!(
            FieldType::from_arrow(&DataType::Date64),
            Ok(FieldType::Date)
        );
        assert_eq!(
            FieldType::from_arrow(&DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8)
            )),
            Ok(FieldType::String)
        );
        assert!(FieldType::from_arrow(&DataType::UInt64).is_err());
        assert_eq!(
            FieldType::from_arrow(&DataType::Decimal256(50, 4)),
            Ok(FieldType::Decimal {
                precision: 50,
                scale: 4
            })
        );
        assert_eq!(
            FieldType::Decimal {
                precision: 50,
                scale: 4
            }
            .to_arrow(),
            DataType::Decimal256(50, 4)
        );
    }

    #[test]
    fn columns_from_yaml_mapping_and_list() {
        let mapping: Columns = yaml_serde::from_str(
            "order_id: int64 not null\namount: \"decimal(10,2)\"\nnote: {type: string, nullable: false}\n",
        )
        .unwrap();
        let list: Columns = yaml_serde::from_str(
            "- {name: order_id, type: int64, nullable: false}\n- {name: amount, type: \"decimal(10,2)\"}\n- {name: note, type: text, nullable: false}\n",
        )
        .unwrap();
        assert_eq!(mapping, list);
        assert_eq!(mapping.0[0].name, "order_id");
        assert!(!mapping.0[0].nullable);
        assert!(mapping.0[1].nullable);
        let arrow = mapping.to_arrow_schema();
        assert_eq!(arrow.field(1).data_type(), &DataType::Decimal128(10, 2));
        assert!(!arrow.field(0).is_nullable());
        assert_eq!(Columns::from_arrow_schema(&arrow).unwrap(), mapping);

        let err = yaml_serde::from_str::<Columns>("a: int64\nb: strin\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown type `strin`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = yaml_serde::from_str::<Columns>("- {name: a, type: int64, extra: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
