//! The lab's Google Cloud Secret Manager: the REST API v1 (`/v1/projects/*/secrets/...`) on
//! the lab's own address, faithful enough that the official clients (Rust
//! `google-cloud-secretmanager-v1`, Python `google-cloud-secret-manager` over REST) work
//! against it unmodified. No authentication: any project id is accepted and `Authorization`
//! headers are ignored.
//!
//! Layout: `model` (secrets, versions, JSON rendering, Google's error form), `input` (request
//! bodies, update masks, validation), `filter` (list filters), `ops` (the methods, run under
//! one lock), `http` (routing, `gcp` faults, statistics, the admin endpoints
//! `/lab/v1/secretmanager/*`).
//!
//! Every call is counted per method, and every call refused for a stale etag per method too;
//! every `:access` call is counted per version and recorded in an access log (version, its
//! state at the time, outcome) that tests read through [`SecretManagerLab::access_log`] or
//! `GET /lab/v1/secretmanager/access-log`.
//!
//! Quirks make it behave like a server that falls short of Google's (an emulator or a proxy):
//! one that answers an update with 200 but ignores annotations and version aliases
//! ([`SecretManagerLab::set_ignore_update_fields`]), or one that sends payloads without their
//! CRC32C ([`SecretManagerLab::set_omit_checksums`]).
//!
//! Owns: the secrets and versions, in memory, for the lab's lifetime. Must never: log or put
//! in an error message any payload data.

mod filter;
mod http;
mod input;
mod model;
mod ops;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use model::VersionState;

pub(crate) use http::{admin_access_log, admin_secrets, admin_stats, handle};

/// One `:access` call, as the access log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// The version's full name with its number (`projects/p/secrets/s/versions/3`); the name
    /// as requested when it did not resolve to a version.
    pub version: String,
    /// The name as requested: a number, an alias or `latest`.
    pub requested: String,
    /// The version's state at the time: `ENABLED`, `DISABLED`, `DESTROYED`, or empty when it
    /// did not resolve.
    pub state: String,
    /// Whether the payload was served.
    pub ok: bool,
    /// `OK`, or the error status answered (`FAILED_PRECONDITION`, `NOT_FOUND`,
    /// `UNAVAILABLE`, ...), injected faults included.
    pub code: String,
}

/// Secret Manager request counts (`GET /lab/v1/secretmanager/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretManagerStats {
    /// Every Secret Manager call, unroutable ones included.
    pub total: u64,
    /// Calls by method (`access`, `add_version`, `update`, ...; see [`crate::GcpMethod`]),
    /// faulted ones included; `unknown` for paths that match no method.
    pub requests: BTreeMap<String, u64>,
    /// `:access` calls by version name (with its number), whatever their outcome.
    pub accesses: BTreeMap<String, u64>,
    /// Calls by who made them, from the `Authorization` header (never the credential):
    /// `anonymous`, `jwt iss=<client_email> kid=<private_key_id>` (a service-account key), or
    /// `bearer` (an access token).
    pub callers: BTreeMap<String, u64>,
    /// Calls refused because the etag they carried was not the current one (400
    /// FAILED_PRECONDITION), by method (`update`, `disable`, ...).
    #[serde(default)]
    pub etag_conflicts: BTreeMap<String, u64>,
}

/// Ways the lab's Secret Manager falls short of Google's, like some emulators and proxies. All
/// off by default.
#[derive(Debug, Clone, Copy, Default)]
struct Quirks {
    /// `secrets.patch` answers 200 with the secret (and a new etag) but leaves its annotations
    /// and version aliases as they were, whatever the update mask says.
    ignore_update_fields: bool,
    /// `:access` answers carry no `dataCrc32c`.
    omit_checksums: bool,
}

/// A version, as [`SecretManagerLab::secret`] shows it (no payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionSnapshot {
    /// `projects/p/secrets/s/versions/N`.
    pub name: String,
    pub number: i64,
    pub state: VersionState,
    pub etag: String,
    /// CRC32C of the payload as added.
    pub crc32c: u32,
}

/// A secret, as [`SecretManagerLab::secret`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretSnapshot {
    /// `projects/p/secrets/s` (or `projects/p/locations/l/secrets/s`).
    pub name: String,
    pub etag: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Alias → version number.
    pub version_aliases: BTreeMap<String, i64>,
    /// Oldest first.
    pub versions: Vec<VersionSnapshot>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    secrets: BTreeMap<String, model::Secret>,
    total: u64,
    requests: BTreeMap<String, u64>,
    accesses: BTreeMap<String, u64>,
    callers: BTreeMap<String, u64>,
    log: Vec<AccessRecord>,
    last_etag: i64,
    etag_conflicts: BTreeMap<String, u64>,
    quirks: Quirks,
}

fn next_etag(last: &mut i64) -> String {
    *last = (*last + 1).max(Utc::now().timestamp_micros());
    format!("\"{:x}\"", *last)
}

impl State {
    fn etag(&mut self) -> String {
        next_etag(&mut self.last_etag)
    }

    /// Lazy time effects: expired secrets go, scheduled destructions happen.
    fn sweep(&mut self, now: DateTime<Utc>) {
        self.secrets
            .retain(|_, s| s.expire_time.is_none_or(|t| t > now));
        let last = &mut self.last_etag;
        for s in self.secrets.values_mut() {
            s.tick(now, &mut || next_etag(last));
        }
    }

    fn count_caller(&mut self, caller: String) {
        *self.callers.entry(caller).or_default() += 1;
    }

    fn count(&mut self, method: &str) {
        self.total += 1;
        *self.requests.entry(method.to_string()).or_default() += 1;
    }

    fn count_etag_conflict(&mut self, method: &str) {
        *self.etag_conflicts.entry(method.to_string()).or_default() += 1;
    }

    fn record_access(&mut self, rec: AccessRecord) {
        *self.accesses.entry(rec.version.clone()).or_default() += 1;
        self.log.push(rec);
    }

    fn snapshot(s: &model::Secret) -> SecretSnapshot {
        SecretSnapshot {
            name: s.name.clone(),
            etag: s.etag.clone(),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            version_aliases: s.aliases.clone(),
            versions: s
                .versions
                .iter()
                .map(|v| VersionSnapshot {
                    name: s.version_name(v.number),
                    number: v.number,
                    state: v.state,
                    etag: v.etag.clone(),
                    crc32c: v.crc32c,
                })
                .collect(),
        }
    }
}

/// Splits `projects/p/secrets/s` or `projects/p/locations/l/secrets/s` into the secret's
/// name and whether it is regional; `None` if it is neither.
fn parse_secret_name(name: &str) -> Option<(String, bool)> {
    let segs: Vec<&str> = name.split('/').collect();
    let ok = |s: &str| !s.is_empty();
    match segs.as_slice() {
        ["projects", p, "secrets", s] if ok(p) && input::valid_secret_id(s) => {
            Some((name.to_string(), false))
        }
        ["projects", p, "locations", l, "secrets", s]
            if ok(p) && ok(l) && input::valid_secret_id(s) =>
        {
            Some((name.to_string(), true))
        }
        _ => None,
    }
}

/// The lab's Secret Manager: its state, statistics and access log. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct SecretManagerLab {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl SecretManagerLab {
    pub(crate) fn new(addr: SocketAddr) -> SecretManagerLab {
        SecretManagerLab {
            addr,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API endpoint to give a client (`http://127.0.0.1:PORT`, the lab's own address):
    /// `with_endpoint` for the Rust client, `ClientOptions(api_endpoint=...)` for Python.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request counts so far.
    pub fn stats(&self) -> SecretManagerStats {
        let st = self.lock();
        SecretManagerStats {
            total: st.total,
            requests: st.requests.clone(),
            accesses: st.accesses.clone(),
            callers: st.callers.clone(),
            etag_conflicts: st.etag_conflicts.clone(),
        }
    }

    /// From now on (`on`), `secrets.patch` answers 200 with the secret and a new etag but
    /// leaves its annotations and version aliases as they were: a server that ignores fields it
    /// does not know. Off by default.
    pub fn set_ignore_update_fields(&self, on: bool) {
        self.lock().quirks.ignore_update_fields = on;
    }

    /// From now on (`on`), `:access` answers carry no `dataCrc32c`: a server that computes no
    /// checksums. Off by default.
    pub fn set_omit_checksums(&self, on: bool) {
        self.lock().quirks.omit_checksums = on;
    }

    /// Every `:access` call so far, oldest first. Take `access_log().len()` as a mark and
    /// look at `access_log()[mark..]` to see what was accessed after a point.
    pub fn access_log(&self) -> Vec<AccessRecord> {
        self.lock().log.clone()
    }

    /// A secret's metadata, aliases and versions, read without a request (not counted).
    /// `name` is `projects/p/secrets/s` (or the regional form).
    pub fn secret(&self, name: &str) -> Option<SecretSnapshot> {
        let mut st = self.lock();
        st.sweep(Utc::now());
        st.secrets.get(name).map(State::snapshot)
    }

    /// Every secret, by name.
    pub fn secrets(&self) -> Vec<SecretSnapshot> {
        let mut st = self.lock();
        st.sweep(Utc::now());
        st.secrets.values().map(State::snapshot).collect()
    }

    /// A version's payload, read without a request: not counted and not in the access log.
    /// `version` is `projects/p/secrets/s/versions/V` with V a number, an alias or `latest`.
    /// `None` if there is no such version or it is destroyed.
    pub fn payload(&self, version: &str) -> Option<Vec<u8>> {
        let (secret, id) = version.rsplit_once("/versions/")?;
        let mut st = self.lock();
        st.sweep(Utc::now());
        let s = st.secrets.get(secret)?;
        let i = s.resolve(id).ok()?;
        s.versions[i].data.clone()
    }

    /// Creates `secret` (automatic replication) if it does not exist and adds one ENABLED
    /// version per payload; returns the new versions' names. Not counted.
    pub fn seed(&self, secret: &str, payloads: &[&[u8]]) -> Result<Vec<String>, String> {
        let (name, regional) = parse_secret_name(secret).ok_or_else(|| {
            format!("invalid secret name {secret:?}: expected projects/P/secrets/S")
        })?;
        let mut st = self.lock();
        let now = Utc::now();
        st.sweep(now);
        if !st.secrets.contains_key(&name) {
            let etag = st.etag();
            st.secrets.insert(
                name.clone(),
                model::Secret::new(name.clone(), now, etag, regional),
            );
        }
        let mut out = Vec::new();
        for p in payloads {
            let v = ops::add_version_raw(&mut st, &name, p.to_vec(), None, now)
                .map_err(|e| e.message)?;
            out.push(v);
        }
        Ok(out)
    }
}
