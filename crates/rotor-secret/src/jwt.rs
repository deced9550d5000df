//! HS256 JSON Web Tokens (RFC 7519) signed with a secret value.
//!
//! Owns: compact-serialized HS256 tokens: [`sign_hs256`] for signers and probes,
//! [`verify_hs256`] for the demo service's validators, and [`claims_for`] for the short-lived
//! claims a probe or a relay sends. Only `alg: HS256` is accepted (never `none`, never another
//! algorithm chosen by the token), the signature is checked in constant time, and `exp` is
//! required. Must never: put the key in an error, or accept a token whose signature was not
//! checked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::SecretValue;

type HmacSha256 = Hmac<Sha256>;

/// The only header rotor emits (the same bytes as the jwt.io example, so tokens are comparable).
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a token was refused. Never carries the key or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a part is not the JSON it must be.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than HS256 (`none` included).
    #[error("algorithm {0:?} is not accepted (only HS256)")]
    Algorithm(String),
    /// The signature does not match the key.
    #[error("signature does not match")]
    Signature,
    /// `exp` is not after now.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time it was checked against.
        now: i64,
    },
    /// The claims have no `exp`.
    #[error("token has no exp claim")]
    MissingExp,
}

fn mac(key: &SecretValue) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC accepts any key length")
}

/// Signs `signing_input` (`header.payload`) and returns the base64url signature.
fn signature(key: &SecretValue, signing_input: &str) -> String {
    let mut m = mac(key);
    m.update(signing_input.as_bytes());
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

/// Returns the compact HS256 token for `claims`, signed with `key`.
pub fn sign_hs256(key: &SecretValue, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = signature(key, &signing_input);
    format!("{signing_input}.{sig}")
}

/// Verifies `token` with `key` at `now_unix` and returns its claims.
///
/// Checks, in order: three parts; header `alg` is `HS256`; the signature (constant time);
/// the claims are a JSON object; `exp` is present, numeric and later than `now_unix`.
pub fn verify_hs256(
    token: &str,
    key: &SecretValue,
    now_unix: i64,
) -> Result<serde_json::Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };

    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let header: serde_json::Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| JwtError::Malformed("header is not JSON"))?;
    match header.get("alg") {
        Some(serde_json::Value::String(alg)) if alg == "HS256" => {}
        Some(serde_json::Value::String(alg)) => {
            return Err(JwtError::Algorithm(alg.chars().take(32).collect()));
        }
        Some(_) | None => return Err(JwtError::Malformed("header has no alg string")),
    }

    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let mut m = mac(key);
    m.update(header_b64.as_bytes());
    m.update(b".");
    m.update(payload_b64.as_bytes());
    m.verify_slice(&sig).map_err(|_| JwtError::Signature)?;

    let payload_bytes = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
    let claims: serde_json::Value = serde_json::from_slice(&payload_bytes)
        .map_err(|_| JwtError::Malformed("payload is not JSON"))?;
    if !claims.is_object() {
        return Err(JwtError::Malformed("payload is not a JSON object"));
    }
    let exp = match claims.get("exp") {
        None | Some(serde_json::Value::Null) => return Err(JwtError::MissingExp),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f.floor() as i64))
            .ok_or(JwtError::Malformed("exp is not a number"))?,
    };
    if exp <= now_unix {
        return Err(JwtError::Expired { exp, now: now_unix });
    }
    Ok(claims)
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims `{sub, iat: now, exp: now + ttl}` (ttl rounded up to whole seconds).
pub fn claims_for(subject: &str, ttl: Duration) -> serde_json::Value {
    let iat = now_unix();
    let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let exp = iat.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    serde_json::json!({ "sub": subject, "iat": iat, "exp": exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT_IO_KEY: &str = "your-256-bit-secret";
    /// The jwt.io HS256 example (checked with Python's hmac/hashlib when this was written).
    const JWT_IO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    /// `{"exp":2000000000,"iat":1700000000,"sub":"rotor-probe"}` signed with the jwt.io key
    /// (computed independently with Python's hmac/hashlib).
    const WITH_EXP_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoicm90b3ItcHJvYmUifQ.6N6aGHNnys25X3S4rMn93XAkUWsklT64qFS1eGqq-88";

    fn key(s: &str) -> SecretValue {
        SecretValue::new(s.into())
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn known_answer_jwt_io_signature() {
        let (input, sig) = JWT_IO_TOKEN.rsplit_once('.').unwrap();
        assert_eq!(signature(&key(JWT_IO_KEY), input), sig);
        // The signature verifies; the example simply has no exp, which rotor requires.
        assert_eq!(
            verify_hs256(JWT_IO_TOKEN, &key(JWT_IO_KEY), 0),
            Err(JwtError::MissingExp)
        );
        assert_eq!(
            verify_hs256(JWT_IO_TOKEN, &key("another-key"), 0),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn known_answer_sign_and_verify() {
        // Keys in alphabetical order, so the serialization is the same whatever map serde uses.
        let claims =
            json!({"exp": 2_000_000_000i64, "iat": 1_700_000_000i64, "sub": "rotor-probe"});
        assert_eq!(sign_hs256(&key(JWT_IO_KEY), &claims), WITH_EXP_TOKEN);
        assert_eq!(
            verify_hs256(WITH_EXP_TOKEN, &key(JWT_IO_KEY), 1_700_000_000).unwrap(),
            claims
        );
    }

    #[test]
    fn round_trip_with_claims_for() {
        let k = key("a-long-enough-demo-value-0123456789");
        let claims = claims_for("rotor-probe", Duration::from_secs(60));
        assert_eq!(claims["sub"], "rotor-probe");
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(claims["exp"].as_i64().unwrap(), iat + 60);
        let token = sign_hs256(&k, &claims);
        assert_eq!(verify_hs256(&token, &k, now_unix()).unwrap(), claims);
        // Sub-second ttls round up instead of producing an already-expired token.
        let c = claims_for("x", Duration::from_millis(10));
        assert_eq!(c["exp"].as_i64().unwrap(), c["iat"].as_i64().unwrap() + 1);
    }

    #[test]
    fn tampered_signature_and_payload_are_rejected() {
        let k = key(JWT_IO_KEY);
        let (input, sig) = WITH_EXP_TOKEN.rsplit_once('.').unwrap();
        // Flip the first signature character.
        let mut bad_sig: Vec<char> = sig.chars().collect();
        bad_sig[0] = if bad_sig[0] == 'A' { 'B' } else { 'A' };
        let bad_sig: String = bad_sig.into_iter().collect();
        assert_eq!(
            verify_hs256(&format!("{input}.{bad_sig}"), &k, 0),
            Err(JwtError::Signature)
        );
        // Truncated signature.
        assert_eq!(
            verify_hs256(&format!("{input}.{}", &sig[..20]), &k, 0),
            Err(JwtError::Signature)
        );
        // A different payload under the original signature (e.g. a later exp).
        let (header, _) = input.split_once('.').unwrap();
        let forged = format!(
            "{header}.{}.{sig}",
            b64(r#"{"exp":4000000000,"iat":1700000000,"sub":"rotor-probe"}"#)
        );
        assert_eq!(verify_hs256(&forged, &k, 0), Err(JwtError::Signature));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_rejected() {
        let k = key(JWT_IO_KEY);
        let payload = b64(r#"{"exp":4000000000,"sub":"x"}"#);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            let h = b64(header);
            // Unsigned (`alg: none` style) and signed-with-the-key variants both fail.
            let unsigned = format!("{h}.{payload}.");
            let signed = format!("{h}.{payload}.{}", signature(&k, &format!("{h}.{payload}")));
            for t in [unsigned, signed] {
                assert!(
                    matches!(verify_hs256(&t, &k, 0), Err(JwtError::Algorithm(_))),
                    "{header}"
                );
            }
        }
        let no_alg = format!("{}.{payload}.", b64(r#"{"typ":"JWT"}"#));
        assert!(matches!(
            verify_hs256(&no_alg, &k, 0),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn expired_and_boundary() {
        let k = key(JWT_IO_KEY);
        assert_eq!(
            verify_hs256(WITH_EXP_TOKEN, &k, 2_000_000_000),
            Err(JwtError::Expired {
                exp: 2_000_000_000,
                now: 2_000_000_000
            })
        );
        assert!(verify_hs256(WITH_EXP_TOKEN, &k, 1_999_999_999).is_ok());
        let t = sign_hs256(&k, &claims_for("x", Duration::ZERO));
        assert!(matches!(
            verify_hs256(&t, &k, now_unix()),
            Err(JwtError::Expired { .. })
        ));
        let no_exp = sign_hs256(&k, &json!({"sub": "x"}));
        assert_eq!(verify_hs256(&no_exp, &k, 0), Err(JwtError::MissingExp));
        let str_exp = sign_hs256(&k, &json!({"exp": "4000000000"}));
        assert!(matches!(
            verify_hs256(&str_exp, &k, 0),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_tokens() {
        let k = key(JWT_IO_KEY);
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.AA",
            &format!("{}.e30.AA", b64("not json")),
        ] {
            assert!(
                matches!(verify_hs256(t, &k, 0), Err(JwtError::Malformed(_))),
                "{t}"
            );
        }
        // Validly signed, but the payload is not an object.
        let arr = sign_hs256(&k, &json!([1, 2]));
        assert!(matches!(
            verify_hs256(&arr, &k, 0),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn errors_never_contain_the_key() {
        let k = key("super-secret-value-that-must-not-leak");
        let t = sign_hs256(&k, &json!({"exp": 1}));
        let e = verify_hs256(&t, &k, 10).unwrap_err();
        assert!(!e.to_string().contains(k.expose()));
        assert!(!format!("{e:?}").contains(k.expose()));
    }
}
