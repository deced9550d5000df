//! The single-flight lock of an AWS Secrets Manager store: the secret `<name>.rotor-lock`
//! beside the store's.
//!
//! Neither tags nor resource policies take a precondition in Secrets Manager, so two rotors
//! writing "I hold it" there could both win. The one compare-and-swap the service offers is a
//! staging-label move that names where the label is (`RemoveFromVersionId`): refused when the
//! label moved in between. So the claim in force is the lock secret's `AWSCURRENT` version:
//!
//! - a **claim** (and an emergency rekey's handover request) is a new version holding
//!   `{"holder": "<Holder as JSON>"}`, then `AWSCURRENT` moved onto it from the version read;
//! - a **renewal** (every third of `lock_duration`, and each new stage) writes no version: it
//!   checks that `AWSCURRENT` is still its claim and sets the lock secret's tags
//!   `rotor-lock-claim` (the claim's version), `rotor-lock-expires` and `rotor-lock-stage`, which
//!   readers apply only to that claim. Secrets Manager keeps every version younger than 24 hours
//!   against its quota of about 100 per secret, so a version per renewal would exhaust it within
//!   a long run; a version per claim is one per rotor run;
//! - a **release** moves `AWSCURRENT` back to the free version (`{"holder":""}`, labelled
//!   `ROTOR_LOCK_FREE` for good, written once).
//!
//! The rules (live claims never taken, `--force` only after expiry, lost guards) are
//! [`super::remote`]'s. Must never: write anything but the lock secret, or hold anything but who
//! holds the lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::remote::{Backend, RecordLock, Write};
use super::secret::{HOLDER_KEY, claimed, holder_of, renewal, same, still_changing};
use super::{Holder, LockError};
use crate::store::StoreError;
use crate::store::aws::AwsStore;

/// Tag naming the claim (version) the renewal tags belong to.
pub const TAG_CLAIM: &str = "rotor-lock-claim";
/// Tag with the claim's renewed expiry (RFC 3339).
pub const TAG_EXPIRES: &str = "rotor-lock-expires";
/// Tag with the claim's current stage.
pub const TAG_STAGE: &str = "rotor-lock-stage";

/// The lock of one AWS store.
pub type AwsLock = RecordLock<AwsLockBackend>;

impl AwsLock {
    /// The lock beside `store`'s secret.
    pub fn new(store: Arc<AwsStore>) -> AwsLock {
        RecordLock::with_backend(AwsLockBackend { store })
    }
}

/// The lock secret as a lock record.
pub struct AwsLockBackend {
    store: Arc<AwsStore>,
}

/// What a write of the record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new claim, or a note on the claim (a handover request): a new version, guarded.
    Version,
    /// A renewal of the claim in force: tags only.
    Renew,
    /// Back to the free version, guarded.
    Release,
}

/// The lock secret as read, or as the next write makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRecord {
    /// The version carrying `AWSCURRENT` (`None`: no lock secret yet).
    pub current: Option<String>,
    /// Who holds it.
    pub holder: Option<Holder>,
    /// What writing this record does.
    pub op: Op,
}

/// A stage as a tag value may carry it (letters, digits, spaces and `_.:/=+-@`), at most 256.
fn tag_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(256)
        .collect()
}

/// The holder of a claim's content with its renewals (tags) applied when they are its own.
fn renewed_holder(
    content: Option<&str>,
    current: &str,
    tags: &std::collections::BTreeMap<String, String>,
) -> Option<Holder> {
    let data: serde_json::Value = serde_json::from_str(content?).unwrap_or_else(|_| {
        // Text that is not rotor's is somebody's claim all the same (see `holder_of`).
        serde_json::json!({ HOLDER_KEY: "not rotor's" })
    });
    let mut h = holder_of(&data)?;
    if tags.get(TAG_CLAIM).map(String::as_str) == Some(current) {
        if let Some(t) = tags
            .get(TAG_EXPIRES)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            h.expires = h.expires.max(t.with_timezone(&Utc));
        }
        if let Some(s) = tags.get(TAG_STAGE) {
            h.stage = s.clone();
        }
    }
    Some(h)
}

#[async_trait]
impl Backend for AwsLockBackend {
    type Record = AwsRecord;

    async fn get(&self) -> Result<Option<AwsRecord>, LockError> {
        let Some(state) = self.store.lock_state().await? else {
            return Ok(None);
        };
        let holder = if state.free.as_deref() == Some(state.current.as_str()) {
            None
        } else {
            renewed_holder(state.text.as_deref(), &state.current, &state.tags)
        };
        Ok(Some(AwsRecord {
            current: Some(state.current),
            holder,
            op: Op::Renew,
        }))
    }

    async fn put(&self, next: &AwsRecord, _create: bool) -> Result<AwsRecord, Write> {
        let failed = |e: StoreError| Write::Failed(e.into());
        match next.op {
            Op::Version => {
                let text = match &next.holder {
                    Some(h) => serde_json::to_string(h).expect("holder serializes"),
                    None => String::new(),
                };
                let data = serde_json::json!({ HOLDER_KEY: text }).to_string();
                match self
                    .store
                    .lock_write(next.current.as_deref(), &data)
                    .await
                    .map_err(failed)?
                {
                    Some(id) => Ok(AwsRecord {
                        current: Some(id),
                        holder: next.holder.clone(),
                        op: Op::Renew,
                    }),
                    None => Err(Write::Raced),
                }
            }
            Op::Renew => {
                let Some(current) = &next.current else {
                    return Err(Write::Raced);
                };
                // Still our claim? (A takeover or a handover request moved it: read again.)
                let now = self.store.lock_state().await.map_err(failed)?;
                if now.as_ref().map(|s| &s.current) != Some(current) {
                    return Err(Write::Raced);
                }
                let Some(h) = &next.holder else {
                    return Err(Write::Raced);
                };
                self.store
                    .lock_tag(vec![
                        (TAG_CLAIM.into(), current.clone()),
                        (TAG_EXPIRES.into(), h.expires.to_rfc3339()),
                        (TAG_STAGE.into(), tag_safe(&h.stage)),
                    ])
                    .await
                    .map_err(failed)?;
                Ok(next.clone())
            }
            Op::Release => {
                let Some(current) = &next.current else {
                    return Ok(next.clone());
                };
                let free = self.store.lock_free().await.map_err(failed)?;
                if &free == current {
                    return Ok(next.clone());
                }
                if self.store.lock_move(current, &free).await.map_err(failed)? {
                    Ok(AwsRecord {
                        current: Some(free),
                        holder: None,
                        op: Op::Renew,
                    })
                } else {
                    Err(Write::Raced)
                }
            }
        }
    }

    fn holder_of(&self, r: &AwsRecord) -> Option<Holder> {
        r.holder.clone()
    }

    fn claim(
        &self,
        current: Option<&AwsRecord>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> AwsRecord {
        AwsRecord {
            current: current.and_then(|c| c.current.clone()),
            holder: Some(claimed(holder, now, duration)),
            op: Op::Version,
        }
    }

    fn renewed(
        &self,
        last: &AwsRecord,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> AwsRecord {
        AwsRecord {
            current: last.current.clone(),
            holder: Some(renewal(last.holder.as_ref(), holder, now, duration)),
            op: Op::Renew,
        }
    }

    fn noted(&self, current: &AwsRecord, holder: &Holder) -> AwsRecord {
        AwsRecord {
            current: current.current.clone(),
            holder: Some(holder.clone()),
            op: Op::Version,
        }
    }

    fn released(&self, last: &AwsRecord, _now: DateTime<Utc>) -> AwsRecord {
        AwsRecord {
            current: last.current.clone(),
            holder: None,
            op: Op::Release,
        }
    }

    fn same_claim(&self, a: &AwsRecord, b: &AwsRecord) -> bool {
        same(a.holder.as_ref(), b.holder.as_ref())
    }

    fn describe(&self) -> String {
        self.store.lock_describe()
    }

    fn races(&self) -> LockError {
        still_changing(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_apply_only_to_their_own_claim() {
        let h = Holder::me("rotate");
        let content =
            serde_json::json!({ HOLDER_KEY: serde_json::to_string(&h).unwrap() }).to_string();
        let later = h.expires + chrono::Duration::minutes(5);
        let mut tags = std::collections::BTreeMap::new();
        tags.insert(TAG_CLAIM.to_string(), "v2".to_string());
        tags.insert(TAG_EXPIRES.to_string(), later.to_rfc3339());
        tags.insert(TAG_STAGE.to_string(), "T3 promote forward".to_string());
        let mine = renewed_holder(Some(&content), "v2", &tags).unwrap();
        assert_eq!(
            (mine.expires, mine.stage.as_str()),
            (later, "T3 promote forward")
        );
        // Tags of an older claim do not extend a newer one.
        let other = renewed_holder(Some(&content), "v3", &tags).unwrap();
        assert_eq!(other.expires, h.expires);
        // An empty holder is free; text that is not rotor's is a claim only --force takes.
        let free = serde_json::json!({ HOLDER_KEY: "" }).to_string();
        assert_eq!(renewed_holder(Some(&free), "v2", &tags), None);
        let foreign = renewed_holder(Some("garbage"), "v9", &tags).unwrap();
        assert_eq!(foreign.expires, DateTime::UNIX_EPOCH);
        assert_eq!(tag_safe("T2 widen {forward}\n"), "T2 widen -forward--");
    }
}
