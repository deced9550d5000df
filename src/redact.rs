//! Redaction: the last line of defence between a value and an output.
//!
//! Owns: the values this process has read or generated (remembered, by the engine, at the moment
//! it reads or generates one) and [`redact`], which replaces every occurrence of any of them in
//! a text with the value's fingerprint. Every text rotor prints or records — stdout, stderr,
//! JSON events, the audit log, webhook bodies, journal step details — passes through it, so a
//! peer that quotes a value back (an error page, a header, a hook's output) cannot carry it
//! out through rotor.
//!
//! Must never: keep a value anywhere but in a zeroizing [`SecretValue`], or redact anything
//! shorter than [`MIN_LEN`] (too short to be a value; redacting it would garble ordinary text).

use std::borrow::Cow;
use std::sync::Mutex;

use crate::secret::{Fingerprint, SecretValue};

/// Values shorter than this are not remembered.
pub const MIN_LEN: usize = 8;
/// How many distinct values one process remembers (a rotation reads two; the oldest go first).
const CAPACITY: usize = 64;

static SEEN: Mutex<Vec<(SecretValue, Fingerprint)>> = Mutex::new(Vec::new());

/// Remembers `value` (a value of secret `secret`) so every later output is redacted of it.
pub fn remember(secret: &str, value: &SecretValue) {
    if value.expose().len() < MIN_LEN {
        return;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pos) = seen.iter().position(|(v, _)| v.ct_eq(value)) {
        // Most recent last: what a run uses now is the last to be forgotten.
        let entry = seen.remove(pos);
        seen.push(entry);
        return;
    }
    if seen.len() >= CAPACITY {
        seen.remove(0);
    }
    seen.push((value.clone(), value.fingerprint(secret)));
}

/// `text` with every remembered value replaced by `[value sha256:…]`, as written and as JSON
/// escapes it (a value with `"`, `\` or a control character is escaped inside a JSON string).
pub fn redact(text: &str) -> Cow<'_, str> {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for (v, fp) in seen.iter() {
        let raw = v.expose();
        let quoted = zeroize::Zeroizing::new(serde_json::to_string(raw).unwrap_or_default());
        let escaped = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or(raw);
        for form in [raw, escaped] {
            if !form.is_empty() && out.contains(form) {
                out = Cow::Owned(out.replace(form, &format!("[value {fp}]")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_values_are_replaced_by_their_fingerprint_everywhere_in_a_text() {
        let v = SecretValue::new("redaction-test-value-0123456789".into());
        let short = SecretValue::new("short".into());
        let text = format!("error page: {} and again {}; short", v.expose(), v.expose());
        assert_eq!(redact(&text), text, "nothing remembered yet");
        remember("s", &v);
        remember("s", &short);
        let fp = v.fingerprint("s");
        assert_eq!(
            redact(&text),
            format!("error page: [value {fp}] and again [value {fp}]; short")
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        // A value JSON escapes is found in JSON too.
        let odd = SecretValue::new("Zq\"uote\\back-slash\t0123456789".into());
        remember("s", &odd);
        let json = serde_json::json!({"error": format!("bad key {}", odd.expose())}).to_string();
        let red = redact(&json);
        assert!(!red.contains("uote"), "{red}");
        assert!(
            red.contains(&format!("[value {}]", odd.fingerprint("s"))),
            "{red}"
        );
    }
}
