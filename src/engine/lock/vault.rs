//! The single-flight lock of an OpenBao/Vault KV v2 store: a KV v2 secret beside the store's,
//! `<path>.rotor-lock`, every version written with `cas`, so two rotors on different machines
//! cannot both proceed.
//!
//! Why not the secret's `custom_metadata` (where the slots are): Vault's and OpenBao's metadata
//! endpoint takes no `cas` and no other precondition, so two writers could both read "free" and
//! both write their claim, the later one silently winning. A data write with `cas=<version
//! read>` is refused by the server when anyone wrote in between: that is the atomic
//! compare-and-swap a lock needs (docs/vault.md says the same to operators).
//!
//! Owns: the lock secret's data `{"holder": "<Holder as JSON>"}`; an empty `holder` (or a
//! deleted or destroyed latest version, or no secret) means free. Each renewal is a new version
//! (the engine's `max_versions` prunes old ones). The rules (live claims never taken, `--force`
//! only after expiry, renewal every third of the duration, lost guards, release) are
//! [`super::remote`]'s.
//!
//! Must never: write anything but the lock secret, or hold anything but who holds the lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::remote::{Backend, MAX_RACES, RecordLock, Write};
use super::{Holder, LockError};
use crate::store::StoreError;
use crate::store::vault::{LOCK_SUFFIX, VaultStore};

/// The data key holding the holder's JSON.
pub const HOLDER_KEY: &str = "holder";

/// The lock of one Vault store.
pub type VaultLock = RecordLock<VaultLockBackend>;

impl VaultLock {
    /// The lock beside `store`'s secret.
    pub fn new(store: Arc<VaultStore>) -> VaultLock {
        RecordLock::with_backend(VaultLockBackend { store })
    }
}

/// The lock secret as a lock record.
pub struct VaultLockBackend {
    store: Arc<VaultStore>,
}

/// The lock secret as read: its newest version (the `cas` of the next write) and holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// The newest version number (0: no version yet).
    pub version: u64,
    /// Who holds it.
    pub holder: Option<Holder>,
}

impl VaultLockBackend {
    fn path(&self) -> String {
        lock_path(&self.store.spec().path)
    }
}

/// The lock secret's path for a store at `path`.
pub fn lock_path(path: &str) -> String {
    format!("{path}{LOCK_SUFFIX}")
}

/// The holder recorded in a lock secret's data. Text rotor cannot read is somebody's claim all
/// the same: held by an unknown holder whose claim expired, so only `--force` takes it.
pub fn holder_of(data: &serde_json::Value) -> Option<Holder> {
    let text = data.get(HOLDER_KEY).and_then(|v| v.as_str())?;
    if text.is_empty() {
        return None;
    }
    match serde_json::from_str::<Holder>(text) {
        Ok(h) if h.identity.is_empty() => None,
        Ok(h) => Some(h),
        Err(_) => Some(Holder {
            identity: format!("unknown (the lock secret's `{HOLDER_KEY}` is not rotor's)"),
            command: "unknown".into(),
            rotation: None,
            stage: "unknown".into(),
            since: DateTime::UNIX_EPOCH,
            expires: DateTime::UNIX_EPOCH,
            handover: None,
        }),
    }
}

fn expiring(holder: &Holder, now: DateTime<Utc>, duration: Duration) -> Holder {
    let mut h = holder.clone();
    h.expires = now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
    h
}

#[async_trait]
impl Backend for VaultLockBackend {
    type Record = LockRecord;

    async fn get(&self) -> Result<Option<LockRecord>, LockError> {
        let path = self.path();
        let Some(meta) = self.store.read_meta(&path).await? else {
            return Ok(None);
        };
        if meta.current_version == 0 {
            return Ok(None);
        }
        // The newest version decides; one deleted or destroyed by hand is free.
        let holder = match self
            .store
            .read_data(&path, Some(meta.current_version))
            .await?
        {
            Some((data, _)) => holder_of(&data),
            None => None,
        };
        Ok(Some(LockRecord {
            version: meta.current_version,
            holder,
        }))
    }

    async fn put(&self, next: &LockRecord, _create: bool) -> Result<LockRecord, Write> {
        let text = match &next.holder {
            Some(h) => serde_json::to_string(h).expect("holder serializes"),
            None => String::new(),
        };
        let data = serde_json::json!({ HOLDER_KEY: text });
        match self
            .store
            .write_data(&self.path(), &data, next.version)
            .await
        {
            Ok(Some(version)) => Ok(LockRecord {
                version,
                holder: next.holder.clone(),
            }),
            // cas refused: someone wrote in between.
            Ok(None) => Err(Write::Raced),
            Err(e) => Err(Write::Failed(e.into())),
        }
    }

    fn holder_of(&self, r: &LockRecord) -> Option<Holder> {
        r.holder.clone()
    }

    fn claim(
        &self,
        current: Option<&LockRecord>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> LockRecord {
        let mut h = expiring(holder, now, duration);
        h.since = now;
        LockRecord {
            version: current.map_or(0, |c| c.version),
            holder: Some(h),
        }
    }

    fn renewed(
        &self,
        last: &LockRecord,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> LockRecord {
        let mut h = expiring(holder, now, duration);
        // The acquisition time is the claim's token: a renewal keeps it.
        if let Some(prev) = &last.holder {
            h.since = prev.since;
        }
        LockRecord {
            version: last.version,
            holder: Some(h),
        }
    }

    fn noted(&self, current: &LockRecord, holder: &Holder) -> LockRecord {
        LockRecord {
            version: current.version,
            holder: Some(holder.clone()),
        }
    }

    fn released(&self, last: &LockRecord, _now: DateTime<Utc>) -> LockRecord {
        LockRecord {
            version: last.version,
            holder: None,
        }
    }

    fn same_claim(&self, a: &LockRecord, b: &LockRecord) -> bool {
        match (&a.holder, &b.holder) {
            (Some(x), Some(y)) => x.same_claim(y),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        format!("vault:{}/{}", self.store.spec().mount, self.path())
    }

    fn races(&self) -> LockError {
        StoreError::Conflict {
            store: self.describe(),
            detail: format!("the lock secret was still changing after {MAX_RACES} attempts"),
        }
        .into()
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
    fn claims_carry_the_version_read_and_renewals_keep_the_token() {
        let spec = crate::playbook::VaultStoreSpec {
            mount: "secret".into(),
            path: "rotor/s".into(),
            address: Some("http://127.0.0.1:9".into()),
            namespace: None,
            auth: crate::playbook::VaultAuth::Token,
            retry_deadline: Duration::from_secs(1),
            lock_duration: Duration::from_secs(30),
        };
        let b = VaultLockBackend {
            store: Arc::new(VaultStore::new(&spec, "s")),
        };
        assert_eq!(b.path(), "rotor/s.rotor-lock");
        let at = t("2026-01-02T03:00:00Z");
        let me = Holder::me("rotate");
        let free = LockRecord {
            version: 7,
            holder: None,
        };
        let c = b.claim(Some(&free), &me, at, Duration::from_secs(30));
        assert_eq!(c.version, 7, "the write is guarded by the version read");
        let h = c.holder.clone().unwrap();
        assert_eq!((h.since, h.expires), (at, t("2026-01-02T03:00:30Z")));
        assert!(matches!(
            decide(c.holder.clone(), t("2026-01-02T03:00:29Z"), true),
            Decision::Held(_)
        ));
        let r = b.renewed(&c, &me, t("2026-01-02T03:00:20Z"), Duration::from_secs(30));
        assert!(b.same_claim(&r, &c));
        assert_eq!(r.holder.unwrap().expires, t("2026-01-02T03:00:50Z"));
        assert_eq!(b.claim(None, &me, at, Duration::from_secs(30)).version, 0);
        // Text that is not rotor's is a claim nobody can renew: only --force takes it.
        let foreign = holder_of(&serde_json::json!({ HOLDER_KEY: "not json" })).unwrap();
        assert_eq!(foreign.expires, DateTime::UNIX_EPOCH);
        assert_eq!(holder_of(&serde_json::json!({ HOLDER_KEY: "" })), None);
    }
}
