//! HTTP probes: a value in a header or as the key of a bearer HS256 JWT, sent to one instance;
//! and signer→validator round trips started on a signer instance.
//!
//! Every request goes straight to the instance address (no proxy, no connection reuse: the
//! instance behind an address changes during rollouts). Errors name the status or the transport
//! failure, never the value or the token.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};

use super::{ProbeError, Trip, Verdict};
use crate::jwt;
use crate::playbook::{ProbeSpec, RoundtripSpec};
use crate::secret::SecretValue;
use crate::transport::Target;

/// Subject of the tokens probes mint.
const PROBE_SUBJECT: &str = "rotor-probe";

/// Bytes of a signer's answer read (to describe it) in a failed round trip.
const BODY_LIMIT: usize = 64 * 1024;

/// Describes a transport failure without the URL's query or anything sent.
fn transport_detail(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    if let Some(tls) = crate::transport::describe(e) {
        return tls;
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The error's source chain (hyper/io) describes the socket; reqwest's own Display would
    // add the URL, which is harmless but noisy.
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

pub(super) async fn present(
    spec: &ProbeSpec,
    at: Target<'_>,
    value: &SecretValue,
    timeout: Duration,
) -> Result<Verdict, ProbeError> {
    let failed = |detail: String| ProbeError::Failed {
        probe: super::describe(spec),
        target: at.name(),
        detail,
    };
    let (path, header_name, header_value, accept, reject) = match spec {
        ProbeSpec::Header {
            path,
            header,
            accept,
            reject,
        } => {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| failed(format!("`{header}` is not a valid header name")))?;
            let value = HeaderValue::from_str(value.expose()).map_err(|_| {
                failed("the value contains characters not allowed in a header".into())
            })?;
            (path, name, value, accept, reject)
        }
        ProbeSpec::Jwt {
            path,
            ttl,
            accept,
            reject,
        } => {
            let token = jwt::sign_hs256(value, &jwt::claims_for(PROBE_SUBJECT, *ttl));
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| failed("the token is not a valid header value".into()))?;
            (path, AUTHORIZATION, value, accept, reject)
        }
        ProbeSpec::Exec { .. } => {
            return Err(failed("an exec probe is not an HTTP probe".into()));
        }
    };
    let mut header_value = header_value;
    header_value.set_sensitive(true);

    let response = at
        .client()
        .get(at.url(path))
        .header(header_name, header_value)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed(transport_detail(&e, timeout)))?;
    let status = response.status().as_u16();
    drop(response);
    if accept.contains(&status) {
        Ok(Verdict::Accepted)
    } else if reject.contains(&status) {
        Ok(Verdict::Rejected)
    } else {
        Err(failed(format!(
            "answered {status}, which is neither accepted ({accept:?}) nor rejected ({reject:?})"
        )))
    }
}

pub(super) async fn roundtrip(
    spec: &RoundtripSpec,
    signer: Target<'_>,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match trip(spec, signer, target, timeout).await {
        Trip::Passed => Ok(()),
        Trip::Refused(detail) | Trip::Unreachable(detail) => Err(ProbeError::Failed {
            probe: format!(
                "roundtrip to {} GET {}",
                spec.to,
                spec.path.replace("{target}", &target.to_string())
            ),
            target: signer.name(),
            detail,
        }),
    }
}

/// One round trip, classified.
pub(super) async fn trip(
    spec: &RoundtripSpec,
    signer: Target<'_>,
    target: SocketAddr,
    timeout: Duration,
) -> Trip {
    let path = spec.path.replace("{target}", &target.to_string());
    let response = match signer
        .client()
        .get(signer.url(&path))
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) => r,
        // A signer whose certificate rotor refuses is reachable and wrong, not restarting.
        Err(e) if crate::transport::describe(&e).is_some() => {
            return Trip::Refused(transport_detail(&e, timeout));
        }
        Err(e) => return Trip::Unreachable(transport_detail(&e, timeout)),
    };
    let status = response.status().as_u16();
    if status == spec.expect {
        return Trip::Passed;
    }
    Trip::Refused(format!(
        "signer answered {status}: {}",
        describe_body(response, timeout).await
    ))
}

/// A peer's answer, described without quoting it: its length and a fingerprint of its bytes
/// (compare two answers, or an answer with what the peer logged), read up to [`BODY_LIMIT`].
async fn describe_body(mut response: reqwest::Response, timeout: Duration) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut len = 0usize;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                len += chunk.len();
                h.update(&chunk);
                if len > BODY_LIMIT {
                    return format!("a body of more than {BODY_LIMIT} bytes (not read further)");
                }
            }
            Ok(None) => break,
            Err(e) => {
                return format!(
                    "a body that could not be read ({})",
                    transport_detail(&e, timeout)
                );
            }
        }
    }
    if len == 0 {
        return "an empty body".into();
    }
    format!(
        "a body of {len} bytes (sha256 {}; rotor never quotes a peer's answer)",
        &hex::encode(h.finalize())[..12]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    // Through the public entry points: an address is plain HTTP.
    use crate::probe::{present, roundtrip};
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    const VALUE: &str = "probe-test-value-0123456789-abcdefghij";

    /// Answers with the status given in the `X-Want` header, or 200 when the header
    /// `X-Key` equals VALUE / the bearer token verifies with VALUE, else 403.
    async fn server() -> SocketAddr {
        async fn ping(headers: HeaderMap) -> StatusCode {
            let key = SecretValue::new(VALUE.into());
            if let Some(v) = headers.get("x-key") {
                return if v.as_bytes() == VALUE.as_bytes() {
                    StatusCode::OK
                } else {
                    StatusCode::FORBIDDEN
                };
            }
            if let Some(t) = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
            {
                return match jwt::verify_hs256(t, &key, jwt::now_unix()) {
                    Ok(c) if c["sub"] == PROBE_SUBJECT => StatusCode::OK,
                    _ => StatusCode::UNAUTHORIZED,
                };
            }
            StatusCode::IM_A_TEAPOT
        }
        async fn relay(
            axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >,
        ) -> (StatusCode, String) {
            match q.get("target").map(String::as_str) {
                Some("127.0.0.1:1") => (StatusCode::OK, "fine".into()),
                _ => (StatusCode::BAD_GATEWAY, "x".repeat(500)),
            }
        }
        async fn slow() -> StatusCode {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
        let app = Router::new()
            .route("/ping", get(ping))
            .route("/relay", get(relay))
            .route("/slow", get(slow));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn header(path: &str) -> ProbeSpec {
        ProbeSpec::Header {
            path: path.into(),
            header: "X-Key".into(),
            accept: vec![200],
            reject: vec![401, 403],
        }
    }

    fn jwt_spec(path: &str) -> ProbeSpec {
        ProbeSpec::Jwt {
            path: path.into(),
            ttl: Duration::from_secs(60),
            accept: vec![200],
            reject: vec![401, 403],
        }
    }

    const T: Duration = Duration::from_secs(5);

    fn assert_clean(e: &ProbeError, value: &str) {
        let s = e.to_string();
        assert!(!s.contains(value), "{s}");
        assert!(!s.contains("eyJ"), "a token leaked: {s}");
    }

    #[tokio::test]
    async fn header_probe_verdicts() {
        let addr = server().await;
        let good = SecretValue::new(VALUE.into());
        let bad = SecretValue::new("some-other-value-0123456789".into());
        assert_eq!(
            present(&header("/ping"), addr, &good, T).await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            present(&header("/ping"), addr, &bad, T).await.unwrap(),
            Verdict::Rejected
        );
    }

    #[tokio::test]
    async fn jwt_probe_verdicts() {
        let addr = server().await;
        let good = SecretValue::new(VALUE.into());
        let bad = SecretValue::new("some-other-value-0123456789".into());
        assert_eq!(
            present(&jwt_spec("/ping"), addr, &good, T).await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            present(&jwt_spec("/ping"), addr, &bad, T).await.unwrap(),
            Verdict::Rejected
        );
    }

    #[tokio::test]
    async fn unexpected_status_is_an_error_without_the_value() {
        let addr = server().await;
        let good = SecretValue::new(VALUE.into());
        // 404: neither accepted nor rejected.
        let e = present(&header("/missing"), addr, &good, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        assert!(e.to_string().contains("header X-Key GET /missing"), "{e}");
        assert_clean(&e, VALUE);
        let e = present(&jwt_spec("/missing"), addr, &good, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert_clean(&e, VALUE);
    }

    #[tokio::test]
    async fn connection_refused_and_timeout_are_errors() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let good = SecretValue::new(VALUE.into());
        let e = present(&header("/ping"), closed, &good, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connection failed"), "{e}");
        assert_clean(&e, VALUE);

        let addr = server().await;
        let e = present(&jwt_spec("/slow"), addr, &good, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert_clean(&e, VALUE);
    }

    #[tokio::test]
    async fn header_value_with_forbidden_characters_is_an_error_without_the_value() {
        let addr = server().await;
        let v = "line\nbreak-value-0123456789";
        let e = present(&header("/ping"), addr, &SecretValue::new(v.into()), T)
            .await
            .unwrap_err();
        assert_clean(&e, v);
        assert!(!e.to_string().contains("break-value"));
    }

    #[tokio::test]
    async fn roundtrip_outcomes() {
        let addr = server().await;
        let spec = RoundtripSpec {
            to: "auth".into(),
            path: "/relay?target={target}".into(),
            expect: 200,
        };
        roundtrip(&spec, addr, "127.0.0.1:1".parse().unwrap(), T)
            .await
            .unwrap();
        let e = roundtrip(&spec, addr, "127.0.0.1:2".parse().unwrap(), T)
            .await
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("signer answered 502: "), "{s}");
        assert!(s.contains("target=127.0.0.1:2"), "{s}");
        // The body is described, never quoted.
        assert!(s.contains("a body of "), "{s}");
        assert!(!s.contains("xxxx"), "{s}");
    }
}
