//! Fault injection and request statistics.
//!
//! Faults, as JSON (the admin endpoint `POST /lab/v1/faults`) or YAML (the topology's
//! `faults:`), tagged by `kind`:
//!
//! - `{"kind": "crash_loop", "workload": "auth", "namespace": "demo", "mode": "exit"}`: pods of
//!   the workload created from now on exit at once (`mode: exit`, the default) or never become
//!   ready (`mode: unready`).
//! - `{"kind": "api", "verb": "patch", "resource": "secrets", "namespace": "demo",
//!   "name": "auth-secrets", "effect": "conflict", "count": 2}`: the next `count` matching
//!   requests (or each with `probability`) answer 409 Conflict (`conflict`), 500
//!   (`internal`), hang `hang_ms` then answer 504 (`timeout`), or hang `hang_ms` then proceed
//!   (`delay`).
//! - `{"kind": "forbid", "verb": "patch", "resource": "secrets", "namespace": "demo",
//!   "user": "system:serviceaccount:demo:rotor"}`: 403 with the RBAC message.
//!
//! - `{"kind": "gcp", "method": "access", "secret": "db-password", "effect": "unavailable",
//!   "count": 2}`: the next `count` matching Secret Manager calls (or each with `probability`)
//!   answer 429 RESOURCE_EXHAUSTED with Google's quota message (`resource_exhausted`), 503
//!   UNAVAILABLE (`unavailable`), 500 INTERNAL (`internal`), wait `delay_ms` (default 1000)
//!   and then proceed (`delay`), or serve the call and answer 503 anyway (`lost_answer`). `method` is one of create, get, list, update, delete,
//!   add_version, get_version, list_versions, access, enable, disable, destroy,
//!   get_iam_policy, set_iam_policy, test_iam_permissions or `*`; `secret` (default any) is a
//!   secret id (`db-password`), a full name (`projects/p/secrets/db-password`) or `*`.
//!
//! `verb` is one of get, list, watch, create, update, patch, delete, deletecollection or `*`;
//! `resource` is a plural, optionally with `/status`, or `*`.
//!
//! Owns: matching requests against faults, counting requests. Must never: log request bodies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// How a crash-looping pod misbehaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashMode {
    /// The container exits at once, every time.
    #[default]
    Exit,
    /// The container runs but never passes its readiness probe.
    Unready,
}

/// What an API fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiEffect {
    /// 409 Conflict (the real optimistic-concurrency message).
    Conflict,
    /// 500 InternalError.
    Internal,
    /// Hang `hang_ms`, then 504 Timeout.
    Timeout,
    /// Hang `hang_ms`, then serve the request normally.
    Delay,
}

/// What a Secret Manager (`gcp`) fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcpEffect {
    /// 429 RESOURCE_EXHAUSTED, with Google's quota message and `ErrorInfo` details.
    ResourceExhausted,
    /// 503 UNAVAILABLE "The service is currently unavailable."
    Unavailable,
    /// 500 INTERNAL "Internal error encountered."
    Internal,
    /// Wait `delay_ms` (default 1000), then serve the call normally.
    Delay,
    /// Serve the call (it takes effect), then answer 503 UNAVAILABLE: a reply lost on the way
    /// back, so the caller cannot tell whether its write happened.
    LostAnswer,
}

/// A Secret Manager method, as faults and statistics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcpMethod {
    Create,
    Get,
    List,
    Update,
    Delete,
    AddVersion,
    GetVersion,
    ListVersions,
    Access,
    Enable,
    Disable,
    Destroy,
    GetIamPolicy,
    SetIamPolicy,
    TestIamPermissions,
    /// Any method (`"*"`); only meaningful in a fault.
    #[serde(rename = "*")]
    Any,
}

impl GcpMethod {
    /// The snake_case name (`add_version`), as in faults and `/lab/v1/secretmanager/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            GcpMethod::Create => "create",
            GcpMethod::Get => "get",
            GcpMethod::List => "list",
            GcpMethod::Update => "update",
            GcpMethod::Delete => "delete",
            GcpMethod::AddVersion => "add_version",
            GcpMethod::GetVersion => "get_version",
            GcpMethod::ListVersions => "list_versions",
            GcpMethod::Access => "access",
            GcpMethod::Enable => "enable",
            GcpMethod::Disable => "disable",
            GcpMethod::Destroy => "destroy",
            GcpMethod::GetIamPolicy => "get_iam_policy",
            GcpMethod::SetIamPolicy => "set_iam_policy",
            GcpMethod::TestIamPermissions => "test_iam_permissions",
            GcpMethod::Any => "*",
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Pods of `workload` created from now on crash (or never become ready).
    CrashLoop {
        workload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default)]
        mode: CrashMode,
    },
    /// Matching API requests fail or hang.
    Api {
        verb: String,
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        effect: ApiEffect,
        /// For `timeout` and `delay`; default 60000 for `timeout`, 1000 for `delay`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hang_ms: Option<u64>,
        /// Apply to the next `count` matching requests only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// Apply to each matching request with this probability (0..=1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probability: Option<f64>,
    },
    /// Matching API requests answer 403 Forbidden.
    Forbid {
        verb: String,
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The user named in the message; default `system:serviceaccount:<ns>:rotor`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Matching Secret Manager calls fail or wait.
    Gcp {
        method: GcpMethod,
        /// A secret id, a full secret name or `*`; absent means any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        effect: GcpEffect,
        /// For `delay`; default 1000.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        /// Apply to the next `count` matching calls only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// Apply to each matching call with this probability (0..=1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probability: Option<f64>,
    },
}

/// Whether a `gcp` fault's `secret` names `secret` (a full name, possibly empty for list
/// calls).
fn secret_matches(pattern: &Option<String>, secret: &str) -> bool {
    match pattern.as_deref() {
        None | Some("*") => true,
        Some(p) => {
            !secret.is_empty()
                && (p == secret
                    || secret
                        .rsplit_once("/secrets/")
                        .is_some_and(|(_, id)| id == p))
        }
    }
}

/// A request as the fault matcher sees it.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo<'a> {
    pub verb: &'a str,
    /// `secrets` or `deployments/status`.
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// What to do to a matched request.
#[derive(Debug, Clone)]
pub(crate) enum Injected {
    Api { effect: ApiEffect, hang_ms: u64 },
    Forbid { user: String },
}

fn matches(
    verb: &str,
    resource: &str,
    namespace: &Option<String>,
    name: &Option<String>,
    r: &RequestInfo<'_>,
) -> bool {
    (verb == "*" || verb == r.verb)
        && (resource == "*" || resource == r.resource)
        && namespace.as_deref().is_none_or(|n| Some(n) == r.namespace)
        && name.as_deref().is_none_or(|n| n == r.name)
}

/// The active faults. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<Vec<(Fault, u64)>>>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Fault, u64)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fault.
    pub fn add(&self, fault: Fault) {
        self.lock().push((fault, 0));
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The active faults (API faults whose count is used up are gone).
    pub fn list(&self) -> Vec<Fault> {
        self.lock().iter().map(|(f, _)| f.clone()).collect()
    }

    /// The crash mode for a new pod of `workload` in `namespace`, if a fault says so.
    pub fn crash_mode(&self, namespace: &str, workload: &str) -> Option<CrashMode> {
        self.lock().iter().find_map(|(f, _)| match f {
            Fault::CrashLoop {
                workload: w,
                namespace: n,
                mode,
            } if w == workload && n.as_deref().is_none_or(|n| n == namespace) => Some(*mode),
            _ => None,
        })
    }

    /// The fault that applies to this request, consuming one use of a counted fault.
    pub(crate) fn check(&self, r: &RequestInfo<'_>) -> Option<Injected> {
        let mut faults = self.lock();
        let mut hit = None;
        for (i, (f, used)) in faults.iter_mut().enumerate() {
            match f {
                Fault::Forbid {
                    verb,
                    resource,
                    namespace,
                    name,
                    user,
                } if matches(verb, resource, namespace, name, r) => {
                    let user = user.clone().unwrap_or_else(|| {
                        format!(
                            "system:serviceaccount:{}:rotor",
                            r.namespace.unwrap_or("default")
                        )
                    });
                    return Some(Injected::Forbid { user });
                }
                Fault::Api {
                    verb,
                    resource,
                    namespace,
                    name,
                    effect,
                    hang_ms,
                    count,
                    probability,
                } if matches(verb, resource, namespace, name, r) => {
                    if let Some(p) = probability
                        && rand::random::<f64>() >= *p
                    {
                        continue;
                    }
                    *used += 1;
                    let default_hang = match effect {
                        ApiEffect::Timeout => 60_000,
                        _ => 1_000,
                    };
                    let spent = count.is_some_and(|c| *used >= c);
                    hit = Some((
                        i,
                        spent,
                        Injected::Api {
                            effect: *effect,
                            hang_ms: hang_ms.unwrap_or(default_hang),
                        },
                    ));
                    break;
                }
                _ => {}
            }
        }
        let (i, spent, inj) = hit?;
        if spent {
            faults.remove(i);
        }
        Some(inj)
    }
}

impl Faults {
    /// The `gcp` fault that applies to a Secret Manager call on `secret` (a full secret name,
    /// empty for list calls), consuming one use of a counted fault: the effect and the delay.
    pub(crate) fn check_gcp(&self, method: GcpMethod, secret: &str) -> Option<(GcpEffect, u64)> {
        let mut faults = self.lock();
        let mut hit = None;
        for (i, (f, used)) in faults.iter_mut().enumerate() {
            if let Fault::Gcp {
                method: m,
                secret: pattern,
                effect,
                delay_ms,
                count,
                probability,
            } = f
                && (*m == GcpMethod::Any || *m == method)
                && secret_matches(pattern, secret)
            {
                if let Some(p) = probability
                    && rand::random::<f64>() >= *p
                {
                    continue;
                }
                *used += 1;
                let spent = count.is_some_and(|c| *used >= c);
                hit = Some((i, spent, (*effect, delay_ms.unwrap_or(1_000))));
                break;
            }
        }
        let (i, spent, out) = hit?;
        if spent {
            faults.remove(i);
        }
        Some(out)
    }
}

/// Request counters and the in-flight gauge.
#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    pub total: AtomicU64,
    pub by: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    pub by_client: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot of the request statistics (`GET /lab/v1/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every API request served (discovery included, the admin endpoints excluded).
    pub total: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub peak_in_flight: u64,
    /// Counts by resource (`secrets`, `deployments/status`, `discovery`) then verb.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Counts by client (the `User-Agent` header).
    pub clients: BTreeMap<String, u64>,
}

impl StatsInner {
    pub fn begin(&self, resource: &str, verb: &str, client: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        *by.entry(resource.to_string())
            .or_default()
            .entry(verb.to_string())
            .or_default() += 1;
        drop(by);
        let mut c = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(client.to_string()).or_default() += 1;
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            total: self.total.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_in_flight: self.peak_in_flight.load(Ordering::SeqCst),
            requests: self.by.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            clients: self
                .by_client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
