//! The dotenv grammar as docker compose reads an `env_file` (and `.env` for interpolation):
//! one entry per line, `KEY=VALUE` with an optional `export ` prefix; `#` starts a comment at
//! the beginning of a line, or after whitespace in an unquoted value; a value may be
//! single-quoted (literal; may span lines), double-quoted (escapes `\n`, `\t`, `\"`, `\\`, `\$`; may span
//! lines) or unquoted (trimmed); `${NAME}`, `${NAME:-default}` and `$NAME` in an unquoted or
//! double-quoted value refer to another variable; a line with a key and no `=` passes the
//! variable through from the environment.
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
            problems.push(Problem {
                line: line_no,
                message: "not a `NAME=value` line".into(),
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
            match quoted(q, &lines, &mut i, |t| t.find('\'')) {
                Some((text, end)) => (text, end + line_no),
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
            match quoted(q, &lines, &mut i, closing_quote) {
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

/// A quoted value that starts with `first` (the rest of its line) and may go on over the next
/// lines (`*i` the next line's index, advanced past what is read): its text up to the closing
/// quote `close` finds, and how many lines past the first it ends; `None` if never closed.
fn quoted(
    first: &str,
    lines: &[&str],
    i: &mut usize,
    close: impl Fn(&str) -> Option<usize>,
) -> Option<(String, usize)> {
    let mut text = first.to_string();
    let mut extra = 0;
    loop {
        if let Some(end) = close(&text) {
            text.truncate(end);
            return Some((text, extra));
        }
        let line = lines.get(*i)?;
        text.push('\n');
        text.push_str(line.strip_suffix('\r').unwrap_or(line));
        *i += 1;
        extra += 1;
    }
}

/// The byte offset of the first unescaped `"` in `text`.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (k, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(k),
            _ => escaped = false,
        }
    }
    None
}

/// A double-quoted value with its escapes applied; variables it refers to go to `refs`.
fn unescape(text: &str, refs: &mut Vec<String>) -> String {
    collect_refs(text, refs);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
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

/// `value` written as a dotenv value that [`parse`] reads back as exactly `value`: unquoted
/// when that is safe, else single-quoted when it holds no `'` or newline, else double-quoted
/// with escapes.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/+=@%^~".contains(c));
    if plain {
        return value.to_string();
    }
    if !value.contains(['\'', '\n', '\r']) {
        return format!("'{value}'");
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '$' => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
            "line\nbreak \"q\" \\ $HOME",
            "",
            "#hash",
        ] {
            let e = one(&format!("K={}\n", quote(v)));
            assert_eq!(e.value.as_deref(), Some(v), "{v:?} as {}", quote(v));
        }
    }
}
