//! Stores: the source of truth that holds the values and records which is primary and which is
//! secondary.
//!
//! Owns: the [`Store`] trait in rotor's own types (no backend SDK type crosses it) and the
//! factory that opens the backend a playbook names. One file per backend. Must never: log or
//! return a value except from [`Store::read_value`].

pub mod aws;
pub mod gcp;
pub mod kubernetes;
pub mod local;
mod model;
mod retry;
pub mod vault;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};
use crate::playbook::{Playbook, StoreSpec};
use crate::secret::{Fingerprint, SecretValue};

/// A version's lifecycle state (as in Secret Manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Readable and usable.
    Enabled,
    /// Kept but not readable; can be re-enabled.
    Disabled,
    /// Value gone for good; only the fingerprint remains in history.
    Destroyed,
}

/// Metadata of one version. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Backend's version reference (`"3"`).
    pub id: String,
    /// Fingerprint of the value.
    pub fingerprint: Fingerprint,
    /// Lifecycle state.
    pub state: VersionState,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

/// What the store holds, without values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// Every version ever added, oldest first (destroyed ones keep their fingerprint).
    pub versions: Vec<VersionInfo>,
    /// Version id in the primary slot.
    pub primary: Option<String>,
    /// Version id in the secondary slot.
    pub secondary: Option<String>,
}

impl StoreSnapshot {
    /// The version with this id.
    pub fn version(&self, id: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The newest version with this fingerprint.
    pub fn by_fingerprint(&self, fp: &Fingerprint) -> Option<&VersionInfo> {
        self.versions.iter().rev().find(|v| &v.fingerprint == fp)
    }

    /// The version in the primary slot.
    pub fn primary_version(&self) -> Option<&VersionInfo> {
        self.primary.as_deref().and_then(|id| self.version(id))
    }

    /// The version in the secondary slot.
    pub fn secondary_version(&self) -> Option<&VersionInfo> {
        self.secondary.as_deref().and_then(|id| self.version(id))
    }
}

/// Store failures, each naming the store and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store does not exist yet.
    #[error(
        "store {store} does not exist yet\n  help: run `rotor init <playbook>` to create it with a first value"
    )]
    Missing {
        /// The store's description.
        store: String,
    },
    /// File permissions are too open.
    #[error(
        "store {store} is readable by group or others (mode {mode:o})\n  help: run `chmod 600 {store}`; rotor refuses to use a store others can read"
    )]
    Permissions {
        /// The store's description.
        store: String,
        /// The file mode.
        mode: u32,
    },
    /// The content cannot be understood.
    #[error(
        "store {store} is corrupt: {detail}\n  help: restore it from a backup; rotor will not guess"
    )]
    Corrupt {
        /// The store's description.
        store: String,
        /// What is wrong (never a value).
        detail: String,
    },
    /// A version reference that does not exist.
    #[error("store {store} has no version {version}")]
    NoSuchVersion {
        /// The store's description.
        store: String,
        /// The version id.
        version: String,
    },
    /// Reading a disabled or destroyed version.
    #[error("store {store}: version {version} is {state:?} and cannot be read")]
    NotReadable {
        /// The store's description.
        store: String,
        /// The version id.
        version: String,
        /// Its state.
        state: VersionState,
    },
    /// A state change the store does not allow (e.g. enabling a destroyed version).
    #[error("store {store}: {detail}")]
    Refused {
        /// The store's description.
        store: String,
        /// What was refused.
        detail: String,
    },
    /// The store changed underneath (etag/generation mismatch).
    #[error(
        "store {store} changed while rotor was writing it ({detail})\n  help: another writer touched the store; rerun, rotor will re-read and re-decide"
    )]
    Conflict {
        /// The store's description.
        store: String,
        /// Detail.
        detail: String,
    },
    /// The cluster refused or failed a call.
    #[error("store {store}: {source}")]
    Cluster {
        /// The store's description.
        store: String,
        /// What failed, with what to do.
        #[source]
        source: Box<crate::cluster::ClusterError>,
    },
    /// A remote store refused or failed a call (after retries where that made sense).
    #[error("store {store}: {detail}\n  help: {help}")]
    Remote {
        /// The store's description.
        store: String,
        /// What failed, with the backend's own status and message (never a value).
        detail: String,
        /// What to do.
        help: String,
    },
    /// I/O failure.
    #[error("store {store}: {action}: {source}")]
    Io {
        /// The store's description.
        store: String,
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A store backend. Every method is idempotent where the protocol needs it: setting slots or a
/// state to what they already are succeeds and changes nothing.
#[async_trait]
pub trait Store: Send + Sync {
    /// Human description (`local:/path/to/store.json`).
    fn describe(&self) -> String;

    /// Whether the store exists (has been initialized).
    async fn exists(&self) -> Result<bool, StoreError>;

    /// Creates the store holding `value` as the enabled primary. Fails if it exists.
    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError>;

    /// Slots and versions, without values.
    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError>;

    /// The value of an enabled version.
    async fn read_value(&self, version: &str) -> Result<SecretValue, StoreError>;

    /// Adds an enabled version holding `value`; in no slot yet.
    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError>;

    /// [`Store::add_version`] for the rotation with id `rotation`: a backend that takes an
    /// idempotency key (Secrets Manager's `ClientRequestToken`) derives it from `rotation` and
    /// the value, so a retried request never adds a second version.
    async fn add_version_for(
        &self,
        value: &SecretValue,
        rotation: &str,
    ) -> Result<VersionInfo, StoreError> {
        let _ = rotation;
        self.add_version(value).await
    }

    /// Points the slots at these versions (which must be enabled).
    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError>;

    /// Changes a version's state. Enabled↔Disabled both ways; Destroyed is final and removes
    /// the value. A version in a slot cannot be disabled or destroyed.
    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError>;

    /// When the backend's own schedule says the next rotation is due (Secret Manager's
    /// `rotation.next_rotation_time`); `None` when it keeps no schedule.
    async fn next_rotation(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(None)
    }

    /// Records that a rotation reached S5 (last rotation time; the backend's own schedule set to
    /// `next_due` when the playbook's `max_age` gives one). Idempotent.
    async fn rotation_finished(&self, next_due: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let _ = next_due;
        Ok(())
    }
}

/// The names the remote stores (Secret Manager, Vault, AWS) give rotor's bookkeeping beside a
/// secret: as aliases and annotations in Secret Manager, as `custom_metadata` keys in Vault, as
/// tags in AWS Secrets Manager.
pub mod keys {
    /// The logical secret's name.
    pub const SECRET: &str = "rotor-secret";
    /// The version in the primary slot.
    pub const PRIMARY: &str = "rotor-primary";
    /// The version in the secondary slot.
    pub const SECONDARY: &str = "rotor-secondary";
    /// Prefix of the per-version fingerprints (`rotor-fp-<version>`).
    pub const FP_PREFIX: &str = "rotor-fp-";
    /// When the last rotation finished.
    pub const LAST_ROTATION: &str = "rotor-last-rotation";
    /// When the next rotation is due (from the playbook's `max_age`).
    pub const NEXT_ROTATION: &str = "rotor-next-rotation";
}

/// Opens the store a playbook names; `cluster` is the connection when the playbook uses one.
pub fn open(
    playbook: &Playbook,
    cluster: Option<&Cluster>,
) -> Result<Box<dyn Store>, ClusterError> {
    Ok(match &playbook.store {
        StoreSpec::Local { path } => Box::new(
            local::LocalStore::new(
                path.clone(),
                &playbook.secret,
                playbook.state_dir.join("store.lock"),
            )
            .keeping_destroyed(playbook.keep.destroyed_versions),
        ),
        StoreSpec::Kubernetes { namespace, name } => Box::new(kubernetes::KubernetesStore::new(
            cluster.ok_or_else(ClusterError::not_connected)?,
            namespace,
            name,
            &playbook.secret,
        )),
        StoreSpec::Gcp(spec) => Box::new(gcp::GcpStore::new(spec, &playbook.secret)),
        StoreSpec::Vault(spec) => Box::new(vault::VaultStore::new(spec, &playbook.secret)),
        StoreSpec::Aws(spec) => Box::new(aws::AwsStore::new(spec, &playbook.secret)),
    })
}
