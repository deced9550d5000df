//! Consumers: the workloads that use the secret.
//!
//! Owns: the [`Consumer`] trait in rotor's own types and the factory from playbook specs. One
//! file per backend. A consumer converges its instances onto the slots it is given (one
//! instance at a time for restarts, in place for hot reloads) and reports what each instance
//! holds. Must never: put a value in argv, a log line or an error.

pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::events::EventSink;
use crate::playbook::{ConsumerKind, ConsumerSpec, Pickup, Playbook};
use crate::protocol::Role;
use crate::secret::{Fingerprint, SecretValue};

/// The values one consumer must hold.
#[derive(Debug, Clone)]
pub struct Slots {
    /// The primary value.
    pub primary: SecretValue,
    /// The secondary value, if any.
    pub secondary: Option<SecretValue>,
}

/// Fingerprints an instance holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Fingerprint per name (env variable) the instance sees, aliases included.
    pub names: BTreeMap<String, Fingerprint>,
    /// What it accepts (validators).
    pub accepts: Vec<Fingerprint>,
    /// What it sends (signers).
    pub sends: Option<Fingerprint>,
}

/// Where one held view came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldSource {
    /// The instance itself reported it (fingerprints endpoint).
    Reported,
    /// What rotor configured it with (its environment at start).
    Configured,
}

/// One running copy of a consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Stable identifier (`auth-0-7`).
    pub id: String,
    /// Where to reach it directly (not a load-balanced address).
    pub addr: Option<SocketAddr>,
    /// Fingerprints of the primary/secondary it was configured with.
    pub primary: Option<Fingerprint>,
    /// Secondary fingerprint.
    pub secondary: Option<Fingerprint>,
}

/// Result of converging a consumer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutReport {
    /// Instances replaced or reloaded.
    pub restarts: usize,
    /// Time spent waiting for instances to become ready and to drain (not orchestration).
    pub waited: std::time::Duration,
}

/// Consumer failures, naming the consumer and the instance.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// A new instance did not become ready in time.
    #[error("consumer {consumer}: instance {instance} was not ready within {timeout:?}: {detail}")]
    NotReady {
        /// Consumer name.
        consumer: String,
        /// Instance id.
        instance: String,
        /// Deadline.
        timeout: std::time::Duration,
        /// Last health error or exit status.
        detail: String,
    },
    /// The whole rollout exceeded its deadline.
    #[error("consumer {consumer}: rollout did not finish within {timeout:?}")]
    RolloutTimeout {
        /// Consumer name.
        consumer: String,
        /// Deadline.
        timeout: std::time::Duration,
    },
    /// Starting a process failed.
    #[error("consumer {consumer}: cannot start `{program}`: {detail}")]
    Spawn {
        /// Consumer name.
        consumer: String,
        /// argv[0].
        program: String,
        /// Why.
        detail: String,
    },
    /// Reading what an instance holds failed.
    #[error("consumer {consumer}: instance {instance}: {detail}")]
    Observe {
        /// Consumer name.
        consumer: String,
        /// Instance id.
        instance: String,
        /// Why.
        detail: String,
    },
    /// Records or endpoints on disk.
    #[error("consumer {consumer}: {action}: {source}")]
    Io {
        /// Consumer name.
        consumer: String,
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ConsumerError {
    /// The instance the error is about, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            ConsumerError::NotReady { instance, .. } | ConsumerError::Observe { instance, .. } => {
                Some(instance)
            }
            _ => None,
        }
    }
}

/// A consumer backend.
///
/// # Guarantees
/// `apply` is idempotent: instances already holding `slots` are left alone, so repeating it
/// after a crash equals running it once. While it runs, at least the configured number of
/// instances keeps serving (start new, wait ready, stop old).
#[async_trait]
pub trait Consumer: Send + Sync {
    /// The playbook's name for it.
    fn name(&self) -> &str;

    /// validator / signer / both.
    fn role(&self) -> Role;

    /// How it picks a change up.
    fn pickup(&self) -> Pickup;

    /// Converges every instance onto `slots`.
    async fn apply(
        &self,
        slots: &Slots,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError>;

    /// The instances currently serving, with the fingerprints rotor configured them with.
    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError>;

    /// What one instance actually holds, per name (asks the instance when it can report,
    /// otherwise returns what rotor configured).
    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError>;

    /// Starts the consumer's instances holding `slots` if none run (fleet bring-up).
    async fn start(&self, slots: &Slots, events: &dyn EventSink) -> Result<(), ConsumerError>;

    /// Stops every instance this consumer started.
    async fn stop(&self) -> Result<usize, ConsumerError>;
}

/// Opens the consumers a playbook lists, in playbook order.
pub fn open_all(playbook: &Playbook) -> Vec<Arc<dyn Consumer>> {
    playbook
        .consumers
        .iter()
        .map(|c| open(playbook, c))
        .collect()
}

/// Opens one consumer.
pub fn open(playbook: &Playbook, spec: &ConsumerSpec) -> Arc<dyn Consumer> {
    match &spec.kind {
        ConsumerKind::Process(p) => Arc::new(process::ProcessConsumer::new(playbook, spec, p)),
    }
}
