//! The typed field readers every section uses: mappings (duplicate and unknown keys refused),
//! required fields, strings, whole numbers, choices, durations, lists, commands, HTTP paths,
//! variable names and status codes, each with its bound.
//!
//! Owns: type and bound checks and their messages. Must never: repeat input except through
//! [`echo`].

use std::collections::HashMap;
use std::time::Duration;

use super::node::{Node, Pos, Scalar, Value};
use super::text::{bound, closest, echo, is_env_name, join, list, reserved_env};
use super::{Cx, Fields, MAX_ARG, MAX_ARGS, MAX_STATUSES, MAX_STRING, PlaybookError, Result};

/// A status code as written: the code, where, and its field path.
type LocatedStatus = (u16, Pos, String);

impl Cx<'_> {
    pub(super) fn type_error(
        &self,
        node: &Node,
        path: &str,
        expected: &str,
        help: &str,
    ) -> PlaybookError {
        self.err(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.describe()),
            help,
        )
    }

    /// The entries of a mapping, with duplicate keys rejected. `pos` is where a missing field
    /// is reported.
    pub(super) fn fields<'n>(
        &self,
        node: &'n Node,
        path: &str,
        pos: Pos,
        help: &str,
    ) -> Result<Fields<'n>> {
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
    pub(super) fn only(&self, f: &Fields<'_>, allowed: &[&str], what: &str) -> Result<()> {
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
    pub(super) fn require<'n>(&self, f: &Fields<'n>, name: &str, help: &str) -> Result<&'n Node> {
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
    pub(super) fn text<'n>(&self, node: &'n Node, path: &str, help: &str) -> Result<&'n str> {
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

    /// `true` or `false`.
    pub(super) fn boolean(&self, node: &Node, path: &str, help: &str) -> Result<bool> {
        match &node.value {
            Value::Scalar {
                kind: Scalar::Bool,
                text,
            } => Ok(text == "true"),
            _ => Err(self.type_error(node, path, "true or false", help)),
        }
    }

    /// A whole number; `range` is only used to say that a huge one is out of it.
    pub(super) fn int(
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
    pub(super) fn command(&self, node: &Node, path: &str, help: &str) -> Result<Vec<String>> {
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
    pub(super) fn choice(
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
    pub(super) fn at_most(
        &self,
        node: &Node,
        path: &str,
        len: usize,
        max: usize,
        what: &str,
    ) -> Result<()> {
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
    pub(super) fn duration(&self, node: &Node, path: &str, max: Duration) -> Result<Duration> {
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
    pub(super) fn http_path(&self, node: &Node, path: &str, example: &str) -> Result<String> {
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
    pub(super) fn env_name(&self, node: &Node, path: &str, example: &str) -> Result<String> {
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

    /// A slot or probe variable name: a valid env name that rotor does not set itself.
    pub(super) fn own_env_name(&self, node: &Node, path: &str, example: &str) -> Result<String> {
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

    pub(super) fn status(&self, node: &Node, path: &str) -> Result<u16> {
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
    pub(super) fn statuses(
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

    /// The items of an optional list field of at most `max` items; empty when absent or
    /// null.
    pub(super) fn items<'n>(
        &self,
        f: &Fields<'n>,
        name: &str,
        max: usize,
        help: &str,
    ) -> Result<&'n [Node]> {
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
}
