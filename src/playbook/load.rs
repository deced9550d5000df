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
//! `store`, `state_dir`, `timings`, `concurrency`, then each consumer in order, then round-trip
//! targets across consumers.

#[path = "node.rs"]
mod node;

#[cfg(test)]
#[path = "robustness.rs"]
mod robustness;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use self::node::{Node, ParseError, Pos, Scalar, Value};
use super::{
    ClusterSpec, ConsumerKind, ConsumerSpec, EXEC_TEMPLATE_FIELDS, Environment, ExecSpec, ExecVia,
    GcpCredentials, GcpStoreSpec, Generate, JournalKind, KubernetesSpec, LockKind, NotifySpec,
    Pickup, Playbook, PolicySpec, ProbeSpec, ProcessSpec, RoundtripSpec, SlotNames, SlotRef,
    StopSignal, StoreSpec, Timings, WorkloadKind, WorkloadRef,
};
use crate::protocol::Role;
use crate::secret::Alphabet;

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

const TOP_FIELDS: &[&str] = &[
    "secret",
    "environment",
    "generate",
    "store",
    "state_dir",
    "timings",
    "concurrency",
    "max_age",
    "notify",
    "policy",
    "cluster",
    "consumers",
];
const GENERATE_FIELDS: &[&str] = &["length", "alphabet"];
const STORE_FIELDS: &[&str] = &[
    "kind",
    "path",
    "namespace",
    "name",
    "project",
    "endpoint",
    "credentials",
    "retry_deadline",
    "write_interval",
];
/// Each store kind with the fields it takes.
const STORE_KINDS: &[(&str, &[&str])] = &[
    ("local", &["kind", "path"]),
    ("kubernetes", &["kind", "namespace", "name"]),
    (
        "gcp",
        &[
            "kind",
            "project",
            "name",
            "endpoint",
            "credentials",
            "retry_deadline",
            "write_interval",
        ],
    ),
];
/// How long a Lease lives without renewal unless `cluster.lease_duration` says otherwise.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
const CLUSTER_FIELDS: &[&str] = &["context", "namespace", "lock", "journal", "lease_duration"];
const WORKLOAD_FIELDS: &[&str] = &["kind", "name", "namespace"];
/// Fields only a `process` consumer takes.
const PROCESS_ONLY: &[&str] = &[
    "instances",
    "command",
    "env",
    "host",
    "health_path",
    "stop_signal",
];
/// Fields only a `kubernetes` consumer takes.
const KUBERNETES_ONLY: &[&str] = &["workload", "secret", "port"];
/// Fields only an `exec` consumer takes.
const EXEC_ONLY: &[&str] = &["apply", "targets"];
/// Largest `concurrency`.
const MAX_CONCURRENCY: i128 = 1024;
const TIMING_FIELDS: &[&str] = &[
    "rollout_timeout",
    "readiness_timeout",
    "soak",
    "grace",
    "retention",
    "drain",
    "probe_timeout",
];
const CONSUMER_FIELDS: &[&str] = &[
    "name",
    "role",
    "kind",
    "instances",
    "command",
    "env",
    "host",
    "health_path",
    "stop_signal",
    "workload",
    "secret",
    "port",
    "pickup",
    "fingerprints_path",
    "slots",
    "probes",
    "roundtrips",
    "apply",
    "targets",
];
/// Each consumer kind with the fields only it takes.
const CONSUMER_KINDS: &[(&str, &[&str])] = &[
    ("process", PROCESS_ONLY),
    ("kubernetes", KUBERNETES_ONLY),
    ("exec", EXEC_ONLY),
];
const SLOT_FIELDS: &[&str] = &["primary", "secondary", "aliases"];
const PROBE_TYPES: &[&str] = &["header", "jwt", "exec"];
const PROBE_FIELDS: &[&str] = &[
    "type", "path", "header", "ttl", "accept", "reject", "command", "via", "env_name",
];
const HEADER_FIELDS: &[&str] = &["type", "path", "header", "accept", "reject"];
const JWT_FIELDS: &[&str] = &["type", "path", "ttl", "accept", "reject"];
const EXEC_FIELDS: &[&str] = &["type", "command", "via", "env_name"];
const ROUNDTRIP_FIELDS: &[&str] = &["to", "path", "expect"];

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
/// `3650d`, `24h`, `10m`, `60s`, `500ms`: a bound as a playbook would write it.
fn bound(d: Duration) -> String {
    let s = d.as_secs();
    match (s, d.subsec_nanos()) {
        (0, _) => format!("{}ms", d.as_millis()),
        (s, 0) if s % 86_400 == 0 && s > 86_400 => format!("{}d", s / 86_400),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// Input repeated in an error: control characters escaped (an error stays one line), at most
/// [`ECHO_CHARS`] characters, the rest replaced by `…`. Every piece of the playbook an error
/// quotes goes through here.
fn echo(text: &str) -> String {
    echo_up_to(text, ECHO_CHARS)
}

/// A parser message, which may quote the input (an anchor's name): [`echo`] with room for the
/// parser's own words (the longest are about 70 characters).
fn echo_long(text: &str) -> String {
    echo_up_to(text, ECHO_CHARS + 40)
}

fn echo_up_to(text: &str, max: usize) -> String {
    // A run that looks like a generated value is named by its length, never quoted.
    let is_token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-');
    let mut masked = String::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if is_token(c) {
            run.push(c);
            continue;
        }
        if crate::secret::looks_like_a_value(&run) {
            masked.push_str(&format!("<{} that look like a secret>", characters(&run)));
        } else {
            masked.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            masked.push(c);
        }
    }
    let text = masked.as_str();
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// "48 characters", "1 character".
fn characters(text: &str) -> String {
    match text.chars().count() {
        1 => "1 character".to_string(),
        n => format!("{n} characters"),
    }
}

/// A status code as written: the code, where, and its field path.
type LocatedStatus = (u16, Pos, String);

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

/// `path.name`; a key written in the playbook is echoed, so it is truncated.
fn join(path: &str, name: &str) -> String {
    let name = echo(name);
    if path.is_empty() {
        name
    } else {
        format!("{path}.{name}")
    }
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}

/// [`list`] of the first few names, and how many more there are.
fn list_some(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    match names.len() {
        n if n > SHOWN => format!("{}, … ({} more)", names[..SHOWN].join(", "), n - SHOWN),
        _ => list(names),
    }
}

fn backticked(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Candidates are short: a long word is near none of them, and comparing it would cost
    // its length times theirs.
    if word.len() > 64 {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, c), *c))
        .filter(|(d, c)| *d <= 2.min(c.len() / 3 + 1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `service-secret`, `auth`: lowercase letters, digits and '-', starting with a letter, 1..=63.
fn is_name(s: &str) -> bool {
    name_problem(s).is_none()
}

/// What keeps `s` from being a name (see [`is_name`]), in words that do not quote it.
fn name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s.chars().count() > 63 {
        Some("it is longer than 63 characters")
    } else if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it does not start with a lowercase letter")
    } else if !s.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-')) {
        Some("it holds characters other than lowercase letters, digits and '-'")
    } else {
        None
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An HTTP token (RFC 9110 `tchar`s).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// "a validator", "a signer", "a `both` consumer".
fn a_role(role: Role) -> &'static str {
    match role {
        Role::Validator => "a validator",
        Role::Signer => "a signer",
        Role::Both => "a `both` consumer",
    }
}

/// Why rotor owns this environment variable name, if it does.
fn reserved_env(name: &str) -> Option<&'static str> {
    if name == "HOST" || name == "PORT" {
        Some("rotor sets HOST and PORT for every instance")
    } else if name.starts_with("ROTOR_") {
        Some("rotor sets the ROTOR_ variables itself")
    } else {
        None
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

    fn type_error(&self, node: &Node, path: &str, expected: &str, help: &str) -> PlaybookError {
        self.err(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.describe()),
            help,
        )
    }

    /// The entries of a mapping, with duplicate keys rejected. `pos` is where a missing field
    /// is reported.
    fn fields<'n>(&self, node: &'n Node, path: &str, pos: Pos, help: &str) -> Result<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_error(node, path, "a mapping", help));
        };
        self.tick(entries.len());
        let mut out: Vec<(&'n str, &'n Node, &'n Node)> = Vec::with_capacity(entries.len());
        let mut index: HashMap<&'n str, usize> = HashMap::with_capacity(entries.len());
        for (key, value) in entries {
            let Value::Scalar { text, .. } = &key.value else {
                return Err(self.err(
                    key.pos,
                    path,
                    format!("expected a field name, found {}", key.describe()),
                    "write each entry as `name: value`",
                ));
            };
            if index.insert(text.as_str(), out.len()).is_some() {
                let shown = echo(text);
                return Err(self.err(
                    key.pos,
                    join(path, text),
                    format!("duplicate key `{shown}`"),
                    format!("keep a single `{shown}` entry in this mapping"),
                ));
            }
            out.push((text.as_str(), key, value));
        }
        Ok(Fields {
            path: path.to_string(),
            pos,
            entries: out,
            index,
        })
    }

    /// Rejects keys not in `allowed`.
    fn only(&self, f: &Fields<'_>, allowed: &[&str], what: &str) -> Result<()> {
        self.tick(f.entries.len());
        for (name, key, _) in &f.entries {
            if !allowed.contains(name) {
                let help = match closest(name, allowed) {
                    Some(close) => {
                        format!("did you mean `{close}`? {what} takes: {}", list(allowed))
                    }
                    None => format!("remove it; {what} takes: {}", list(allowed)),
                };
                return Err(self.err(
                    key.pos,
                    f.sub(name),
                    format!("unknown field `{}`", echo(name)),
                    help,
                ));
            }
        }
        Ok(())
    }

    /// The value of a required field.
    fn require<'n>(&self, f: &Fields<'n>, name: &str, help: &str) -> Result<&'n Node> {
        self.tick(1);
        match f.entry(name) {
            None => Err(self.err(
                f.pos,
                f.sub(name),
                format!("missing required field `{name}`"),
                help,
            )),
            Some((key, value)) if value.is_null() => {
                Err(self.err(key.pos, f.sub(name), format!("`{name}` has no value"), help))
            }
            Some((_, value)) => Ok(value),
        }
    }

    /// A scalar's text (strings, and numbers or booleans as spelled), at most [`MAX_STRING`]
    /// bytes.
    fn text<'n>(&self, node: &'n Node, path: &str, help: &str) -> Result<&'n str> {
        self.text_up_to(node, path, help, MAX_STRING)
    }

    /// A scalar's text of at most `max` bytes.
    fn text_up_to<'n>(
        &self,
        node: &'n Node,
        path: &str,
        help: &str,
        max: usize,
    ) -> Result<&'n str> {
        match &node.value {
            Value::Scalar { text, .. } if text.len() > max => Err(self.err(
                node.pos,
                path,
                format!(
                    "the value is {} bytes long, more than the {max} allowed",
                    text.len()
                ),
                help,
            )),
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.type_error(node, path, "a string", help)),
        }
    }

    /// A whole number; `range` is only used to say that a huge one is out of it.
    fn int(
        &self,
        node: &Node,
        path: &str,
        range: std::ops::RangeInclusive<i128>,
        help: &str,
    ) -> Result<i128> {
        match &node.value {
            Value::Scalar {
                kind: Scalar::Int(i),
                ..
            } => Ok(*i),
            Value::Scalar {
                kind: Scalar::HugeInt,
                text,
            } => Err(self.err(
                node.pos,
                path,
                format!(
                    "{} is out of range ({} to {})",
                    echo(text),
                    range.start(),
                    range.end()
                ),
                help,
            )),
            _ => Err(self.type_error(node, path, "a whole number", help)),
        }
    }

    /// A command: a non-empty list of strings whose first element is not blank.
    fn command(&self, node: &Node, path: &str, help: &str) -> Result<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error(node, path, "a list of strings", help));
        };
        if items.is_empty() {
            return Err(self.err(node.pos, path, "the command is empty", help));
        }
        self.at_most(node, path, items.len(), MAX_ARGS, "arguments")?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let text = self.text_up_to(item, &item_path, help, MAX_ARG)?;
            if i == 0 && text.trim().is_empty() {
                return Err(self.err(item.pos, item_path, "the program name is empty", help));
            }
            out.push(text.to_string());
        }
        Ok(out)
    }

    /// One of `names`, as its index.
    fn choice(
        &self,
        node: &Node,
        path: &str,
        names: &[&str],
        what: &str,
        help: &str,
    ) -> Result<usize> {
        let text = self.text(node, path, help)?;
        names.iter().position(|n| *n == text).ok_or_else(|| {
            let help = match closest(text, names) {
                Some(close) if close != text && !help.contains(&format!("`{close}`")) => {
                    format!("did you mean `{close}`? {help}")
                }
                _ => help.to_string(),
            };
            self.err(
                node.pos,
                path,
                format!("unknown {what} `{}`", echo(text)),
                help,
            )
        })
    }

    /// Refuses a list of more than `max` `what`.
    fn at_most(&self, node: &Node, path: &str, len: usize, max: usize, what: &str) -> Result<()> {
        self.tick(len);
        if len > max {
            return Err(self.err(
                node.pos,
                path,
                format!("{len} {what}; at most {max} are allowed"),
                format!("list at most {max} {what}"),
            ));
        }
        Ok(())
    }

    /// A duration of at most `max`.
    fn duration(&self, node: &Node, path: &str, max: Duration) -> Result<Duration> {
        const HELP: &str = "write a number and a unit, e.g. 500ms, 30s, 5m, 2h or 7d";
        let Value::Scalar { text, .. } = &node.value else {
            return Err(self.type_error(node, path, "a duration", HELP));
        };
        let too_long = || {
            self.err(
                node.pos,
                path,
                format!("`{}` is longer than {}", echo(text), bound(max)),
                format!("set {path} to at most {}", bound(max)),
            )
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d > max => Err(too_long()),
            Ok(d) => Ok(d),
            Err(humantime::DurationError::NumberOverflow) => Err(too_long()),
            Err(_) => Err(self.err(
                node.pos,
                path,
                format!("`{}` is not a duration", echo(text)),
                HELP,
            )),
        }
    }

    /// An HTTP path: starts with '/', no whitespace.
    fn http_path(&self, node: &Node, path: &str, example: &str) -> Result<String> {
        let help = format!("write an absolute path starting with '/', e.g. {example}");
        let text = self.text(node, path, &help)?;
        if !text.starts_with('/') {
            return Err(self.err(
                node.pos,
                path,
                format!("`{}` does not start with '/'", echo(text)),
                help,
            ));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(
                node.pos,
                path,
                "the path contains whitespace",
                "percent-encode spaces (%20) or remove them",
            ));
        }
        Ok(text.to_string())
    }

    /// An environment variable name.
    fn env_name(&self, node: &Node, path: &str, example: &str) -> Result<String> {
        let help =
            format!("use letters, digits and '_', not starting with a digit, e.g. {example}");
        let text = self.text(node, path, &help)?;
        if !is_env_name(text) {
            return Err(self.err(
                node.pos,
                path,
                format!("`{}` is not a valid environment variable name", echo(text)),
                help,
            ));
        }
        Ok(text.to_string())
    }

    /// `notify.webhook_env`: the name of the variable that holds the webhook URL. What was
    /// written is never repeated: a URL there is a credential.
    fn webhook_env(&self, node: &Node, path: &str) -> Result<String> {
        const HELP: &str = "put the URL in an environment variable and name the variable here, e.g. `webhook_env: ROTOR_WEBHOOK_URL`: the URL is a credential, so it stays out of the playbook (and is not repeated here)";
        let text = self.text(node, path, HELP)?;
        if !is_env_name(text) {
            let looks = if text.contains("://") {
                "; it looks like a URL"
            } else {
                ""
            };
            return Err(self.err(
                node.pos,
                path,
                format!(
                    "`webhook_env` must be an environment variable name: letters, digits and '_', not starting with a digit (got {} that are not{looks})",
                    characters(text)
                ),
                HELP,
            ));
        }
        Ok(text.to_string())
    }

    /// A slot or probe variable name: a valid env name that rotor does not set itself.
    fn own_env_name(&self, node: &Node, path: &str, example: &str) -> Result<String> {
        let name = self.env_name(node, path, example)?;
        if let Some(why) = reserved_env(&name) {
            return Err(self.err(
                node.pos,
                path,
                format!("`{}` is reserved: {why}", echo(&name)),
                format!("choose another name, e.g. {example}"),
            ));
        }
        Ok(name)
    }

    fn status(&self, node: &Node, path: &str) -> Result<u16> {
        const HELP: &str = "use an HTTP status code between 100 and 599";
        let code = self.int(node, path, 100..=599, HELP)?;
        match u16::try_from(code) {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(self.err(
                node.pos,
                path,
                format!("{code} is not an HTTP status code"),
                HELP,
            )),
        }
    }

    /// `accept` or `reject` of an HTTP probe: a non-empty list of status codes.
    fn statuses(
        &self,
        f: &Fields<'_>,
        name: &str,
        default: &[u16],
    ) -> Result<(Vec<u16>, Vec<LocatedStatus>)> {
        let path = f.sub(name);
        let help = format!("write a list of status codes, e.g. {name}: {default:?}");
        let Some(node) = f.get(name) else {
            return Ok((default.to_vec(), Vec::new()));
        };
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error(node, &path, "a list of status codes", &help));
        };
        if items.is_empty() {
            return Err(self.err(
                node.pos,
                path,
                "the list is empty",
                format!("list at least one status, or remove `{name}` to use {default:?}"),
            ));
        }
        self.at_most(node, &path, items.len(), MAX_STATUSES, "status codes")?;
        let mut codes = Vec::new();
        let mut located = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let code = self.status(item, &item_path)?;
            codes.push(code);
            located.push((code, item.pos, item_path));
        }
        Ok((codes, located))
    }

    fn playbook(&self, root: Option<&Node>, base_dir: &Path) -> Result<Playbook> {
        let Some(root) = root.filter(|r| !r.is_null()) else {
            return Err(self.err(
                Pos::START,
                "-",
                "the playbook is empty",
                "start from the example in docs/playbook.md",
            ));
        };
        let top = self.fields(
            root,
            "",
            Pos::START,
            "a playbook is a mapping: secret, environment, store, consumers, ...",
        )?;
        self.only(&top, TOP_FIELDS, "a playbook")?;

        // secret
        let node = self.require(
            &top,
            "secret",
            "name the secret, e.g. `secret: service-secret`",
        )?;
        const SECRET_HELP: &str = "write the secret's name, e.g. `secret: service-secret`, never its value: what was written is not repeated here in case it is one";
        let secret = self.text(node, "secret", SECRET_HELP)?;
        // Someone may have pasted the value here: say what is wrong without repeating it.
        if let Some(problem) = name_problem(secret) {
            return Err(self.err(
                node.pos,
                "secret",
                format!(
                    "`secret` must be a name of 1 to 63 lowercase letters, digits and '-', starting with a letter (got {} that are not: {problem})",
                    characters(secret)
                ),
                SECRET_HELP,
            ));
        }

        // environment
        let env_help = format!("use one of {}", list(Environment::NAMES));
        let node = self.require(
            &top,
            "environment",
            &format!("set `environment` to one of {}", list(Environment::NAMES)),
        )?;
        let environment = match self.choice(
            node,
            "environment",
            Environment::NAMES,
            "environment",
            &env_help,
        )? {
            0 => Environment::Production,
            1 => Environment::Staging,
            2 => Environment::Test,
            _ => Environment::Development,
        };

        let generate = self.generate(&top, environment)?;
        let cluster = self.cluster(&top)?;
        let namespace = cluster
            .as_ref()
            .map_or_else(|| "default".to_string(), |c| c.namespace.clone());
        let store = self.store(&top, base_dir, &namespace)?;
        if matches!(store, StoreSpec::Gcp(_))
            && let Some(node) = top.get("cluster")
            && let Some((key, _)) = self.fields(node, "cluster", node.pos, "")?.entry("lock")
        {
            return Err(self.err(
                key.pos,
                "cluster.lock",
                "a gcp store keeps the rotation lock on the secret itself (annotation `rotor-lock`)",
                "remove `cluster.lock`: two rotors on different machines or clusters both see the secret's lock",
            ));
        }

        // state_dir
        let state_dir = match top.get("state_dir") {
            None => base_dir
                .join(".rotor")
                .join(format!("{secret}-{}", environment.as_str())),
            Some(node) => {
                let help = "give a directory, relative to the playbook or absolute, e.g. .rotor/service-secret";
                let text = self.text(node, "state_dir", help)?;
                if text.trim().is_empty() {
                    return Err(self.err(node.pos, "state_dir", "the path is empty", help));
                }
                base_dir.join(text)
            }
        };

        let timings = self.timings(&top)?;

        let concurrency = match top.get("concurrency") {
            None => 1,
            Some(node) => {
                let help = format!(
                    "set concurrency to how many consumers of one wave may roll at once, 1 to {MAX_CONCURRENCY}"
                );
                let n = self.int(node, "concurrency", 1..=MAX_CONCURRENCY, &help)?;
                if !(1..=MAX_CONCURRENCY).contains(&n) {
                    return Err(self.err(
                        node.pos,
                        "concurrency",
                        format!("concurrency {n} is out of range (1 to {MAX_CONCURRENCY})"),
                        help,
                    ));
                }
                n as usize
            }
        };

        let max_age = match top.get("max_age") {
            None => None,
            Some(node) => {
                let d = self.duration(node, "max_age", TEN_YEARS)?;
                if d < Duration::from_secs(3600) {
                    return Err(self.err(
                        node.pos,
                        "max_age",
                        format!(
                            "max_age {} is shorter than 1h",
                            humantime::format_duration(d)
                        ),
                        "give the longest a value may stay primary, e.g. `max_age: 90d`",
                    ));
                }
                Some(d)
            }
        };

        let notify = self.notify(&top, base_dir)?;
        let mut policy = PolicySpec::default();
        if let Some(node) = top.get("policy") {
            let f = self.fields(
                node,
                "policy",
                node.pos,
                "write `policy:` with `weak_values_file` under it",
            )?;
            self.only(&f, &["weak_values_file"], "policy")?;
            if let Some(node) = f.get("weak_values_file") {
                const HELP: &str = "give a file of known weak values, one per line, relative to the playbook, e.g. weak-values.txt";
                let text = self.text(node, "policy.weak_values_file", HELP)?;
                if text.trim().is_empty() {
                    return Err(self.err(
                        node.pos,
                        "policy.weak_values_file",
                        "the path is empty",
                        HELP,
                    ));
                }
                policy.weak_values_file = Some(base_dir.join(text));
            }
        }

        // consumers
        let node = self.require(
            &top,
            "consumers",
            "list the services that use the secret under `consumers` (see docs/playbook.md)",
        )?;
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error(
                node,
                "consumers",
                "a list of consumers",
                "write each consumer as a list item starting with `- name: ...`",
            ));
        };
        if items.is_empty() {
            return Err(self.err(
                node.pos,
                "consumers",
                "at least one consumer is required",
                "list the services that use the secret under `consumers` (see docs/playbook.md)",
            ));
        }
        self.at_most(node, "consumers", items.len(), MAX_CONSUMERS, "consumers")?;
        let mut consumers: Vec<ConsumerSpec> = Vec::with_capacity(items.len());
        // Each consumer's index by name.
        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut targets: Vec<(usize, usize, Pos)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let (consumer, name_pos, to_positions) = self.consumer(item, i, &namespace)?;
            if let Some(&j) = by_name.get(&consumer.name) {
                return Err(self.err(
                    name_pos,
                    format!("consumers[{i}].name"),
                    format!(
                        "consumer name `{}` is already used by consumers[{j}]",
                        consumer.name
                    ),
                    "give every consumer a unique name",
                ));
            }
            targets.extend(
                to_positions
                    .into_iter()
                    .enumerate()
                    .map(|(r, pos)| (i, r, pos)),
            );
            by_name.insert(consumer.name.clone(), i);
            consumers.push(consumer);
        }

        // round-trip targets
        let validators: Vec<&str> = consumers
            .iter()
            .filter(|c| c.role.validates())
            .map(|c| c.name.as_str())
            .collect();
        self.tick(targets.len());
        for (i, r, pos) in targets {
            let to = &consumers[i].roundtrips[r].to;
            let path = format!("consumers[{i}].roundtrips[{r}].to");
            let help = format!(
                "point `to` at a consumer whose role is validator or both: {}",
                list_some(&validators)
            );
            match by_name.get(to).map(|&j| &consumers[j]) {
                None => {
                    return Err(self.err(
                        pos,
                        path,
                        format!("no consumer named `{}` in this playbook", echo(to)),
                        help,
                    ));
                }
                Some(target) if !target.role.validates() => {
                    return Err(self.err(
                        pos,
                        path,
                        format!("`{}` is a signer: it does not validate, so a round trip to it proves nothing", echo(to)),
                        help,
                    ));
                }
                Some(_) => {}
            }
        }

        // A cluster is needed as soon as one part lives there.
        let uses_cluster = matches!(store, StoreSpec::Kubernetes { .. })
            || consumers
                .iter()
                .any(|c| matches!(c.kind, ConsumerKind::Kubernetes(_)));
        let cluster = match cluster {
            Some(c) => Some(c),
            None if uses_cluster => Some(ClusterSpec {
                context: None,
                namespace,
                lock: LockKind::Lease,
                journal: JournalKind::File,
                lease_duration: DEFAULT_LEASE_DURATION,
            }),
            None => None,
        };

        Ok(Playbook {
            source: String::new(),
            checksum: String::new(),
            base_dir: base_dir.to_path_buf(),
            secret: secret.to_string(),
            environment,
            generate,
            store,
            state_dir,
            timings,
            consumers,
            cluster,
            concurrency,
            max_age,
            notify,
            policy,
        })
    }

    fn cluster(&self, top: &Fields<'_>) -> Result<Option<ClusterSpec>> {
        let Some(node) = top.get("cluster") else {
            return Ok(None);
        };
        let f = self.fields(
            node,
            "cluster",
            node.pos,
            "write `cluster:` with `namespace` (and optionally `context`, `lock`, `journal`) under it",
        )?;
        self.only(&f, CLUSTER_FIELDS, "cluster")?;
        let context = match f.get("context") {
            None => None,
            Some(node) => {
                const HELP: &str = "name a context of your kubeconfig (`kubectl config get-contexts`), or leave `context` out to use the current one";
                let text = self.text(node, "cluster.context", HELP)?;
                if text.trim().is_empty() {
                    return Err(self.err(
                        node.pos,
                        "cluster.context",
                        "the context is empty",
                        HELP,
                    ));
                }
                Some(text.to_string())
            }
        };
        let namespace = match f.get("namespace") {
            None => "default".to_string(),
            Some(node) => self.k8s_name(node, "cluster.namespace", "namespace", true)?,
        };
        let lock = match f.get("lock") {
            None => LockKind::Lease,
            Some(node) => match self.choice(
                node,
                "cluster.lock",
                &["lease", "file"],
                "lock",
                "use `lease` (a coordination.k8s.io Lease, safe across machines) or `file` (one machine only)",
            )? {
                0 => LockKind::Lease,
                _ => LockKind::File,
            },
        };
        let journal = match f.get("journal") {
            None => JournalKind::File,
            Some(node) => match self.choice(
                node,
                "cluster.journal",
                &["configmap", "file"],
                "journal",
                "use `configmap` (survives a rescheduled Job) or `file` (the state directory)",
            )? {
                0 => JournalKind::ConfigMap,
                _ => JournalKind::File,
            },
        };
        let lease_duration = match f.get("lease_duration") {
            None => DEFAULT_LEASE_DURATION,
            Some(node) => {
                let d = self.duration(node, "cluster.lease_duration", HOUR)?;
                if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&d) {
                    return Err(self.err(
                        node.pos,
                        "cluster.lease_duration",
                        format!("{} is out of range (3s to 1h)", humantime::format_duration(d)),
                        "set how long a Lease outlives a rotor that stopped renewing it, e.g. 30s (renewals run every third of it)",
                    ));
                }
                d
            }
        };
        Ok(Some(ClusterSpec {
            context,
            namespace,
            lock,
            journal,
            lease_duration,
        }))
    }

    /// A Kubernetes object name: a DNS label (namespaces) or subdomain (everything else).
    fn k8s_name(&self, node: &Node, path: &str, what: &str, label: bool) -> Result<String> {
        self.k8s_name_shown(node, path, what, label, true)
    }

    /// [`Self::k8s_name`]; unless `shown`, an invalid name is not repeated in the error.
    fn k8s_name_shown(
        &self,
        node: &Node,
        path: &str,
        what: &str,
        label: bool,
        shown: bool,
    ) -> Result<String> {
        let help = if label {
            format!(
                "a {what} is 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. demo"
            )
        } else {
            format!(
                "a {what} is up to 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, e.g. auth-secrets"
            )
        };
        let text = self.text(node, path, &help)?;
        let max = if label { 63 } else { 253 };
        let ok = !text.is_empty()
            && text.len() <= max
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.')
            })
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            let message = if shown {
                format!("`{}` is not a valid {what}", echo(text))
            } else {
                format!(
                    "`{}` must be a {what} (got {} that are not; not repeated in case they are a value)",
                    path.rsplit('.').next().unwrap_or(path),
                    characters(text)
                )
            };
            return Err(self.err(node.pos, path, message, help));
        }
        Ok(text.to_string())
    }

    fn generate(&self, top: &Fields<'_>, environment: Environment) -> Result<Generate> {
        let min = environment.min_length();
        let mut generate = Generate {
            length: min,
            alphabet: Alphabet::Alphanumeric,
        };
        let Some(node) = top.get("generate") else {
            return Ok(generate);
        };
        let f = self.fields(
            node,
            "generate",
            node.pos,
            "write `generate:` with `length` and/or `alphabet` under it",
        )?;
        self.only(&f, GENERATE_FIELDS, "generate")?;
        if let Some(node) = f.get("length") {
            let help =
                format!("set generate.length to at least {min} (or remove it to use the minimum)");
            let length = self.int(node, "generate.length", min as i128..=MAX_LENGTH, &help)?;
            if length < min as i128 {
                return Err(self.err(
                    node.pos,
                    "generate.length",
                    format!(
                        "{length} is below the minimum of {min} for {}",
                        environment.as_str()
                    ),
                    help,
                ));
            }
            if length > MAX_LENGTH {
                return Err(self.err(
                    node.pos,
                    "generate.length",
                    format!("{length} is above the maximum of {MAX_LENGTH}"),
                    format!("set generate.length between {min} and {MAX_LENGTH}"),
                ));
            }
            generate.length = length as usize;
        }
        if let Some(node) = f.get("alphabet") {
            let help = format!("use one of {}", list(Alphabet::NAMES));
            generate.alphabet = match self.choice(
                node,
                "generate.alphabet",
                Alphabet::NAMES,
                "alphabet",
                &help,
            )? {
                0 => Alphabet::Alphanumeric,
                1 => Alphabet::Base64url,
                _ => Alphabet::Hex,
            };
        }
        Ok(generate)
    }

    fn store(&self, top: &Fields<'_>, base_dir: &Path, namespace: &str) -> Result<StoreSpec> {
        let node = self.require(
            top,
            "store",
            "add a store, e.g. `store: {kind: local, path: store.json}`",
        )?;
        let f = self.fields(
            node,
            "store",
            node.pos,
            "write `store:` with `kind` (and what that kind takes) under it",
        )?;
        self.only(&f, STORE_FIELDS, "store")?;
        const KIND_HELP: &str =
            "use `local` (a file), `kubernetes` (a Secret) or `gcp` (Google Cloud Secret Manager)";
        let kind = self.require(&f, "kind", KIND_HELP)?;
        let text = self.text(kind, "store.kind", KIND_HELP)?;
        let Some((_, takes)) = STORE_KINDS.iter().find(|(k, _)| *k == text) else {
            return Err(self.err(
                kind.pos,
                "store.kind",
                format!("unknown store kind `{}`", echo(text)),
                KIND_HELP,
            ));
        };
        for (field, key, _) in &f.entries {
            if !takes.contains(field) {
                return Err(self.err(
                    key.pos,
                    f.sub(field),
                    format!("a {text} store has no `{field}`"),
                    format!("remove `{field}`; a {text} store takes {}", list(takes)),
                ));
            }
        }
        match text {
            "kubernetes" => {
                const NAME_HELP: &str =
                    "name the Secret that holds the values, e.g. `name: service-secret-store`";
                let node = self.require(&f, "name", NAME_HELP)?;
                let name = self.k8s_name(node, "store.name", "Secret name", false)?;
                let namespace = match f.get("namespace") {
                    None => namespace.to_string(),
                    Some(node) => self.k8s_name(node, "store.namespace", "namespace", true)?,
                };
                Ok(StoreSpec::Kubernetes { namespace, name })
            }
            "gcp" => self.gcp_store(&f).map(StoreSpec::Gcp),
            _ => {
                const PATH_HELP: &str = "give the store file, relative to the playbook's directory or absolute, e.g. store.json";
                let node = self.require(&f, "path", PATH_HELP)?;
                let path = self.text(node, "store.path", PATH_HELP)?;
                if path.trim().is_empty() {
                    return Err(self.err(node.pos, "store.path", "the path is empty", PATH_HELP));
                }
                Ok(StoreSpec::Local {
                    path: base_dir.join(path),
                })
            }
        }
    }

    fn gcp_store(&self, f: &Fields<'_>) -> Result<GcpStoreSpec> {
        const PROJECT_HELP: &str = "give the Google Cloud project id (6 to 30 lowercase letters, digits or hyphens, starting with a letter), e.g. `project: my-project`";
        let node = self.require(f, "project", PROJECT_HELP)?;
        let project = self.text(node, "store.project", PROJECT_HELP)?;
        let valid_project = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && !project.ends_with('-')
            && project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_project {
            return Err(self.err(
                node.pos,
                "store.project",
                format!("`{}` is not a project id", echo(project)),
                PROJECT_HELP,
            ));
        }
        const NAME_HELP: &str = "name the Secret Manager secret (letters, digits, `-` and `_`, at most 255), e.g. `name: service-secret`";
        let node = self.require(f, "name", NAME_HELP)?;
        let name = self.text(node, "store.name", NAME_HELP)?;
        if name.is_empty()
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err(
                node.pos,
                "store.name",
                format!("`{}` is not a secret id", echo(name)),
                NAME_HELP,
            ));
        }
        let endpoint = match f.get("endpoint") {
            None => None,
            Some(node) => {
                const HELP: &str = "give a URL, e.g. `https://secretmanager.googleapis.com` or a private endpoint; leave it out for Google's";
                let text = self.text(node, "store.endpoint", HELP)?.trim();
                if !(text.starts_with("https://") || text.starts_with("http://"))
                    || text.len() <= "https://".len()
                {
                    return Err(self.err(
                        node.pos,
                        "store.endpoint",
                        format!("`{}` is not an http(s) URL", echo(text)),
                        HELP,
                    ));
                }
                Some(text.trim_end_matches('/').to_string())
            }
        };
        let credentials = match f.get("credentials") {
            None => GcpCredentials::Default,
            Some(node) => match self.choice(
                node,
                "store.credentials",
                &["default", "anonymous"],
                "credentials",
                "use `default` (Application Default Credentials) or `anonymous` (emulators and the lab only)",
            )? {
                0 => GcpCredentials::Default,
                _ => GcpCredentials::Anonymous,
            },
        };
        let mut spec = GcpStoreSpec {
            project: project.to_string(),
            name: name.to_string(),
            endpoint,
            credentials,
            retry_deadline: Duration::from_secs(60),
            write_interval: Duration::from_millis(500),
        };
        if let Some(node) = f.get("retry_deadline") {
            spec.retry_deadline = self.duration(node, "store.retry_deadline", HOUR)?;
            if spec.retry_deadline < Duration::from_secs(1) {
                return Err(self.err(
                    node.pos,
                    "store.retry_deadline",
                    "the retry deadline is shorter than 1s",
                    "give at least 1s (the default is 60s)",
                ));
            }
        }
        if let Some(node) = f.get("write_interval") {
            spec.write_interval = self.duration(node, "store.write_interval", MINUTE)?;
            if spec.write_interval < crate::store::gcp::MIN_WRITE_INTERVAL {
                return Err(self.err(
                    node.pos,
                    "store.write_interval",
                    "the write interval is shorter than 500ms",
                    "give at least 500ms (the default): Google allows 2 writes per second per secret",
                ));
            }
        }
        Ok(spec)
    }

    fn notify(&self, top: &Fields<'_>, base_dir: &Path) -> Result<NotifySpec> {
        let mut spec = NotifySpec::default();
        let Some(node) = top.get("notify") else {
            return Ok(spec);
        };
        let f = self.fields(
            node,
            "notify",
            node.pos,
            "write `notify:` with `webhook_env` and/or `metrics_file` under it",
        )?;
        self.only(&f, &["webhook_env", "metrics_file"], "notify")?;
        if let Some(node) = f.get("webhook_env") {
            spec.webhook_env = Some(self.webhook_env(node, "notify.webhook_env")?);
        }
        if let Some(node) = f.get("metrics_file") {
            const HELP: &str = "give a file for node-exporter's textfile collector, e.g. /var/lib/node_exporter/textfile/rotor-service-secret.prom";
            let text = self.text(node, "notify.metrics_file", HELP)?;
            if text.trim().is_empty() {
                return Err(self.err(node.pos, "notify.metrics_file", "the path is empty", HELP));
            }
            spec.metrics_file = Some(base_dir.join(text));
        }
        Ok(spec)
    }

    fn timings(&self, top: &Fields<'_>) -> Result<Timings> {
        let mut t = Timings::default();
        let Some(node) = top.get("timings") else {
            return Ok(t);
        };
        let f = self.fields(
            node,
            "timings",
            node.pos,
            "write `timings:` with durations under it, e.g. `grace: 5m`",
        )?;
        self.only(&f, TIMING_FIELDS, "timings")?;
        // Each entry with its upper bound.
        let slots: [(&str, &mut Duration, Duration); 7] = [
            ("rollout_timeout", &mut t.rollout_timeout, DAY),
            ("readiness_timeout", &mut t.readiness_timeout, DAY),
            ("soak", &mut t.soak, HOUR),
            ("grace", &mut t.grace, TEN_YEARS),
            ("retention", &mut t.retention, TEN_YEARS),
            ("drain", &mut t.drain, HOUR),
            ("probe_timeout", &mut t.probe_timeout, 10 * MINUTE),
        ];
        for (name, slot, max) in slots {
            if let Some(node) = f.get(name) {
                let path = f.sub(name);
                let d = self.duration(node, &path, max)?;
                let positive = matches!(
                    name,
                    "rollout_timeout" | "readiness_timeout" | "probe_timeout"
                );
                if positive && d.is_zero() {
                    return Err(self.err(
                        node.pos,
                        &path,
                        format!("{name} must be greater than 0"),
                        format!(
                            "set {path} to a positive duration such as {}",
                            humantime::format_duration(*slot)
                        ),
                    ));
                }
                *slot = d;
            }
        }
        if t.readiness_timeout > t.rollout_timeout {
            let (pos, path) = match (f.get("readiness_timeout"), f.get("rollout_timeout")) {
                (Some(n), _) => (n.pos, "timings.readiness_timeout"),
                (None, Some(n)) => (n.pos, "timings.rollout_timeout"),
                (None, None) => (f.pos, "timings"),
            };
            return Err(self.err(
                pos,
                path,
                format!(
                    "readiness_timeout ({}) is longer than rollout_timeout ({})",
                    humantime::format_duration(t.readiness_timeout),
                    humantime::format_duration(t.rollout_timeout)
                ),
                "lower timings.readiness_timeout or raise timings.rollout_timeout: an instance must be ready within its rollout",
            ));
        }
        Ok(t)
    }

    /// One consumer; also returns the position of its name and of each round trip's `to`.
    fn consumer(
        &self,
        node: &Node,
        i: usize,
        namespace: &str,
    ) -> Result<(ConsumerSpec, Pos, Vec<Pos>)> {
        let path = format!("consumers[{i}]");
        let mut f = self.fields(
            node,
            &path,
            node.pos,
            "write each consumer as a mapping: `- name: auth`, `role: ...`, ...",
        )?;
        if let Some((key, _)) = f.entry("name") {
            f.pos = key.pos;
        }
        self.only(&f, CONSUMER_FIELDS, "a consumer")?;

        const NAME_HELP: &str =
            "use 1 to 63 lowercase letters, digits and '-', starting with a letter, e.g. auth";
        let node = self.require(&f, "name", NAME_HELP)?;
        let name_path = f.sub("name");
        let name = self.text(node, &name_path, NAME_HELP)?.to_string();
        if !is_name(&name) {
            return Err(self.err(
                node.pos,
                name_path,
                format!("`{}` is not a valid consumer name", echo(&name)),
                NAME_HELP,
            ));
        }
        let name_pos = node.pos;

        let role_help = format!("use one of {}", list(Role::NAMES));
        let node = self.require(
            &f,
            "role",
            &format!("set `role` to one of {}", list(Role::NAMES)),
        )?;
        let role = match self.choice(node, &f.sub("role"), Role::NAMES, "role", &role_help)? {
            0 => Role::Validator,
            1 => Role::Signer,
            _ => Role::Both,
        };

        const KIND_HELP: &str = "use `process` (local processes started by rotor), `kubernetes` (a Deployment, StatefulSet or DaemonSet) or `exec` (a command that points the consumer at the store's versions)";
        let node = self.require(&f, "kind", KIND_HELP)?;
        let kind = self.text(node, &f.sub("kind"), KIND_HELP)?;
        let Some((_, takes)) = CONSUMER_KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(self.err(
                node.pos,
                f.sub("kind"),
                format!("unknown consumer kind `{}`", echo(kind)),
                KIND_HELP,
            ));
        };
        for (_, only) in CONSUMER_KINDS.iter().filter(|(k, _)| *k != kind) {
            for field in *only {
                if takes.contains(field) {
                    continue;
                }
                if let Some((key, _)) = f.entry(field) {
                    let a = if kind.starts_with('e') { "an" } else { "a" };
                    return Err(self.err(
                        key.pos,
                        f.sub(field),
                        format!("{a} `{kind}` consumer has no `{field}`"),
                        format!(
                            "remove `{field}`; {a} `{kind}` consumer takes {}",
                            backticked(takes)
                        ),
                    ));
                }
            }
        }

        let slots = self.slots(&f, role)?;
        let kind_spec = match kind {
            "process" => ConsumerKind::Process(self.process(&f, &slots)?),
            "kubernetes" => ConsumerKind::Kubernetes(self.kubernetes(&f, namespace)?),
            _ => ConsumerKind::Exec(self.exec(&f)?),
        };

        let pickup = match f.get("pickup") {
            None => Pickup::Restart,
            Some(node) => {
                let path = f.sub("pickup");
                match self.choice(
                    node,
                    &path,
                    &["restart", "reload"],
                    "pickup",
                    "use `restart`",
                )? {
                    0 => Pickup::Restart,
                    _ => {
                        return Err(self.err(
                            node.pos,
                            path,
                            format!("pickup `reload` is not supported by `{kind}` consumers yet"),
                            "use `restart`; hot reload comes with consumers that re-read a file",
                        ));
                    }
                }
            }
        };

        let fingerprints_path = match f.get("fingerprints_path") {
            None => None,
            Some(node) => {
                Some(self.http_path(node, &f.sub("fingerprints_path"), "/fingerprints")?)
            }
        };

        let probes = self.probes(&f, role)?;
        let (roundtrips, to_positions) = self.roundtrips(&f, role)?;

        Ok((
            ConsumerSpec {
                name,
                role,
                kind: kind_spec,
                slots,
                pickup,
                probes,
                roundtrips,
                fingerprints_path,
            },
            name_pos,
            to_positions,
        ))
    }

    /// The fields of a `process` consumer.
    fn process(&self, f: &Fields<'_>, slots: &SlotNames) -> Result<ProcessSpec> {
        let instances_help = format!("set instances to a whole number from 1 to {MAX_INSTANCES}");
        let node = self.require(f, "instances", &instances_help)?;
        let n = self.int(
            node,
            &f.sub("instances"),
            1..=MAX_INSTANCES,
            &instances_help,
        )?;
        if !(1..=MAX_INSTANCES).contains(&n) {
            return Err(self.err(
                node.pos,
                f.sub("instances"),
                format!("{n} instances is out of range (1 to {MAX_INSTANCES})"),
                instances_help,
            ));
        }
        let instances = n as usize;

        const COMMAND_HELP: &str = "give the program and its arguments as a list, e.g. [\"./service\", \"--port-from-env\"]";
        let node = self.require(f, "command", COMMAND_HELP)?;
        let command = self.command(node, &f.sub("command"), COMMAND_HELP)?;

        let env = self.env(f, slots)?;

        let host = match f.get("host") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(node) => {
                const HELP: &str = "use a loopback address such as 127.0.0.1 or ::1: process consumers run on this machine";
                let path = f.sub("host");
                let text = self.text(node, &path, HELP)?;
                let ip: IpAddr = text.trim().parse().map_err(|_| {
                    self.err(
                        node.pos,
                        &path,
                        format!("`{}` is not an IP address", echo(text)),
                        HELP,
                    )
                })?;
                if !ip.is_loopback() {
                    return Err(self.err(
                        node.pos,
                        &path,
                        format!("{ip} is not a loopback address"),
                        HELP,
                    ));
                }
                ip
            }
        };

        let health_path = match f.get("health_path") {
            None => "/healthz".to_string(),
            Some(node) => self.http_path(node, &f.sub("health_path"), "/healthz")?,
        };

        let stop_signal = match f.get("stop_signal") {
            None => StopSignal::default(),
            Some(node) => {
                let path = f.sub("stop_signal");
                let help = format!(
                    "name the signal that stops an instance gracefully: one of {}",
                    StopSignal::NAMES.join(", ")
                );
                let text = self.text(node, &path, &help)?;
                StopSignal::parse(text).ok_or_else(|| {
                    self.err(
                        node.pos,
                        &path,
                        format!("`{}` is not a stop signal rotor sends", echo(text)),
                        help.clone(),
                    )
                })?
            }
        };

        Ok(ProcessSpec {
            instances,
            command,
            env,
            host,
            health_path,
            stop_signal,
        })
    }

    /// The fields of an `exec` consumer.
    fn exec(&self, f: &Fields<'_>) -> Result<ExecSpec> {
        let fields = EXEC_TEMPLATE_FIELDS
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let help = format!(
            "give the program and its arguments as a list, e.g. [\"./update.sh\", \"{{primary_version}}\"]; template fields: {fields}"
        );
        let node = self.require(f, "apply", &help)?;
        let path = f.sub("apply");
        let apply = self.command(node, &path, &help)?;
        for (i, arg) in apply.iter().enumerate() {
            let mut rest = arg.as_str();
            while let Some(open) = rest.find('{') {
                let after = &rest[open + 1..];
                let Some(close) = after.find('}') else { break };
                let field = &after[..close];
                // `${VAR}` and `${VAR:+…}` belong to a shell, not to rotor.
                let shell = rest[..open].ends_with('$');
                if !shell && !EXEC_TEMPLATE_FIELDS.contains(&field) {
                    let item = match &node.value {
                        Value::Seq(items) => items.get(i).map_or(node.pos, |n| n.pos),
                        _ => node.pos,
                    };
                    return Err(self.err(
                        item,
                        format!("{path}[{i}]"),
                        format!("unknown template field `{{{}}}`", echo(field)),
                        format!("use one of {fields}; a value never reaches the command"),
                    ));
                }
                rest = &after[close + 1..];
            }
        }
        const TARGETS_HELP: &str = "list where the consumer serves as host:port, for its probes, e.g. [\"api.example.com:443\"]";
        let mut targets = Vec::new();
        {
            let node = self.require(f, "targets", TARGETS_HELP)?;
            let path = f.sub("targets");
            let Value::Seq(items) = &node.value else {
                return Err(self.type_error(node, &path, "a list of host:port", TARGETS_HELP));
            };
            if items.is_empty() {
                return Err(self.err(
                    node.pos,
                    &path,
                    "no targets: rotor could not prove anything about this consumer",
                    TARGETS_HELP,
                ));
            }
            self.at_most(node, &path, items.len(), MAX_TARGETS, "targets")?;
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let text = self.text(item, &p, TARGETS_HELP)?;
                let ok = text.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !ok {
                    return Err(self.err(
                        item.pos,
                        p,
                        format!("`{}` is not host:port", echo(text)),
                        TARGETS_HELP,
                    ));
                }
                targets.push(text.to_string());
            }
        }
        Ok(ExecSpec { apply, targets })
    }

    /// The fields of a `kubernetes` consumer.
    fn kubernetes(&self, f: &Fields<'_>, namespace: &str) -> Result<KubernetesSpec> {
        const WORKLOAD_HELP: &str =
            "name the workload, e.g. `workload: {kind: Deployment, name: auth}`";
        let node = self.require(f, "workload", WORKLOAD_HELP)?;
        let path = f.sub("workload");
        let w = self.fields(node, &path, node.pos, WORKLOAD_HELP)?;
        self.only(&w, WORKLOAD_FIELDS, "a workload")?;
        let kind_help = format!("use one of {}", list(WorkloadKind::NAMES));
        let node = self.require(&w, "kind", &kind_help)?;
        let kind = match self.choice(
            node,
            &w.sub("kind"),
            WorkloadKind::NAMES,
            "workload kind",
            &kind_help,
        )? {
            0 => WorkloadKind::Deployment,
            1 => WorkloadKind::StatefulSet,
            _ => WorkloadKind::DaemonSet,
        };
        let node = self.require(&w, "name", WORKLOAD_HELP)?;
        let name = self.k8s_name(node, &w.sub("name"), "workload name", false)?;
        let namespace = match w.get("namespace") {
            None => namespace.to_string(),
            Some(node) => self.k8s_name(node, &w.sub("namespace"), "namespace", true)?,
        };

        const SECRET_HELP: &str = "name the Secret the workload reads the slots from (same namespace), e.g. `secret: auth-secrets`";
        let node = self.require(f, "secret", SECRET_HELP)?;
        let secret = self.k8s_name_shown(node, &f.sub("secret"), "Secret name", false, false)?;

        let port = match f.get("port") {
            None => None,
            Some(node) => {
                const HELP: &str = "give the container port probes reach on every pod, 1 to 65535, or leave it out to use the first containerPort";
                let n = self.int(node, &f.sub("port"), 1..=65535, HELP)?;
                if !(1..=65535).contains(&n) {
                    return Err(self.err(
                        node.pos,
                        f.sub("port"),
                        format!("port {n} is out of range (1 to 65535)"),
                        HELP,
                    ));
                }
                Some(n as u16)
            }
        };
        Ok(KubernetesSpec {
            workload: WorkloadRef {
                kind,
                namespace,
                name,
            },
            secret,
            port,
        })
    }

    fn slots(&self, consumer: &Fields<'_>, role: Role) -> Result<SlotNames> {
        let node = self.require(
            consumer,
            "slots",
            "name the variables the values arrive in, e.g. `slots: {primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}`",
        )?;
        let path = consumer.sub("slots");
        let f = self.fields(
            node,
            &path,
            node.pos,
            "write `slots:` with `primary`, `secondary` and `aliases` under it",
        )?;
        self.only(&f, SLOT_FIELDS, "slots")?;

        let node = self.require(
            &f,
            "primary",
            "name the primary slot's variable, e.g. `primary: SERVICE_SECRET`",
        )?;
        let primary = self.own_env_name(node, &f.sub("primary"), "SERVICE_SECRET")?;
        // Every name and where it was given, to keep them distinct.
        let mut names: Vec<(String, String)> = vec![(primary.clone(), f.sub("primary"))];

        let secondary = match (f.get("secondary"), role) {
            (Some(node), Role::Signer) => {
                return Err(self.err(
                    node.pos,
                    f.sub("secondary"),
                    "a signer only sends the primary, so it has no secondary slot",
                    "remove slots.secondary, or make the role `both` if this consumer also validates",
                ));
            }
            (None, Role::Signer) => None,
            (None, _) => {
                let (pos, message) = match f.entry("secondary") {
                    Some((key, _)) => (key.pos, "`secondary` has no value".to_string()),
                    None => (
                        f.pos,
                        format!(
                            "{} needs a secondary slot: it must accept two values during the rotation",
                            a_role(role)
                        ),
                    ),
                };
                return Err(self.err(
                    pos,
                    f.sub("secondary"),
                    message,
                    "add slots.secondary, e.g. `secondary: SERVICE_SECRET_PREVIOUS`",
                ));
            }
            (Some(node), _) => {
                let path = f.sub("secondary");
                let name = self.own_env_name(node, &path, "SERVICE_SECRET_PREVIOUS")?;
                self.distinct(&names, &name, node.pos, &path)?;
                names.push((name.clone(), path));
                Some(name)
            }
        };

        let mut aliases = BTreeMap::new();
        if let Some(node) = f.get("aliases") {
            let path = f.sub("aliases");
            let a = self.fields(
                node,
                &path,
                node.pos,
                "write aliases as a mapping, e.g. `aliases: {SECRET_KEY: primary}`",
            )?;
            self.at_most(node, &path, a.entries.len(), MAX_ALIASES, "aliases")?;
            for (alias, key, value) in &a.entries {
                let alias_path = a.sub(alias);
                let alias = self.own_env_name(key, &alias_path, "SECRET_KEY")?;
                let slot_help = if role.validates() {
                    "use `primary` or `secondary`"
                } else {
                    "use `primary`: a signer has no secondary slot"
                };
                if value.is_null() {
                    return Err(self.err(
                        key.pos,
                        &alias_path,
                        format!("alias `{}` names no slot", echo(&alias)),
                        slot_help,
                    ));
                }
                let slot = match self.choice(
                    value,
                    &alias_path,
                    &["primary", "secondary"],
                    "slot",
                    slot_help,
                )? {
                    0 => SlotRef::Primary,
                    _ if !role.validates() => {
                        return Err(self.err(
                            value.pos,
                            &alias_path,
                            "a signer has no secondary slot to alias",
                            slot_help,
                        ));
                    }
                    _ => SlotRef::Secondary,
                };
                self.distinct(&names, &alias, key.pos, &alias_path)?;
                names.push((alias.clone(), alias_path));
                aliases.insert(alias, slot);
            }
        }
        Ok(SlotNames {
            primary,
            secondary,
            aliases,
        })
    }

    /// Rejects `name` if an earlier slot or alias already uses it.
    fn distinct(&self, names: &[(String, String)], name: &str, pos: Pos, path: &str) -> Result<()> {
        if let Some((_, other)) = names.iter().find(|(n, _)| n == name) {
            return Err(self.err(
                pos,
                path,
                format!("`{}` is already used by {other}", echo(name)),
                "give every slot and alias its own variable name",
            ));
        }
        Ok(())
    }

    fn env(&self, consumer: &Fields<'_>, slots: &SlotNames) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let Some(node) = consumer.get("env") else {
            return Ok(env);
        };
        let path = consumer.sub("env");
        let f = self.fields(
            node,
            &path,
            node.pos,
            "write env as a mapping, e.g. `env: {LOG_LEVEL: info}`",
        )?;
        self.at_most(node, &path, f.entries.len(), MAX_ENV, "env entries")?;
        for (name, key, value) in &f.entries {
            let key_path = f.sub(name);
            let name = self.env_name(key, &key_path, "LOG_LEVEL")?;
            if let Some(why) = reserved_env(&name) {
                return Err(self.err(
                    key.pos,
                    &key_path,
                    format!("env key `{}` is reserved: {why}", echo(&name)),
                    format!("remove `{}` from env", echo(&name)),
                ));
            }
            let is_slot = name == slots.primary
                || slots.secondary.as_deref() == Some(name.as_str())
                || slots.aliases.contains_key(&name);
            if is_slot {
                return Err(self.err(
                    key.pos,
                    &key_path,
                    format!("env key `{}` is also a slot name", echo(&name)),
                    format!(
                        "remove `{}` from env: rotor sets it to the slot's value",
                        echo(&name)
                    ),
                ));
            }
            let value = match &value.value {
                Value::Scalar { text, .. } if text.len() > MAX_ARG => {
                    return Err(self.err(
                        value.pos,
                        &key_path,
                        format!(
                            "the value is {} bytes long, more than the {MAX_ARG} allowed",
                            text.len()
                        ),
                        "env is for short settings; point the consumer at a file for anything longer",
                    ));
                }
                Value::Scalar { text, .. } => text.clone(),
                Value::Null => {
                    return Err(self.err(
                        key.pos,
                        &key_path,
                        format!("env key `{}` has no value", echo(&name)),
                        "give it a value, or write \"\" for an empty one",
                    ));
                }
                _ => {
                    return Err(self.err(
                        value.pos,
                        &key_path,
                        format!("expected a string, found {}", value.describe()),
                        "env values are strings; quote the value",
                    ));
                }
            };
            env.insert(name, value);
        }
        Ok(env)
    }

    /// The items of an optional list field of at most `max` items; empty when absent or
    /// null.
    fn items<'n>(&self, f: &Fields<'n>, name: &str, max: usize, help: &str) -> Result<&'n [Node]> {
        match f.get(name) {
            None => Ok(&[]),
            Some(node) => match &node.value {
                Value::Seq(items) => {
                    self.at_most(node, &f.sub(name), items.len(), max, name)?;
                    Ok(items)
                }
                _ => Err(self.type_error(node, &f.sub(name), "a list", help)),
            },
        }
    }

    fn probes(&self, consumer: &Fields<'_>, role: Role) -> Result<Vec<ProbeSpec>> {
        const HELP: &str = "list probes as items, e.g. `- type: header`";
        let items = self.items(consumer, "probes", MAX_PROBES, HELP)?;
        let path = consumer.sub("probes");
        if !role.validates() {
            if let Some(node) = consumer.get("probes").filter(|_| !items.is_empty()) {
                return Err(self.err(
                    node.pos,
                    path,
                    "a signer does not validate, so it has no probes",
                    "remove the probes (a signer is proven by its roundtrips), or make the role `both`",
                ));
            }
            return Ok(Vec::new());
        }
        if items.is_empty() {
            let pos = consumer
                .entry("probes")
                .map_or(consumer.pos, |(k, _)| k.pos);
            return Err(self.err(
                pos,
                path,
                format!("{} needs at least one probe", a_role(role)),
                "add a probe that presents a value to an instance, e.g. `- {type: header, path: /api/ping, header: X-Service-Secret}`",
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(j, item)| self.probe(item, &format!("{path}[{j}]")))
            .collect()
    }

    fn probe(&self, node: &Node, path: &str) -> Result<ProbeSpec> {
        let f = self.fields(
            node,
            path,
            node.pos,
            "write each probe as a mapping starting with `- type: ...`",
        )?;
        // The type decides which fields are allowed; find it first, complain about it after
        // unknown fields.
        let kind = f.get("type").and_then(|n| match &n.value {
            Value::Scalar { text, .. } => PROBE_TYPES.iter().position(|t| t == text),
            _ => None,
        });
        let allowed = match kind {
            Some(0) => HEADER_FIELDS,
            Some(1) => JWT_FIELDS,
            Some(_) => EXEC_FIELDS,
            None => PROBE_FIELDS,
        };
        let what = match kind {
            Some(k) => format!("a `{}` probe", PROBE_TYPES[k]),
            None => "a probe".to_string(),
        };
        for (name, key, _) in &f.entries {
            if PROBE_FIELDS.contains(name) && !allowed.contains(name) {
                return Err(self.err(
                    key.pos,
                    f.sub(name),
                    format!("`{name}` is not allowed in {what}"),
                    format!("remove it; {what} takes: {}", list(allowed)),
                ));
            }
        }
        self.only(&f, allowed, &what)?;
        let type_help = format!(
            "use {}",
            backticked(&["type: header", "type: jwt", "type: exec"])
        );
        let node = self.require(&f, "type", &type_help)?;
        let kind = self.choice(node, &f.sub("type"), PROBE_TYPES, "probe type", &type_help)?;
        match kind {
            0 | 1 => {
                let node =
                    self.require(&f, "path", "give the request path, e.g. `path: /api/ping`")?;
                let http_path = self.http_path(node, &f.sub("path"), "/api/ping")?;
                let (accept, accept_at) = self.statuses(&f, "accept", &[200])?;
                let (reject, _) = self.statuses(&f, "reject", &[401, 403])?;
                if let Some((code, pos, at)) = accept_at.iter().find(|(c, _, _)| reject.contains(c))
                {
                    return Err(self.err(
                        *pos,
                        at,
                        format!("{code} is in both accept and reject"),
                        "a status means accepted or rejected, not both: remove it from one list",
                    ));
                }
                if kind == 0 {
                    const HEADER_HELP: &str =
                        "name the header the value is sent in, e.g. `header: X-Service-Secret`";
                    let node = self.require(&f, "header", HEADER_HELP)?;
                    let header_path = f.sub("header");
                    let header = self.text(node, &header_path, HEADER_HELP)?;
                    if !is_header_name(header) {
                        return Err(self.err(
                            node.pos,
                            header_path,
                            format!("`{}` is not a valid HTTP header name", echo(header)),
                            "use letters, digits and '-' (no spaces or ':'), e.g. X-Service-Secret",
                        ));
                    }
                    Ok(ProbeSpec::Header {
                        path: http_path,
                        header: header.to_string(),
                        accept,
                        reject,
                    })
                } else {
                    let ttl = match f.get("ttl") {
                        None => Duration::from_secs(60),
                        Some(node) => {
                            let ttl = self.duration(node, &f.sub("ttl"), DAY)?;
                            if ttl.is_zero() {
                                return Err(self.err(
                                    node.pos,
                                    f.sub("ttl"),
                                    "ttl must be greater than 0",
                                    "set ttl to the token lifetime, e.g. 60s",
                                ));
                            }
                            ttl
                        }
                    };
                    Ok(ProbeSpec::Jwt {
                        path: http_path,
                        ttl,
                        accept,
                        reject,
                    })
                }
            }
            _ => {
                const COMMAND_HELP: &str =
                    "give the check program and its arguments as a list, e.g. [\"./check.sh\"]";
                let node = self.require(&f, "command", COMMAND_HELP)?;
                let command = self.command(node, &f.sub("command"), COMMAND_HELP)?;
                const VIA_HELP: &str = "use `env` (with env_name) or `stdin`: the value never goes on the command line";
                let node = self.require(&f, "via", VIA_HELP)?;
                let via = self.choice(
                    node,
                    &f.sub("via"),
                    &["env", "stdin"],
                    "`via` value",
                    VIA_HELP,
                )?;
                let via = if via == 0 {
                    let node = self.require(
                        &f,
                        "env_name",
                        "name the variable the value is passed in, e.g. `env_name: PROBE_SECRET`",
                    )?;
                    ExecVia::Env(self.own_env_name(node, &f.sub("env_name"), "PROBE_SECRET")?)
                } else {
                    if let Some((key, _)) = f.entry("env_name") {
                        return Err(self.err(
                            key.pos,
                            f.sub("env_name"),
                            "`env_name` is only used with `via: env`",
                            "remove env_name, or use `via: env`",
                        ));
                    }
                    ExecVia::Stdin
                };
                Ok(ProbeSpec::Exec { command, via })
            }
        }
    }

    fn roundtrips(
        &self,
        consumer: &Fields<'_>,
        role: Role,
    ) -> Result<(Vec<RoundtripSpec>, Vec<Pos>)> {
        const HELP: &str = "list round trips as items, e.g. `- to: auth`";
        let items = self.items(consumer, "roundtrips", MAX_ROUNDTRIPS, HELP)?;
        let path = consumer.sub("roundtrips");
        if !role.signs() {
            if let Some(node) = consumer.get("roundtrips").filter(|_| !items.is_empty()) {
                return Err(self.err(
                    node.pos,
                    path,
                    "a validator does not send the secret, so it starts no round trips",
                    "remove the roundtrips (a validator is proven by its probes), or make the role `both`",
                ));
            }
            return Ok((Vec::new(), Vec::new()));
        }
        if items.is_empty() {
            let pos = consumer
                .entry("roundtrips")
                .map_or(consumer.pos, |(k, _)| k.pos);
            return Err(self.err(
                pos,
                path,
                format!("{} needs at least one round trip", a_role(role)),
                "add a round trip to a validating consumer, e.g. `- {to: auth, path: \"/relay/auth?target={target}\"}`",
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{j}]");
            let f = self.fields(
                item,
                &item_path,
                item.pos,
                "write each round trip as a mapping starting with `- to: ...`",
            )?;
            self.only(&f, ROUNDTRIP_FIELDS, "a round trip")?;
            const TO_HELP: &str = "name the validating consumer the signer calls, e.g. `to: auth`";
            let node = self.require(&f, "to", TO_HELP)?;
            let to = self.text(node, &f.sub("to"), TO_HELP)?.to_string();
            positions.push(node.pos);
            const PATH_HELP: &str = "give the signer's relay path with a {target} placeholder, e.g. /relay/auth?target={target}";
            let node = self.require(&f, "path", PATH_HELP)?;
            let rt_path = self.http_path(node, &f.sub("path"), "/relay/auth?target={target}")?;
            if !rt_path.contains("{target}") {
                return Err(self.err(
                    node.pos,
                    f.sub("path"),
                    "the path has no `{target}` placeholder",
                    "add {target} where the validator instance's address goes, e.g. /relay/auth?target={target}",
                ));
            }
            let expect = match f.get("expect") {
                None => 200,
                Some(node) => self.status(node, &f.sub("expect"))?,
            };
            out.push(RoundtripSpec {
                to,
                path: rt_path,
                expect,
            });
        }
        Ok((out, positions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn load(text: &str) -> Result<Playbook> {
        load_str(text, "test.yaml", Path::new("/base"))
    }

    const MINIMAL: &str = "secret: s\nenvironment: test\nstore: {kind: local, path: s.json}\nconsumers:\n  - name: a\n    role: both\n    kind: process\n    instances: 1\n    command: [x]\n    slots: {primary: P, secondary: S}\n    probes: [{type: jwt, path: /p}]\n    roundtrips: [{to: a, path: \"/r?t={target}\"}]\n";

    #[test]
    fn embedded_demo_loads() {
        let pb = load_str(
            include_str!("../../playbooks/local-demo.yaml"),
            "<embedded>",
            Path::new("/demo"),
        )
        .unwrap();
        assert_eq!(pb.consumers.len(), 3);
        assert_eq!(pb.generate.length, 48);
        assert_eq!(
            pb.state_dir,
            Path::new("/demo/.rotor/service-secret-development")
        );
    }

    #[test]
    fn minimal_uses_defaults() {
        let pb = load(MINIMAL).unwrap();
        assert_eq!(pb.generate.length, 32);
        assert_eq!(pb.generate.alphabet, Alphabet::Alphanumeric);
        assert_eq!(pb.timings, Timings::default());
        assert_eq!(pb.source, "test.yaml");
        assert_eq!(pb.checksum, hex::encode(Sha256::digest(MINIMAL.as_bytes())));
        assert_eq!(
            pb.store,
            StoreSpec::Local {
                path: PathBuf::from("/base/s.json")
            }
        );
        let c = &pb.consumers[0];
        assert_eq!(c.pickup, Pickup::Restart);
        assert_eq!(
            c.probes,
            vec![ProbeSpec::Jwt {
                path: "/p".into(),
                ttl: Duration::from_secs(60),
                accept: vec![200],
                reject: vec![401, 403]
            }]
        );
        let ConsumerKind::Process(p) = &c.kind else {
            panic!("a process consumer")
        };
        assert_eq!(p.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(p.health_path, "/healthz");
    }

    #[test]
    fn duplicate_keys_are_reported_with_their_path() {
        let e = load(&MINIMAL.replace("secret: s\n", "secret: s\nsecret: t\n")).unwrap_err();
        assert_eq!((e.line, e.column, e.field.as_str()), (2, 1, "secret"));
        assert_eq!(e.message, "duplicate key `secret`");
    }

    #[test]
    fn env_values_are_never_echoed() {
        let text = MINIMAL.replace(
            "    command: [x]\n",
            "    command: [x]\n    env: {P: hunter2}\n",
        );
        let e = load(&text).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let text = MINIMAL.replace(
            "    command: [x]\n",
            "    command: [x]\n    env: {A: [hunter2]}\n",
        );
        let e = load(&text).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_reported_without_a_field() {
        let e = load("- secret: s\n").unwrap_err();
        assert_eq!((e.line, e.column, e.field.as_str()), (1, 1, "-"));
        assert_eq!(e.message, "expected a mapping, found a list");
    }

    #[test]
    fn null_sections_take_their_defaults_and_merge_keys_work() {
        let text = MINIMAL.replace(
            "environment: test\n",
            "environment: test\ngenerate:\ntimings:\n",
        ) + "  - <<: *a\n    name: b\n    role: validator\n    roundtrips: []\n";
        let text = text.replace("  - name: a\n", "  - &a\n    name: a\n");
        let pb = load(&text).unwrap();
        assert_eq!(pb.generate.length, 32);
        assert_eq!(pb.timings, Timings::default());
        assert_eq!(pb.consumers[1].name, "b");
        assert_eq!(pb.consumers[1].slots.secondary.as_deref(), Some("S"));
    }

    #[test]
    fn close_misspellings_get_a_suggestion() {
        let e = load(&MINIMAL.replace("environment: test", "environment: stagin")).unwrap_err();
        assert_eq!(
            e.help,
            "did you mean `staging`? use one of production, staging, test, development"
        );
        let e = load(&MINIMAL.replace(
            "    kind: process\n",
            "    kind: process\n    helth_path: /h\n",
        ))
        .unwrap_err();
        assert!(e.help.starts_with("did you mean `health_path`?"), "{e}");
    }

    #[test]
    fn missing_file_is_reported() {
        let e = load_file(Path::new("/nonexistent/rotor.yaml")).unwrap_err();
        assert_eq!((e.line, e.column, e.field.as_str()), (0, 0, "-"));
        assert!(e.message.starts_with("cannot read playbook: "), "{e}");
        assert_eq!(e.help, "check the path");
    }

    #[test]
    fn numbers_keep_their_spelling_in_strings() {
        let text = MINIMAL.replace(
            "command: [x]",
            "command: [x, 007, 1.10]\n    env: {V: 1.10}",
        );
        let pb = load(&text).unwrap();
        let ConsumerKind::Process(p) = &pb.consumers[0].kind else {
            panic!("a process consumer")
        };
        assert_eq!(p.command, vec!["x", "007", "1.10"]);
        assert_eq!(p.env["V"], "1.10");
    }
}
