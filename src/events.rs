//! Events: everything the engine and the backends report while they work.
//!
//! Owns: the [`Event`] vocabulary (serialized as the `--output json` stream and the audit log)
//! and the [`EventSink`] trait the engine writes to. Rendering lives in `crate::output`.
//! Must never: carry a value; events name values by fingerprint only.

use serde::Serialize;

use crate::protocol::{Direction, State, Transition};
use crate::secret::Fingerprint;

/// One thing that happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A rotation (or resume/rollback) started.
    RunStarted {
        /// Rotation id.
        rotation: String,
        /// Secret name.
        secret: String,
        /// Environment.
        environment: String,
        /// rotate / resume / rollback.
        command: String,
        /// State at start.
        state: State,
        /// State the run aims for.
        target: State,
    },
    /// The journal said something the real world disagreed with, or a dirty step was found.
    Reconciled {
        /// What was found and what rotor decided.
        detail: String,
    },
    /// A transition (or its inverse) began.
    StepStarted {
        /// Which.
        transition: Transition,
        /// Which way.
        direction: Direction,
        /// Consumers it rolls, in order.
        rolls: Vec<String>,
    },
    /// A store write.
    StoreChanged {
        /// What changed, by version id and fingerprint.
        detail: String,
    },
    /// A consumer rollout began.
    RolloutStarted {
        /// Consumer.
        consumer: String,
        /// Instances to converge.
        instances: usize,
    },
    /// One instance replaced (or reloaded).
    InstanceReplaced {
        /// Consumer.
        consumer: String,
        /// The instance stopped (if any).
        old: Option<String>,
        /// The instance started.
        new: String,
        /// Primary it holds now.
        primary: Fingerprint,
        /// Secondary it holds now.
        secondary: Option<Fingerprint>,
    },
    /// One running instance reloaded in place (`pickup: reload`): its files rewritten, its
    /// reload signal sent, and proven.
    InstanceReloaded {
        /// Consumer.
        consumer: String,
        /// The instance (same process, same id).
        instance: String,
        /// The signal it was sent (`SIGHUP`).
        signal: String,
        /// Primary it holds now.
        primary: Fingerprint,
        /// Secondary it holds now.
        secondary: Option<Fingerprint>,
    },
    /// One instance met its gate: proven (or not) for the state its rollout enters, at its own
    /// address, before it took traffic (or, for a running instance, before it was kept).
    InstanceGated {
        /// Consumer.
        consumer: String,
        /// Instance.
        instance: String,
        /// True when it passed.
        passed: bool,
        /// What was proven, or what failed (fingerprints only).
        detail: String,
        /// How long the proof took, in milliseconds.
        millis: f64,
    },
    /// A consumer rollout finished.
    RolloutFinished {
        /// Consumer.
        consumer: String,
        /// Instances replaced.
        restarts: usize,
    },
    /// A proof passed.
    ProofPassed {
        /// Which transition's proof.
        transition: Transition,
        /// Which way.
        direction: Direction,
        /// What was proven.
        detail: String,
    },
    /// Waiting (soak, grace).
    Waiting {
        /// What for.
        reason: String,
        /// Seconds.
        seconds: f64,
    },
    /// A transition (or its inverse) ended.
    StepFinished {
        /// Which.
        transition: Transition,
        /// Which way.
        direction: Direction,
        /// ok / failed.
        outcome: String,
        /// Seconds it took.
        seconds: f64,
        /// The state now.
        state: State,
    },
    /// A step failed; automatic rollback follows.
    StepFailed {
        /// Which.
        transition: Transition,
        /// Which way.
        direction: Direction,
        /// The error (fingerprints only).
        error: String,
    },
    /// The run stopped.
    RunFinished {
        /// ok / rolled_back / failed / paused.
        outcome: String,
        /// The state now.
        state: State,
        /// Why it stopped where it stopped.
        detail: String,
    },
    /// A command that runs a rotation (rotate, rekey, resume, rollback) returned, with the
    /// store's state after it. Emitted only when a sink asks for it
    /// ([`EventSink::wants_summary`]): reading the store costs a call.
    Summary {
        /// rotate / rekey / resume / rollback.
        command: String,
        /// completed / paused / declined / rolled_back / handed_over, or `error`.
        outcome: String,
        /// The exit code the command ends with.
        exit_code: u8,
        /// Wall time of the run in seconds, when it ran.
        wall_seconds: Option<f64>,
        /// Age of the store's primary value in seconds, when the store could be read.
        primary_age_seconds: Option<f64>,
        /// True when a rotation is still in progress (its journal is active).
        in_progress: bool,
    },
    /// Free-form progress for humans.
    Note {
        /// Text.
        message: String,
    },
}

/// Where events go.
pub trait EventSink: Send + Sync {
    /// Records one event.
    fn emit(&self, event: &Event);

    /// True when this sink needs an [`Event::Summary`] at the end of each rotation command.
    fn wants_summary(&self) -> bool {
        false
    }

    /// Waits (boundedly) for whatever this sink still delivers in the background; the engine
    /// awaits it when a rotation command ends.
    fn flush(&self) -> Flush<'_> {
        Box::pin(async {})
    }
}

/// What [`EventSink::flush`] returns.
pub type Flush<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Discards events.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: &Event) {}
}

/// Sends every event to several sinks.
pub struct Tee(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, event: &Event) {
        for s in &self.0 {
            s.emit(event);
        }
    }

    fn wants_summary(&self) -> bool {
        self.0.iter().any(|s| s.wants_summary())
    }

    fn flush(&self) -> Flush<'_> {
        Box::pin(async {
            for s in &self.0 {
                s.flush().await;
            }
        })
    }
}
