//! Secret values and their fingerprints.
//!
//! Owns: the only type that holds a secret value ([`SecretValue`]), its generation from the OS
//! CSPRNG, constant-time comparison, and the domain-separated fingerprint that names a value
//! everywhere else (journal, events, errors, audit).
//!
//! Must never: implement `Display`/`Serialize` for a value, or print one in `Debug`.

use std::fmt;

use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shannon entropy of the characters of `s`, in bits per character (a random base64url value
/// has close to 6, English words about 4, a repeated character 0).
pub fn entropy_per_char(s: &str) -> f64 {
    let mut counts = std::collections::BTreeMap::new();
    let mut n = 0f64;
    for c in s.chars() {
        *counts.entry(c).or_insert(0f64) += 1.0;
        n += 1.0;
    }
    counts
        .values()
        .map(|k| {
            let p = k / n;
            -p * p.log2()
        })
        .sum()
}

/// True for a run of 20 or more token characters (`A-Za-z0-9+/=_-`) with at least 3.5 bits of
/// entropy per character: what a generated secret looks like. Such runs are never quoted back.
pub fn looks_like_a_value(token: &str) -> bool {
    token.chars().count() >= 20 && entropy_per_char(token) >= 3.5
}

/// Domain separator of fingerprints; bump the version if the input format ever changes.
const FINGERPRINT_DOMAIN: &[u8] = b"rotor/v1\0";

/// One secret value. No `Display`, a redacted `Debug`, zeroized on drop (via `secrecy`).
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    /// Wraps a value read from a store, an environment or a file.
    pub fn new(value: String) -> Self {
        SecretValue(SecretString::from(value))
    }

    /// The boundary: the value leaves the wrapper only towards a store, a consumer or a probe.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Length in characters.
    pub fn len(&self) -> usize {
        self.expose().chars().count()
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// Constant-time equality (length may leak; content does not).
    pub fn ct_eq(&self, other: &SecretValue) -> bool {
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }

    /// The fingerprint of this value as a value of secret `secret_name`.
    pub fn fingerprint(&self, secret_name: &str) -> Fingerprint {
        Fingerprint::of(secret_name, self.expose())
    }

    /// Generates `length` characters drawn uniformly from `alphabet` with the OS CSPRNG.
    pub fn generate(alphabet: Alphabet, length: usize) -> Result<SecretValue, GenerateError> {
        let chars = alphabet.chars();
        let n = chars.len();
        // Rejection sampling over bytes keeps the distribution uniform.
        let limit = 256 - (256 % n);
        let mut out = String::with_capacity(length);
        let mut buf = zeroize::Zeroizing::new([0u8; 64]);
        while out.len() < length {
            OsRng
                .try_fill_bytes(&mut buf[..])
                .map_err(|e| GenerateError(e.to_string()))?;
            for &b in buf.iter() {
                if (b as usize) < limit && out.len() < length {
                    out.push(chars[(b as usize) % n] as char);
                }
            }
        }
        Ok(SecretValue::new(out))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(REDACTED)")
    }
}

/// The OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct GenerateError(String);

/// Character sets a value can be generated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alphabet {
    /// `A-Z a-z 0-9` (62 symbols, ~5.95 bits each).
    Alphanumeric,
    /// `A-Z a-z 0-9 - _` (64 symbols, 6 bits each), safe in URLs, headers and env files.
    Base64url,
    /// `0-9 a-f` (16 symbols, 4 bits each).
    Hex,
}

impl Alphabet {
    /// Every accepted spelling, for error messages.
    pub const NAMES: &'static [&'static str] = &["alphanumeric", "base64url", "hex"];

    fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Alphanumeric => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            }
            Alphabet::Base64url => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            }
            Alphabet::Hex => b"0123456789abcdef",
        }
    }

    /// Its name as the playbook spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Alphabet::Alphanumeric => "alphanumeric",
            Alphabet::Base64url => "base64url",
            Alphabet::Hex => "hex",
        }
    }

    /// True when every character of `value` belongs to this alphabet.
    pub fn admits(self, value: &SecretValue) -> bool {
        let set = self.chars();
        value.expose().bytes().all(|b| set.contains(&b))
    }

    /// Bits of entropy per character.
    pub fn bits_per_char(self) -> f64 {
        (self.chars().len() as f64).log2()
    }
}

/// `sha256:` + 12 hex digits of SHA-256 over `"rotor/v1\0" + secret name + "\0" + value`.
///
/// Deserializing accepts only that form: a fingerprint read from a file or a peer that is
/// anything else (a value, a long text) is refused without being echoed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(#[serde(deserialize_with = "parse_fingerprint")] String);

fn parse_fingerprint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    match Fingerprint::parse(&text) {
        Some(fp) => Ok(fp.0),
        None => Err(serde::de::Error::custom(format!(
            "a fingerprint must read `sha256:` and 12 hex digits; got {} characters that do not",
            text.chars().count()
        ))),
    }
}

impl Fingerprint {
    /// Computes the fingerprint of `value` as a value of secret `secret_name`.
    pub fn of(secret_name: &str, value: &str) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update(secret_name.as_bytes());
        h.update(b"\0");
        h.update(value.as_bytes());
        let digest = h.finalize();
        Fingerprint(format!("sha256:{}", &hex::encode(digest)[..12]))
    }

    /// Parses a fingerprint read back from a journal, a store or an instance report.
    pub fn parse(s: &str) -> Option<Fingerprint> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Fingerprint(s.to_ascii_lowercase()))
    }

    /// The text form, `sha256:0123456789ab`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_follow_the_alphabet_and_length() {
        for alphabet in [Alphabet::Alphanumeric, Alphabet::Base64url, Alphabet::Hex] {
            let v = SecretValue::generate(alphabet, 97).unwrap();
            assert_eq!(v.len(), 97);
            assert!(alphabet.admits(&v), "{alphabet:?}");
        }
    }

    #[test]
    fn two_generated_values_differ() {
        let a = SecretValue::generate(Alphabet::Alphanumeric, 64).unwrap();
        let b = SecretValue::generate(Alphabet::Alphanumeric, 64).unwrap();
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&a.clone()));
    }

    #[test]
    fn fingerprint_is_domain_separated_by_secret_name() {
        let v = SecretValue::new("same-value".into());
        let a = v.fingerprint("service-secret");
        let b = v.fingerprint("jwt-key");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("sha256:"));
        assert_eq!(a.as_str().len(), "sha256:".len() + 12);
        // Known answer: sha256("rotor/v1\0service-secret\0same-value")[..12]
        let mut h = Sha256::new();
        h.update(b"rotor/v1\0service-secret\0same-value");
        assert_eq!(
            a.as_str(),
            format!("sha256:{}", &hex::encode(h.finalize())[..12])
        );
        assert_eq!(Fingerprint::parse(a.as_str()), Some(a));
        assert_eq!(Fingerprint::parse("sha256:xyz"), None);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new("hunter2-hunter2".into());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
