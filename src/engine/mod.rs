//! The engine: walks the protocol's states with a journal and a lock.
//!
//! Owns: executing T1–T5 and their inverses (one `match` each, in
//! [`Run::forward`](step::Run::forward) and [`Run::inverse`](step::Run::inverse)), proofs,
//! automatic rollback, resume after a crash, and the run report.
//! Reads only rotor's own types: a [`Playbook`], a [`Store`], [`Consumer`]s, an [`EventSink`].
//! Never sees clap.
//!
//! # Where things live
//! - `mod.rs` (here): [`Engine`] and its backends, [`RunOptions`], opening and accessors.
//! - `commands.rs`: `init`, `up`, `down`, `due`, `rotate` and its preflight, screening the
//!   playbook for values, the audit log (its file, rotated by size, in `audit.rs`).
//! - `prune.rs`: cutting finished journals and stopped instances' logs back to the playbook's
//!   `keep` at the end of every run.
//! - `rekey.rs`: the emergency `rekey`, and the handover of a running rotation to it.
//! - `recovery.rs`: `resume`, `rollback`, reconciling after a crash, automatic rollback.
//! - `step.rs`: one run and its step loop (waits, confirmations, journal entries per step).
//! - `transition.rs`: each transition forward and inverse, the hard cut's wave, the rollouts.
//! - `proof.rs`: the proofs; `error.rs`: [`StepError`], [`EngineError`] and their exit codes;
//!   `report.rs`: [`RunReport`] and the summary after a command.
//! - `journal`, `lock`, `gate`, `hardcut`, `check`, `plan`, `policy`, `failpoint`: see their own
//!   headers.
//!
//! # Guarantees
//! - Every step is a convergence: store writes and consumer rollouts set the desired state and
//!   skip what is already there, so re-running a step after a crash equals running it once.
//! - The journal is written (atomically) before and after every step and never holds a value.
//! - A failed proof or rollout runs the inverse of the step in progress, then the inverses back
//!   to the rollback target, and reports the stage, consumer and instance that failed.
//!
//! # Assumptions
//! - Nobody else writes the store's slots during a rotation; a foreign change is detected at
//!   resume (the store's slots hold neither A nor B) and refused.

pub mod check;
pub mod failpoint;
pub mod gate;
pub mod hardcut;
pub mod journal;
pub mod lock;
pub mod plan;
pub mod policy;
mod proof;
mod prune;

mod audit;
mod commands;
mod error;
mod recovery;
mod rekey;
mod report;
mod step;
mod transition;

use std::sync::Arc;
use std::time::Duration;

use crate::consumer::Consumer;
use crate::events::EventSink;
use crate::playbook::Playbook;
use crate::protocol::State;
use crate::store::Store;
use journal::{Journal, JournalFile, JournalStore, Mode};
use lock::{Holder, RotationLock};

pub use commands::Due;
pub use error::{EngineError, StepError};
pub use report::{RunOutcome, RunReport, StageTiming, span};

/// Asks the operator before irreversible or narrowing steps.
pub trait Confirm: Send + Sync {
    /// True to go on.
    fn confirm(&self, question: &str) -> bool;
}

/// Never asks; always declines (non-interactive runs without `--yes`).
pub struct Decline;

impl Confirm for Decline {
    fn confirm(&self, _question: &str) -> bool {
        false
    }
}

/// Options of one run.
#[derive(Clone)]
pub struct RunOptions {
    /// operator / scheduled / emergency.
    pub mode: Mode,
    /// Skip confirmations before T4 and T5.
    pub yes: bool,
    /// Stop at this state (default S5).
    pub until: Option<State>,
    /// Where automatic rollback (and `rollback`) goes (default S0).
    pub rollback_to: State,
    /// Asks before T4/T5 when not `yes`.
    pub confirm: Arc<dyn Confirm>,
    /// Take over a lock whose holder stopped renewing it (an expired Lease); never a live one.
    pub force: bool,
    /// Why (an emergency's reason and incident), recorded in the journal and the audit log.
    pub reason: String,
    /// An emergency rekey that finds an ordinary rotation running asks it to hand over at its
    /// next stable state and waits this long for it to do so.
    pub handover_timeout: Duration,
    /// Emergency only: one wave (every consumer at once onto the new value alone), accepting
    /// the failed requests it causes, which rotor samples and reports.
    pub hard_cut: bool,
    /// Benchmarks only (no command sets it): roll without per-instance gates, publishing an
    /// instance after its health check alone as rotor did before gates, to measure what the
    /// gates prevent. The proofs after each wave still run.
    pub ungated: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            mode: Mode::Operator,
            reason: String::new(),
            yes: false,
            until: None,
            rollback_to: State::S0,
            confirm: Arc::new(Decline),
            force: false,
            handover_timeout: Duration::from_secs(600),
            hard_cut: false,
            ungated: false,
        }
    }
}

/// The engine for one playbook.
pub struct Engine {
    pb: Playbook,
    store: Box<dyn Store>,
    consumers: Vec<Arc<dyn Consumer>>,
    events: Arc<dyn EventSink>,
    lock: Box<dyn RotationLock>,
    journals: Box<dyn JournalStore>,
}

impl Engine {
    /// An engine over explicit backends (tests and future backends plug in here).
    pub fn new(
        pb: Playbook,
        store: Box<dyn Store>,
        consumers: Vec<Arc<dyn Consumer>>,
        events: Arc<dyn EventSink>,
        lock: Box<dyn RotationLock>,
    ) -> Engine {
        let journals = Box::new(JournalFile::new(&pb.state_dir));
        Engine {
            pb,
            store,
            consumers,
            events,
            lock,
            journals,
        }
    }

    /// Keeps journals in `journals` instead of the state directory's `journal.json`.
    pub fn with_journal(mut self, journals: Box<dyn JournalStore>) -> Engine {
        self.journals = journals;
        self
    }

    /// The engine with the backends the playbook names, connecting to its cluster if it uses
    /// one. Everything it reports goes to `events` and nowhere else: a caller that wants the
    /// playbook's notifications (webhook, metrics file) wraps its sink in
    /// `notify::around(&pb, sink)` first, as the CLI does.
    pub async fn open(pb: Playbook, events: Arc<dyn EventSink>) -> Result<Engine, EngineError> {
        let cluster = match &pb.cluster {
            Some(spec) => Some(crate::cluster::Cluster::connect(spec).await?),
            None => None,
        };
        Engine::open_with(pb, events, cluster.as_ref())
    }

    /// The engine with the backends the playbook names, on an already connected cluster.
    pub fn open_with(
        pb: Playbook,
        events: Arc<dyn EventSink>,
        cluster: Option<&crate::cluster::Cluster>,
    ) -> Result<Engine, EngineError> {
        let store = crate::store::open(&pb, cluster)?;
        let consumers = crate::consumer::open_all(&pb, cluster)?;
        let lock = lock::open(&pb, cluster, Some(events.clone()))?;
        let journals = journal::open(&pb, cluster)?;
        Ok(Engine::new(pb, store, consumers, events, lock).with_journal(journals))
    }

    /// The playbook.
    pub fn playbook(&self) -> &Playbook {
        &self.pb
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The consumers, in playbook order.
    pub fn consumers(&self) -> &[Arc<dyn Consumer>] {
        &self.consumers
    }

    /// The current journal, if any.
    pub async fn journal(&self) -> Result<Option<Journal>, EngineError> {
        Ok(self.journals.load().await?)
    }

    /// Who holds the lock now.
    pub async fn lock_holder(&self) -> Result<Option<Holder>, EngineError> {
        Ok(self.lock.holder().await?)
    }

    /// Where the current journal lives (a path, or a ConfigMap).
    pub fn journal_location(&self) -> String {
        self.journals.describe()
    }

    /// Where the lock lives (a path, or a Lease).
    pub fn lock_location(&self) -> String {
        self.lock.describe()
    }
}
