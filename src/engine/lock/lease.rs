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
//! Rules:
//! - A lease is live until `renewTime + leaseDurationSeconds` (by this machine's clock). A live
//!   lease is never taken, not even with `--force`. An expired one is taken over only with
//!   `--force`: the operator confirms that the run that held it is really gone.
//! - Every write is a replace carrying the resourceVersion that was read (or a create). A 409
//!   means someone else wrote in between: rotor re-reads and decides again; it never
//!   overwrites what it did not read.
//! - While held, a background task renews the lease every `leaseDuration / 3` and writes a new
//!   stage as soon as [`LockGuard::set_stage`] records it. If a renewal finds another holder
//!   (this run failed to renew for a whole lease duration and an operator forced a takeover),
//!   the guard is *lost*: the task emits an event and stops, [`LockGuard::lost`] names the new
//!   holder, `set_stage` and `release` never touch the lease again, and the engine stops before
//!   its next step or journal write.
//! - Release clears `holderIdentity` (guarded by resourceVersion) so the next run need not wait
//!   for the lease to expire. A guard dropped without release stops renewing, and the lease
//!   lapses after its duration.
//!
//! Must never: write a lease it does not hold, or hold anything but who holds it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{Holder, LockError, LockGuard, RotationLock};
use crate::cluster::{Call, Cluster, ClusterError, retry};
use crate::events::{Event, EventSink};

/// Annotation holding the [`Holder`] as JSON.
pub const HOLDER_ANNOTATION: &str = "rotor.dev/holder";
/// Label every object rotor creates carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rotor");
/// How long a lease lives without renewal.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
const GROUP: &str = "coordination.k8s.io";
const RESOURCE: &str = "leases";
/// How many 409s in a row one decision tolerates before giving up.
const MAX_RACES: usize = 8;

/// `rotor-<secret>-<environment>`.
pub fn lease_name(secret: &str, environment: &str) -> String {
    format!("rotor-{secret}-{environment}")
}

/// The Lease lock of one secret and environment.
pub struct LeaseLock {
    ctx: Arc<Ctx>,
}

/// What the lock and its renewal task share.
struct Ctx {
    api: Api<Lease>,
    namespace: String,
    name: String,
    duration: Duration,
    events: Option<Arc<dyn EventSink>>,
}

impl LeaseLock {
    /// The lock `rotor-<secret>-<environment>` in the cluster's namespace.
    pub fn new(cluster: &Cluster, secret: &str, environment: &str) -> LeaseLock {
        let namespace = cluster.namespace().to_string();
        LeaseLock {
            ctx: Arc::new(Ctx {
                api: Api::namespaced(cluster.client(), &namespace),
                namespace,
                name: lease_name(secret, environment),
                duration: DEFAULT_DURATION,
                events: None,
            }),
        }
    }

    /// Sets the lease duration (at least 3 s; renewals run every third of it).
    pub fn with_duration(mut self, duration: Duration) -> LeaseLock {
        self.ctx_mut().duration = duration.max(Duration::from_secs(3));
        self
    }

    /// Reports takeovers, failed renewals and a lost lease to `events` (besides the log).
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> LeaseLock {
        self.ctx_mut().events = Some(events);
        self
    }

    fn ctx_mut(&mut self) -> &mut Ctx {
        Arc::get_mut(&mut self.ctx).expect("configured before use")
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }
}

impl Ctx {
    fn call(&self, verb: &'static str) -> Call {
        Call::new(verb, RESOURCE, GROUP, &self.namespace, &self.name)
    }

    async fn get(&self) -> Result<Option<Lease>, ClusterError> {
        retry(&self.call("get"), || self.api.get_opt(&self.name)).await
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, ClusterError> {
        let pp = PostParams::default();
        retry(&self.call("create"), || self.api.create(&pp, lease)).await
    }

    /// Replace guarded by the resourceVersion in `lease.metadata`.
    async fn replace(&self, lease: &Lease) -> Result<Lease, ClusterError> {
        let pp = PostParams::default();
        retry(&self.call("update"), || {
            self.api.replace(&self.name, &pp, lease)
        })
        .await
    }

    fn note(&self, message: String) {
        tracing::warn!(lease = %self.name, "{message}");
        if let Some(events) = &self.events {
            events.emit(&Event::Note { message });
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One renewal (or stage update) of the lease this guard holds.
    async fn renew(&self, shared: &Mutex<Shared>, holder: &Holder) -> Result<(), Renewal> {
        let mut last = shared.lock().expect("lease mutex").last.clone();
        for _ in 0..MAX_RACES {
            let next = renewed(&last, holder, Utc::now(), self.seconds());
            match self.replace(&next).await {
                Ok(written) => {
                    shared.lock().expect("lease mutex").last = written;
                    return Ok(());
                }
                Err(e) if e.is_conflict() || e.is_not_found() => match self.get().await {
                    // Still ours (a retried write landed, or someone edited labels): go again.
                    Ok(Some(now)) if same_claim(&now, &last) => last = now,
                    Ok(now) => return Err(Renewal::Lost(foreign(now.as_ref()))),
                    Err(e) => return Err(Renewal::Failed(e)),
                },
                Err(e) => return Err(Renewal::Failed(e)),
            }
        }
        Err(Renewal::Failed(self.races()))
    }

    fn races(&self) -> ClusterError {
        ClusterError::Conflict {
            target: self.call("update").target(),
            message: format!("still changing after {MAX_RACES} attempts"),
        }
    }
}

/// Why a renewal did not happen.
enum Renewal {
    /// Someone else holds the lease now.
    Lost(Holder),
    /// The API server did not take it (retried already); the next tick tries again.
    Failed(ClusterError),
}

/// The holder to report when the lease is no longer ours.
fn foreign(lease: Option<&Lease>) -> Holder {
    lease.and_then(holder_of).unwrap_or_else(|| {
        let now = Utc::now();
        Holder {
            identity: "nobody (the lease was released or deleted by someone else)".into(),
            command: "-".into(),
            rotation: None,
            stage: "-".into(),
            since: now,
            expires: now,
        }
    })
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
    Some(match annotated {
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
        },
    })
}

/// What `acquire` does with a lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it: it is free, or expired and `force` was given (`from` is the previous holder).
    Take {
        /// The holder whose expired lease is taken over.
        from: Option<Holder>,
    },
    /// Someone holds it and renews it.
    Held(Holder),
    /// Its holder stopped renewing it; taking it over needs `force`.
    Expired(Holder),
}

/// The acquisition rule: free → take; live → held (even with `force`); expired → take only with
/// `force`.
pub fn decide(lease: &Lease, now: DateTime<Utc>, force: bool) -> Decision {
    match holder_of(lease) {
        None => Decision::Take { from: None },
        Some(h) if now < h.expires => Decision::Held(h),
        Some(h) if force => Decision::Take { from: Some(h) },
        Some(h) => Decision::Expired(h),
    }
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

// ---- the lock -----------------------------------------------------------------------------

#[async_trait]
impl RotationLock for LeaseLock {
    async fn acquire(&self, holder: Holder, force: bool) -> Result<Box<dyn LockGuard>, LockError> {
        let ctx = &self.ctx;
        // The claim this call wrote last, to recognise it if a retried write landed twice.
        let mut attempted: Option<Lease> = None;
        for _ in 0..MAX_RACES {
            let now = Utc::now();
            let current = ctx.get().await?;
            if let (Some(cur), Some(mine)) = (&current, &attempted)
                && same_claim(cur, mine)
            {
                return Ok(self.guard(cur.clone(), holder));
            }
            let from = match current.as_ref().map(|l| decide(l, now, force)) {
                None => None,
                Some(Decision::Take { from }) => from,
                Some(Decision::Held(h)) => return Err(LockError::Held(h)),
                Some(Decision::Expired(h)) => return Err(LockError::Expired(Box::new(h))),
            };
            let next = claim(
                current.as_ref(),
                &ctx.name,
                &ctx.namespace,
                &holder,
                now,
                ctx.seconds(),
            );
            attempted = Some(next.clone());
            let written = match &current {
                None => ctx.create(&next).await,
                Some(_) => ctx.replace(&next).await,
            };
            match written {
                Ok(lease) => {
                    if let Some(prev) = from {
                        ctx.note(format!(
                            "took over lease {} with --force from {} ({}, at stage {}), whose lease expired at {}",
                            ctx.name,
                            prev.identity,
                            prev.command,
                            prev.stage,
                            prev.expires.format("%Y-%m-%d %H:%M:%S UTC")
                        ));
                    }
                    let mut h = holder;
                    h.since = now;
                    return Ok(self.guard(lease, h));
                }
                // Someone else wrote first: read again and decide again.
                Err(e) if e.is_conflict() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ctx.races().into())
    }

    async fn holder(&self) -> Result<Option<Holder>, LockError> {
        Ok(self.ctx.get().await?.as_ref().and_then(holder_of))
    }

    fn describe(&self) -> String {
        self.ctx.call("get").target()
    }
}

impl LeaseLock {
    fn guard(&self, lease: Lease, holder: Holder) -> Box<dyn LockGuard> {
        let shared = Arc::new(Mutex::new(Shared {
            last: lease,
            lost: None,
        }));
        let (stage_tx, stage_rx) = watch::channel(holder);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(renew_loop(
            self.ctx.clone(),
            shared.clone(),
            stage_rx,
            stop_rx,
        ));
        Box::new(LeaseGuard {
            ctx: self.ctx.clone(),
            stage: stage_tx,
            shared,
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        })
    }
}

/// State the guard and its renewal task share.
struct Shared {
    /// The lease as this run last wrote it (carries the resourceVersion for the next write).
    last: Lease,
    /// Who took the lease over, once a renewal found out.
    lost: Option<Holder>,
}

/// A held lease.
struct LeaseGuard {
    ctx: Arc<Ctx>,
    stage: watch::Sender<Holder>,
    shared: Arc<Mutex<Shared>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Renews every `duration / 3`, and at once when the stage changes, until told to stop or
/// until the lease is lost.
async fn renew_loop(
    ctx: Arc<Ctx>,
    shared: Arc<Mutex<Shared>>,
    mut stage: watch::Receiver<Holder>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = ctx.duration / 3;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            changed = stage.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(period) => {}
        }
        let holder = stage.borrow_and_update().clone();
        match ctx.renew(&shared, &holder).await {
            Ok(()) => {}
            Err(Renewal::Lost(by)) => {
                ctx.note(format!(
                    "lost lease {}: {} ({}) holds it now; this run stops before its next step and writes nothing more",
                    ctx.name, by.identity, by.command
                ));
                shared.lock().expect("lease mutex").lost = Some(by);
                return;
            }
            Err(Renewal::Failed(e)) => {
                let expires = holder_of(&shared.lock().expect("lease mutex").last)
                    .map(|h| h.expires.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default();
                ctx.note(format!(
                    "could not renew lease {} (it lapses at {expires} unless a later renewal succeeds): {e}",
                    ctx.name
                ));
            }
        }
    }
}

impl LeaseGuard {
    /// Stops the renewal task and waits for a renewal in flight, so nothing writes after.
    async fn stop(&self) {
        if let Some(tx) = self.stop.lock().expect("lease mutex").take() {
            let _ = tx.send(());
        }
        let task = self.task.lock().expect("lease mutex").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[async_trait]
impl LockGuard for LeaseGuard {
    fn set_stage(&self, rotation: Option<&str>, stage: &str) {
        if self.lost().is_some() {
            return;
        }
        self.stage.send_modify(|h| {
            if let Some(r) = rotation {
                h.rotation = Some(r.to_string());
            }
            h.stage = stage.to_string();
        });
    }

    fn lost(&self) -> Option<Holder> {
        self.shared.lock().expect("lease mutex").lost.clone()
    }

    async fn release(self: Box<Self>) -> Result<(), LockError> {
        self.stop().await;
        let (mut last, lost) = {
            let s = self.shared.lock().expect("lease mutex");
            (s.last.clone(), s.lost.clone())
        };
        if lost.is_some() {
            // Not ours any more: leave it to its holder.
            return Ok(());
        }
        for _ in 0..MAX_RACES {
            match self.ctx.replace(&released(&last, Utc::now())).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_conflict() => match self.ctx.get().await? {
                    Some(now) if same_claim(&now, &last) => last = now,
                    // Taken over (or released) by someone else meanwhile: not ours to clear.
                    _ => return Ok(()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.ctx.races().into())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // Fallback when release was not called: stop renewing; the lease lapses on its own.
        if let Some(task) = self.task.lock().expect("lease mutex").take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
