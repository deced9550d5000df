//! The store model every backend that keeps its own versions shares (local file, Kubernetes
//! Secret): versions with values and states, two slots, and the rules of the [`Store`] trait
//! (a version in a slot cannot be disabled, destroyed is final, setting what already is set
//! changes nothing).
//!
//! Owns: those rules, once, and the consistency check of a loaded model (a value for every
//! enabled or disabled version, none for a destroyed one, each value matching its fingerprint).
//! Must never: serialize itself (the backends decide where values and metadata go) or put a
//! value in an error.
//!
//! [`Store`]: super::Store

use chrono::{DateTime, Utc};

use super::{StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::secret::{Fingerprint, SecretValue};

/// One version, with its value unless destroyed.
pub struct ModelVersion {
    /// `"3"`.
    pub id: String,
    /// Fingerprint of the value.
    pub fingerprint: Fingerprint,
    /// Lifecycle state.
    pub state: VersionState,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// The value (`None` once destroyed).
    pub value: Option<SecretValue>,
}

impl ModelVersion {
    /// Metadata without the value.
    pub fn info(&self) -> VersionInfo {
        VersionInfo {
            id: self.id.clone(),
            fingerprint: self.fingerprint.clone(),
            state: self.state,
            created_at: self.created_at,
        }
    }
}

/// A store's content.
pub struct Model {
    /// Logical secret name (fingerprints are computed for it).
    pub secret: String,
    /// Every version, oldest first.
    pub versions: Vec<ModelVersion>,
    /// Version id in the primary slot.
    pub primary: Option<String>,
    /// Version id in the secondary slot.
    pub secondary: Option<String>,
}

impl Model {
    /// A new store holding `value` as version 1 in the primary slot.
    pub fn new(secret: &str, value: &SecretValue) -> Model {
        Model {
            secret: secret.to_string(),
            versions: vec![ModelVersion {
                id: "1".into(),
                fingerprint: value.fingerprint(secret),
                state: VersionState::Enabled,
                created_at: Utc::now(),
                value: Some(value.clone()),
            }],
            primary: Some("1".into()),
            secondary: None,
        }
    }

    /// The version with this id.
    pub fn version(&self, id: &str) -> Option<&ModelVersion> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// Checks what a backend loaded: `Err(detail)` names the first inconsistency (quoting a
    /// version id only when it looks like one: a short run of digits).
    pub fn check(&self, expected_secret: &str) -> Result<(), String> {
        if self.secret != expected_secret {
            // The file's text is not quoted: it may be anything, a value included.
            return Err(format!(
                "it holds another secret ({} characters) than the one the playbook names, `{expected_secret}`",
                self.secret.chars().count()
            ));
        }
        for v in &self.versions {
            match (&v.value, v.state) {
                (None, VersionState::Enabled | VersionState::Disabled) => {
                    return Err(format!("version {} has no value", shown_id(&v.id)));
                }
                (Some(_), VersionState::Destroyed) => {
                    return Err(format!(
                        "destroyed version {} still has a value",
                        shown_id(&v.id)
                    ));
                }
                (Some(val), _) if val.fingerprint(&self.secret) != v.fingerprint => {
                    return Err(format!(
                        "version {} does not match its fingerprint {}",
                        shown_id(&v.id),
                        v.fingerprint
                    ));
                }
                _ => {}
            }
        }
        for (slot, id) in [("primary", &self.primary), ("secondary", &self.secondary)] {
            if let Some(id) = id
                && self.version(id).is_none()
            {
                return Err(format!(
                    "the {slot} slot names version {}, which does not exist",
                    shown_id(id)
                ));
            }
        }
        Ok(())
    }

    /// Slots and versions, without values.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            versions: self.versions.iter().map(ModelVersion::info).collect(),
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
        }
    }

    /// The value of an enabled version.
    pub fn read_value(&self, store: &str, version: &str) -> Result<SecretValue, StoreError> {
        let v = self
            .version(version)
            .ok_or_else(|| StoreError::NoSuchVersion {
                store: store.into(),
                version: version.into(),
            })?;
        match (&v.value, v.state) {
            (Some(val), VersionState::Enabled) => Ok(val.clone()),
            (_, state) => Err(StoreError::NotReadable {
                store: store.into(),
                version: version.into(),
                state,
            }),
        }
    }

    /// Adds an enabled version in no slot.
    pub fn add_version(&mut self, value: &SecretValue) -> VersionInfo {
        let next = self
            .versions
            .iter()
            .filter_map(|v| v.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let v = ModelVersion {
            id: next.to_string(),
            fingerprint: value.fingerprint(&self.secret),
            state: VersionState::Enabled,
            created_at: Utc::now(),
            value: Some(value.clone()),
        };
        let info = v.info();
        self.versions.push(v);
        info
    }

    /// Points the slots; returns whether anything changed.
    pub fn set_slots(
        &mut self,
        store: &str,
        primary: &str,
        secondary: Option<&str>,
    ) -> Result<bool, StoreError> {
        for id in std::iter::once(primary).chain(secondary) {
            rules::slot_target(store, id, self.version(id).map(|v| v.state))?;
        }
        rules::distinct_slots(store, primary, secondary)?;
        let changed =
            self.primary.as_deref() != Some(primary) || self.secondary.as_deref() != secondary;
        self.primary = Some(primary.to_string());
        self.secondary = secondary.map(str::to_string);
        Ok(changed)
    }

    /// Changes a version's state; returns whether anything changed.
    pub fn set_state(
        &mut self,
        store: &str,
        version: &str,
        state: VersionState,
    ) -> Result<bool, StoreError> {
        let in_slot = if self.primary.as_deref() == Some(version) {
            Some("primary")
        } else if self.secondary.as_deref() == Some(version) {
            Some("secondary")
        } else {
            None
        };
        let current = self.version(version).map(|v| v.state);
        if !rules::state_change(store, version, current, in_slot, state)? {
            return Ok(false);
        }
        let Some(v) = self.versions.iter_mut().find(|v| v.id == version) else {
            unreachable!("state_change refuses a version that does not exist")
        };
        v.state = state;
        if state == VersionState::Destroyed {
            v.value = None;
        }
        Ok(true)
    }

    /// Forgets the records of the oldest destroyed versions (lowest ids first) until at most
    /// `keep` destroyed ones remain; returns whether anything was forgotten. Only destroyed
    /// versions go (they hold no value and sit in no slot), and two always stay: `just` (the
    /// version a write just destroyed, which a resumed T5 looks up) and the version with the
    /// highest id (the next id comes from it, so an id is never given twice).
    pub fn prune_destroyed(&mut self, keep: usize, just: &str) -> bool {
        let highest = self
            .versions
            .iter()
            .filter_map(|v| v.id.parse::<u64>().ok())
            .max();
        let mut destroyed: Vec<(Option<u64>, usize)> = self
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| v.state == VersionState::Destroyed)
            .map(|(i, v)| (v.id.parse::<u64>().ok(), i))
            .collect();
        let excess = destroyed.len().saturating_sub(keep);
        if excess == 0 {
            return false;
        }
        // Oldest first: ids that are not numbers (never written by rotor) by position, then
        // numeric ids in order.
        destroyed.sort_unstable();
        let gone: std::collections::HashSet<usize> = destroyed
            .iter()
            .filter(|(id, i)| self.versions[*i].id != just && (id.is_none() || *id != highest))
            .take(excess)
            .map(|(_, i)| *i)
            .collect();
        let mut i = 0;
        self.versions.retain(|_| {
            let kept = !gone.contains(&i);
            i += 1;
            kept
        });
        !gone.is_empty()
    }
}

/// The rules of the [`Store`](super::Store) trait on slots and states, once, for every backend
/// (the model here, and the stores that keep their versions on a server: Vault).
pub mod rules {
    use super::super::{StoreError, VersionState};

    /// Refuses slots that name one version twice.
    pub fn distinct_slots(
        store: &str,
        primary: &str,
        secondary: Option<&str>,
    ) -> Result<(), StoreError> {
        if secondary == Some(primary) {
            return Err(StoreError::Refused {
                store: store.into(),
                detail: format!("version {primary} cannot fill both slots"),
            });
        }
        Ok(())
    }

    /// Refuses a slot for version `id` in `state` (`None`: no such version): only an enabled
    /// version can be in a slot.
    pub fn slot_target(
        store: &str,
        id: &str,
        state: Option<VersionState>,
    ) -> Result<(), StoreError> {
        match state {
            None => Err(StoreError::NoSuchVersion {
                store: store.into(),
                version: id.into(),
            }),
            Some(VersionState::Enabled) => Ok(()),
            Some(s) => Err(StoreError::Refused {
                store: store.into(),
                detail: format!("version {id} is {s:?} and cannot be put in a slot"),
            }),
        }
    }

    /// Whether version `version` (now `current`, `None`: no such version; `in_slot`: the slot
    /// it is in, if any) has to change to reach `target`: `Ok(false)` when it is there already,
    /// refused when it is in a slot and would stop being readable, or when it is destroyed.
    pub fn state_change(
        store: &str,
        version: &str,
        current: Option<VersionState>,
        in_slot: Option<&str>,
        target: VersionState,
    ) -> Result<bool, StoreError> {
        if target != VersionState::Enabled
            && let Some(slot) = in_slot
        {
            return Err(StoreError::Refused {
                store: store.into(),
                detail: format!(
                    "version {version} is in the {slot} slot; take it out of the slot before it is {target:?}"
                ),
            });
        }
        let Some(current) = current else {
            return Err(StoreError::NoSuchVersion {
                store: store.into(),
                version: version.into(),
            });
        };
        if current == target {
            return Ok(false);
        }
        if current == VersionState::Destroyed {
            return Err(StoreError::Refused {
                store: store.into(),
                detail: format!("version {version} is destroyed; it cannot be {target:?}"),
            });
        }
        Ok(true)
    }
}

/// A version id from a store file as messages show it: short digit ids as they are, anything
/// else by length only (a hand-edited file may hold a value where an id belongs).
fn shown_id(id: &str) -> String {
    if (1..=12).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()) {
        id.to_string()
    } else {
        format!("<an id of {} characters>", id.chars().count())
    }
}
