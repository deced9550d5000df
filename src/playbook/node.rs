//! A located YAML tree for playbook validation.
//!
//! serde-saphyr parses the document into [`Node`]s that keep the line and column of every node
//! and the source text of every scalar, so validation can report each problem at the offending
//! node with its dotted field path, and can tell "no value" from "a number where a string was
//! expected". Duplicate keys are passed through so validation can name them; aliases and merge
//! keys are expanded by the parser.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Location, Options, Spanned};

/// A line and column (1-based) in the playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    /// The start of the file, where problems with the whole document are reported.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(loc: &Location) -> Pos {
        Pos {
            line: loc.line(),
            column: loc.column(),
        }
    }
}

/// The type of a scalar, as YAML inferred it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Scalar {
    /// A string (quoted or plain).
    Str,
    /// An integer.
    Int(i128),
    /// A floating point number.
    Float,
    /// `true` / `false`.
    Bool,
}

/// What a node holds.
#[derive(Debug)]
pub(super) enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// A scalar; `text` is the string itself, or the source spelling of a number or boolean.
    Scalar { kind: Scalar, text: String },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order, duplicates included.
    Map(Vec<(Node, Node)>),
}

/// A YAML node and where it starts.
#[derive(Debug)]
pub(super) struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// "a string", "a list", ... for type errors.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { kind, .. } => match kind {
                Scalar::Str => "a string",
                Scalar::Int(_) => "a whole number",
                Scalar::Float => "a decimal number",
                Scalar::Bool => "a boolean",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// True for `~`, `null` or an empty value.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// Parses one YAML document.
pub(super) fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
    let mut options = Options::default();
    options.with_snippet = false;
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.strict_booleans = true;
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(text, options)?;
    Ok(convert(text, raw))
}

/// The tree as serde-saphyr hands it over: values with their spans.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

fn convert(source: &str, raw: Spanned<Raw>) -> Node {
    let pos = Pos::of(&raw.referenced);
    // The source spelling of a scalar (absent for aliases, whose span is the `*name` token).
    let spelling = || {
        let span = raw.referenced.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let text = source.get(start..start.checked_add(len)?)?;
        (!text.is_empty() && !text.starts_with('*')).then(|| text.to_string())
    };
    let scalar = |kind: Scalar, shown: String| Value::Scalar {
        kind,
        text: spelling().unwrap_or(shown),
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => scalar(Scalar::Bool, b.to_string()),
        Raw::Int(i) => scalar(Scalar::Int(i), i.to_string()),
        Raw::Float(f) => scalar(Scalar::Float, f.to_string()),
        Raw::Str(s) => Value::Scalar {
            kind: Scalar::Str,
            text: s,
        },
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|n| convert(source, n)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(source, k), convert(source, v)))
                .collect(),
        ),
    };
    Node { pos, value }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(i128::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}
