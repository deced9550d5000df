//! The single-flight lock of a Secret Manager store: an annotation on the secret itself,
//! written only with the etag read just before, so two rotors on different machines (a laptop
//! and a CronJob, two clusters) cannot both proceed.
//!
//! Owns: the annotation `rotor-lock` on `projects/<p>/secrets/<s>`, holding the [`Holder`] as
//! JSON (identity, command, rotation, stage, since, expires). No annotation, or one whose
//! `identity` is empty, means free. The rules (live claims never taken, `--force` only after
//! expiry, renewal every third of the duration, lost guards, release) are [`super::remote`]'s.
//! Expiry is judged with this machine's clock against the `expires` the holder wrote.
//!
//! The store's steps write the same secret: the lock's reads-and-writes take turns with them
//! ([`GcpStore::turn`]) and are paced with them, so a renewal is never refused for a step's
//! etag, nor a step for a renewal's.
//!
//! Must never: write anything but the lock annotation (the update mask is `annotations`, and
//! every other annotation is written back as read), or hold anything but who holds the lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_gax::error::rpc::Code;
use google_cloud_secretmanager_v1::model::Secret;

use super::remote::{Backend, MAX_RACES, RecordLock, Turn, Write};
use super::{Holder, LockError};
use crate::store::StoreError;
use crate::store::gcp::GcpStore;

/// The annotation holding the lock.
pub const LOCK_ANNOTATION: &str = "rotor-lock";

/// The lock of one Secret Manager store.
pub type GcpLock = RecordLock<GcpLockBackend>;

impl GcpLock {
    /// The lock on `store`'s secret.
    pub fn new(store: Arc<GcpStore>) -> GcpLock {
        RecordLock::with_backend(GcpLockBackend { store })
    }
}

/// A Secret Manager secret's annotation as a lock record.
pub struct GcpLockBackend {
    store: Arc<GcpStore>,
}

impl From<StoreError> for LockError {
    fn from(e: StoreError) -> Self {
        LockError::Store(Box::new(e))
    }
}

/// Who holds the lock recorded on `secret`, if anyone. An annotation rotor cannot read is
/// somebody's claim all the same: it counts as held by an unknown holder whose claim expired,
/// so only `--force` takes it.
pub fn holder_of(secret: &Secret) -> Option<Holder> {
    let json = secret.annotations.get(LOCK_ANNOTATION)?;
    match serde_json::from_str::<Holder>(json) {
        Ok(h) if h.identity.is_empty() => None,
        Ok(h) => Some(h.untrusted()),
        Err(_) => Some(Holder {
            identity: format!("unknown (the `{LOCK_ANNOTATION}` annotation is not rotor's)"),
            command: "unknown".into(),
            rotation: None,
            stage: "unknown".into(),
            since: DateTime::UNIX_EPOCH,
            expires: DateTime::UNIX_EPOCH,
            handover: None,
        }),
    }
}

fn with_holder(base: &Secret, holder: Option<&Holder>) -> Secret {
    let mut s = base.clone();
    match holder {
        Some(h) => {
            s.annotations.insert(
                LOCK_ANNOTATION.to_string(),
                serde_json::to_string(h).expect("holder serializes"),
            );
        }
        None => {
            s.annotations.remove(LOCK_ANNOTATION);
        }
    }
    s
}

fn expiring(holder: &Holder, now: DateTime<Utc>, duration: Duration) -> Holder {
    let mut h = holder.clone();
    h.expires = now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
    h
}

#[async_trait]
impl Backend for GcpLockBackend {
    type Record = Secret;

    async fn get(&self) -> Result<Option<Secret>, LockError> {
        Ok(self.store.get_secret().await?)
    }

    async fn put(&self, next: &Secret, create: bool) -> Result<Secret, Write> {
        if create {
            // The lock lives on the store's secret; without it there is nothing to rotate.
            return Err(Write::Failed(
                StoreError::Missing {
                    store: crate::store::Store::describe(self.store.as_ref()),
                }
                .into(),
            ));
        }
        match self.store.patch(next, &["annotations"]).await {
            Ok(Ok(s)) => Ok(s),
            // An etag mismatch: someone wrote in between.
            Ok(Err(e)) if e.code() == Some(Code::FailedPrecondition) => Err(Write::Raced),
            Ok(Err(e)) => Err(Write::Failed(self.store.fail(&e).into())),
            Err(e) => Err(Write::Failed(e.into())),
        }
    }

    fn holder_of(&self, r: &Secret) -> Option<Holder> {
        holder_of(r)
    }

    fn claim(
        &self,
        current: Option<&Secret>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Secret {
        let mut h = expiring(holder, now, duration);
        h.since = now;
        with_holder(&current.cloned().unwrap_or_default(), Some(&h))
    }

    fn renewed(
        &self,
        last: &Secret,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Secret {
        let mut h = expiring(holder, now, duration);
        // The acquisition time is the claim's token: a renewal keeps it.
        if let Some(prev) = holder_of(last) {
            h.since = prev.since;
        }
        with_holder(last, Some(&h))
    }

    fn noted(&self, current: &Secret, holder: &Holder) -> Secret {
        with_holder(current, Some(holder))
    }

    fn released(&self, last: &Secret, _now: DateTime<Utc>) -> Secret {
        with_holder(last, None)
    }

    fn same_claim(&self, a: &Secret, b: &Secret) -> bool {
        match (holder_of(a), holder_of(b)) {
            (Some(x), Some(y)) => x.identity == y.identity && x.since == y.since,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "annotation {LOCK_ANNOTATION} of {}",
            crate::store::Store::describe(self.store.as_ref())
        )
    }

    fn races(&self) -> LockError {
        StoreError::Conflict {
            store: crate::store::Store::describe(self.store.as_ref()),
            detail: format!("the lock annotation was still changing after {MAX_RACES} attempts"),
        }
        .into()
    }

    /// The store's steps write the same secret: the lock takes turns with them, and its writes
    /// are paced with theirs (together they keep `write_interval` apart). Paced before the
    /// record is read and the stage taken, so stages set meanwhile go out in one write.
    async fn turn(&self) -> Option<Turn> {
        let turn = self.store.turn().await;
        self.store.pace().await;
        Some(Box::new(turn))
    }
}

#[cfg(test)]
mod tests {
    use super::super::remote::{Decision, decide};
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_claim_keeps_other_annotations_and_renewals_keep_the_token() {
        let store = Arc::new(GcpStore::new(
            &crate::playbook::GcpStoreSpec {
                project: "my-project".into(),
                name: "s".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                credentials: crate::playbook::GcpCredentials::Anonymous,
                retry_deadline: Duration::from_secs(1),
                write_interval: Duration::ZERO,
            },
            "s",
        ));
        let b = GcpLockBackend { store };
        let base = Secret::new()
            .set_etag("\"e1\"")
            .set_annotations([("rotor-fp-1", "sha256:0123456789ab")]);
        let at = t("2026-01-02T03:00:00Z");
        let mut me = Holder::me("rotate");
        me.stage = "T2 widen forward".into();
        let c = b.claim(Some(&base), &me, at, Duration::from_secs(30));
        assert_eq!(c.etag, "\"e1\"", "the write is guarded by the etag read");
        assert_eq!(c.annotations["rotor-fp-1"], "sha256:0123456789ab");
        let h = holder_of(&c).unwrap();
        assert_eq!((h.since, h.expires), (at, t("2026-01-02T03:00:30Z")));
        assert!(matches!(
            decide(holder_of(&c), t("2026-01-02T03:00:29Z"), true),
            Decision::Held(_)
        ));
        assert!(matches!(
            decide(holder_of(&c), t("2026-01-02T03:00:31Z"), false),
            Decision::Expired(_)
        ));
        let r = b.renewed(&c, &me, t("2026-01-02T03:00:20Z"), Duration::from_secs(30));
        assert!(b.same_claim(&r, &c));
        assert_eq!(holder_of(&r).unwrap().expires, t("2026-01-02T03:00:50Z"));
        let free = b.released(&r, at);
        assert_eq!(holder_of(&free), None);
        assert_eq!(free.annotations["rotor-fp-1"], "sha256:0123456789ab");
        assert!(!b.same_claim(&free, &c));
    }
}
