//! Parsing and validation of playbook YAML.
//!
//! The text is parsed into a located tree ([`node`]) and then validated field by field into a
//! [`Playbook`]. The first problem found is returned as a [`PlaybookError`] naming the file, the
//! line and column of the offending node (of the enclosing mapping for a missing field; 1:1 for a
//! missing top-level field), the dotted field path (`consumers[1].slots.secondary`), a one-line
//! message and a help line saying what to do. Messages never echo env values, nor what was
//! written in a field that names a secret (`secret`, a consumer's `secret`,
//! `notify.webhook_env`): someone may have pasted a value or a URL there. Any other input an
//! error repeats goes through [`echo`], which keeps at most [`ECHO_CHARS`] characters.
//!
//! Every size is bounded ([`MAX_FILE_BYTES`], the node limits of [`node`], string lengths,
//! list lengths, and an upper bound on every duration), so loading does work linear in the
//! size of the file and nothing downstream can overflow when it adds a duration to a time.
//!
//! Checks run in a fixed order: top-level keys, `secret`, `environment`, `generate`, `cluster`,
//! `store` (and a `gcp` store with `cluster.lock`), `state_dir`, `timings`, `keep`, `concurrency`,
//! `max_age`, `notify`, `policy`, then each consumer in order, then round-trip targets across
//! consumers.
//!
//! Layout: `top` (the top level and the check order), `store`, `cluster`, `consumers` (the
//! list, each consumer and its kind), `keep` (what rotor keeps of its own state), `slots`
//! (slots and env), `probes` (probes, round trips and their targets), `read` (the typed field
//! readers every section uses) and `text` (how input appears in an error).

pub(crate) mod node;

#[cfg(test)]
mod robustness;

mod cluster;
mod consumers;
mod keep;
mod probes;
mod read;
mod slots;
mod store;
#[cfg(test)]
mod tests;
mod text;
mod tls;
mod top;

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use self::node::{Node, ParseError, Pos};
use self::text::{echo, echo_long, join};
use super::Playbook;

/// A playbook that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}\n  help: {help}")]
pub struct PlaybookError {
    /// File.
    pub file: String,
    /// Line (1-based; 0 when unknown).
    pub line: u64,
    /// Column (1-based; 0 when unknown).
    pub column: u64,
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: String,
}

/// Loads and validates a playbook file.
pub fn load_file(path: &Path) -> Result<Playbook, PlaybookError> {
    let source = path.display().to_string();
    let unreadable = |e: std::io::Error| PlaybookError {
        file: source.clone(),
        line: 0,
        column: 0,
        field: "-".to_string(),
        message: format!("cannot read playbook: {e}"),
        help: "check the path".to_string(),
    };
    // Never more than one byte past the limit, whatever the file is (a device, a huge log).
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    load_bytes(&bytes, &source, &base_dir)
}

/// Loads and validates playbook text; `source` names it in errors, `base_dir` resolves paths.
pub fn load_str(text: &str, source: &str, base_dir: &Path) -> Result<Playbook, PlaybookError> {
    load_bytes(text.as_bytes(), source, base_dir)
}

fn load_bytes(bytes: &[u8], source: &str, base_dir: &Path) -> Result<Playbook, PlaybookError> {
    let cx = Cx::new(source);
    let mut playbook = cx.load(bytes, base_dir)?;
    playbook.checksum = hex::encode(Sha256::digest(bytes));
    playbook.source = source.to_string();
    Ok(playbook)
}

/// What loading `text` did: the result, the nodes the parser produced (alias copies
/// included) and the validation steps taken (entries and items visited, fields looked up).
#[cfg(test)]
fn load_counted(bytes: &[u8]) -> (Result<Playbook, PlaybookError>, usize, usize) {
    let cx = Cx::new("test.yaml");
    let result = cx.load(bytes, Path::new("/base"));
    (result, cx.nodes.get(), cx.steps.get())
}

type Result<T, E = PlaybookError> = std::result::Result<T, E>;

/// Largest `concurrency`.
const MAX_CONCURRENCY: i128 = 1024;
/// Largest `generate.length` accepted.
const MAX_LENGTH: i128 = 4096;
/// Largest `instances` of a process consumer.
const MAX_INSTANCES: i128 = 64;

/// Largest playbook file, in bytes.
const MAX_FILE_BYTES: usize = 4 << 20;
/// Most characters of input an error repeats (see [`echo`]).
const ECHO_CHARS: usize = 80;
/// Longest string field (names, paths, URLs, headers), in bytes.
const MAX_STRING: usize = 4096;
/// Longest argument of a `command` or `apply`, and longest `env` value, in bytes.
const MAX_ARG: usize = 32 * 1024;
/// Most consumers in a playbook.
const MAX_CONSUMERS: usize = 1024;
/// Most arguments of a `command` or `apply` (the program included).
const MAX_ARGS: usize = 256;
/// Most `env` entries of a consumer.
const MAX_ENV: usize = 256;
/// Most `slots.aliases` of a consumer.
const MAX_ALIASES: usize = 64;
/// Most probes of a consumer.
const MAX_PROBES: usize = 16;
/// Most round trips of a consumer.
const MAX_ROUNDTRIPS: usize = 64;
/// Most status codes in an `accept` or `reject` list.
const MAX_STATUSES: usize = 32;
/// Most `targets` of an exec consumer.
const MAX_TARGETS: usize = 64;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// The longest wait a playbook may ask for: `grace`, `retention`, `max_age`.
const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);

/// Where errors are reported, and how much work validation did.
struct Cx<'a> {
    file: &'a str,
    /// Nodes the parser produced.
    nodes: Cell<usize>,
    /// Entries and items visited and fields looked up: linear in the nodes, whatever the
    /// document's shape (the tests hold it to that).
    steps: Cell<usize>,
}

/// A mapping's entries, checked for duplicate keys, with the path and position of the mapping.
struct Fields<'n> {
    path: String,
    /// Where a missing field is reported.
    pos: Pos,
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    /// Index of each key in `entries`.
    index: HashMap<&'n str, usize>,
}

impl<'n> Fields<'n> {
    /// Path of field `name` of this mapping.
    fn sub(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// The key and value of `name`, if present (even when the value is null).
    fn entry(&self, name: &str) -> Option<(&'n Node, &'n Node)> {
        self.index.get(name).map(|&i| {
            let (_, k, v) = self.entries[i];
            (k, v)
        })
    }

    /// The value of `name`; `None` when absent or null.
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entry(name).map(|(_, v)| v).filter(|v| !v.is_null())
    }
}

impl<'a> Cx<'a> {
    fn new(file: &'a str) -> Self {
        Cx {
            file,
            nodes: Cell::new(0),
            steps: Cell::new(0),
        }
    }

    /// Counts `n` steps of validation work.
    fn tick(&self, n: usize) {
        self.steps.set(self.steps.get().saturating_add(n));
    }

    fn err(
        &self,
        pos: Pos,
        field: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> PlaybookError {
        let field = field.into();
        PlaybookError {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            field: if field.is_empty() {
                "-".to_string()
            } else {
                field
            },
            message: message.into(),
            help: help.into(),
        }
    }

    /// The error for a document that could not be parsed.
    fn parse_error(&self, e: ParseError) -> PlaybookError {
        match e {
            ParseError::Syntax { pos, message } => self.err(
                pos,
                "-",
                format!("invalid YAML: {}", echo_long(&message)),
                "fix the YAML syntax at this position (indentation, quotes, brackets, `key: value`)",
            ),
            ParseError::MultipleDocuments { pos } => self.err(
                pos,
                "-",
                "the file holds more than one YAML document",
                "keep one document per playbook: one file per secret and environment",
            ),
            ParseError::TooManyNodes { pos } => self.err(
                pos,
                "-",
                format!(
                    "the document has more than {} nodes (values, lists and mappings, counting each copy an alias makes)",
                    node::MAX_NODES
                ),
                "split the playbook or shrink it: one playbook describes one secret",
            ),
            ParseError::TooDeep { pos } => self.err(
                pos,
                "-",
                format!(
                    "the document nests lists and mappings more than {} levels deep",
                    node::MAX_DEPTH
                ),
                "flatten it: a playbook needs no more than 6 levels",
            ),
            ParseError::TooMuchText { pos } => self.err(
                pos,
                "-",
                format!(
                    "the document's values add up to more than {} MiB (counting each copy an alias makes)",
                    node::MAX_TEXT >> 20
                ),
                "shrink it: a playbook names things, it holds no data",
            ),
            ParseError::Aliases { pos } => self.err(
                pos,
                "-",
                "the document uses too many anchors or aliases, or they expand too much",
                "write the repeated parts out, or share fewer of them",
            ),
            ParseError::TagMismatch { pos, tag } => self.err(
                pos,
                "-",
                format!("the tag `{}` does not fit the value it is on", echo(&tag)),
                "remove the tag: a playbook needs none",
            ),
            ParseError::Tag { pos, tag } => self.err(
                pos,
                "-",
                format!("unsupported YAML tag `{}`", echo(&tag)),
                "remove the tag: a playbook takes plain values (the only tags allowed are the core ones: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
            ),
        }
    }

    /// Parses and validates a whole playbook file's bytes.
    fn load(&self, bytes: &[u8], base_dir: &Path) -> Result<Playbook> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(self.err(
                Pos::START,
                "-",
                format!(
                    "the playbook is larger than {} MiB",
                    MAX_FILE_BYTES >> 20
                ),
                "one playbook describes one secret: split the consumers over several secrets, or remove what is not needed",
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            // Valid up to there; lines end at "\n", "\r\n" or "\r", as in YAML.
            let before = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let line = before.matches('\n').count() + before.matches('\r').count()
                - before.matches("\r\n").count()
                + 1;
            let line_start = before.rfind(['\n', '\r']).map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            self.err(
                Pos {
                    line: line as u64,
                    column: column as u64,
                },
                "-",
                "the playbook is not valid UTF-8",
                "save the file as UTF-8",
            )
        })?;
        let (parsed, nodes) = node::parse(text);
        self.nodes.set(nodes);
        let root = parsed.map_err(|e| self.parse_error(e))?;
        self.playbook(root.as_ref(), base_dir)
    }
}
