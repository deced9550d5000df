//! The words errors are made of: [`echo`], the only way input is repeated; lists and "did you
//! mean" hints; bounds written as a playbook writes them; and the name rules (`is_name`,
//! `is_env_name`, ...) with reasons that do not quote the input.
//!
//! Owns: how input appears in an error. Must never: repeat input except through [`echo`].

use std::time::Duration;

use super::ECHO_CHARS;
use crate::protocol::Role;

/// `3650d`, `24h`, `10m`, `60s`, `500ms`: a bound as a playbook would write it.
pub(super) fn bound(d: Duration) -> String {
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
pub(super) fn echo(text: &str) -> String {
    echo_up_to(text, ECHO_CHARS)
}

/// A parser message, which may quote the input (an anchor's name): [`echo`] with room for the
/// parser's own words (the longest are about 70 characters).
pub(super) fn echo_long(text: &str) -> String {
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
pub(super) fn characters(text: &str) -> String {
    match text.chars().count() {
        1 => "1 character".to_string(),
        n => format!("{n} characters"),
    }
}

/// `path.name`; a key written in the playbook is echoed, so it is truncated.
pub(super) fn join(path: &str, name: &str) -> String {
    let name = echo(name);
    if path.is_empty() {
        name
    } else {
        format!("{path}.{name}")
    }
}

pub(super) fn list(names: &[&str]) -> String {
    names.join(", ")
}

/// [`list`] of the first few names, and how many more there are.
pub(super) fn list_some(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    match names.len() {
        n if n > SHOWN => format!("{}, … ({} more)", names[..SHOWN].join(", "), n - SHOWN),
        _ => list(names),
    }
}

pub(super) fn backticked(names: &[&str]) -> String {
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

pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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
pub(super) fn is_name(s: &str) -> bool {
    name_problem(s).is_none()
}

/// What keeps `s` from being a name (see [`is_name`]), in words that do not quote it.
pub(super) fn name_problem(s: &str) -> Option<&'static str> {
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
pub(super) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An HTTP token (RFC 9110 `tchar`s).
pub(super) fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// "a validator", "a signer", "a `both` consumer".
pub(super) fn a_role(role: Role) -> &'static str {
    match role {
        Role::Validator => "a validator",
        Role::Signer => "a signer",
        Role::Both => "a `both` consumer",
    }
}

/// Why rotor owns this environment variable name, if it does.
pub(super) fn reserved_env(name: &str) -> Option<&'static str> {
    if name == "HOST" || name == "PORT" {
        Some("rotor sets HOST and PORT for every instance")
    } else if name.starts_with("ROTOR_") {
        Some("rotor sets the ROTOR_ variables itself")
    } else {
        None
    }
}
