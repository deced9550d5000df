//! A located YAML tree for playbook validation.
//!
//! serde-saphyr parses the document into [`Node`]s that keep the line and column of every node
//! and the source text of every scalar, so validation can report each problem at the offending
//! node with its dotted field path, and can tell "no value" from "a number where a string was
//! expected". Duplicate keys are passed through so validation can name them; aliases and merge
//! keys are expanded by the parser.
//!
//! Parsing is bounded: at most [`MAX_NODES`] nodes (alias copies included), [`MAX_DEPTH`]
//! levels of nesting and [`MAX_TEXT`] bytes of scalar text (alias copies included), so the
//! work and memory spent on any input stay linear in its size. Only the YAML core schema's
//! tags are accepted.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::options::AliasLimits;
use serde_saphyr::{
    Budget, DuplicateKeyPolicy, Location, NonFiniteFloatPolicy, Options, Spanned, Tagged,
};

/// Most nodes (scalars, lists and mappings, each copy made by an alias included) a playbook
/// may hold.
pub(crate) const MAX_NODES: usize = 100_000;
/// Deepest nesting of lists and mappings.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most bytes all scalars together may hold, each copy made by an alias included.
pub(crate) const MAX_TEXT: usize = 8 << 20;

/// A line and column (1-based) in the playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    /// The start of the file, where problems with the whole document are reported.
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// The position of a parser location; the start of the file when it has none.
    pub fn of(loc: &Location) -> Pos {
        match (loc.line(), loc.column()) {
            (0, _) | (_, 0) => Pos::START,
            (line, column) => Pos { line, column },
        }
    }
}

/// The type of a scalar, as YAML inferred it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar {
    /// A string (quoted or plain).
    Str,
    /// An integer.
    Int(i128),
    /// An integer too large for any field (beyond ±2^127).
    HugeInt,
    /// A finite floating point number.
    Float,
    /// `.inf`, `-.inf` or `.nan`.
    NonFinite,
    /// `true` / `false`.
    Bool,
}

/// What a node holds.
#[derive(Debug)]
pub(crate) enum Value {
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
pub(crate) struct Node {
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
                Scalar::Int(_) | Scalar::HugeInt => "a whole number",
                Scalar::Float => "a decimal number",
                Scalar::NonFinite => "an infinite or not-a-number value",
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

/// Why a document could not be turned into a tree.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// The YAML is malformed; `message` is the parser's (it may quote the input).
    Syntax { pos: Pos, message: String },
    /// A second, non-empty document.
    MultipleDocuments { pos: Pos },
    /// More than [`MAX_NODES`] nodes.
    TooManyNodes { pos: Pos },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep { pos: Pos },
    /// More than [`MAX_TEXT`] bytes of scalars.
    TooMuchText { pos: Pos },
    /// Aliases that expand too much, or too many anchors or aliases.
    Aliases { pos: Pos },
    /// A tag outside the YAML core schema, as written (`!!python/object`, `!secret`).
    Tag { pos: Pos, tag: String },
    /// A core tag on a node of another kind (`!!int` on a list).
    TagMismatch { pos: Pos, tag: String },
}

/// Work done by the current parse, and which limit it broke, if any.
struct Tally {
    nodes: Cell<usize>,
    text: Cell<usize>,
    breach: Cell<Option<Limit>>,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Nodes,
    Text,
}

thread_local! {
    static TALLY: Tally = const {
        Tally {
            nodes: Cell::new(0),
            text: Cell::new(0),
            breach: Cell::new(None),
        }
    };
}

/// Counts one node of `bytes` bytes of text; an error once a limit is passed.
fn count<E: de::Error>(bytes: usize) -> Result<(), E> {
    TALLY.with(|t| {
        t.nodes.set(t.nodes.get() + 1);
        t.text.set(t.text.get().saturating_add(bytes));
        let breach = if t.nodes.get() > MAX_NODES {
            Some(Limit::Nodes)
        } else if t.text.get() > MAX_TEXT {
            Some(Limit::Text)
        } else {
            None
        };
        match breach {
            Some(limit) => {
                t.breach.set(Some(limit));
                Err(E::custom("playbook size limit exceeded"))
            }
            None => Ok(()),
        }
    })
}

/// The parser options: duplicates passed through, strict booleans, and every budget sized for
/// a playbook.
fn options() -> Options {
    let mut options = Options::default();
    options.with_snippet = false;
    options.emit_comments = false;
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.strict_booleans = true;
    options.reject_unsupported_tags = true;
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    let mut budget = Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = 4 * MAX_NODES;
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_total_scalar_bytes = MAX_TEXT;
    budget.max_anchors = 10_000;
    budget.max_aliases = 10_000;
    budget.max_merge_keys = 10_000;
    budget.max_recorded_anchor_events = MAX_NODES;
    budget.max_recorded_anchor_bytes = MAX_TEXT;
    budget.max_documents = 64;
    options.budget = Some(budget);
    let mut aliases = AliasLimits::default();
    aliases.max_total_replayed_events = 4 * MAX_NODES;
    aliases.max_replay_stack_depth = MAX_DEPTH;
    options.alias_limits = aliases;
    options
}

type Item = Spanned<Tagged<Raw>>;

/// Parses a playbook: one YAML document, possibly preceded or followed by empty ones (a
/// trailing `---`); `None` for a stream with no non-empty document. Also returns the number of
/// nodes the parser handed over (alias copies included), which bounds the work done.
pub(crate) fn parse(text: &str) -> (Result<Option<Node>, ParseError>, usize) {
    TALLY.with(|t| {
        t.nodes.set(0);
        t.text.set(0);
        t.breach.set(None);
    });
    let parsed = serde_saphyr::from_multiple_with_options::<Item>(text, options());
    let (nodes, breach) = TALLY.with(|t| (t.nodes.get(), t.breach.take()));
    let result = match parsed {
        Err(e) => Err(classify(text, &e, breach)),
        Ok(docs) => {
            let mut docs = docs.into_iter();
            match (docs.next(), docs.next()) {
                (None, _) => Ok(None),
                (Some(_), Some(second)) => Err(ParseError::MultipleDocuments {
                    pos: Pos::of(&second.referenced),
                }),
                (Some(first), None) => convert(text, first).map(Some),
            }
        }
    };
    (result, nodes)
}

/// Parses every document of a YAML stream (Kubernetes manifests, `---`-separated), empty
/// ones skipped, under the same bounds as [`parse`].
pub(crate) fn parse_all(text: &str) -> Result<Vec<Node>, ParseError> {
    TALLY.with(|t| {
        t.nodes.set(0);
        t.text.set(0);
        t.breach.set(None);
    });
    let parsed = serde_saphyr::from_multiple_with_options::<Item>(text, options());
    let breach = TALLY.with(|t| t.breach.take());
    match parsed {
        Err(e) => Err(classify(text, &e, breach)),
        Ok(docs) => docs.into_iter().map(|d| convert(text, d)).collect(),
    }
}

/// Turns a parser error into a [`ParseError`].
fn classify(source: &str, e: &serde_saphyr::Error, breach: Option<Limit>) -> ParseError {
    use serde_saphyr::Error as E;
    let pos = e.location().map_or(Pos::START, |l| Pos::of(&l));
    // What went wrong, without the wrapping an alias or a snippet adds.
    let mut e = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    match (breach, e) {
        (Some(Limit::Nodes), _) => ParseError::TooManyNodes { pos },
        (Some(Limit::Text), _) => ParseError::TooMuchText { pos },
        (None, E::MultipleDocuments { .. }) => ParseError::MultipleDocuments { pos },
        (None, E::UnsupportedTag { tag, .. }) => {
            let tag = shorthand(tag);
            let pos = tag_before(source, pos)
                .filter(|(_, written)| shorthand(written) == tag)
                .map_or(pos, |(at, _)| at);
            if core_tag(&tag) {
                ParseError::TagMismatch { pos, tag }
            } else {
                ParseError::Tag { pos, tag }
            }
        }
        // A known tag that is no core one on a scalar (`!!timestamp`): name it as written.
        (None, E::TaggedScalarCannotDeserializeIntoString { .. }) => {
            match tag_before(source, pos) {
                Some((pos, tag)) => ParseError::Tag { pos, tag },
                None => ParseError::Tag {
                    pos,
                    tag: "!".to_string(),
                },
            }
        }
        (None, E::Budget { breach, .. }) => match breach {
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
                ParseError::TooManyNodes { pos }
            }
            BudgetBreach::Depth { .. } => ParseError::TooDeep { pos },
            BudgetBreach::Documents { .. } => ParseError::MultipleDocuments { pos },
            BudgetBreach::ScalarBytes { .. } => ParseError::TooMuchText { pos },
            _ => ParseError::Aliases { pos },
        },
        (
            None,
            E::AliasReplayCounterOverflow { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. },
        ) => ParseError::Aliases { pos },
        (None, e) => {
            let full = e.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => &full[..i],
                None => &full,
            };
            // The parser's own nesting limit (flow collections) reads "recursion limit".
            if message.contains("recursion limit") || message.contains("nesting limit") {
                return ParseError::TooDeep { pos };
            }
            ParseError::Syntax {
                pos,
                message: message.trim().to_string(),
            }
        }
    }
}

/// The last tag written before `pos` on its line (`!!timestamp` in `at: !!timestamp 2001`),
/// and where it starts.
fn tag_before(source: &str, pos: Pos) -> Option<(Pos, String)> {
    // Lines end at "\n", "\r\n" or "\r", as in YAML.
    let line = source
        .split('\n')
        .flat_map(|l| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            l.split('\r')
        })
        .nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
    let column = usize::try_from(pos.column).ok()?.saturating_sub(1);
    let before: Vec<char> = line.chars().take(column).collect();
    let end = before.iter().rposition(|c| *c == '!')?;
    let start = before[..end]
        .iter()
        .rposition(|c| c.is_whitespace() || matches!(c, '[' | '{' | ','))
        .map_or(0, |i| i + 1);
    let tag: String = before[start..]
        .iter()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some((
        Pos {
            line: pos.line,
            column: start as u64 + 1,
        },
        tag,
    ))
}

/// `!!python/object` for `tag:yaml.org,2002:python/object` (also written verbatim,
/// `!<tag:yaml.org,2002:python/object>`); other tags as given.
fn shorthand(tag: &str) -> String {
    let uri = tag
        .strip_prefix("!<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(tag);
    match uri.strip_prefix("tag:yaml.org,2002:") {
        Some(rest) => format!("!!{rest}"),
        None => tag.to_string(),
    }
}

/// The tags a playbook may use: none, the non-specific `!`, and the YAML core schema's
/// (resolved, `tag:yaml.org,2002:int`, or in [`shorthand`], `!!int`).
fn core_tag(tag: &str) -> bool {
    let name = tag
        .strip_prefix("tag:yaml.org,2002:")
        .or_else(|| tag.strip_prefix("!!"));
    tag == "!"
        || name
            .is_some_and(|t| matches!(t, "null" | "bool" | "int" | "float" | "str" | "seq" | "map"))
}

/// The tree as serde-saphyr hands it over: values with their spans and tags.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    /// An unsigned integer beyond `i128`.
    HugeInt,
    Float(f64),
    Str(String),
    Seq(Vec<Item>),
    Map(Vec<(Item, Item)>),
}

/// A whole number as YAML writes it (`-12`, `+7`, `1_000`, `0x1F`, `0o17`, `0b101`), which
/// serde-saphyr hands over as a float when it does not fit 64 bits.
fn integer_spelling(text: &str) -> bool {
    let t = text.trim();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (digits, radix) = match t.get(..2) {
        Some("0x" | "0X") => (&t[2..], 16),
        Some("0o" | "0O") => (&t[2..], 8),
        Some("0b" | "0B") => (&t[2..], 2),
        _ => (t, 10),
    };
    digits.chars().any(|c| c.is_digit(radix))
        && digits.chars().all(|c| c == '_' || c.is_digit(radix))
}

/// The value of an integer spelling, if it fits an `i128`.
fn integer_value(text: &str) -> Option<i128> {
    let t = text.trim().replace('_', "");
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let (digits, radix) = match t.get(..2) {
        Some("0x" | "0X") => (&t[2..], 16),
        Some("0o" | "0O") => (&t[2..], 8),
        Some("0b" | "0B") => (&t[2..], 2),
        _ => (t, 10),
    };
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    if negative {
        0i128.checked_sub_unsigned(magnitude)
    } else {
        i128::try_from(magnitude).ok()
    }
}

fn convert(source: &str, raw: Item) -> Result<Node, ParseError> {
    let pos = Pos::of(&raw.referenced);
    let Tagged(value, tag) = raw.value;
    if let Some(tag) = tag.filter(|t| !core_tag(t)) {
        return Err(ParseError::Tag {
            pos,
            tag: shorthand(&tag),
        });
    }
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
    let value = match value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => scalar(Scalar::Bool, b.to_string()),
        Raw::Int(i) => scalar(Scalar::Int(i), i.to_string()),
        Raw::HugeInt => scalar(Scalar::HugeInt, "a huge number".to_string()),
        Raw::Float(f) => {
            let text = spelling().unwrap_or_else(|| f.to_string());
            let kind = if !f.is_finite() && !integer_spelling(&text) {
                Scalar::NonFinite
            } else if integer_spelling(&text) {
                integer_value(&text).map_or(Scalar::HugeInt, Scalar::Int)
            } else {
                Scalar::Float
            };
            Value::Scalar { kind, text }
        }
        Raw::Str(s) => Value::Scalar {
            kind: Scalar::Str,
            text: s,
        },
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|n| convert(source, n))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| Ok((convert(source, k)?, convert(source, v)?)))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Node { pos, value })
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
        count(0)?;
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        count(0)?;
        Ok(i128::try_from(v).map_or(Raw::HugeInt, Raw::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        count(0)?;
        Ok(Raw::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        count(v.len())?;
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        count(v.len())?;
        Ok(Raw::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        count(v.len())?;
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        count(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        count(0)?;
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}
