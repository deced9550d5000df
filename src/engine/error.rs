//! Errors: what failed in one step ([`StepError`]) and why a run did not reach its target
//! ([`EngineError`]), with the exit code each maps to (see `docs/cli.md`).
//!
//! Every failure names its stage, consumer and instance where it has one, and a value only by
//! its fingerprint: a value never appears in an error. A refusal's `help:` says what to do next.

use std::time::Duration;

use super::journal::{JournalError, Status};
use super::lock::{Holder, LockError};
use super::span;
use crate::consumer::ConsumerError;
use crate::protocol::State;
use crate::secret::{Fingerprint, GenerateError};
use crate::store::StoreError;

/// Failure of one step, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A store operation.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A consumer rollout.
    #[error("rollout of consumer {consumer} failed: {source}")]
    Rollout {
        /// Consumer.
        consumer: String,
        /// Why.
        #[source]
        source: ConsumerError,
    },
    /// A proof.
    #[error("proof failed: consumer {consumer}, instance {instance}: {detail}")]
    Proof {
        /// Consumer.
        consumer: String,
        /// Instance.
        instance: String,
        /// What was expected and what happened (fingerprints only).
        detail: String,
    },
    /// A validator instance accepted a canary: a value rotor never issued.
    #[error("consumer {consumer}, instance {instance} fails open: {detail}")]
    FailsOpen {
        /// Consumer.
        consumer: String,
        /// Instance.
        instance: String,
        /// What it accepted (named, never shown).
        detail: String,
    },
    /// The store's real state contradicts the journal.
    #[error("{0}")]
    Foreign(String),
    /// Value generation.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Journal I/O.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A stop was asked (SIGINT, SIGTERM) and the step stopped at a safe point: before a
    /// consumer's rollout began, or between two of its instances.
    #[error("stopped by {}", crate::stop::name(*.0))]
    Stopped(i32),
}

impl StepError {
    /// The signal that stopped the step, if a stop (not a failure) ended it.
    pub fn stopped(&self) -> Option<i32> {
        match self {
            StepError::Stopped(s)
            | StepError::Rollout {
                source: ConsumerError::Stopped { signal: s, .. },
                ..
            } => Some(*s),
            _ => None,
        }
    }

    /// The consumer the failure is about.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            StepError::Rollout { consumer, .. }
            | StepError::Proof { consumer, .. }
            | StepError::FailsOpen { consumer, .. } => Some(consumer),
            _ => None,
        }
    }

    /// The instance the failure is about.
    pub fn instance(&self) -> Option<&str> {
        match self {
            StepError::Rollout { source, .. } => source.instance(),
            StepError::Proof { instance, .. } | StepError::FailsOpen { instance, .. } => {
                Some(instance)
            }
            _ => None,
        }
    }
}

/// Why a run did not reach its target.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The lock is held.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A rotation is already in progress.
    #[error(
        "rotation {id} of this secret is in progress ({status:?} at {state})\n  help: continue it with `rotor resume`, or undo it with `rotor rollback`"
    )]
    Active {
        /// Rotation id.
        id: String,
        /// Its state.
        state: State,
        /// Its status.
        status: Status,
    },
    /// An emergency rekey asked the running rotation to hand over, and it did not in time.
    #[error("{} ({}, at stage {}) was asked to hand its rotation over to this emergency rekey but still holds the lock after {}\n  help: if that run is stuck or gone, stop it (its process or pod); a lease it held lapses on its own, then rerun with `--force`", .holder.identity, .holder.command, .holder.stage, span(*.waited))]
    HandoverTimeout {
        /// The run that kept the lock.
        holder: Box<Holder>,
        /// How long this run waited.
        waited: Duration,
    },
    /// `--if-due` with nothing that says when a rotation is due.
    #[error(
        "rotor cannot tell whether a rotation is due: the playbook has no `max_age` and the store keeps no rotation schedule\n  help: add e.g. `max_age: 90d` to the playbook (or set a rotation schedule on the Secret Manager secret)"
    )]
    NoSchedule,
    /// Nothing to resume or roll back.
    #[error("no rotation of this secret is in progress\n  help: start one with `rotor rotate`")]
    NoRotation,
    /// The fleet or store is not at a stable S0.
    #[error(
        "refusing to start: {0}\n  help: inspect with `rotor check`; rotor starts only from a stable, consistent S0"
    )]
    NotStable(String),
    /// A validator instance accepts values nobody issued: a rotation cannot prove anything.
    #[error(
        "refusing to start: {0}\n  help: a validator that accepts a random value proves nothing about the values it holds; fix its check (it must compare the presented value with the values it holds), redeploy it, then rerun; nothing was changed"
    )]
    FailsOpen(String),
    /// Rollback from S5.
    #[error(
        "rotation {0} is finalized: the old value is destroyed and cannot come back\n  help: to move away from the current value, start a new rotation"
    )]
    Irreversible(String),
    /// The playbook's text holds a value the store holds (it would reach a command line, an
    /// environment or a log). Named by fingerprint only.
    #[error(
        "the playbook {0} contains the value of store version {1} ({2}) in its text\n  help: remove it from the playbook (values reach consumers only through their slot names), then rotate: the value has been exposed; nothing was changed"
    )]
    ValueInPlaybook(String, String, Fingerprint),
    /// A step failed and the run rolled back.
    #[error("{stage} failed: {source}\n  rolled back to {state}")]
    RolledBack {
        /// `T2 widen forward`.
        stage: String,
        /// What failed.
        #[source]
        source: Box<StepError>,
        /// Where the rollback ended.
        state: State,
    },
    /// A step failed and the rollback failed too.
    #[error(
        "{stage} failed: {source}\n  then the rollback failed at {rollback_stage}: {rollback}\n  help: the journal records where it stopped; fix the cause, then run `rotor rollback` (or `rotor resume`)"
    )]
    Stuck {
        /// The first failure's stage.
        stage: String,
        /// The first failure.
        source: Box<StepError>,
        /// Where the rollback failed.
        rollback_stage: String,
        /// The rollback failure.
        rollback: Box<StepError>,
    },
    /// A step of a rollback (or resume) failed.
    #[error(
        "{stage} failed: {source}\n  help: the journal records where it stopped; fix the cause, then rerun `rotor {command}`"
    )]
    Step {
        /// Stage.
        stage: String,
        /// The command to rerun.
        command: &'static str,
        /// What failed.
        #[source]
        source: Box<StepError>,
    },
    /// Store access outside a step.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Journal I/O.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Consumer access outside a step.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The cluster connection.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Other I/O.
    #[error("{0}")]
    Io(String),
    /// A stop was asked (SIGINT, SIGTERM): the run stopped at a safe point, every path
    /// serving, the journal saying where.
    #[error(
        "stopped by {} at {state}{}; every instance serves a proven state\n  help: continue with `rotor resume {playbook}`, or undo with `rotor rollback {playbook}`",
        crate::stop::name(*.signal),
        .during.as_ref().map(|s| format!(" during {s} (its finished part kept, the rest not begun)")).unwrap_or_default()
    )]
    Stopped {
        /// The signal's number.
        signal: i32,
        /// The state the journal is at.
        state: State,
        /// The step in progress, if the stop came inside one.
        during: Option<String>,
        /// The playbook, for the commands to run next.
        playbook: String,
    },
}

impl EngineError {
    /// The exit code this failure maps to (see `docs/cli.md`).
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            EngineError::Lock(
                LockError::Held(_) | LockError::HeldUnknown { .. } | LockError::Expired(_),
            )
            | EngineError::HandoverTimeout { .. } => Exit::LockHeld,
            EngineError::Lock(LockError::Lost(_))
            | EngineError::Journal(JournalError::LockLost { .. } | JournalError::Conflict { .. }) => {
                Exit::NeedsOperator
            }
            EngineError::Active { .. }
            | EngineError::NoRotation
            | EngineError::NoSchedule
            | EngineError::Irreversible(_)
            | EngineError::ValueInPlaybook(..) => Exit::Usage,
            // Nothing to rotate yet (`rotor init` first), or `init` on a store that has values.
            EngineError::Store(StoreError::Missing { .. } | StoreError::Refused { .. }) => {
                Exit::Usage
            }
            EngineError::Lock(LockError::Store(e)) if matches!(**e, StoreError::Missing { .. }) => {
                Exit::Usage
            }
            EngineError::NotStable(_) => Exit::Drift,
            EngineError::FailsOpen(_)
            | EngineError::Consumer(ConsumerError::Gate {
                fails_open: true, ..
            }) => Exit::FailsOpen,
            // A consumer's `tls` files are unusable: bad input, nothing was changed.
            EngineError::Consumer(ConsumerError::Tls(_)) => Exit::Usage,
            // A reload consumer whose workload does not mount its Secret: refused before any
            // change.
            EngineError::Consumer(
                ConsumerError::Unsuited { .. } | ConsumerError::EnvFile { .. },
            ) => Exit::Usage,
            // `up` could not prove an instance: nothing was published, an operator must look.
            EngineError::Consumer(ConsumerError::Gate { .. }) => Exit::NeedsOperator,
            EngineError::RolledBack { .. } => Exit::RolledBack,
            EngineError::Stopped { signal, .. } if *signal == nix::libc::SIGTERM => {
                Exit::Terminated
            }
            EngineError::Stopped { .. } => Exit::Interrupted,
            EngineError::Consumer(ConsumerError::Stopped { signal, .. })
                if *signal == nix::libc::SIGTERM =>
            {
                Exit::Terminated
            }
            EngineError::Consumer(ConsumerError::Stopped { .. }) => Exit::Interrupted,
            EngineError::Stuck { .. } | EngineError::Step { .. } => Exit::NeedsOperator,
            _ => Exit::Internal,
        }
    }
}
