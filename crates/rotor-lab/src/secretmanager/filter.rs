//! List filters: a small subset of AIP-160.
//!
//! Owns: parsing and evaluating `filter`. Must never: match on payloads.

use super::model::RpcError;

/// A minimal AIP-160 filter: terms `field:value`, `field=value` or `field!=value`
/// (optionally `NOT term` or `-term`), combined with `OR` (binds tighter) and `AND` or
/// juxtaposition. `field:*` means "has the field".
pub(super) struct Filter {
    /// Conjunction of disjunctions of terms.
    clauses: Vec<Vec<Term>>,
}

struct Term {
    negate: bool,
    field: String,
    op: Op,
    value: String,
}

#[derive(Clone, Copy)]
enum Op {
    Has,
    Eq,
    Ne,
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Filter {
    /// Parses `filter`; `known` says which fields may be named (a trailing `.` allows any
    /// sub-key, as in `labels.`).
    pub fn parse(filter: &str, known: &[&str]) -> Result<Filter, RpcError> {
        let bad = |why: &str| {
            RpcError::invalid(format!(
                "Invalid filter [{filter}]: {why}. The lab supports {} with the operators :, = \
                 and !=, combined with AND, OR and NOT.",
                known.join(", ")
            ))
        };
        let mut clauses: Vec<Vec<Term>> = Vec::new();
        let mut join_or = false;
        let mut negate = false;
        for tok in tokens(filter) {
            match tok.as_str() {
                "AND" => continue,
                "OR" => {
                    if clauses.is_empty() {
                        return Err(bad("OR without a left-hand term"));
                    }
                    join_or = true;
                    continue;
                }
                "NOT" => {
                    negate = true;
                    continue;
                }
                _ => {}
            }
            let (neg, t) = match tok.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, tok.as_str()),
            };
            let (field, op, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, Op::Ne, v)
            } else if let Some((f, v)) = t.split_once('=') {
                (f, Op::Eq, v)
            } else if let Some((f, v)) = t.split_once(':') {
                (f, Op::Has, v)
            } else {
                return Err(bad(&format!("term [{t}] has no operator")));
            };
            let field_ok = known.iter().any(|k| match k.strip_suffix('.') {
                Some(prefix) => field.starts_with(&format!("{prefix}.")),
                None => *k == field,
            });
            if !field_ok {
                return Err(bad(&format!("unsupported field [{field}]")));
            }
            let term = Term {
                negate: negate ^ neg,
                field: field.to_string(),
                op,
                value: value.to_string(),
            };
            negate = false;
            match clauses.last_mut() {
                Some(last) if join_or => last.push(term),
                _ => clauses.push(vec![term]),
            }
            join_or = false;
        }
        if join_or || negate {
            return Err(bad("dangling operator"));
        }
        Ok(Filter { clauses })
    }

    /// Whether a resource whose fields `get` returns passes.
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.clauses.iter().all(|c| {
            c.iter().any(|t| {
                let v = get(&t.field);
                let hit = match (t.op, v) {
                    (Op::Has, Some(v)) => {
                        t.value == "*" || v.to_lowercase().contains(&t.value.to_lowercase())
                    }
                    (Op::Eq, Some(v)) => v.eq_ignore_ascii_case(&t.value),
                    (Op::Ne, Some(v)) => !v.eq_ignore_ascii_case(&t.value),
                    (Op::Ne, None) => true,
                    (_, None) => false,
                };
                hit != t.negate
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = Filter::parse("state:ENABLED OR state:disabled", &["state", "name"]).unwrap();
        assert!(f.matches(&|_| Some("DISABLED".into())));
        assert!(!f.matches(&|_| Some("DESTROYED".into())));
        let f = Filter::parse("labels.env=prod NOT name:old", &["name", "labels."]).unwrap();
        let get = |name: &'static str| {
            move |k: &str| match k {
                "labels.env" => Some("prod".to_string()),
                "name" => Some(name.to_string()),
                _ => None,
            }
        };
        assert!(f.matches(&get("projects/p/secrets/new")));
        assert!(!f.matches(&get("projects/p/secrets/old")));
        assert!(Filter::parse("color:red", &["state"]).is_err());
        assert!(Filter::parse("state:ENABLED OR", &["state"]).is_err());
    }
}
