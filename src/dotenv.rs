//! The dotenv grammar as docker compose reads an `env_file` (and `.env` for interpolation):
//! one entry per line, `KEY=VALUE` with an optional `export ` prefix; `#` starts a comment at
//! the beginning of a line, or after whitespace in an unquoted value; a value may be
//! single-quoted (literal but for `\'`, a quote; may span lines), double-quoted (escapes `\n`,
//! `\t`, `\r`, `\"`, `\\`, `\$` and the like; any other backslash is kept; may span lines) or
//! unquoted (trimmed); in either quotes a backslash keeps the next character from closing the
//! value; `${NAME}`, `${NAME:-default}` and `$NAME` in an unquoted or double-quoted value refer
//! to another variable; a line with a key and no `=` passes the variable through from the
//! environment.
//!
//! Owns: parsing a file into [`Entry`]s that keep their lines (for `rotor discover`, which
//! reports each by file and line, and for the `dotenv` consumer, which rewrites the entries it
//! owns and keeps every other line). Must never: print a value (callers name values by
//! fingerprint).

/// One entry of a dotenv file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The variable's name.
    pub name: String,
    /// First line of the entry (1-based).
    pub line: usize,
    /// Last line of the entry (a double-quoted value may span lines).
    pub end_line: usize,
    /// The value, quotes removed and escapes applied; `None` for a bare `KEY` (taken from the
    /// environment).
    pub value: Option<String>,
    /// Variables the value refers to (`${OTHER}`, `$OTHER`), in order.
    pub refs: Vec<String>,
}

/// A line the grammar does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong (never the line's text).
    pub message: String,
}

/// Whether `name` is a variable name dotenv accepts.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses `text`: every entry, and every line that is not one.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<Problem>) {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let raw = lines[i].strip_suffix('\r').unwrap_or(lines[i]);
        i += 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let (name, rest) = match body.find('=') {
            Some(at) => (body[..at].trim_end(), Some(&body[at + 1..])),
            None => (body.trim_end(), None),
        };
        if !valid_name(name) {
            // Compose refuses a byte-order mark too; python-dotenv takes it into the name.
            let message = if line_no == 1 && name.starts_with('\u{feff}') {
                "starts with a byte-order mark; save the file as UTF-8 without one"
            } else {
                "not a `NAME=value` line"
            };
            problems.push(Problem {
                line: line_no,
                message: message.into(),
            });
            continue;
        }
        let Some(rest) = rest else {
            entries.push(Entry {
                name: name.to_string(),
                line: line_no,
                end_line: line_no,
                value: None,
                refs: Vec::new(),
            });
            continue;
        };
        let rest = rest.trim_start();
        let mut refs = Vec::new();
        let (value, end_line) = if let Some(q) = rest.strip_prefix('\'') {
            // Single quotes are literal and, as in compose, may span lines (a PEM key): read on
            // until the closing quote, so no line of the value is taken for an entry.
            match quoted(q, &lines, &mut i, '\'') {
                Some((text, end)) => (unescape_single(&text), end + line_no),
                None => {
                    problems.push(Problem {
                        line: line_no,
                        message: "a single quote is never closed".into(),
                    });
                    continue;
                }
            }
        } else if let Some(q) = rest.strip_prefix('"') {
            // Double quotes may span lines too, with escapes.
            match quoted(q, &lines, &mut i, '"') {
                Some((text, end)) => (unescape(&text, &mut refs), end + line_no),
                None => {
                    problems.push(Problem {
                        line: line_no,
                        message: "a double quote is never closed".into(),
                    });
                    continue;
                }
            }
        } else {
            // Unquoted: a comment starts at `#` after whitespace.
            let mut end = rest.len();
            let bytes = rest.as_bytes();
            for (k, b) in bytes.iter().enumerate() {
                if *b == b'#' && (k == 0 || bytes[k - 1].is_ascii_whitespace()) {
                    end = k;
                    break;
                }
            }
            let v = rest[..end].trim();
            collect_refs(v, &mut refs);
            (v.to_string(), line_no)
        };
        entries.push(Entry {
            name: name.to_string(),
            line: line_no,
            end_line,
            value: Some(value),
            refs,
        });
    }
    (entries, problems)
}

/// A value in `quote`s that starts with `first` (the rest of its line) and may go on over the
/// next lines (`*i` the next line's index, advanced past what is read): its raw text up to the
/// first `quote` no backslash escapes, and how many lines past the first it ends; `None` if
/// never closed. Each line is scanned once (an unclosed quote in a large file is not quadratic).
fn quoted(first: &str, lines: &[&str], i: &mut usize, quote: char) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut extra = 0;
    let mut line = first;
    loop {
        if let Some(end) = closing_quote(line, quote) {
            text.push_str(&line[..end]);
            return Some((text, extra));
        }
        // A backslash that ends a line escapes the line end: the next line starts afresh.
        text.push_str(line);
        let next = lines.get(*i)?;
        text.push('\n');
        line = next.strip_suffix('\r').unwrap_or(next);
        *i += 1;
        extra += 1;
    }
}

/// The byte offset of the first `quote` in `text` that no backslash escapes.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (k, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == quote && !escaped => return Some(k),
            _ => escaped = false,
        }
    }
    None
}

/// `text` with each backslash escape `\c` replaced by what `escape(c)` gives; an escape it
/// does not know (`None`), and a trailing backslash, keep their backslash.
fn unescape_with(text: &str, escape: impl Fn(char) -> Option<char>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e) => match escape(e) {
                Some(x) => out.push(x),
                None => {
                    out.push('\\');
                    out.push(e);
                }
            },
            None => out.push('\\'),
        }
    }
    out
}

/// A single-quoted value as compose reads it: `\'` is a quote, every other backslash is kept.
fn unescape_single(text: &str) -> String {
    unescape_with(text, |c| (c == '\'').then_some('\''))
}

/// A double-quoted value with its escapes applied as compose applies them (`\n`, `\t`, `\r`,
/// `\a`, `\b`, `\f`, `\v`, `\"`, `\\`, `\$`; any other backslash is kept, as compose and
/// python-dotenv keep it); variables it refers to go to `refs`.
fn unescape(text: &str, refs: &mut Vec<String>) -> String {
    collect_refs(text, refs);
    unescape_with(text, |c| match c {
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'f' => Some('\x0c'),
        'v' => Some('\x0b'),
        '"' | '\\' | '$' => Some(c),
        _ => None,
    })
}

/// The variables `text` refers to (`${NAME}`, `${NAME:-default}`, `$NAME`), as compose reads
/// a value in `environment:`.
pub fn refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect_refs(text, &mut out);
    out
}

/// Every `${NAME…}` and `$NAME` in `text` (not `$$`, compose's escaped dollar).
fn collect_refs(text: &str, refs: &mut Vec<String>) {
    let b = text.as_bytes();
    let mut k = 0;
    while k < b.len() {
        if b[k] != b'$' || (k > 0 && b[k - 1] == b'\\') {
            k += 1;
            continue;
        }
        if b.get(k + 1) == Some(&b'$') {
            k += 2;
            continue;
        }
        let (start, braced) = if b.get(k + 1) == Some(&b'{') {
            (k + 2, true)
        } else {
            (k + 1, false)
        };
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if end > start && (b[start].is_ascii_alphabetic() || b[start] == b'_') {
            let name = &text[start..end];
            if !refs.iter().any(|r| r == name) {
                refs.push(name.to_string());
            }
        }
        k = if braced {
            text[end..].find('}').map_or(b.len(), |c| end + c + 1)
        } else {
            end.max(k + 1)
        };
    }
}

/// `value` written as a dotenv value that docker compose, python-dotenv and [`parse`] all read
/// back as exactly `value`: unquoted when that is safe; else single-quoted when it holds no
/// quote, backslash or line break; else double-quoted with escapes when it holds no `$`
/// (compose reads `\$` as `$`, python-dotenv as `\$`); else single-quoted with `\'` for a quote
/// and its line breaks as they are. Refused (why, never the value) when no quoting carries it
/// to every reader: a `$` together with a backslash or a carriage return, `${` (python-dotenv
/// expands it in any quoting), a backslash at the end (it escapes the closing quote), or a NUL
/// character (no environment variable holds one). Every value rotor generates is written
/// unquoted.
pub fn quote(value: &str) -> Result<String, &'static str> {
    if value.contains('\0') {
        return Err("a NUL character, which no environment variable can hold");
    }
    if value.contains("${") {
        return Err("`${`, which python-dotenv expands as a variable however it is quoted");
    }
    if value.ends_with('\\') {
        return Err(
            "a backslash at its end, which escapes the closing quote for docker compose or python-dotenv",
        );
    }
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/+=@%^~".contains(c));
    if plain {
        return Ok(value.to_string());
    }
    if !value.contains(['\'', '\\', '\n', '\r']) {
        return Ok(format!("'{value}'"));
    }
    if !value.contains('$') {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        out.push('"');
        return Ok(out);
    }
    if value.contains(['\\', '\r']) {
        return Err(
            "a `$` together with a backslash or a carriage return, which docker compose and python-dotenv read differently however it is quoted",
        );
    }
    Ok(format!("'{}'", value.replace('\'', "\\'")))
}

/// Why [`rewrite`] refused a file (nothing of it was changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Lines the grammar does not accept: rotor does not guess where an entry it owns begins
    /// and ends.
    Lines(Vec<Problem>),
    /// A value no quoting writes so that every reader reads it alike: its name, and why (never
    /// the value).
    Value {
        /// The name the value was for.
        name: String,
        /// What in the value no quoting carries.
        why: &'static str,
    },
}

/// A file rewritten by [`rewrite`].
#[derive(Debug)]
pub struct Rewrite {
    /// The new text (it holds values: the caller keeps it zeroized and never prints it).
    pub text: zeroize::Zeroizing<String>,
    /// Every later entry of a name that was given more than once, removed: the name and the
    /// line it was on.
    pub duplicates: Vec<(String, usize)>,
    /// Whether the text differs from what was read.
    pub changed: bool,
}

/// `text` with each name of `wanted` set to its value, or removed when it has none; every
/// other line (entries, comments, blank lines) is kept as it was. A name's first entry is
/// replaced in place (its `export ` prefix, indentation and a trailing comment on its line are
/// kept); any later entry of the same name is removed and reported; a name not in the file is
/// appended. A file with a line the grammar does not accept is refused (its problems are
/// returned): rotor does not guess where an entry it owns begins and ends. So is a value no
/// quoting carries to every reader ([`quote`]).
pub fn rewrite(text: &str, wanted: &[(&str, Option<&str>)]) -> Result<Rewrite, Refusal> {
    let (entries, problems) = parse(text);
    if !problems.is_empty() {
        return Err(Refusal::Lines(problems));
    }
    let quoted = |name: &str, v: &str| {
        quote(v)
            .map(zeroize::Zeroizing::new)
            .map_err(|why| Refusal::Value {
                name: name.to_string(),
                why,
            })
    };
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = text.split('\n').collect();
    // First line (0-based) of an entry → its last line and what replaces it.
    let mut edits: std::collections::BTreeMap<usize, (usize, Option<String>)> =
        std::collections::BTreeMap::new();
    let mut duplicates = Vec::new();
    let mut appended = Vec::new();
    for (name, want) in wanted {
        let mut mine = entries.iter().filter(|e| e.name == *name);
        match mine.next() {
            Some(first) => {
                let new = want.map(|v| -> Result<String, Refusal> {
                    let raw = lines[first.line - 1];
                    let raw = raw.strip_suffix('\r').unwrap_or(raw);
                    // Indentation and `export ` as parsed: the name itself may be found inside
                    // `export` (`export port=…`).
                    let body = raw.trim_start();
                    let body = body
                        .strip_prefix("export ")
                        .map(str::trim_start)
                        .unwrap_or(body);
                    let lead = &raw[..raw.len() - body.len()];
                    let comment = if first.line == first.end_line {
                        trailing_comment(raw)
                    } else {
                        None
                    };
                    let cr = if nl == "\r\n" { "\r" } else { "" };
                    Ok(format!(
                        "{lead}{name}={}{}{cr}",
                        quoted(name, v)?.as_str(),
                        comment.map(|c| format!(" {c}")).unwrap_or_default()
                    ))
                });
                edits.insert(first.line - 1, (first.end_line - 1, new.transpose()?));
            }
            None => {
                if let Some(v) = want {
                    appended.push(format!("{name}={}", quoted(name, v)?.as_str()));
                }
            }
        }
        for later in mine {
            duplicates.push((name.to_string(), later.line));
            edits.insert(later.line - 1, (later.end_line - 1, None));
        }
    }
    let mut out = zeroize::Zeroizing::new(String::with_capacity(text.len() + 256));
    // Lines are joined back with `\n` (a kept line keeps its own `\r`).
    let mut first = true;
    let mut push = |out: &mut String, line: &str| {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
        out.push_str(line);
    };
    let mut i = 0;
    while i < lines.len() {
        match edits.get_mut(&i) {
            Some((end, new)) => {
                if let Some(new) = new {
                    push(&mut out, new);
                    zeroize::Zeroize::zeroize(new);
                }
                i = *end + 1;
            }
            None => {
                push(&mut out, lines[i]);
                i += 1;
            }
        }
    }
    // A removed last line takes the line end before it along: put it back.
    if out.ends_with('\r') || (text.ends_with('\n') && !out.is_empty() && !out.ends_with('\n')) {
        if !out.ends_with('\r') {
            out.push_str(nl);
        } else {
            out.push('\n');
        }
    }
    if !appended.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(nl);
        }
        for line in &appended {
            out.push_str(line);
            out.push_str(nl);
        }
    }
    for line in &mut appended {
        zeroize::Zeroize::zeroize(line);
    }
    let changed = out.as_str() != text;
    Ok(Rewrite {
        text: out,
        duplicates,
        changed,
    })
}

/// The comment that ends a one-line entry (`# …`, from the `#`), if it has one.
fn trailing_comment(raw: &str) -> Option<&str> {
    let rest = raw[raw.find('=')? + 1..].trim_start();
    let after = if let Some(q) = rest.strip_prefix('\'') {
        &q[closing_quote(q, '\'')? + 1..]
    } else if let Some(q) = rest.strip_prefix('"') {
        &q[closing_quote(q, '"')? + 1..]
    } else {
        let b = rest.as_bytes();
        let at =
            (0..b.len()).find(|&k| b[k] == b'#' && (k == 0 || b[k - 1].is_ascii_whitespace()))?;
        return Some(rest[at..].trim_end());
    };
    let after = after.trim_start();
    after.starts_with('#').then(|| after.trim_end())
}

/// The entries of `names` in `text` as a program reading the file sees them: per name, its
/// last entry (a later entry overrides an earlier one, as in compose and python-dotenv).
pub fn last_entries<'a>(entries: &'a [Entry], name: &str) -> (Option<&'a Entry>, usize) {
    let mine: Vec<&Entry> = entries.iter().filter(|e| e.name == name).collect();
    (mine.last().copied(), mine.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Entry {
        let (e, p) = parse(text);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(e.len(), 1, "{e:?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn values_comments_quotes_and_exports() {
        let text = "# a comment\n\nexport A=1\nB = two words # trailing\nC='lit # ${X}'\nD=\"multi\nline \\\"q\\\" ${E}\"\nF=abc#notacomment\nG\nH=\n";
        let (e, p) = parse(text);
        assert!(p.is_empty(), "{p:?}");
        let got: Vec<(&str, usize, usize, Option<&str>)> = e
            .iter()
            .map(|x| (x.name.as_str(), x.line, x.end_line, x.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", 3, 3, Some("1")),
                ("B", 4, 4, Some("two words")),
                ("C", 5, 5, Some("lit # ${X}")),
                ("D", 6, 7, Some("multi\nline \"q\" ${E}")),
                ("F", 8, 8, Some("abc#notacomment")),
                ("G", 9, 9, None),
                ("H", 10, 10, Some("")),
            ]
        );
        assert!(e[2].refs.is_empty(), "single quotes are literal");
        assert_eq!(e[3].refs, ["E"]);
    }

    #[test]
    fn references_are_collected_and_bad_lines_reported_by_line_only() {
        assert_eq!(
            one("JWT_SECRET_KEY=${SERVICE_SECRET:-x}-$OTHER$$NOT").refs,
            ["SERVICE_SECRET", "OTHER"]
        );
        let (e, p) = parse("ok=1\nthis is not an entry s3cr3t\nY=\"never closed\n");
        assert_eq!(e.len(), 1);
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3]);
        assert!(p.iter().all(|p| !p.message.contains("s3cr3t")));
        let (e, p) = parse("ok=1\nX='open s3cr3t\nZ=2\n");
        assert_eq!(e.len(), 1);
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2]);
        assert!(p.iter().all(|p| !p.message.contains("s3cr3t")));
    }

    #[test]
    fn a_single_quoted_value_spans_lines_and_none_of_its_lines_is_an_entry() {
        let text = "PRIVATE_KEY='-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nabcJWTxyz\n-----END PRIVATE KEY-----'\nNEXT=1\n";
        let (e, p) = parse(text);
        assert!(p.is_empty(), "{p:?}");
        let got: Vec<(&str, usize, usize)> = e
            .iter()
            .map(|x| (x.name.as_str(), x.line, x.end_line))
            .collect();
        assert_eq!(got, [("PRIVATE_KEY", 1, 4), ("NEXT", 5, 5)]);
        assert!(e[0].value.as_deref().unwrap().contains("\nabcJWTxyz\n"));
    }

    #[test]
    fn quoted_values_read_back_as_written() {
        for v in [
            "plain-Value_1",
            "has space",
            "it's",
            "line\nbreak \"q\" \\ HOME",
            "line\nbreak 'q' $HOME",
            "",
            "#hash",
        ] {
            let q = quote(v).unwrap();
            let e = one(&format!("K={q}\n"));
            assert_eq!(e.value.as_deref(), Some(v), "{v:?} as {q}");
        }
    }

    /// The values `text` gives each name (its last entry's).
    fn values(text: &str) -> Vec<(String, Option<String>)> {
        let (e, p) = parse(text);
        assert!(p.is_empty(), "{p:?}");
        e.into_iter().map(|e| (e.name, e.value)).collect()
    }

    #[test]
    fn rewrite_keeps_every_other_line_and_replaces_in_place() {
        let text = "# auth's settings\nexport SERVICE_SECRET='old value' # rotated by rotor\n\nDEBUG=1\n  SERVICE_SECRET_PREVIOUS=prev\nSECRET_KEY=\"multi\nline\"\nTAIL=x\n";
        let r = rewrite(
            text,
            &[
                ("SERVICE_SECRET", Some("n3w$va'lue")),
                ("SERVICE_SECRET_PREVIOUS", None),
                ("SECRET_KEY", Some("plain-value")),
                ("JWT_SECRET_KEY", Some("appended")),
            ],
        )
        .unwrap();
        assert!(r.changed && r.duplicates.is_empty());
        assert_eq!(
            r.text.as_str(),
            "# auth's settings\nexport SERVICE_SECRET='n3w$va\\'lue' # rotated by rotor\n\nDEBUG=1\nSECRET_KEY=plain-value\nTAIL=x\nJWT_SECRET_KEY=appended\n"
        );
        assert_eq!(
            values(&r.text),
            [
                ("SERVICE_SECRET".into(), Some("n3w$va'lue".into())),
                ("DEBUG".into(), Some("1".into())),
                ("SECRET_KEY".into(), Some("plain-value".into())),
                ("TAIL".into(), Some("x".into())),
                ("JWT_SECRET_KEY".into(), Some("appended".into())),
            ]
        );
        // Applying the same again changes nothing.
        let again = rewrite(
            &r.text,
            &[
                ("SERVICE_SECRET", Some("n3w$va'lue")),
                ("SERVICE_SECRET_PREVIOUS", None),
                ("SECRET_KEY", Some("plain-value")),
                ("JWT_SECRET_KEY", Some("appended")),
            ],
        )
        .unwrap();
        assert!(!again.changed);
        assert_eq!(again.text.as_str(), r.text.as_str());
    }

    #[test]
    fn rewrite_removes_and_reports_duplicates_and_keeps_crlf() {
        let text = "A=1\r\nS=first\r\nB=2\r\nS=second\r\nS=third";
        let r = rewrite(text, &[("S", Some("v"))]).unwrap();
        assert_eq!(r.text.as_str(), "A=1\r\nS=v\r\nB=2\r\n");
        assert_eq!(r.duplicates, [("S".into(), 4), ("S".into(), 5)]);
        // A name the file lacks is appended on a line of its own, with the file's line ends.
        let r = rewrite("A=1", &[("S", Some("v w"))]).unwrap();
        assert_eq!(r.text.as_str(), "A=1\nS='v w'\n");
        let r = rewrite("A=1\r\n", &[("S", Some("v"))]).unwrap();
        assert_eq!(r.text.as_str(), "A=1\r\nS=v\r\n");
        let r = rewrite("", &[("S", Some("v")), ("T", None)]).unwrap();
        assert_eq!(r.text.as_str(), "S=v\n");
        // A comment that looks like an entry is not one.
        let r = rewrite("# S=commented\nS=x #note\n", &[("S", Some("y"))]).unwrap();
        assert_eq!(r.text.as_str(), "# S=commented\nS=y #note\n");
    }

    #[test]
    fn rewrite_refuses_a_file_it_cannot_read_whole() {
        for bad in [
            "A=1\nS='never closed\nB=2\n",
            "A=1\nnot an entry\n",
            "S=\"open\n",
        ] {
            let Refusal::Lines(problems) = rewrite(bad, &[("S", Some("v"))]).unwrap_err() else {
                panic!("{bad:?}: refused for its lines")
            };
            assert!(!problems.is_empty(), "{bad:?}");
        }
    }

    /// How docker compose (compose-go v2's dotenv parser) reads the value of `K=<raw>`: the
    /// quoted or unquoted value, escapes and `$` handled as compose does; `None` when compose
    /// would refuse the line, interpolate a variable, or read more than this one entry.
    fn compose_reads(raw: &str) -> Option<String> {
        let quote = raw.chars().next()?;
        if quote != '\'' && quote != '"' {
            let v = raw.split('\n').next()?;
            let v = v.split(" #").next()?.trim_end();
            return compose_expand(v);
        }
        // compose-go's extractQuotedValue: a backslash escapes the next character; an escaped
        // quote drops its backslash, any other escaped character keeps it.
        let mut chars = String::new();
        let mut escaped = false;
        let mut rest = None;
        for (k, c) in raw.char_indices().skip(1) {
            if escaped {
                escaped = false;
                if c != quote {
                    chars.push('\\');
                }
                chars.push(c);
                continue;
            }
            match c {
                '\\' => escaped = true,
                c if c == quote => {
                    rest = Some(&raw[k + 1..]);
                    break;
                }
                c => chars.push(c),
            }
        }
        // Nothing but a line end may follow the closing quote.
        if !rest?.trim().is_empty() {
            return None;
        }
        if quote == '\'' {
            return Some(chars);
        }
        // expandEscapes (`\$` becomes compose's `$$`), then the variables.
        let mut out = String::new();
        let mut it = chars.chars().peekable();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.peek().copied() {
                Some(e @ ('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '"' | '\\')) => {
                    it.next();
                    out.push(match e {
                        'a' => '\x07',
                        'b' => '\x08',
                        'f' => '\x0c',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'v' => '\x0b',
                        e => e,
                    });
                }
                Some('$') => {
                    it.next();
                    out.push_str("$$");
                }
                // `\0…` is an octal escape: no value of these tests holds one.
                Some('0') => return None,
                _ => out.push('\\'),
            }
        }
        compose_expand(&out)
    }

    /// compose's interpolation of `v`: `$$` is a `$`; `$NAME`, `${…}` refer to a variable (`None`:
    /// not read literally); any other `$` is kept.
    fn compose_expand(v: &str) -> Option<String> {
        let mut out = String::new();
        let mut it = v.chars().peekable();
        while let Some(c) = it.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            match it.peek().copied() {
                Some('$') => {
                    it.next();
                    out.push('$');
                }
                Some(n) if n == '{' || n == '_' || n.is_ascii_alphabetic() => return None,
                _ => out.push('$'),
            }
        }
        Some(out)
    }

    /// Values that quoting must get right: every character dotenv readers treat specially, at
    /// the start, in the middle and at the end.
    fn awkward_values() -> Vec<String> {
        let mut out: Vec<String> = [
            "plain-Value_1",
            "has space",
            " leading and trailing ",
            "it's",
            "\"double\"",
            "a\\",
            "a\\\\b",
            "\\",
            "x\\'y",
            "back\\slash",
            "it's $5",
            "p4ss$WORD9",
            "$",
            "$$",
            "a$ b",
            "line\nbreak",
            "line\nwith $",
            "cr\rlf\r\n",
            "#hash",
            "a #b",
            "tab\there",
            "ünïcödé ✓ 密码",
            "=starts-with-equals",
            "",
            "'",
            "\"",
            "\\\"",
            "\\n",
            "\\$",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // Deterministic random values over the awkward characters.
        let alphabet: Vec<char> = "aZ9 '\"\\$#=\n\r\t{}ü-_".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            let mut s = String::new();
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn every_value_quote_writes_is_read_back_alike_by_compose_and_rotor() {
        let mut written = 0;
        for v in awkward_values() {
            let Ok(q) = quote(&v) else {
                // Refused only for what no quoting carries to compose and python-dotenv alike.
                assert!(
                    v.contains("${")
                        || v.ends_with('\\')
                        || (v.contains('$') && v.contains(['\\', '\r'])),
                    "{v:?} refused"
                );
                let r = rewrite("K=old\n", &[("K", Some(&v))]);
                assert!(
                    matches!(&r, Err(Refusal::Value { name, .. }) if name == "K"),
                    "{r:?}"
                );
                continue;
            };
            written += 1;
            assert_eq!(
                compose_reads(&q).as_deref(),
                Some(v.as_str()),
                "compose: {v:?} as {q}"
            );
            let e = one(&format!("K={q}\n"));
            assert_eq!(e.value.as_deref(), Some(v.as_str()), "rotor: {v:?} as {q}");
            // Also in place of an entry, with a comment on its line, in a CRLF file.
            let r = rewrite("A=1\r\nK=old # kept\r\nB=2\r\n", &[("K", Some(&v))]).unwrap();
            let (entries, problems) = parse(&r.text);
            assert!(problems.is_empty(), "{v:?}: {problems:?}");
            let got: Vec<(&str, Option<&str>)> = entries
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_deref()))
                .collect();
            assert_eq!(
                got,
                [("A", Some("1")), ("K", Some(v.as_str())), ("B", Some("2"))]
            );
        }
        assert!(written > 1500, "{written}");
        // Every value rotor generates is written bare.
        for v in ["AbC123xyz", "a-b_c", "0123456789abcdef"] {
            assert_eq!(quote(v).unwrap(), v);
        }
    }

    #[test]
    fn a_backslash_escapes_a_single_quote_as_compose_reads_it() {
        assert_eq!(one("K='it\\'s'\n").value.as_deref(), Some("it's"));
        assert_eq!(one("K='a\\\\'\n").value.as_deref(), Some("a\\\\"));
        assert_eq!(one("K='a\\b' # c\n").value.as_deref(), Some("a\\b"));
        let (_, p) = parse("K='a\\'\nB=1\n");
        assert_eq!(
            p.len(),
            1,
            "a value ending in an escaped quote is never closed"
        );
    }

    #[test]
    fn an_unknown_escape_in_double_quotes_keeps_its_backslash_as_compose_reads_it() {
        assert_eq!(one("K=\"a\\qb\\'c\"\n").value.as_deref(), Some("a\\qb\\'c"));
        assert_eq!(
            one("K=\"\\a\\b\\f\\v\\t\\$\\\\\"\n").value.as_deref(),
            Some("\x07\x08\x0c\x0b\t$\\")
        );
    }

    #[test]
    fn an_unclosed_quote_in_a_large_file_is_read_in_linear_time() {
        for open in ["K='", "K=\""] {
            let text = format!("{open}{}", "x\n".repeat(500_000));
            let started = std::time::Instant::now();
            let (e, p) = parse(&text);
            assert!(e.is_empty() && p.len() == 1, "{p:?}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{open}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn rewrite_keeps_export_before_a_name_that_export_contains() {
        let r = rewrite(
            "export port=1\n  export ex=2\n",
            &[("port", Some("v")), ("ex", Some("w"))],
        )
        .unwrap();
        assert_eq!(r.text.as_str(), "export port=v\n  export ex=w\n");
    }
}
