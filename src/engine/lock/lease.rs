//! The single-flight lock as a `coordination.k8s.io/v1` Lease, for runs inside a cluster (a
//! CronJob's pods come and go, so an `flock` on one node would not exclude the next pod).
//!
//! Owns: the Lease `rotor-<secret>-<environment>` in the playbook's namespace, labelled
//! `app.kubernetes.io/managed-by: rotor`:
//! - `spec.holderIdentity`: [`Holder::identity`] of the run holding it (absent when free);
//! - `spec.leaseDurationSeconds` (30 by default), `spec.acquireTime`, `spec.renewTime`,
//!   `spec.leaseTransitions` (incremented at every change of holder), as client-go uses them;
//! - annotation `rotor.dev/holder`: the rest of the [`Holder`] as JSON (command, rotation,
//!   stage, since), so a refused run can say what the holder is doing.
//!
//! The rules (live claims never taken, `--force` only after expiry, guarded writes, renewal
//! every third of the duration, lost guards, release) are [`super::remote`]'s; this module maps
//! a [`Holder`] onto a Lease and reads and writes it with the resourceVersion it read.
//!
//! Must never: write a lease it does not hold, or hold anything but who holds it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use super::remote::{Backend, MAX_RACES, RecordLock, Write};
use super::{Holder, LockError};
use crate::cluster::{Call, Cluster, ClusterError, retry};

/// Annotation holding the [`Holder`] as JSON.
pub const HOLDER_ANNOTATION: &str = "rotor.dev/holder";
/// Label every object rotor creates carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rotor");
/// How long a lease lives without renewal.
pub const DEFAULT_DURATION: Duration = super::remote::DEFAULT_DURATION;
const GROUP: &str = "coordination.k8s.io";
const RESOURCE: &str = "leases";

/// `rotor-<secret>-<environment>`.
pub fn lease_name(secret: &str, environment: &str) -> String {
    format!("rotor-{secret}-{environment}")
}

/// The Lease lock of one secret and environment.
pub type LeaseLock = RecordLock<LeaseBackend>;

impl LeaseLock {
    /// The lock `rotor-<secret>-<environment>` in the cluster's namespace.
    pub fn new(cluster: &Cluster, secret: &str, environment: &str) -> LeaseLock {
        let namespace = cluster.namespace().to_string();
        RecordLock::with_backend(LeaseBackend {
            api: Api::namespaced(cluster.client(), &namespace),
            namespace,
            name: lease_name(secret, environment),
        })
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.backend().name
    }
}

/// A Lease as a lock record.
pub struct LeaseBackend {
    api: Api<Lease>,
    namespace: String,
    name: String,
}

impl LeaseBackend {
    fn call(&self, verb: &'static str) -> Call {
        Call::new(verb, RESOURCE, GROUP, &self.namespace, &self.name)
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[async_trait]
impl Backend for LeaseBackend {
    type Record = Lease;

    async fn get(&self) -> Result<Option<Lease>, LockError> {
        Ok(retry(&self.call("get"), || self.api.get_opt(&self.name)).await?)
    }

    async fn put(&self, next: &Lease, create: bool) -> Result<Lease, Write> {
        let pp = PostParams::default();
        let r = if create {
            retry(&self.call("create"), || self.api.create(&pp, next)).await
        } else {
            // Replace guarded by the resourceVersion in `next.metadata`.
            retry(&self.call("update"), || {
                self.api.replace(&self.name, &pp, next)
            })
            .await
        };
        r.map_err(|e| {
            if e.is_conflict() || e.is_not_found() {
                Write::Raced
            } else {
                Write::Failed(e.into())
            }
        })
    }

    fn holder_of(&self, r: &Lease) -> Option<Holder> {
        holder_of(r)
    }

    fn claim(
        &self,
        current: Option<&Lease>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Lease {
        claim(
            current,
            &self.name,
            &self.namespace,
            holder,
            now,
            seconds(duration),
        )
    }

    fn renewed(
        &self,
        last: &Lease,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Lease {
        renewed(last, holder, now, seconds(duration))
    }

    fn noted(&self, current: &Lease, holder: &Holder) -> Lease {
        let mut lease = current.clone();
        lease.metadata.annotations = annotations(&lease, Some(holder));
        lease
    }

    fn released(&self, last: &Lease, now: DateTime<Utc>) -> Lease {
        released(last, now)
    }

    fn same_claim(&self, a: &Lease, b: &Lease) -> bool {
        same_claim(a, b)
    }

    fn describe(&self) -> String {
        self.call("get").target()
    }

    fn races(&self) -> LockError {
        ClusterError::Conflict {
            target: self.call("update").target(),
            message: format!("still changing after {MAX_RACES} attempts"),
        }
        .into()
    }
}

// ---- pure decisions -----------------------------------------------------------------------

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(jiff::Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or_default())
}

fn chrono_of(t: &MicroTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or(DateTime::UNIX_EPOCH)
}

/// When the lease lapses: last renewal (or acquisition) plus its duration; the epoch when it
/// records neither (such a lease is expired).
pub fn expiry(spec: &LeaseSpec) -> DateTime<Utc> {
    let Some(last) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return DateTime::UNIX_EPOCH;
    };
    chrono_of(last) + chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)))
}

/// Who holds the lease, or `None` when it is free. The identity comes from
/// `spec.holderIdentity`, the expiry from the spec's times; the rest from the annotation (or
/// `unknown` when another tool wrote the lease).
pub fn holder_of(lease: &Lease) -> Option<Holder> {
    let spec = lease.spec.as_ref()?;
    let identity = spec.holder_identity.as_deref().filter(|i| !i.is_empty())?;
    let annotated: Option<Holder> = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOLDER_ANNOTATION))
        .and_then(|json| serde_json::from_str(json).ok());
    let expires = expiry(spec);
    let acquired = spec.acquire_time.as_ref().map(chrono_of);
    let holder = match annotated {
        Some(h) => Holder {
            identity: identity.to_string(),
            expires,
            ..h
        },
        None => Holder {
            identity: identity.to_string(),
            command: "unknown".into(),
            rotation: None,
            stage: "unknown".into(),
            since: acquired.unwrap_or(DateTime::UNIX_EPOCH),
            expires,
            handover: None,
        },
    };
    Some(holder.untrusted())
}

fn annotations(lease: &Lease, holder: Option<&Holder>) -> Option<BTreeMap<String, String>> {
    let mut a = lease.metadata.annotations.clone().unwrap_or_default();
    match holder {
        Some(h) => {
            a.insert(
                HOLDER_ANNOTATION.to_string(),
                serde_json::to_string(h).expect("holder serializes"),
            );
        }
        None => {
            a.remove(HOLDER_ANNOTATION);
        }
    }
    (!a.is_empty()).then_some(a)
}

/// The lease as `holder` claims it at `now` (over `current`, keeping its resourceVersion, or a
/// new object named `name`).
pub fn claim(
    current: Option<&Lease>,
    name: &str,
    namespace: &str,
    holder: &Holder,
    now: DateTime<Utc>,
    seconds: i32,
) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let transitions = match current.and_then(|l| l.spec.as_ref()) {
        None => 0,
        Some(s) => s.lease_transitions.unwrap_or(0).saturating_add(1),
    };
    let mut h = holder.clone();
    h.since = now;
    h.expires = now + chrono::Duration::seconds(i64::from(seconds));
    lease.metadata.annotations = annotations(&lease, Some(&h));
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(holder.identity.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.acquire_time = Some(micro(now));
    spec.renew_time = Some(micro(now));
    spec.lease_transitions = Some(transitions);
    lease
}

/// `last` (the holder's own last write) renewed at `now` with `holder`'s current stage.
pub fn renewed(last: &Lease, holder: &Holder, now: DateTime<Utc>, seconds: i32) -> Lease {
    let mut lease = last.clone();
    let mut h = holder.clone();
    h.expires = now + chrono::Duration::seconds(i64::from(seconds));
    lease.metadata.annotations = annotations(&lease, Some(&h));
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.renew_time = Some(micro(now));
    spec.lease_duration_seconds = Some(seconds);
    lease
}

/// `last` given back: no holder, so the next run takes it at once.
pub fn released(last: &Lease, now: DateTime<Utc>) -> Lease {
    let mut lease = last.clone();
    lease.metadata.annotations = annotations(&lease, None);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.renew_time = Some(micro(now));
    lease
}

/// Whether `a` and `b` record the same acquisition (same holder, same acquire time): the
/// holder's token, since two runs may share an identity (pid 1 in two pods of one name).
pub fn same_claim(a: &Lease, b: &Lease) -> bool {
    let key = |l: &Lease| {
        l.spec
            .as_ref()
            .map(|s| (s.holder_identity.clone(), s.acquire_time.clone()))
    };
    let ka = key(a);
    ka.as_ref()
        .is_some_and(|(id, at)| id.is_some() && at.is_some())
        && ka == key(b)
}

#[cfg(test)]
mod tests {
    use super::super::remote::{self, Decision};
    use super::*;

    fn decide(l: &Lease, now: DateTime<Utc>, force: bool) -> Decision {
        remote::decide(holder_of(l), now, force)
    }

    fn me(stage: &str) -> Holder {
        let mut h = Holder::me("rotate");
        h.rotation = Some("r-1".into());
        h.stage = stage.into();
        h
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_claim_records_the_holder_in_spec_and_annotation() {
        let now = t("2026-01-02T03:04:05.123456Z");
        let l = claim(
            None,
            "rotor-auth-prod",
            "demo",
            &me("T2 widen forward"),
            now,
            30,
        );
        let spec = l.spec.as_ref().unwrap();
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(me("x").identity.as_str())
        );
        assert_eq!(spec.lease_duration_seconds, Some(30));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(chrono_of(spec.acquire_time.as_ref().unwrap()), now);
        assert_eq!(
            l.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "rotor"
        );
        let h = holder_of(&l).unwrap();
        assert_eq!(h.stage, "T2 widen forward");
        assert_eq!(h.rotation.as_deref(), Some("r-1"));
        assert_eq!(h.command, "rotate");
        assert_eq!(h.since, now);
        assert_eq!(h.expires, t("2026-01-02T03:04:35.123456Z"));
        // The annotation round-trips through JSON.
        let json = &l.metadata.annotations.as_ref().unwrap()[HOLDER_ANNOTATION];
        let back: Holder = serde_json::from_str(json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn the_lease_survives_a_trip_through_the_api_json() {
        let now = t("2026-01-02T03:04:05.123456Z");
        let l = claim(None, "rotor-auth-prod", "demo", &me("S1"), now, 30);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["spec"]["acquireTime"], "2026-01-02T03:04:05.123456Z");
        assert_eq!(json["spec"]["leaseDurationSeconds"], 30);
        let back: Lease = serde_json::from_value(json).unwrap();
        assert_eq!(back, l);
        assert!(same_claim(&back, &l));
    }

    #[test]
    fn live_leases_are_held_expired_ones_need_force() {
        let at = t("2026-01-02T03:00:00Z");
        let l = claim(None, "n", "ns", &me("T3 promote forward"), at, 30);
        let live = at + chrono::Duration::seconds(29);
        let dead = at + chrono::Duration::seconds(31);
        assert!(
            matches!(decide(&l, live, false), Decision::Held(h) if h.stage == "T3 promote forward")
        );
        assert!(
            matches!(decide(&l, live, true), Decision::Held(_)),
            "force never takes a live lease"
        );
        assert!(
            matches!(decide(&l, dead, false), Decision::Expired(h) if h.expires == at + chrono::Duration::seconds(30))
        );
        assert!(matches!(
            decide(&l, dead, true),
            Decision::Take { from: Some(_) }
        ));
        // A renewal moves the expiry.
        let r = renewed(
            &l,
            &me("T3 promote forward"),
            at + chrono::Duration::seconds(20),
            30,
        );
        assert!(matches!(decide(&r, dead, false), Decision::Held(_)));
        assert!(same_claim(&r, &l), "a renewal keeps the claim");
    }

    #[test]
    fn a_released_lease_is_free_and_counts_transitions() {
        let at = t("2026-01-02T03:00:00Z");
        let l = claim(None, "n", "ns", &me("S5"), at, 30);
        let r = released(&l, at + chrono::Duration::seconds(1));
        assert_eq!(holder_of(&r), None);
        assert!(r.metadata.annotations.is_none());
        assert_eq!(decide(&r, at, false), Decision::Take { from: None });
        assert!(!same_claim(&r, &l));
        let again = claim(Some(&r), "n", "ns", &me("starting"), at, 30);
        assert_eq!(again.spec.unwrap().lease_transitions, Some(1));
    }

    #[test]
    fn a_lease_written_by_another_tool_is_still_respected() {
        let at = t("2026-01-02T03:00:00Z");
        let l = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("someone".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(micro(at)),
                ..LeaseSpec::default()
            }),
        };
        let h = holder_of(&l).unwrap();
        assert_eq!(
            (h.identity.as_str(), h.stage.as_str()),
            ("someone", "unknown")
        );
        assert!(matches!(decide(&l, at, false), Decision::Held(_)));
        // No times at all: expired (since the epoch).
        let mut bare = l.clone();
        bare.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(expiry(bare.spec.as_ref().unwrap()), DateTime::UNIX_EPOCH);
        assert!(matches!(decide(&bare, at, false), Decision::Expired(_)));
    }

    #[test]
    fn the_expired_error_says_when_and_what_to_do() {
        let mut h = me("T2 widen forward");
        h.expires = t("2026-01-02T03:00:30Z");
        let e = LockError::Expired(Box::new(h));
        let text = e.to_string();
        assert!(
            text.contains("expired at 2026-01-02 03:00:30 UTC"),
            "{text}"
        );
        assert!(text.contains("T2 widen forward"), "{text}");
        assert!(text.contains("--force"), "{text}");
    }
}
