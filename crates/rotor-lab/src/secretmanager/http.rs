//! HTTP for the Secret Manager: routing `/v1/...` (the `:verb` rides in the last path
//! segment), query parameters, `gcp` fault injection, statistics, and the admin endpoints
//! `/lab/v1/secretmanager/{stats,access-log,secrets}`.
//!
//! Owns: turning requests into calls and answers into JSON. Must never: log a request body or
//! a payload.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::model::RpcError;
use super::ops::{self, Call, Params};
use crate::api::Shared;
use crate::faults::{GcpEffect, GcpMethod, StatsInner};

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Routed {
    Call(Call),
    Unimplemented(String),
    NotFound,
}

fn route(method: &Method, path: &str) -> Routed {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Routed::NotFound;
    };
    let rest = percent_decode(rest);
    let (head, last) = match rest.rsplit_once('/') {
        Some((h, l)) => (Some(h), l),
        None => (None, rest.as_str()),
    };
    let (last, verb) = match last.split_once(':') {
        Some((l, v)) => (l, Some(v)),
        None => (last, None),
    };
    let path = match head {
        Some(h) => format!("{h}/{last}"),
        None => last.to_string(),
    };
    let segs: Vec<&str> = path.split('/').collect();
    let (parent, tail): (String, &[&str]) = match segs.as_slice() {
        ["projects", p, "locations", l, tail @ ..] if !p.is_empty() && !l.is_empty() => {
            (format!("projects/{p}/locations/{l}"), tail)
        }
        ["projects", p, tail @ ..] if !p.is_empty() => (format!("projects/{p}"), tail),
        _ => return Routed::NotFound,
    };
    let secret = |s: &str| format!("{parent}/secrets/{s}");
    let version = |s: &str, v: &str| (secret(s), v.to_string());
    let m = method.clone();
    let call = match (tail, verb) {
        (["secrets"], None) if m == Method::GET => Call::List {
            parent: parent.clone(),
        },
        (["secrets"], None) if m == Method::POST => Call::Create {
            parent: parent.clone(),
        },
        (["secrets", s], None) if m == Method::GET => Call::Get { secret: secret(s) },
        (["secrets", s], None) if m == Method::PATCH => Call::Update { secret: secret(s) },
        (["secrets", s], None) if m == Method::DELETE => Call::Delete { secret: secret(s) },
        (["secrets", s], Some("addVersion")) if m == Method::POST => {
            Call::AddVersion { secret: secret(s) }
        }
        (["secrets", s], Some("getIamPolicy")) if m == Method::GET => {
            Call::GetIamPolicy { secret: secret(s) }
        }
        (["secrets", s], Some("setIamPolicy")) if m == Method::POST => {
            Call::SetIamPolicy { secret: secret(s) }
        }
        (["secrets", s], Some("testIamPermissions")) if m == Method::POST => {
            Call::TestIamPermissions { secret: secret(s) }
        }
        (["secrets", _], Some(v @ ("enableManagedRotation" | "rotateSecret"))) => {
            return Routed::Unimplemented(v.to_string());
        }
        (["secrets", s, "versions"], None) if m == Method::GET => {
            Call::ListVersions { secret: secret(s) }
        }
        (["secrets", s, "versions", v], None) if m == Method::GET => {
            let (secret, id) = version(s, v);
            Call::GetVersion { secret, id }
        }
        (["secrets", s, "versions", v], Some("access")) if m == Method::GET => {
            let (secret, id) = version(s, v);
            Call::Access { secret, id }
        }
        (["secrets", s, "versions", v], Some(verb)) if m == Method::POST => {
            let (secret, id) = version(s, v);
            match verb {
                "enable" => Call::Enable { secret, id },
                "disable" => Call::Disable { secret, id },
                "destroy" => Call::Destroy { secret, id },
                _ => return Routed::NotFound,
            }
        }
        ([], None) | (["locations"], None) if m == Method::GET => {
            return Routed::Unimplemented("locations".into());
        }
        _ => return Routed::NotFound,
    };
    Routed::Call(call)
}

fn params(q: &[(String, String)]) -> Params {
    let mut p = Params::default();
    for (k, v) in q {
        match k.as_str() {
            "secretId" | "secret_id" => p.secret_id = v.clone(),
            "updateMask" | "update_mask" => p.update_mask.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "etag" => p.etag = v.clone(),
            "pageSize" | "page_size" => p.page_size = Some(v.clone()),
            "pageToken" | "page_token" => p.page_token = v.clone(),
            "filter" => p.filter = v.clone(),
            "$alt" | "alt" => p.int_enums = v.contains("enum-encoding=int"),
            _ => {}
        }
    }
    p
}

/// The project named in a resource name (`projects/P/...`).
fn project_of(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or("unknown")
}

/// Google's quota error: the metric and limit by kind of method, and `ErrorInfo` details.
fn quota_error(m: GcpMethod, project: &str) -> RpcError {
    let (metric, id) = match m {
        GcpMethod::Access => ("Access requests", "access_requests"),
        GcpMethod::Get
        | GcpMethod::List
        | GcpMethod::GetVersion
        | GcpMethod::ListVersions
        | GcpMethod::GetIamPolicy
        | GcpMethod::TestIamPermissions => ("Read requests", "read_requests"),
        _ => ("Write requests", "write_requests"),
    };
    let limit = format!("{metric} per minute per project");
    let mut e = RpcError::exhausted(format!(
        "Quota exceeded for quota metric '{metric}' and limit '{limit}' of service \
         'secretmanager.googleapis.com' for consumer 'project_number:{project}'."
    ));
    let limit_id: String = limit
        .split_whitespace()
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect();
    e.details = vec![json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com",
        "metadata": {
            "service": "secretmanager.googleapis.com",
            "consumer": format!("projects/{project}"),
            "quota_metric": format!("secretmanager.googleapis.com/{id}"),
            "quota_limit": limit_id,
            "quota_location": "global",
        }
    })];
    e
}

struct InFlight<'a>(&'a StatsInner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Who a request says it is, from its `Authorization` header, never the credential itself:
/// `anonymous`, `jwt iss=<issuer> kid=<key id>` for a self-signed JWT (a service-account key),
/// or `bearer` for an opaque access token. The JWT's signature is not checked.
fn caller(headers: &HeaderMap) -> String {
    use base64::Engine as _;
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "anonymous".into();
    };
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return "other".into();
    };
    let part = |i: usize| -> Option<Value> {
        let seg = token.split('.').nth(i)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seg)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    };
    match (part(0), part(1)) {
        (Some(h), Some(c)) => format!(
            "jwt iss={} kid={}",
            c["iss"].as_str().unwrap_or("?"),
            h["kid"].as_str().unwrap_or("?")
        ),
        _ => "bearer".into(),
    }
}

/// Every `/v1/...` request.
pub(crate) async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = crate::api::client_of(&headers);
    let sm = &s.secret_manager;
    sm.lock().count_caller(caller(&headers));
    let call = match route(&method, uri.path()) {
        Routed::Call(c) => c,
        Routed::Unimplemented(what) => {
            s.stats.begin("secretmanager", "unimplemented", &client);
            let _g = InFlight(&s.stats);
            sm.lock().count("unimplemented");
            return RpcError::unimplemented(format!("The rotor lab does not implement {what}."))
                .into_response();
        }
        Routed::NotFound => {
            s.stats.begin("secretmanager", "unknown", &client);
            let _g = InFlight(&s.stats);
            sm.lock().count("unknown");
            return RpcError::not_found(format!(
                "The requested URL {} {} was not found on this server.",
                method,
                uri.path()
            ))
            .into_response();
        }
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let p = params(&query);
    let m = call.method();
    s.stats.begin("secretmanager", m.as_str(), &client);
    let _g = InFlight(&s.stats);
    sm.lock().count(m.as_str());
    let secret = call.secret(&p);
    let mut lost_answer = false;
    if let Some((effect, delay_ms)) = s.faults.check_gcp(m, &secret) {
        tracing::info!(
            method = m.as_str(),
            secret,
            ?effect,
            "lab: injected Secret Manager fault"
        );
        let err = match effect {
            GcpEffect::Delay => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                None
            }
            GcpEffect::ResourceExhausted => {
                let project = match &call {
                    Call::List { parent } | Call::Create { parent } => project_of(parent),
                    _ => project_of(&secret),
                };
                Some(quota_error(m, project))
            }
            GcpEffect::Unavailable => Some(RpcError::unavailable()),
            GcpEffect::Internal => Some(RpcError::internal()),
            GcpEffect::LostAnswer => {
                lost_answer = true;
                None
            }
        };
        if let Some(e) = err {
            if let Call::Access { secret, id } = &call {
                ops::record_faulted_access(&mut sm.lock(), secret, id, e.status);
            }
            return e.into_response();
        }
    }
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return RpcError::invalid(format!("Invalid JSON payload received. {e}"))
                    .into_response();
            }
        }
    };
    let now = Utc::now();
    let result = {
        let mut st = sm.lock();
        st.sweep(now);
        ops::run(&mut st, &call, &p, &body, now)
    };
    match result {
        // The call took effect, but the caller hears 503 (a reply lost on the way back).
        Ok(_) if lost_answer => RpcError::unavailable().into_response(),
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => {
            if e.etag {
                sm.lock().count_etag_conflict(m.as_str());
            }
            tracing::debug!(
                method = m.as_str(),
                secret,
                status = e.status,
                "lab: Secret Manager call refused"
            );
            e.into_response()
        }
    }
}

/// `GET /lab/v1/secretmanager/stats`.
pub(crate) async fn admin_stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.secret_manager.stats()).into_response()
}

/// `GET /lab/v1/secretmanager/access-log`.
pub(crate) async fn admin_access_log(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"accesses": s.secret_manager.access_log()})).into_response()
}

/// `GET /lab/v1/secretmanager/secrets`: metadata, aliases and versions, no payloads.
pub(crate) async fn admin_secrets(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"secrets": s.secret_manager.secrets()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(m: Method, p: &str) -> String {
        match route(&m, p) {
            Routed::Call(c) => format!("{c:?}"),
            Routed::Unimplemented(w) => format!("unimplemented {w}"),
            Routed::NotFound => "not found".into(),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            call(
                Method::GET,
                "/v1/projects/p/secrets/s/versions/latest:access"
            ),
            r#"Access { secret: "projects/p/secrets/s", id: "latest" }"#
        );
        assert_eq!(
            call(
                Method::POST,
                "/v1/projects/p/locations/eu/secrets/s%3AaddVersion"
            ),
            r#"AddVersion { secret: "projects/p/locations/eu/secrets/s" }"#
        );
        assert_eq!(
            call(Method::POST, "/v1/projects/p/secrets"),
            r#"Create { parent: "projects/p" }"#
        );
        assert_eq!(call(Method::PUT, "/v1/projects/p/secrets/s"), "not found");
        assert_eq!(
            call(Method::POST, "/v1/projects/p/secrets/s/versions/1:explode"),
            "not found"
        );
        assert_eq!(
            call(Method::POST, "/v1/projects/p/secrets/s:rotateSecret"),
            "unimplemented rotateSecret"
        );
    }

    #[test]
    fn query() {
        let q = vec![
            (
                "updateMask".to_string(),
                "versionAliases, labels".to_string(),
            ),
            ("$alt".to_string(), "json;enum-encoding=int".to_string()),
        ];
        let p = params(&q);
        assert_eq!(p.update_mask, ["versionAliases", "labels"]);
        assert!(p.int_enums);
        assert!(!params(&[]).int_enums);
    }
}
