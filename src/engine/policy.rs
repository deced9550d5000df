//! The value policy: length (the playbook's `generate.length`, itself at least the
//! environment's minimum), alphabet, no known weak or development value (a built-in list plus
//! `policy.weak_values_file`), no value the store held before, no value shared between
//! environments (checked by `rotor check` over several playbooks).
//!
//! Owns: judging one value; the built-in list. New values are generated until they pass (a
//! random value practically always does); existing ones are judged by `rotor check`. Must
//! never: name a value in a violation (lengths, alphabets and fingerprints only), or compare one
//! in anything but constant time.

use crate::playbook::Playbook;
use crate::secret::SecretValue;

/// Values that must never be a secret: defaults, placeholders and examples that end up in
/// production. Compared ignoring ASCII case.
pub const WEAK: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "password",
    "passw0rd",
    "secret",
    "secret-key",
    "secret_key",
    "supersecret",
    "super-secret",
    "mysecret",
    "test",
    "testing",
    "dev",
    "development",
    "default",
    "example",
    "your-secret-here",
    "your_secret_key",
    "insecure",
    "not-a-secret",
    "admin",
    "letmein",
    "qwerty",
    "123456",
    "12345678",
    "123456789",
    "00000000000000000000000000000000",
];

/// Literals in a process consumer's `env` that look like secrets: a name that says so
/// (`SECRET`, `KEY`, `TOKEN`, `PASSWORD`, `CREDENTIAL`) holding at least 20 characters of high
/// entropy (≥ 3.5 bits per character). Warnings, named by field, never quoting the literal.
pub fn secret_like_literals(pb: &Playbook) -> Vec<String> {
    const HINTS: &[&str] = &["SECRET", "KEY", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL"];
    let mut out = Vec::new();
    for (i, c) in pb.consumers.iter().enumerate() {
        let crate::playbook::ConsumerKind::Process(p) = &c.kind else {
            continue;
        };
        for (name, literal) in &p.env {
            let upper = name.to_ascii_uppercase();
            if HINTS.iter().any(|h| upper.contains(h)) && crate::secret::looks_like_a_value(literal)
            {
                let bits = crate::secret::entropy_per_char(literal);
                out.push(format!(
                    "consumers[{i}].env.{name} holds a literal of {} characters that looks like a secret ({bits:.1} bits per character); values reach consumers through their slot names, never through the playbook",
                    literal.chars().count()
                ));
            }
        }
    }
    out
}

/// Why `value` breaks the policy, one line each (empty: it passes). `weak` is the extra list
/// from `policy.weak_values_file`.
pub fn violations(pb: &Playbook, value: &SecretValue, weak: &[SecretValue]) -> Vec<String> {
    let mut out = Vec::new();
    let len = value.len();
    if len < pb.generate.length {
        out.push(format!(
            "{len} characters, the policy for {} asks for at least {}",
            pb.environment.as_str(),
            pb.generate.length
        ));
    }
    if !pb.generate.alphabet.admits(value) {
        out.push(format!(
            "characters outside the {} alphabet",
            pb.generate.alphabet.as_str()
        ));
    }
    let lower = SecretValue::new(value.expose().to_ascii_lowercase());
    let listed = WEAK
        .iter()
        .map(|w| SecretValue::new((*w).to_string()))
        .chain(
            weak.iter()
                .map(|w| SecretValue::new(w.expose().to_ascii_lowercase())),
        )
        .fold(false, |hit, w| hit | lower.ct_eq(&w));
    if listed {
        out.push("a known weak or development value".into());
    }
    let mut chars = value.expose().chars();
    if let Some(first) = chars.next()
        && len > 1
        && chars.all(|c| c == first)
    {
        out.push("one character repeated".into());
    }
    out
}

/// The extra weak values from `policy.weak_values_file` (one per line, `#` comments).
pub fn load_weak(pb: &Playbook) -> Result<Vec<SecretValue>, String> {
    let Some(path) = &pb.policy.weak_values_file else {
        return Ok(Vec::new());
    };
    read_weak_file(path).map_err(|e| format!("policy.weak_values_file {e}"))
}

/// The values in a weak-values file: one per line, blank lines and `#` comments skipped.
pub fn read_weak_file(path: &std::path::Path) -> Result<Vec<SecretValue>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| SecretValue::new(l.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_literals_in_env_are_named_never_quoted() {
        let mut p = pb(48);
        let literal = "kJ8s-Qw2_xP9zL4mN7vB3cR6tY1uE5oA";
        let crate::playbook::ConsumerKind::Process(spec) = &mut p.consumers[2].kind else {
            panic!("analytics is a process consumer")
        };
        spec.env.insert("DEBUG_API_TOKEN".into(), literal.into());
        spec.env.insert(
            "LOG_LEVEL".into(),
            "kJ8s-Qw2_xP9zL4mN7vB3cR6tY1uE5oA".into(),
        );
        spec.env
            .insert("API_KEY".into(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into());
        let w = secret_like_literals(&p);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("consumers[2].env.DEBUG_API_TOKEN"), "{w:?}");
        assert!(!w[0].contains(literal));
    }

    fn pb(length: usize) -> Playbook {
        let dir = tempfile::tempdir().unwrap();
        let mut pb =
            crate::playbook::load_str(crate::demo::LOCAL_DEMO, "demo.yaml", dir.path()).unwrap();
        pb.generate.length = length;
        pb
    }

    #[test]
    fn each_rule_refuses_what_it_should_and_passes_a_good_value() {
        let p = pb(32);
        let v = |s: &str| SecretValue::new(s.into());
        assert!(
            violations(&p, &v("a".repeat(10).as_str()), &[])
                .iter()
                .any(|x| x.contains("10 characters"))
        );
        assert!(
            violations(&p, &v("ChangeMe"), &[])
                .iter()
                .any(|x| x.contains("weak"))
        );
        assert!(
            violations(&p, &v(&"x".repeat(40)), &[])
                .iter()
                .any(|x| x.contains("repeated"))
        );
        assert!(
            violations(&p, &v(&format!("{}!", "Ab1".repeat(11))), &[])
                .iter()
                .any(|x| x.contains("alphabet"))
        );
        let listed = v("Company-Default-Token-2026-abcdefghij");
        assert!(
            violations(&p, &listed, &[v("company-default-token-2026-abcdefghij")])
                .iter()
                .any(|x| x.contains("weak"))
        );
        let good = SecretValue::generate(p.generate.alphabet, 32).unwrap();
        assert_eq!(violations(&p, &good, &[]), Vec::<String>::new());
    }
}
