//! The single-flight lock of an OpenBao/Vault KV v2 store: a KV v2 secret beside the store's,
//! `<path>.rotor-lock`, whose newest version says who holds the lock, each new version written
//! with `cas` (the version read just before), so two rotors on different machines cannot both
//! proceed. Why not the secret's `custom_metadata` (where the slots are): the metadata endpoint
//! takes no `cas` on Vault, so two writers could both read "free" and both write their claim,
//! the later one silently winning. A data write with `cas=<version read>` is refused by the
//! server when anyone wrote in between. ([`super::aws`] is the AWS store's lock.)
//!
//! Owns: the lock secret's content `{"holder": "<Holder as JSON>"}`; an empty `holder` (or no
//! readable newest version, or no secret) means free. Each renewal is a new version (the
//! engine's `max_versions` prunes old ones). The rules (live
//! claims never taken, `--force` only after expiry, renewal every third of the duration, lost
//! guards, release) are [`super::remote`]'s.
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

/// The key of the lock secret's content that holds the holder's JSON.
pub const HOLDER_KEY: &str = "holder";

/// A lock secret: its newest version and holder text, and guarded writes of a new one.
#[async_trait]
pub trait LockSecret: Send + Sync + 'static {
    /// What names a version (`Default`: none yet, so the write creates the secret).
    type Version: Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// The newest version and its content (`None`: unreadable, i.e. free); `None` when there is
    /// no lock secret or no version yet.
    async fn read(&self) -> Result<Option<(Self::Version, Option<serde_json::Value>)>, StoreError>;

    /// Writes `content` as a new version, guarded by `prev` (the version read; `Default`:
    /// create). `Ok(None)`: someone wrote in between.
    async fn write(
        &self,
        prev: &Self::Version,
        content: &serde_json::Value,
    ) -> Result<Option<Self::Version>, StoreError>;

    /// `vault:secret/rotor/s.rotor-lock`.
    fn describe(&self) -> String;
}

/// The lock of one Vault store.
pub type VaultLock = RecordLock<SecretLockBackend<VaultLockSecret>>;

impl VaultLock {
    /// The lock beside `store`'s secret.
    pub fn new(store: Arc<VaultStore>) -> VaultLock {
        RecordLock::with_backend(SecretLockBackend {
            secret: VaultLockSecret { store },
        })
    }
}

/// The Vault lock secret.
pub struct VaultLockSecret {
    store: Arc<VaultStore>,
}

impl VaultLockSecret {
    fn path(&self) -> String {
        lock_path(&self.store.spec().path)
    }
}

#[async_trait]
impl LockSecret for VaultLockSecret {
    type Version = u64;

    async fn read(&self) -> Result<Option<(u64, Option<serde_json::Value>)>, StoreError> {
        let path = self.path();
        let Some(meta) = self.store.read_meta(&path).await? else {
            return Ok(None);
        };
        if meta.current_version == 0 {
            return Ok(None);
        }
        // The newest version decides; one deleted or destroyed by hand is free.
        let data = self
            .store
            .read_data(&path, Some(meta.current_version))
            .await?
            .map(|(data, _)| data);
        Ok(Some((meta.current_version, data)))
    }

    async fn write(
        &self,
        prev: &u64,
        content: &serde_json::Value,
    ) -> Result<Option<u64>, StoreError> {
        self.store.write_data(&self.path(), content, *prev).await
    }

    fn describe(&self) -> String {
        format!("vault:{}/{}", self.store.spec().mount, self.path())
    }
}

/// A lock secret as a lock record.
pub struct SecretLockBackend<S: LockSecret> {
    secret: S,
}

/// The lock secret as read: its newest version (the guard of the next write) and holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord<V> {
    /// The newest version (`Default`: none yet).
    pub version: V,
    /// Who holds it.
    pub holder: Option<Holder>,
}

/// The lock secret's path for a Vault store at `path`.
pub fn lock_path(path: &str) -> String {
    format!("{path}{LOCK_SUFFIX}")
}

/// The holder recorded in a lock secret's content. Text rotor cannot read is somebody's claim
/// all the same: held by an unknown holder whose claim expired, so only `--force` takes it.
pub fn holder_of(data: &serde_json::Value) -> Option<Holder> {
    let text = data.get(HOLDER_KEY).and_then(|v| v.as_str())?;
    if text.is_empty() {
        return None;
    }
    match serde_json::from_str::<Holder>(text) {
        Ok(h) if h.identity.is_empty() => None,
        Ok(h) => Some(h.untrusted()),
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

/// `holder` claiming a lock secret at `now` for `duration`.
pub(super) fn claimed(holder: &Holder, now: DateTime<Utc>, duration: Duration) -> Holder {
    let mut h = expiring(holder, now, duration);
    h.since = now;
    h
}

/// `holder` renewing its claim `last` at `now`: the acquisition time is the claim's token, so
/// a renewal keeps it.
pub(super) fn renewal(
    last: Option<&Holder>,
    holder: &Holder,
    now: DateTime<Utc>,
    duration: Duration,
) -> Holder {
    let mut h = expiring(holder, now, duration);
    if let Some(prev) = last {
        h.since = prev.since;
    }
    h
}

/// Whether two records name the same claim.
pub(super) fn same(a: Option<&Holder>, b: Option<&Holder>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x.same_claim(y))
}

/// The error after [`MAX_RACES`] lost races on the lock secret `describe`.
pub(super) fn still_changing(describe: String) -> LockError {
    StoreError::Conflict {
        store: describe,
        detail: format!("the lock secret was still changing after {MAX_RACES} attempts"),
    }
    .into()
}

#[async_trait]
impl<S: LockSecret> Backend for SecretLockBackend<S> {
    type Record = LockRecord<S::Version>;

    async fn get(&self) -> Result<Option<Self::Record>, LockError> {
        Ok(self.secret.read().await?.map(|(version, data)| LockRecord {
            version,
            holder: data.as_ref().and_then(holder_of),
        }))
    }

    async fn put(&self, next: &Self::Record, _create: bool) -> Result<Self::Record, Write> {
        let text = match &next.holder {
            Some(h) => serde_json::to_string(h).expect("holder serializes"),
            None => String::new(),
        };
        let data = serde_json::json!({ HOLDER_KEY: text });
        match self.secret.write(&next.version, &data).await {
            Ok(Some(version)) => Ok(LockRecord {
                version,
                holder: next.holder.clone(),
            }),
            // Refused: someone wrote in between.
            Ok(None) => Err(Write::Raced),
            Err(e) => Err(Write::Failed(e.into())),
        }
    }

    fn holder_of(&self, r: &Self::Record) -> Option<Holder> {
        r.holder.clone()
    }

    fn claim(
        &self,
        current: Option<&Self::Record>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Self::Record {
        LockRecord {
            version: current.map(|c| c.version.clone()).unwrap_or_default(),
            holder: Some(claimed(holder, now, duration)),
        }
    }

    fn renewed(
        &self,
        last: &Self::Record,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Self::Record {
        LockRecord {
            version: last.version.clone(),
            holder: Some(renewal(last.holder.as_ref(), holder, now, duration)),
        }
    }

    fn noted(&self, current: &Self::Record, holder: &Holder) -> Self::Record {
        LockRecord {
            version: current.version.clone(),
            holder: Some(holder.clone()),
        }
    }

    fn released(&self, last: &Self::Record, _now: DateTime<Utc>) -> Self::Record {
        LockRecord {
            version: last.version.clone(),
            holder: None,
        }
    }

    fn same_claim(&self, a: &Self::Record, b: &Self::Record) -> bool {
        same(a.holder.as_ref(), b.holder.as_ref())
    }

    fn describe(&self) -> String {
        self.secret.describe()
    }

    fn races(&self) -> LockError {
        still_changing(self.describe())
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
        let secret = VaultLockSecret {
            store: Arc::new(VaultStore::new(&spec, "s")),
        };
        assert_eq!(secret.path(), "rotor/s.rotor-lock");
        let b = SecretLockBackend { secret };
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

    #[test]
    fn a_holder_read_from_a_lock_secret_is_bounded_and_a_real_one_unchanged() {
        let me = Holder::me("rotate");
        let text = serde_json::to_string(&me).unwrap();
        let back = holder_of(&serde_json::json!({ HOLDER_KEY: text })).unwrap();
        assert_eq!(back, me, "a holder rotor wrote reads back as written");
        let mut evil = me.clone();
        evil.stage = format!("\u{1b}[31m{}", "x".repeat(10_000));
        evil.command = "rotate\nFAKE: line".into();
        let text = serde_json::to_string(&evil).unwrap();
        let back = holder_of(&serde_json::json!({ HOLDER_KEY: text })).unwrap();
        assert!(back.stage.chars().count() <= 257, "{}", back.stage.len());
        assert!(!back.stage.contains('\u{1b}') && !back.command.contains('\n'));
        assert!(back.same_claim(&me));
    }
}
