//! Secret Manager resources: secrets and versions, their JSON rendering (proto3 JSON, camelCase,
//! int64 as strings, enums as names or integers), proto3 JSON value parsing, and Google's error
//! form.
//!
//! Owns: the resources' shape and the words of the errors. Must never: put payload data in an
//! error message, a log line or a `Debug` rendering.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// The largest payload Secret Manager accepts.
pub(super) const MAX_PAYLOAD: usize = 64 * 1024;

/// A failed call, rendered as Google's JSON error: `{"error": {"code", "message", "status"}}`.
#[derive(Debug, Clone)]
pub(super) struct RpcError {
    pub http: u16,
    pub status: &'static str,
    pub message: String,
    pub details: Vec<Value>,
    /// Refused for a stale etag (counted in the statistics).
    pub etag: bool,
}

impl RpcError {
    fn new(http: u16, status: &'static str, message: impl Into<String>) -> RpcError {
        RpcError {
            http,
            status,
            message: message.into(),
            details: Vec::new(),
            etag: false,
        }
    }
    pub fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(400, "INVALID_ARGUMENT", message)
    }
    pub fn precondition(message: impl Into<String>) -> RpcError {
        RpcError::new(400, "FAILED_PRECONDITION", message)
    }
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(404, "NOT_FOUND", message)
    }
    pub fn already_exists(message: impl Into<String>) -> RpcError {
        RpcError::new(409, "ALREADY_EXISTS", message)
    }
    pub fn exhausted(message: impl Into<String>) -> RpcError {
        RpcError::new(429, "RESOURCE_EXHAUSTED", message)
    }
    pub fn unavailable() -> RpcError {
        RpcError::new(503, "UNAVAILABLE", "The service is currently unavailable.")
    }
    pub fn internal() -> RpcError {
        RpcError::new(500, "INTERNAL", "Internal error encountered.")
    }
    pub fn unimplemented(message: impl Into<String>) -> RpcError {
        RpcError::new(501, "UNIMPLEMENTED", message)
    }
    pub fn secret_not_found(secret: &str) -> RpcError {
        RpcError::not_found(format!("Secret [{secret}] not found."))
    }
    pub fn etag_mismatch(kind: &str, name: &str) -> RpcError {
        RpcError {
            etag: true,
            ..RpcError::precondition(format!(
                "The etag provided in the request does not match the current etag of {kind} [{name}]."
            ))
        }
    }
    pub fn body(&self) -> Value {
        let mut e = json!({"code": self.http, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            e["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": e })
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::http::json_response(code, &self.body())
    }
}

/// A version's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    /// `ENABLED`, `DISABLED` or `DESTROYED`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
    /// The proto enum number (`enum-encoding=int`).
    pub fn number(self) -> i64 {
        match self {
            VersionState::Enabled => 1,
            VersionState::Disabled => 2,
            VersionState::Destroyed => 3,
        }
    }
}

pub(super) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn dur(d: &Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}.{:03}s", d.as_secs(), nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}.{:06}s", d.as_secs(), nanos / 1_000)
    } else {
        format!("{}.{nanos:09}s", d.as_secs())
    }
}

pub(super) fn parse_ts(field: &str, v: &Value) -> Result<DateTime<Utc>, RpcError> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            RpcError::invalid(format!(
                "Invalid value at '{field}' (type.googleapis.com/google.protobuf.Timestamp), {v}"
            ))
        })
}

pub(super) fn parse_dur(field: &str, v: &Value) -> Result<Duration, RpcError> {
    let bad = || {
        RpcError::invalid(format!(
            "Invalid value at '{field}' (type.googleapis.com/google.protobuf.Duration), {v}"
        ))
    };
    let s = v
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .ok_or_else(bad)?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(secs, nanos))
}

/// Decodes proto3 JSON `bytes`: standard or URL-safe base64, padded or not.
pub(super) fn decode_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .ok()
}

/// An int64 in proto3 JSON: a string or a number.
pub(super) fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// `version_aliases` → `versionAliases`; proto JSON parsers accept either spelling.
pub(super) fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The object's fields with camelCase keys; `null` counts as absent. Any key outside
/// `known` is refused with Google's "Unknown name" message.
pub(super) fn fields(
    v: &Value,
    at: &str,
    known: &[&str],
) -> Result<BTreeMap<String, Value>, RpcError> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(BTreeMap::new()),
        other => {
            return Err(RpcError::invalid(format!(
                "Invalid JSON payload received. Expected an object at '{at}', got {other}."
            )));
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let key = camel(k);
        if !known.contains(&key.as_str()) {
            let place = if at.is_empty() {
                String::new()
            } else {
                format!(" at '{at}'")
            };
            return Err(RpcError::invalid(format!(
                "Invalid JSON payload received. Unknown name \"{k}\"{place}: Cannot find field."
            )));
        }
        if !v.is_null() {
            out.insert(key, v.clone());
        }
    }
    Ok(out)
}

pub(super) fn string_map(field: &str, v: &Value) -> Result<BTreeMap<String, String>, RpcError> {
    let obj = v.as_object().ok_or_else(|| {
        RpcError::invalid(format!(
            "Invalid JSON payload received. Expected an object at '{field}'."
        ))
    })?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(RpcError::invalid(format!(
                "Invalid value at '{field}[{k}]' (TYPE_STRING), {other}"
            ))),
        })
        .collect()
}

/// A version of a secret. Its `Debug` leaves the payload out.
#[derive(Clone)]
pub(super) struct Version {
    pub number: i64,
    pub create_time: DateTime<Utc>,
    pub destroy_time: Option<DateTime<Utc>>,
    pub scheduled_destroy_time: Option<DateTime<Utc>>,
    pub state: VersionState,
    pub etag: String,
    /// `None` once destroyed.
    pub data: Option<Vec<u8>>,
    pub crc32c: u32,
    pub client_checksum: bool,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("number", &self.number)
            .field("state", &self.state)
            .field("etag", &self.etag)
            .field(
                "data",
                &self.data.as_ref().map(|d| format!("<{} bytes>", d.len())),
            )
            .field("crc32c", &self.crc32c)
            .finish_non_exhaustive()
    }
}

/// A rotation schedule.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rotation {
    pub next: Option<DateTime<Utc>>,
    pub period: Option<Duration>,
}

/// A secret and its versions.
#[derive(Debug, Clone)]
pub(super) struct Secret {
    pub name: String,
    pub create_time: DateTime<Utc>,
    pub etag: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub aliases: BTreeMap<String, i64>,
    pub topics: Vec<String>,
    pub rotation: Option<Rotation>,
    /// `None` for regional secrets (`projects/*/locations/*/secrets/*`).
    pub replication: Option<Value>,
    pub expire_time: Option<DateTime<Utc>>,
    pub version_destroy_ttl: Option<Duration>,
    pub tags: BTreeMap<String, String>,
    pub cmek: Option<Value>,
    pub iam_policy: Value,
    pub versions: Vec<Version>,
}

impl Secret {
    pub fn new(name: String, now: DateTime<Utc>, etag: String, regional: bool) -> Secret {
        Secret {
            name,
            create_time: now,
            etag,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            aliases: BTreeMap::new(),
            topics: Vec::new(),
            rotation: None,
            replication: (!regional).then(|| json!({"automatic": {}})),
            expire_time: None,
            version_destroy_ttl: None,
            tags: BTreeMap::new(),
            cmek: None,
            iam_policy: json!({"version": 1, "etag": "ACAB"}),
            versions: Vec::new(),
        }
    }

    pub fn version_name(&self, number: i64) -> String {
        format!("{}/versions/{number}", self.name)
    }

    /// Resolves a version id: a number, an alias or `latest` (the newest version, whatever
    /// its state).
    pub fn resolve(&self, id: &str) -> Result<usize, RpcError> {
        let missing = || {
            RpcError::not_found(format!(
                "Secret Version [{}/versions/{id}] not found.",
                self.name
            ))
        };
        if id == "latest" {
            return match self.versions.len() {
                0 => Err(RpcError::not_found(format!(
                    "Secret [{}] not found or has no versions.",
                    self.name
                ))),
                n => Ok(n - 1),
            };
        }
        let number = if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
            id.parse::<i64>().map_err(|_| missing())?
        } else {
            *self.aliases.get(id).ok_or_else(missing)?
        };
        if number < 1 || number as usize > self.versions.len() {
            return Err(missing());
        }
        Ok(number as usize - 1)
    }

    /// Applies lazy time effects: scheduled destructions whose time has come.
    pub fn tick(&mut self, now: DateTime<Utc>, etag: &mut dyn FnMut() -> String) {
        for v in &mut self.versions {
            if let Some(at) = v.scheduled_destroy_time
                && at <= now
                && v.state != VersionState::Destroyed
            {
                v.state = VersionState::Destroyed;
                v.data = None;
                v.destroy_time = Some(at);
                v.scheduled_destroy_time = None;
                v.etag = etag();
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        if let Some(r) = &self.replication {
            m.insert("replication".into(), r.clone());
        }
        m.insert("createTime".into(), json!(ts(&self.create_time)));
        if !self.labels.is_empty() {
            m.insert("labels".into(), json!(self.labels));
        }
        if !self.topics.is_empty() {
            let t: Vec<Value> = self.topics.iter().map(|n| json!({"name": n})).collect();
            m.insert("topics".into(), Value::Array(t));
        }
        if let Some(t) = &self.expire_time {
            m.insert("expireTime".into(), json!(ts(t)));
        }
        m.insert("etag".into(), json!(self.etag));
        if let Some(r) = &self.rotation {
            let mut rot = Map::new();
            if let Some(t) = &r.next {
                rot.insert("nextRotationTime".into(), json!(ts(t)));
            }
            // `rotationPeriod` is input-only: Google never returns it.
            m.insert("rotation".into(), Value::Object(rot));
        }
        if !self.aliases.is_empty() {
            let a: Map<String, Value> = self
                .aliases
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.to_string())))
                .collect();
            m.insert("versionAliases".into(), Value::Object(a));
        }
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(d) = &self.version_destroy_ttl {
            m.insert("versionDestroyTtl".into(), json!(dur(d)));
        }
        if let Some(c) = &self.cmek {
            m.insert("customerManagedEncryption".into(), c.clone());
        }
        if !self.tags.is_empty() {
            m.insert("tags".into(), json!(self.tags));
        }
        Value::Object(m)
    }

    fn replication_status(&self) -> Option<Value> {
        let r = self.replication.as_ref()?;
        if r.get("automatic").is_some() {
            return Some(json!({"automatic": {}}));
        }
        let replicas: Vec<Value> = r
            .pointer("/userManaged/replicas")
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .map(|x| json!({"location": x.get("location").cloned().unwrap_or_default()}))
                    .collect()
            })
            .unwrap_or_default();
        Some(json!({"userManaged": {"replicas": replicas}}))
    }

    pub fn version_json(&self, i: usize, int_enums: bool) -> Value {
        let v = &self.versions[i];
        let mut m = Map::new();
        m.insert("name".into(), json!(self.version_name(v.number)));
        m.insert("createTime".into(), json!(ts(&v.create_time)));
        if let Some(t) = &v.destroy_time {
            m.insert("destroyTime".into(), json!(ts(t)));
        }
        let state = if int_enums {
            json!(v.state.number())
        } else {
            json!(v.state.as_str())
        };
        m.insert("state".into(), state);
        if let Some(r) = self.replication_status() {
            m.insert("replicationStatus".into(), r);
        }
        m.insert("etag".into(), json!(v.etag));
        if v.client_checksum {
            m.insert("clientSpecifiedPayloadChecksum".into(), json!(true));
        }
        if let Some(t) = &v.scheduled_destroy_time {
            m.insert("scheduledDestroyTime".into(), json!(ts(t)));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        let d = parse_dur("x", &json!("86400s")).unwrap();
        assert_eq!(d, Duration::from_secs(86400));
        assert_eq!(dur(&d), "86400s");
        let d = parse_dur("x", &json!("1.5s")).unwrap();
        assert_eq!(dur(&d), "1.500s");
        assert!(parse_dur("x", &json!("5m")).is_err());
        assert!(parse_dur("x", &json!("-1s")).is_err());
    }

    #[test]
    fn debug_leaves_payloads_out() {
        let v = Version {
            number: 1,
            create_time: Utc::now(),
            destroy_time: None,
            scheduled_destroy_time: None,
            state: VersionState::Enabled,
            etag: "\"1\"".into(),
            data: Some(b"hunter2-hunter2".to_vec()),
            crc32c: 0,
            client_checksum: false,
        };
        let d = format!("{v:?}");
        assert!(d.contains("<15 bytes>"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("104, 117"), "{d}");
    }
}
