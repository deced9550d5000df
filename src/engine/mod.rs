//! The engine: walks the protocol's states with a journal and a lock.
//!
//! Owns: executing T1–T5 and their inverses (one `match` each, in [`Run::forward`] and
//! [`Run::inverse`]), proofs, automatic rollback, resume after a crash, and the run report.
//! Reads only rotor's own types: a [`Playbook`], a [`Store`], [`Consumer`]s, an [`EventSink`].
//! Never sees clap.
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

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::consumer::{Consumer, ConsumerError, RolloutReport, Slots};
use crate::events::{Event, EventSink};
use crate::playbook::Playbook;
use crate::protocol::{self, Direction, State, Transition, Which};
use crate::secret::{Fingerprint, GenerateError, SecretValue};
use crate::store::{Store, StoreError, StoreSnapshot, VersionState};
use journal::{
    Journal, JournalError, JournalFile, JournalStore, Mode, Outcome, Status, VersionRef,
};
use lock::{Holder, LockError, LockGuard, RotationLock};

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
}

impl StepError {
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
            // `up` could not prove an instance: nothing was published, an operator must look.
            EngineError::Consumer(ConsumerError::Gate { .. }) => Exit::NeedsOperator,
            EngineError::RolledBack { .. } => Exit::RolledBack,
            EngineError::Stuck { .. } | EngineError::Step { .. } => Exit::NeedsOperator,
            _ => Exit::Internal,
        }
    }
}

/// `since + d`, checked: a wait that cannot be computed is an error, never a shorter wait.
fn later(
    since: DateTime<Utc>,
    d: std::time::Duration,
    field: &str,
) -> Result<DateTime<Utc>, EngineError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| since.checked_add_signed(d))
        .ok_or_else(|| {
            EngineError::Io(format!(
                "{field} ({}) ends beyond the calendar rotor can compute; the rotation stays where it is\n  help: set {field} to at most 3650d and run `rotor resume`",
                span(d)
            ))
        })
}

/// A duration as people write ages: `90d`, `12d 3h`, `5h 2m`, `40s`.
pub fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What a scheduled run (`rotor rotate --if-due`) finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "due", rename_all = "snake_case")]
pub enum Due {
    /// A rotation is in progress: it is resumed first.
    InProgress {
        /// Its id.
        rotation: String,
        /// Where it stands.
        state: State,
    },
    /// The primary must be rotated now.
    Yes {
        /// Why (age against `max_age`, or Secret Manager's schedule).
        reason: String,
    },
    /// Nothing to do yet.
    No {
        /// The primary's age and the limits that apply.
        reason: String,
        /// When it becomes due.
        next: Option<DateTime<Utc>>,
    },
}

/// How a run ended (when it did not fail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Reached S5.
    Completed,
    /// Stopped at a stable state on purpose.
    Paused,
    /// The operator declined a confirmation.
    Declined,
    /// Rolled back to the requested state on request.
    RolledBack,
    /// An emergency rekey asked for the rotation; this run stopped at a stable state and gave
    /// it the lock.
    HandedOver,
}

impl RunOutcome {
    /// The exit code a command that ended this way returns.
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            RunOutcome::Declined => crate::exit::Exit::Declined,
            RunOutcome::HandedOver => crate::exit::Exit::HandedOver,
            _ => crate::exit::Exit::Ok,
        }
    }
}

/// Duration of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    /// `T2`.
    pub transition: Transition,
    /// forward / inverse.
    pub direction: Direction,
    /// ok / failed.
    pub outcome: String,
    /// Seconds.
    pub seconds: f64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Rotation id.
    pub rotation: String,
    /// State at the end.
    pub state: State,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Why it stopped where it stopped.
    pub detail: String,
    /// Steps in order.
    pub stages: Vec<StageTiming>,
    /// Instance restarts per consumer.
    pub restarts: BTreeMap<String, usize>,
    /// Seconds spent waiting on rollouts (readiness, drain), soak and grace.
    pub waited_seconds: f64,
    /// Wall time of the run in seconds.
    pub wall_seconds: f64,
    /// A hard cut's sampled round trips during its one wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_cut: Option<hardcut::HardCutReport>,
    /// Start of this run → the old value rejected by every validator instance (T4's proof),
    /// when this run got there.
    pub time_to_revoke_seconds: Option<f64>,
    /// Rollout waves this run made (forward T2, T3, T4).
    pub waves: usize,
}

/// The engine for one playbook.
pub struct Engine {
    pb: Playbook,
    store: Box<dyn Store>,
    consumers: Vec<Arc<dyn Consumer>>,
    events: Arc<dyn EventSink>,
    lock: Box<dyn RotationLock>,
    journals: Box<dyn JournalStore>,
    /// For the gates' fingerprints reports (one connection per request: instances come and go).
    http: reqwest::Client,
}

/// Appends every event to `<state_dir>/audit.log` as a JSON line.
struct Audit {
    file: Mutex<std::fs::File>,
    /// `user@host pid N`, as the lock names a holder.
    who: String,
    rotation: Mutex<Option<String>>,
    /// The rotation's mode and reason, once known.
    context: Mutex<Option<(Mode, String)>>,
}

impl EventSink for Audit {
    fn emit(&self, event: &Event) {
        let context = self.context.lock().expect("audit mutex").clone();
        let line = serde_json::json!({
            "at": Utc::now().to_rfc3339(),
            "who": self.who,
            "rotation": *self.rotation.lock().expect("audit mutex"),
            "mode": context.as_ref().map(|(m, _)| *m),
            "reason": context.as_ref().map(|(_, r)| r.as_str()).filter(|r| !r.is_empty()),
            "record": event,
        });
        let line = crate::redact::redact(&line.to_string()).into_owned();
        let mut f = self.file.lock().expect("audit mutex");
        let _ = writeln!(f, "{line}");
    }
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
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        }
    }

    /// After a rotation command: an [`Event::Summary`] with the store's state for the sinks
    /// that want one (reading the store costs a call, so only then), then every sink flushed.
    /// Never fails the run.
    async fn finished(&self, command: &str, result: &Result<RunReport, EngineError>) {
        if self.events.wants_summary() {
            self.summarize(command, result).await;
        }
        self.events.flush().await;
    }

    async fn summarize(&self, command: &str, result: &Result<RunReport, EngineError>) {
        let primary_age_seconds = match self.store.snapshot().await {
            Ok(snap) => snap
                .primary_version()
                .map(|v| (Utc::now() - v.created_at).num_milliseconds() as f64 / 1000.0),
            Err(_) => None,
        };
        let in_progress = matches!(self.journals.load().await, Ok(Some(j)) if j.status.is_active());
        let (outcome, exit_code, wall_seconds) = match result {
            Ok(r) => {
                let outcome = serde_json::to_value(&r.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (outcome, r.outcome.exit() as u8, Some(r.wall_seconds))
            }
            Err(e) => ("error".to_string(), e.exit() as u8, None),
        };
        self.events.emit(&Event::Summary {
            command: command.to_string(),
            outcome,
            exit_code,
            wall_seconds,
            primary_age_seconds,
            in_progress,
        });
    }

    /// Keeps journals in `journals` instead of the state directory's `journal.json`.
    pub fn with_journal(mut self, journals: Box<dyn JournalStore>) -> Engine {
        self.journals = journals;
        self
    }

    /// The engine with the backends the playbook names, connecting to its cluster if it uses
    /// one.
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

    /// Gives the lock back at the end of a run; a failure only means the lock lapses later.
    async fn release(&self, guard: Box<dyn LockGuard>) {
        if let Err(e) = guard.release().await {
            self.events.emit(&Event::Note {
                message: format!(
                    "could not release the lock ({e}); it lapses when its lease expires"
                ),
            });
        }
    }

    fn audit(&self) -> Result<Arc<Audit>, EngineError> {
        crate::state_dir::prepare(&self.pb.state_dir).map_err(EngineError::Io)?;
        let path = self.pb.state_dir.join("audit.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        Ok(Arc::new(Audit {
            file: Mutex::new(file),
            who: Holder::me("-").identity,
            rotation: Mutex::new(None),
            context: Mutex::new(None),
        }))
    }

    fn sink(&self, audit: &Arc<Audit>) -> Arc<dyn EventSink> {
        Arc::new(crate::events::Tee(vec![self.events.clone(), audit.clone()]))
    }

    /// Initializes an empty store with a first generated value (S0). Refuses if it exists.
    pub async fn init(&self) -> Result<Fingerprint, EngineError> {
        // A store that exists is refused before anything is written (the store says why).
        if self.store.exists().await? {
            let snap = self.store.snapshot().await?;
            return Err(EngineError::Store(StoreError::Refused {
                store: self.store.describe(),
                detail: format!(
                    "it already exists ({} versions); `rotor init` creates a store, it never overwrites one",
                    snap.versions.len()
                ),
            }));
        }
        let v = SecretValue::generate(self.pb.generate.alphabet, self.pb.generate.length)
            .map_err(|e| EngineError::Io(e.to_string()))?;
        crate::redact::remember(&self.pb.secret, &v);
        let info = self.store.init(&v).await?;
        Ok(info.fingerprint)
    }

    /// Reads the store's slot values (remembering them for redaction) and refuses a playbook
    /// whose text contains one: every string of the playbook as loaded, and its file.
    pub async fn screen_playbook(&self) -> Result<(), EngineError> {
        for warning in policy::secret_like_literals(&self.pb) {
            self.events.emit(&Event::Note {
                message: format!("warning: {warning}"),
            });
        }
        if !self.store.exists().await? {
            return Ok(());
        }
        let snap = self.store.snapshot().await?;
        let text = {
            let mut t = format!("{:?}", self.pb);
            if let Ok(file) = std::fs::read_to_string(&self.pb.source) {
                t.push_str(&file);
            }
            t
        };
        for id in [&snap.primary, &snap.secondary].into_iter().flatten() {
            let Some(v) = snap.version(id) else { continue };
            if v.state != VersionState::Enabled {
                continue;
            }
            let value = self.store.read_value(id).await?;
            crate::redact::remember(&self.pb.secret, &value);
            if value.expose().len() >= crate::redact::MIN_LEN && text.contains(value.expose()) {
                return Err(EngineError::ValueInPlaybook(
                    self.pb.source.clone(),
                    id.clone(),
                    v.fingerprint.clone(),
                ));
            }
        }
        Ok(())
    }

    /// The gate of consumer `c` (see [`gate::InstanceGate`]).
    pub(crate) fn gate(
        &self,
        c: &Arc<dyn Consumer>,
        accept: Vec<gate::Labeled>,
        reject: Vec<gate::Labeled>,
        sends: Option<gate::Labeled>,
        round_trips: bool,
    ) -> gate::InstanceGate<'_> {
        gate::InstanceGate {
            spec: self
                .pb
                .consumer(c.name())
                .expect("consumers are opened from the playbook"),
            accept,
            reject,
            sends: sends.as_ref().map(|v| v.value.fingerprint(&self.pb.secret)),
            sends_value: sends,
            specs: &self.pb.consumers,
            round_trips,
            consumers: &self.consumers,
            generate: &self.pb.generate,
            timeout: self.pb.timings.probe_timeout,
            http: self.http.clone(),
        }
    }

    /// Starts every consumer holding the store's current slots (fleet bring-up).
    pub async fn up(&self) -> Result<(), EngineError> {
        self.screen_playbook().await?;
        let snap = self.store.snapshot().await?;
        let state = match self.journals.load().await? {
            Some(j) if j.status.is_active() => j.state,
            _ => State::S0,
        };
        let (a, b) = self.values_from_snapshot(&snap, state).await?;
        let pick = |w: Which| -> Option<(String, SecretValue)> {
            match w {
                Which::A => a.clone(),
                Which::B => b.clone(),
            }
        };
        // Validators first, then `both`, then signers: a signer's gate runs its round trips to
        // the instances of its validators, so they serve before it starts.
        let rank = |r: protocol::Role| match r {
            protocol::Role::Validator => 0,
            protocol::Role::Both => 1,
            protocol::Role::Signer => 2,
        };
        let mut jobs = [Vec::new(), Vec::new(), Vec::new()];
        for c in &self.consumers {
            let plan = protocol::consumer_slots(state, c.role());
            let (primary_version, primary) = pick(plan.primary)
                .ok_or_else(|| EngineError::NotStable("the store has no primary value".into()))?;
            let secondary = plan.secondary.and_then(pick);
            let slots = Slots {
                primary,
                primary_version: Some(primary_version),
                secondary_version: secondary.as_ref().map(|(id, _)| id.clone()),
                secondary: secondary.map(|(_, v)| v),
            };
            let label = |w: Which, v: &SecretValue| gate::Labeled {
                label: format!("{w:?} ({})", v.fingerprint(&self.pb.secret)),
                value: v.clone(),
            };
            let accept = protocol::accepts(state, c.role())
                .into_iter()
                .filter_map(|w| pick(w).map(|(_, v)| label(w, &v)))
                .collect();
            let sends =
                protocol::sends(state, c.role()).and_then(|w| pick(w).map(|(_, v)| label(w, &v)));
            let gate = self.gate(c, accept, Vec::new(), sends, true);
            let events = self.events.clone();
            jobs[rank(c.role())].push(async move { c.start(&slots, &gate, events.as_ref()).await });
        }
        // The same budget as a wave: at most `concurrency` consumers start at once.
        use futures_util::StreamExt;
        for group in jobs {
            let results: Vec<Result<(), ConsumerError>> = futures_util::stream::iter(group)
                .buffered(self.pb.concurrency.max(1))
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
        Ok(())
    }

    /// Stops every consumer instance rotor started.
    pub async fn down(&self) -> Result<usize, EngineError> {
        let mut n = 0;
        for c in &self.consumers {
            n += c.stop().await?;
        }
        Ok(n)
    }

    /// A and B for a fleet at `state`, read from the store (no journal: A = primary).
    async fn values_from_snapshot(
        &self,
        snap: &StoreSnapshot,
        state: State,
    ) -> Result<(Option<(String, SecretValue)>, Option<(String, SecretValue)>), EngineError> {
        let read = |id: Option<String>| async {
            match id {
                Some(id) => self.store.read_value(&id).await.map(|v| {
                    crate::redact::remember(&self.pb.secret, &v);
                    Some((id, v))
                }),
                None => Ok(None),
            }
        };
        let (a_id, b_id) = match state {
            State::S0 => (snap.primary.clone(), None),
            State::S1 | State::S2 => (snap.primary.clone(), snap.secondary.clone()),
            State::S3 => (snap.secondary.clone(), snap.primary.clone()),
            State::S4 | State::S5 => (None, snap.primary.clone()),
        };
        Ok((read(a_id).await?, read(b_id).await?))
    }

    /// Whether a scheduled run has something to do at `now`: a rotation in progress (resume it
    /// first), a primary older than `max_age` or past Secret Manager's `next_rotation_time`, or
    /// nothing yet (with when it will be due).
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Due, EngineError> {
        if let Some(j) = self.journals.load().await?
            && j.status.is_active()
        {
            return Ok(Due::InProgress {
                rotation: j.id.clone(),
                state: j.state,
            });
        }
        let schedule = self.store.next_rotation().await?;
        if self.pb.max_age.is_none() && schedule.is_none() {
            return Err(EngineError::NoSchedule);
        }
        let snap = self.store.snapshot().await?;
        let primary = snap
            .primary_version()
            .ok_or_else(|| EngineError::NotStable("the store has no primary value".into()))?;
        let age = (now - primary.created_at).max(chrono::Duration::zero());
        let age_text = span(std::time::Duration::from_secs(
            u64::try_from(age.num_seconds()).unwrap_or(0),
        ));
        let mut next: Option<DateTime<Utc>> = None;
        let mut why = format!(
            "primary {} (version {}) is {age_text} old",
            primary.fingerprint, primary.id
        );
        if let Some(max) = self.pb.max_age {
            // A max_age too long to add is never reached: not due.
            let at = chrono::Duration::from_std(max)
                .ok()
                .and_then(|m| primary.created_at.checked_add_signed(m));
            let max_text = span(max);
            if at.is_some_and(|at| now >= at) {
                return Ok(Due::Yes {
                    reason: format!("{why}, older than max_age {max_text}"),
                });
            }
            why.push_str(&format!(", max_age {max_text}"));
            next = at;
        }
        if let Some(at) = schedule {
            let at_text = at.format("%Y-%m-%d %H:%M:%S UTC");
            if now >= at {
                return Ok(Due::Yes {
                    reason: format!("Secret Manager's next_rotation_time {at_text} has passed"),
                });
            }
            why.push_str(&format!(
                ", Secret Manager schedules the next rotation at {at_text}"
            ));
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(Due::No { reason: why, next })
    }

    /// Starts a rotation from S0.
    pub async fn rotate(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen_playbook().await?;
        let guard = self.lock.acquire(Holder::me("rotate"), opts.force).await?;
        let result = self.rotate_locked(guard.as_ref(), opts).await;
        self.release(guard).await;
        self.finished("rotate", &result).await;
        result
    }

    async fn rotate_locked(
        &self,
        guard: &dyn LockGuard,
        opts: &RunOptions,
    ) -> Result<RunReport, EngineError> {
        if let Some(j) = self.journals.load().await? {
            if j.status.is_active() {
                return Err(EngineError::Active {
                    id: j.id,
                    state: j.state,
                    status: j.status,
                });
            }
            self.journals.archive(&j).await?;
        }
        let snap = self.store.snapshot().await?;
        let primary = snap
            .primary_version()
            .ok_or_else(|| EngineError::NotStable("the store has no primary value".into()))?
            .clone();
        if let Some(sec) = snap.secondary_version() {
            return Err(EngineError::NotStable(format!(
                "the store's secondary slot holds version {} ({}) but no rotation is in progress",
                sec.id, sec.fingerprint
            )));
        }
        let id = format!(
            "r-{}-{}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            &SecretValue::generate(crate::secret::Alphabet::Hex, 6)
                .map_err(|e| EngineError::Io(e.to_string()))?
                .expose()
                .to_string()
        );
        let journal = Journal::new(
            id,
            &self.pb.secret,
            self.pb.environment.as_str(),
            opts.mode,
            &self.pb.source,
            &self.pb.checksum,
            VersionRef {
                version: Some(primary.id.clone()),
                fingerprint: primary.fingerprint.clone(),
            },
            opts.until.unwrap_or(State::S5),
        );
        let mut journal = journal;
        journal.reason = opts.reason.clone();
        journal.hard_cut = opts.hard_cut;
        let audit = self.audit()?;
        let mut run = Run::new(self, journal, guard, audit, opts.clone());
        // Prove S0 before touching anything: every validator accepts A, every signer sends A.
        run.preflight().await?;
        run.save().await?;
        run.emit_start("rotate");
        run.forward_to(opts.until.unwrap_or(State::S5)).await
    }

    /// Emergency rekey after a leak: grace 0, T5 right after T4's negative proof, no questions.
    /// A rotation in progress is taken over from where it stands and driven forward to S5
    /// (a rollback in progress is finished first, then a new rotation starts).
    pub async fn rekey(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen_playbook().await?;
        let mut opts = opts.clone();
        // The reason goes into the journal, the audit log and a handover request: a value
        // quoted in it (a leak report often quotes what leaked) becomes its fingerprint, now
        // that screening has read the store's values.
        opts.reason = crate::redact::redact(&opts.reason).into_owned();
        opts.mode = Mode::Emergency;
        opts.until = Some(State::S5);
        let guard = self.acquire_for_rekey(&opts).await?;
        let result = async {
            match self.journals.load().await? {
                Some(j) if j.status.is_active() => {
                    if j.rolling_back() {
                        let back = self.resume_locked(guard.as_ref(), &opts).await?;
                        if back.state != State::S0 {
                            return Ok(back);
                        }
                        return self.rotate_locked(guard.as_ref(), &opts).await;
                    }
                    self.takeover_locked(guard.as_ref(), &opts).await
                }
                _ => self.rotate_locked(guard.as_ref(), &opts).await,
            }
        }
        .await;
        self.release(guard).await;
        self.finished("rekey", &result).await;
        result
    }

    /// The lock for a rekey. An ordinary run holding it is asked to hand over at its next
    /// stable state (it stops, releases, and this run takes the rotation over from its
    /// journal); another rekey holding it, or a run that does not hand over within
    /// `opts.handover_timeout`, is an error.
    async fn acquire_for_rekey(
        &self,
        opts: &RunOptions,
    ) -> Result<Box<dyn LockGuard>, EngineError> {
        let me = Holder::me("rekey");
        let started = Instant::now();
        // Checked: a timeout too long to add waits as long as the calendar allows.
        let until = chrono::Duration::from_std(opts.handover_timeout)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut asked: Option<lock::Handover> = None;
        let result = loop {
            let err = match self.lock.acquire(me.clone(), opts.force).await {
                Ok(g) => break Ok(g),
                Err(e) => e,
            };
            match &err {
                LockError::Held(h) if h.command != "rekey" => {
                    // Ask (again) whenever the holder has no request standing: a new holder, or
                    // one whose request was withdrawn or lapsed (another rekey that gave up).
                    let standing = h.handover.as_ref().is_some_and(lock::Handover::stands);
                    let addressed = asked
                        .as_ref()
                        .is_some_and(|r| r.to == h.identity && r.to_since == h.since);
                    if !(addressed && standing) {
                        let req = lock::Handover {
                            by: me.identity.clone(),
                            reason: opts.reason.clone(),
                            at: Utc::now(),
                            to: h.identity.clone(),
                            to_since: h.since,
                            until,
                        };
                        match self.lock.request_handover(h, &req).await {
                            Ok(true) => {
                                self.events.emit(&Event::Waiting {
                                    reason: format!(
                                        "handover: asked {} ({}, at stage {}) to stop at its next stable state and hand the rotation over",
                                        h.identity, h.command, h.stage
                                    ),
                                    seconds: opts
                                        .handover_timeout
                                        .saturating_sub(started.elapsed())
                                        .as_secs_f64(),
                                });
                                asked = Some(req);
                            }
                            Ok(false) => {}
                            Err(e) => break Err(e.into()),
                        }
                    }
                }
                // Between two holders the file lock is briefly held with no holder file.
                LockError::HeldUnknown { .. } => {}
                _ => break Err(err.into()),
            }
            let waited = started.elapsed();
            if waited >= opts.handover_timeout {
                if let Some(req) = &asked {
                    // The holder may have taken the request up at the last moment: take it
                    // back, then look once more.
                    let _ = self.lock.withdraw_handover(req).await;
                    if let Ok(g) = self.lock.acquire(me.clone(), opts.force).await {
                        break Ok(g);
                    }
                }
                break Err(match err {
                    LockError::Held(h) => EngineError::HandoverTimeout { holder: h, waited },
                    other => other.into(),
                });
            }
            // The holder stops between steps; look again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if result.is_err()
            && let Some(req) = &asked
        {
            // Take the request back, so the run that holds the lock goes on undisturbed.
            let _ = self.lock.withdraw_handover(req).await;
        }
        result
    }

    /// The rotation in progress, continued forward in emergency mode.
    async fn takeover_locked(
        &self,
        guard: &dyn LockGuard,
        opts: &RunOptions,
    ) -> Result<RunReport, EngineError> {
        let mut journal = self.active_journal().await?;
        journal.mode = Mode::Emergency;
        journal.reason = opts.reason.clone();
        journal.target = State::S5;
        let continuing_cut = journal.hard_cut && !opts.hard_cut;
        journal.hard_cut |= opts.hard_cut;
        let audit = self.audit()?;
        let mut run = Run::new(self, journal, guard, audit, opts.clone());
        run.emit_start("rekey");
        if continuing_cut {
            run.note_continuing_cut();
        }
        run.reconcile().await?;
        run.save().await?;
        run.forward_to(State::S5).await
    }

    /// Continues the rotation in progress from its journal.
    pub async fn resume(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen_playbook().await?;
        // Nothing to resume is refused before the lock is taken (a refusal writes nothing).
        self.active_journal().await?;
        let guard = self.lock.acquire(Holder::me("resume"), opts.force).await?;
        let result = self.resume_locked(guard.as_ref(), opts).await;
        self.release(guard).await;
        self.finished("resume", &result).await;
        result
    }

    async fn resume_locked(
        &self,
        guard: &dyn LockGuard,
        opts: &RunOptions,
    ) -> Result<RunReport, EngineError> {
        let journal = self.active_journal().await?;
        let audit = self.audit()?;
        let rolling_back = journal.rolling_back();
        let target = journal.target;
        // An emergency stays an emergency whoever resumes it: no grace, no retention, no
        // questions.
        let mut opts = opts.clone();
        if journal.mode == Mode::Emergency {
            opts.mode = Mode::Emergency;
        }
        let hard_cut = journal.hard_cut;
        let mut run = Run::new(self, journal, guard, audit, opts.clone());
        run.repair = !hard_cut;
        run.emit_start("resume");
        if hard_cut && !rolling_back {
            run.note_continuing_cut();
        }
        run.reconcile().await?;
        if rolling_back {
            run.rollback_to(target, "resume").await
        } else {
            let until = opts.until.unwrap_or(State::S5);
            run.journal.target = until;
            run.forward_to(until).await
        }
    }

    /// Walks inverses back to `opts.rollback_to` (S0 by default).
    pub async fn rollback(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen_playbook().await?;
        // Nothing to roll back is refused before the lock is taken (a refusal writes nothing).
        self.active_journal().await?;
        let guard = self
            .lock
            .acquire(Holder::me("rollback"), opts.force)
            .await?;
        let result = self.rollback_locked(guard.as_ref(), opts).await;
        self.release(guard).await;
        self.finished("rollback", &result).await;
        result
    }

    async fn rollback_locked(
        &self,
        guard: &dyn LockGuard,
        opts: &RunOptions,
    ) -> Result<RunReport, EngineError> {
        let journal = self.active_journal().await?;
        if journal.state == State::S5 {
            return Err(EngineError::Irreversible(journal.id));
        }
        let audit = self.audit()?;
        let hard_cut = journal.hard_cut;
        let mut run = Run::new(self, journal, guard, audit, opts.clone());
        run.repair = !hard_cut;
        run.emit_start("rollback");
        run.reconcile().await?;
        run.rollback_to(opts.rollback_to, "rollback").await
    }

    async fn active_journal(&self) -> Result<Journal, EngineError> {
        match self.journals.load().await? {
            Some(j) if j.status.is_active() => Ok(j),
            Some(j) if j.state == State::S5 => Err(EngineError::Irreversible(j.id)),
            _ => Err(EngineError::NoRotation),
        }
    }
}

/// One run of rotate/resume/rollback: the journal, the lock, the report.
struct Run<'e> {
    e: &'e Engine,
    journal: Journal,
    guard: &'e dyn LockGuard,
    audit: Arc<Audit>,
    events: Arc<dyn EventSink>,
    opts: RunOptions,
    started: Instant,
    /// When (since `started`) this run's T4 proof showed the old value rejected everywhere.
    revoked: Option<Duration>,
    stages: Vec<StageTiming>,
    restarts: BTreeMap<String, usize>,
    waited: Duration,
    /// Values read for proofs, so a negative proof can present A after T4 disabled it.
    proof_cache: Mutex<BTreeMap<Which, SecretValue>>,
    /// Forward rollout waves this run made.
    waves: usize,
    /// What a hard cut's wave did to sampled round trips.
    hard_cut: Option<hardcut::HardCutReport>,
    /// A recovery run (`resume`, `rollback`): every step also proves the consumers it does not
    /// roll, so an instance that holds the right fingerprints but fails its proof is replaced.
    repair: bool,
}

fn stage_name(t: Transition, dir: Direction) -> String {
    format!("{t} {dir}")
}

impl<'e> Run<'e> {
    fn new(
        e: &'e Engine,
        journal: Journal,
        guard: &'e dyn LockGuard,
        audit: Arc<Audit>,
        opts: RunOptions,
    ) -> Run<'e> {
        *audit.rotation.lock().expect("audit mutex") = Some(journal.id.clone());
        *audit.context.lock().expect("audit mutex") = Some((journal.mode, journal.reason.clone()));
        guard.set_stage(Some(&journal.id), &journal.state.to_string());
        let events = e.sink(&audit);
        Run {
            e,
            journal,
            guard,
            audit,
            events,
            opts,
            started: Instant::now(),
            revoked: None,
            stages: Vec::new(),
            restarts: e
                .consumers
                .iter()
                .map(|c| (c.name().to_string(), 0))
                .collect(),
            waited: Duration::ZERO,
            proof_cache: Mutex::new(BTreeMap::new()),
            waves: 0,
            hard_cut: None,
            repair: false,
        }
    }

    fn emit(&self, ev: Event) {
        self.events.emit(&ev);
    }

    fn emit_start(&self, command: &str) {
        self.emit(Event::RunStarted {
            rotation: self.journal.id.clone(),
            secret: self.journal.secret.clone(),
            environment: self.journal.environment.clone(),
            command: command.into(),
            state: self.journal.state,
            target: self.journal.target,
        });
    }

    /// Writes the journal, unless this run lost its lock (then nothing more is written).
    async fn save(&mut self) -> Result<(), JournalError> {
        if let Some(h) = self.guard.lost() {
            return Err(JournalError::LockLost {
                holder: format!("{} ({})", h.identity, h.command),
            });
        }
        self.e.journals.save(&mut self.journal).await
    }

    fn report(&self, outcome: RunOutcome, detail: String) -> RunReport {
        self.emit(Event::RunFinished {
            outcome: format!("{outcome:?}").to_lowercase(),
            state: self.journal.state,
            detail: detail.clone(),
        });
        let _ = &self.audit;
        RunReport {
            rotation: self.journal.id.clone(),
            state: self.journal.state,
            outcome,
            detail,
            stages: self.stages.clone(),
            restarts: self.restarts.clone(),
            waited_seconds: self.waited.as_secs_f64(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            time_to_revoke_seconds: self.revoked.map(|d| d.as_secs_f64()),
            waves: self.waves,
            hard_cut: self.hard_cut.clone(),
        }
    }

    // ---- values -------------------------------------------------------------------------

    fn fp(&self, w: Which) -> Option<Fingerprint> {
        match w {
            Which::A => Some(self.journal.old.fingerprint.clone()),
            Which::B => self.journal.new.as_ref().map(|n| n.fingerprint.clone()),
        }
    }

    fn version(&self, w: Which) -> Result<String, StepError> {
        let r = match w {
            Which::A => Some(&self.journal.old),
            Which::B => self.journal.new.as_ref(),
        };
        r.and_then(|r| r.version.clone()).ok_or_else(|| {
            StepError::Foreign(format!(
                "the journal of rotation {} has no store version for {w:?}",
                self.journal.id
            ))
        })
    }

    async fn value(&self, w: Which) -> Result<SecretValue, StepError> {
        let v = self.e.store.read_value(&self.version(w)?).await?;
        crate::redact::remember(&self.e.pb.secret, &v);
        let want = self.fp(w).expect("version implies fingerprint");
        if v.fingerprint(&self.e.pb.secret) != want {
            return Err(StepError::Foreign(format!(
                "store version {} no longer holds {want}",
                self.version(w)?
            )));
        }
        Ok(v)
    }

    async fn slots_for(&self, state: State, role: protocol::Role) -> Result<Slots, StepError> {
        let plan = protocol::consumer_slots(state, role);
        let primary = self.value(plan.primary).await?;
        let secondary = match plan.secondary {
            Some(w) => Some(self.value(w).await?),
            None => None,
        };
        Ok(Slots {
            primary,
            secondary,
            primary_version: Some(self.version(plan.primary)?),
            secondary_version: plan.secondary.map(|w| self.version(w)).transpose()?,
        })
    }

    /// A labeled value for a proof: `A (sha256:…)`.
    async fn labeled(&self, w: Which) -> Result<gate::Labeled, StepError> {
        Ok(gate::Labeled {
            label: format!("{w:?} ({})", self.fp_str(w)),
            value: self.value_for_proof(w).await?,
        })
    }

    /// What each instance of `c` must prove in `state` before it takes traffic: the values it
    /// accepts and rejects (A from S4 on, while A can still be read), what it sends, its round
    /// trips (not in a hard cut).
    async fn gate_for(
        &self,
        c: &Arc<dyn Consumer>,
        state: State,
        cut: bool,
    ) -> Result<gate::InstanceGate<'e>, StepError> {
        let mut accept = Vec::new();
        for w in protocol::accepts(state, c.role()) {
            accept.push(self.labeled(w).await?);
        }
        let mut reject = Vec::new();
        if state >= State::S4
            && c.role().validates()
            && let Ok(a) = self.labeled(Which::A).await
        {
            reject.push(a);
        }
        let sends = match protocol::sends(state, c.role()) {
            Some(w) => Some(self.labeled(w).await?),
            None => None,
        };
        Ok(self.e.gate(c, accept, reject, sends, !cut))
    }

    // ---- driving ------------------------------------------------------------------------

    async fn forward_to(&mut self, until: State) -> Result<RunReport, EngineError> {
        self.journal.status = Status::Running;
        self.save().await?;
        // A dirty forward step is simply re-run: steps converge.
        loop {
            let state = self.journal.state;
            if state >= until {
                return self.finish_forward().await;
            }
            if let Some(stop) = self.interrupted().await? {
                return Ok(stop);
            }
            let t = state
                .next_transition()
                .expect("state < S5 has a next transition");
            if let Some(stop) = self.before(t).await? {
                return Ok(stop);
            }
            if let Err(err) = self.step(t, Direction::Forward).await {
                return Err(self.auto_rollback(t, err).await);
            }
        }
    }

    async fn finish_forward(&mut self) -> Result<RunReport, EngineError> {
        let state = self.journal.state;
        if state == State::S5 {
            self.journal.status = Status::Completed;
            self.save().await?;
            Ok(self.report(
                RunOutcome::Completed,
                format!(
                    "rotation complete: primary {} ; {} destroyed",
                    self.fp(Which::B).map(|f| f.to_string()).unwrap_or_default(),
                    self.journal.old.fingerprint
                ),
            ))
        } else {
            self.pause(
                RunOutcome::Paused,
                format!("stopped at {state} as asked; continue with `rotor resume`, undo with `rotor rollback`"),
            )
            .await
        }
    }

    /// A standing request from an emergency rekey for this rotation (never honoured by a rekey
    /// itself).
    fn handover_requested(&self) -> Option<lock::Handover> {
        if self.opts.mode == Mode::Emergency {
            return None;
        }
        // Not in the last stretch before the rekey stops waiting: it would find the lock
        // released just after it gave up, and nobody would continue the rotation.
        self.guard.handover().filter(|r| {
            let margin = ((r.until - r.at) / 4).min(chrono::Duration::seconds(30));
            Utc::now() + margin < r.until
        })
    }

    /// Asks the operator; an emergency rekey's request, before or while the question waits
    /// for an answer, wins (`Err`): the rotation is handed over at this stable state.
    async fn ask(&self, question: String) -> Result<bool, lock::Handover> {
        if let Some(req) = self.handover_requested() {
            return Err(req);
        }
        let confirm = self.opts.confirm.clone();
        let (tx, mut answer) = tokio::sync::oneshot::channel();
        // A plain thread, not a runtime task: a question left unanswered must not keep the
        // process alive once the run handed over.
        std::thread::spawn(move || {
            let _ = tx.send(confirm.confirm(&question));
        });
        loop {
            tokio::select! {
                a = &mut answer => return Ok(a.unwrap_or(false)),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(req) = self.handover_requested() {
                        return Err(req);
                    }
                }
            }
        }
    }

    /// Whether this run must stop before its next step: its lock is lost (taken over, or its
    /// claim lapsed: an error), or an emergency rekey asked for the rotation (handed over at
    /// this stable state).
    async fn interrupted(&mut self) -> Result<Option<RunReport>, EngineError> {
        if let Some(h) = self.guard.lost() {
            return Err(LockError::Lost(Box::new(h)).into());
        }
        match self.handover_requested() {
            Some(req) => self.hand_over(req).await.map(Some),
            None => Ok(None),
        }
    }

    /// Says that the rotation continues as the hard cut it was started as.
    fn note_continuing_cut(&self) {
        self.emit(Event::Note {
            message: "this rotation is a hard cut (started with --hard-cut): it continues as one, so T4 rolls every consumer at once and requests fail until that wave ends".into(),
        });
    }

    /// Stops at the current stable state for an emergency rekey that asked for the rotation.
    async fn hand_over(&mut self, req: lock::Handover) -> Result<RunReport, EngineError> {
        let detail = format!(
            "handed over at {} to an emergency rekey by {} ({}); it continues the rotation from here",
            self.journal.state, req.by, req.reason
        );
        self.emit(Event::Note {
            message: detail.clone(),
        });
        self.pause(RunOutcome::HandedOver, detail).await
    }

    /// Sleeps `d`, or less when an emergency rekey asks for the rotation or the lock is lost
    /// meanwhile; returns how long it slept.
    async fn wait(&self, d: Duration) -> Duration {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            if self.handover_requested().is_some() || self.guard.lost().is_some() {
                break;
            }
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(200));
            tokio::time::sleep(step).await;
        }
        started.elapsed()
    }

    async fn pause(
        &mut self,
        outcome: RunOutcome,
        detail: String,
    ) -> Result<RunReport, EngineError> {
        self.journal.status = Status::Paused;
        self.save().await?;
        self.guard.set_stage(None, &self.journal.state.to_string());
        Ok(self.report(outcome, detail))
    }

    /// Waits and confirmations before a forward transition; `Some` stops the run.
    async fn before(&mut self, t: Transition) -> Result<Option<RunReport>, EngineError> {
        let emergency = self.opts.mode == Mode::Emergency;
        if t == Transition::T4 && !emergency {
            let since = self
                .journal
                .reached
                .get(&State::S3)
                .copied()
                .unwrap_or_else(Utc::now);
            // Checked: a grace that cannot be computed stops the run at S3 (never a shorter wait).
            let until = later(since, self.e.pb.timings.grace, "timings.grace")?;
            let remaining = (until - Utc::now()).to_std().unwrap_or_default();
            if !remaining.is_zero() {
                self.emit(Event::Waiting {
                    reason: "grace: anything signed with the old value expires".into(),
                    seconds: remaining.as_secs_f64(),
                });
                self.guard.set_stage(None, "grace");
                self.waited += self.wait(remaining).await;
                if let Some(stop) = self.interrupted().await? {
                    return Ok(Some(stop));
                }
            }
        }
        if t == Transition::T5 && !emergency {
            let since = self
                .journal
                .reached
                .get(&State::S4)
                .copied()
                .unwrap_or_else(Utc::now);
            let due = later(since, self.e.pb.timings.retention, "timings.retention")?;
            if Utc::now() < due {
                let detail = format!(
                    "the old value {} is disabled and retained until {}; run `rotor resume` after that to finalize",
                    self.journal.old.fingerprint,
                    due.format("%Y-%m-%d %H:%M:%S UTC")
                );
                return self.pause(RunOutcome::Paused, detail).await.map(Some);
            }
        }
        if matches!(t, Transition::T4 | Transition::T5)
            && self.opts.mode == Mode::Operator
            && !self.opts.yes
        {
            let question = match t {
                Transition::T4 => format!(
                    "T4 narrow: validators will reject the old value {} from now on. Continue?",
                    self.journal.old.fingerprint
                ),
                _ => format!(
                    "T5 finalize: the old value {} will be destroyed; this cannot be undone. Continue?",
                    self.journal.old.fingerprint
                ),
            };
            match self.ask(question).await {
                Ok(true) => {}
                Ok(false) => {
                    let detail = format!(
                        "{t} not confirmed; paused at {} (pass --yes to skip confirmations, `rotor resume` to continue)",
                        self.journal.state
                    );
                    return self.pause(RunOutcome::Declined, detail).await.map(Some);
                }
                Err(req) => return self.hand_over(req).await.map(Some),
            }
        }
        Ok(None)
    }

    /// Runs one transition (or inverse) with its journal entries.
    async fn step(&mut self, t: Transition, dir: Direction) -> Result<(), StepError> {
        let started = Instant::now();
        let rolls: Vec<String> = self
            .e
            .consumers
            .iter()
            .filter(|c| hardcut::rolls(self.journal.hard_cut, t, dir, c.role()))
            .map(|c| c.name().to_string())
            .collect();
        self.journal.status = match dir {
            Direction::Forward => Status::Running,
            Direction::Inverse => Status::RollingBack,
        };
        self.journal.begin(t, dir);
        self.save().await?;
        self.guard.set_stage(None, &stage_name(t, dir));
        self.emit(Event::StepStarted {
            transition: t,
            direction: dir,
            rolls,
        });
        failpoint::hit(t, dir, "begin");
        let result = match dir {
            Direction::Forward => self.forward(t).await,
            Direction::Inverse => self.inverse(t).await,
        };
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(detail) => {
                self.emit(Event::ProofPassed {
                    transition: t,
                    direction: dir,
                    detail: detail.clone(),
                });
                self.journal.end(Outcome::Ok, detail);
                self.save().await?;
                if (t, dir) == (Transition::T4, Direction::Forward) {
                    self.revoked = Some(self.started.elapsed());
                }
                self.guard.set_stage(None, &self.journal.state.to_string());
                self.stages.push(StageTiming {
                    transition: t,
                    direction: dir,
                    outcome: "ok".into(),
                    seconds,
                });
                self.emit(Event::StepFinished {
                    transition: t,
                    direction: dir,
                    outcome: "ok".into(),
                    seconds,
                    state: self.journal.state,
                });
                failpoint::hit(t, dir, "end");
                Ok(())
            }
            Err(err) => {
                self.emit(Event::StepFailed {
                    transition: t,
                    direction: dir,
                    error: err.to_string(),
                });
                self.journal.end(Outcome::Failed, err.to_string());
                self.save().await?;
                self.stages.push(StageTiming {
                    transition: t,
                    direction: dir,
                    outcome: "failed".into(),
                    seconds,
                });
                Err(err)
            }
        }
    }

    /// After a forward failure: inverse of the failed step, then inverses to the target.
    async fn auto_rollback(&mut self, failed: Transition, err: StepError) -> EngineError {
        let stage = stage_name(failed, Direction::Forward);
        let target = self.opts.rollback_to.min(failed.from());
        self.journal.target = target;
        match self.walk_back(Some(failed), target).await {
            Ok(()) => {
                self.journal.status = if target == State::S0 {
                    Status::RolledBack
                } else {
                    Status::Paused
                };
                let _ = self.save().await;
                self.guard.set_stage(None, &self.journal.state.to_string());
                self.report(
                    RunOutcome::RolledBack,
                    format!("{stage} failed; rolled back"),
                );
                EngineError::RolledBack {
                    stage,
                    source: Box::new(err),
                    state: self.journal.state,
                }
            }
            Err((rb_stage, rb_err)) => {
                self.journal.status = Status::Failed;
                let _ = self.save().await;
                EngineError::Stuck {
                    stage,
                    source: Box::new(err),
                    rollback_stage: rb_stage,
                    rollback: Box::new(rb_err),
                }
            }
        }
    }

    /// Runs `first`'s inverse (if given), then inverses from the journal's state to `target`.
    async fn walk_back(
        &mut self,
        first: Option<Transition>,
        target: State,
    ) -> Result<(), (String, StepError)> {
        if let Some(t) = first {
            self.step(t, Direction::Inverse)
                .await
                .map_err(|e| (stage_name(t, Direction::Inverse), e))?;
        }
        while self.journal.state > target {
            let t = self
                .journal
                .state
                .previous_transition()
                .expect("state > S0 has a previous transition");
            self.step(t, Direction::Inverse)
                .await
                .map_err(|e| (stage_name(t, Direction::Inverse), e))?;
        }
        Ok(())
    }

    /// `rollback` and resumed rollbacks.
    async fn rollback_to(
        &mut self,
        target: State,
        command: &'static str,
    ) -> Result<RunReport, EngineError> {
        let target = target.min(self.journal.state);
        // A step that was running when the last run died is undone first.
        let dirty = self.journal.dirty_step().map(|s| s.transition);
        let first = match self.journal.steps.last() {
            Some(s) if s.outcome != Outcome::Ok && s.transition.from() == self.journal.state => {
                Some(s.transition)
            }
            _ => dirty,
        };
        let first = match first {
            // T5 has no inverse: either it never destroyed A (then there is nothing to undo)
            // or it did (then the rotation is finalized and cannot be rolled back).
            Some(Transition::T5) => {
                let a = self.journal.old.version.clone().unwrap_or_default();
                let snap = self.e.store.snapshot().await?;
                if snap.version(&a).map(|v| v.state) == Some(VersionState::Destroyed) {
                    self.journal
                        .end(Outcome::Ok, "A found destroyed on reconcile".into());
                    self.save().await?;
                    return Err(EngineError::Irreversible(self.journal.id.clone()));
                }
                self.journal
                    .end(Outcome::Failed, "interrupted before A was destroyed".into());
                None
            }
            other => other,
        };
        self.journal.target = target;
        self.journal.status = Status::RollingBack;
        self.save().await?;
        match self.walk_back(first, target).await {
            Ok(()) => {
                self.journal.status = if target == State::S0 {
                    Status::RolledBack
                } else {
                    Status::Paused
                };
                self.save().await?;
                Ok(self.report(
                    RunOutcome::RolledBack,
                    format!("rolled back to {}", self.journal.state),
                ))
            }
            Err((stage, source)) => {
                self.journal.status = Status::Failed;
                self.save().await?;
                Err(EngineError::Step {
                    stage,
                    command,
                    source: Box::new(source),
                })
            }
        }
    }

    // ---- the transitions ----------------------------------------------------------------

    async fn forward(&mut self, t: Transition) -> Result<String, StepError> {
        let dir = Direction::Forward;
        match t {
            Transition::T1 => {
                self.ensure_new_value().await?;
                let (a, b) = (self.version(Which::A)?, self.version(Which::B)?);
                self.e.store.set_slots(&a, Some(&b)).await?;
                self.store_event(format!(
                    "secondary = version {b} ({})",
                    self.fp_str(Which::B)
                ));
                failpoint::hit(t, dir, "store");
                self.prove_store(State::S1).await
            }
            Transition::T2 if self.journal.hard_cut => {
                Ok("no rollout: a hard cut rolls every consumer once, at T4".into())
            }
            Transition::T2 => {
                self.roll(t, dir, State::S2).await?;
                self.soak().await;
                self.prove_validators(&[Which::A, Which::B], &[]).await
            }
            Transition::T3 => {
                let (a, b) = (self.version(Which::A)?, self.version(Which::B)?);
                self.e.store.set_slots(&b, Some(&a)).await?;
                self.store_event(format!(
                    "primary = version {b} ({}), secondary = version {a} ({})",
                    self.fp_str(Which::B),
                    self.fp_str(Which::A)
                ));
                failpoint::hit(t, dir, "store");
                if self.journal.hard_cut {
                    let d = self.prove_store(State::S3).await?;
                    return Ok(format!(
                        "{d}; no rollout: a hard cut rolls every consumer once, at T4"
                    ));
                }
                self.roll(t, dir, State::S3).await?;
                self.soak().await;
                let mut d = self.prove_validators(&[Which::A, Which::B], &[]).await?;
                d.push_str("; ");
                d.push_str(&self.prove_signers(Which::B).await?);
                Ok(d)
            }
            Transition::T4 => {
                if self.journal.hard_cut {
                    self.cut().await?;
                } else {
                    self.roll(t, dir, State::S4).await?;
                }
                self.soak().await;
                let (a, b) = (self.version(Which::A)?, self.version(Which::B)?);
                // The negative proof needs A, so it runs before A is disabled; A is disabled
                // only after it passed. A re-run that finds A already disabled therefore knows
                // the negative proof passed, and proves acceptance of B again.
                let a_state = self.e.store.snapshot().await?.version(&a).map(|v| v.state);
                let mut proof = if a_state == Some(VersionState::Enabled) {
                    self.prove_validators(&[Which::B], &[Which::A]).await?
                } else {
                    let d = self.prove_validators(&[Which::B], &[]).await?;
                    format!("{d} (A was rejected everywhere before it was disabled)")
                };
                if self.journal.hard_cut {
                    // The signers switched in this same wave: prove them here.
                    proof.push_str("; ");
                    proof.push_str(&self.prove_signers(Which::B).await?);
                }
                self.e.store.set_slots(&b, None).await?;
                self.e.store.set_state(&a, VersionState::Disabled).await?;
                self.store_event(format!("version {a} ({}) disabled", self.fp_str(Which::A)));
                failpoint::hit(t, dir, "store");
                let snap = self.e.store.snapshot().await?;
                if snap.version(&a).map(|v| v.state) != Some(VersionState::Disabled) {
                    return Err(StepError::Foreign(format!(
                        "store version {a} is not disabled after T4"
                    )));
                }
                Ok(proof)
            }
            Transition::T5 => {
                let a = self.version(Which::A)?;
                self.e.store.set_state(&a, VersionState::Destroyed).await?;
                self.store_event(format!("version {a} ({}) destroyed", self.fp_str(Which::A)));
                failpoint::hit(t, dir, "store");
                let proof = self.prove_store(State::S5).await?;
                // Bookkeeping only (last rotation time, the backend's own schedule): A is gone
                // already, so a failure here is reported, never turned into a failed T5.
                let next_due = self
                    .e
                    .pb
                    .max_age
                    .and_then(|m| chrono::Duration::from_std(m).ok())
                    .and_then(|m| Utc::now().checked_add_signed(m));
                if let Err(e) = self.e.store.rotation_finished(next_due).await {
                    self.emit(Event::Note {
                        message: format!(
                            "could not record the finished rotation in the store: {e}"
                        ),
                    });
                }
                Ok(proof)
            }
        }
    }

    /// A hard cut's one wave: every consumer onto S4's view at once, with round trips sampled
    /// for as long as it rolls.
    async fn cut(&mut self) -> Result<(), StepError> {
        let pb = &self.e.pb;
        let sampler = hardcut::Sampler::start(
            &self.e.consumers,
            |name| {
                pb.consumer(name)
                    .map(|c| c.roundtrips.clone())
                    .unwrap_or_default()
            },
            pb.timings.probe_timeout,
        );
        let rolled = self
            .roll(Transition::T4, Direction::Forward, State::S4)
            .await;
        let report = sampler.stop().await;
        self.emit(Event::Note {
            message: format!("hard cut: {}", report.summary()),
        });
        self.hard_cut = Some(report);
        rolled
    }

    async fn inverse(&mut self, t: Transition) -> Result<String, StepError> {
        let dir = Direction::Inverse;
        match t {
            Transition::T1 => {
                // Adopt a B that a crash left unrecorded, so it is destroyed too.
                self.find_new_in_store().await?;
                let a = self.version(Which::A)?;
                self.e.store.set_slots(&a, None).await?;
                if let Some(b) = self.journal.new.as_ref().and_then(|n| n.version.clone()) {
                    let snap = self.e.store.snapshot().await?;
                    if snap
                        .version(&b)
                        .is_some_and(|v| v.state != VersionState::Destroyed)
                    {
                        self.e.store.set_state(&b, VersionState::Disabled).await?;
                        self.e.store.set_state(&b, VersionState::Destroyed).await?;
                    }
                    self.store_event(format!(
                        "version {b} ({}) disabled and destroyed; nobody used it",
                        self.fp_str(Which::B)
                    ));
                }
                failpoint::hit(t, dir, "store");
                self.prove_store(State::S0).await
            }
            Transition::T2 => {
                self.roll(t, dir, State::S1).await?;
                self.soak().await;
                self.prove_validators(&[Which::A], &[]).await
            }
            Transition::T3 => {
                self.roll(t, dir, State::S2).await?;
                let (a, b) = (self.version(Which::A)?, self.version(Which::B)?);
                self.e.store.set_slots(&a, Some(&b)).await?;
                self.store_event(format!(
                    "primary = version {a} ({}), secondary = version {b} ({})",
                    self.fp_str(Which::A),
                    self.fp_str(Which::B)
                ));
                failpoint::hit(t, dir, "store");
                self.soak().await;
                // A hard cut never widened the validators before its cut (T2 moved nothing), so
                // some may accept A alone here: A is what must be accepted on the way back.
                let accept: &[Which] = if self.journal.hard_cut {
                    &[Which::A]
                } else {
                    &[Which::A, Which::B]
                };
                let mut d = self.prove_validators(accept, &[]).await?;
                d.push_str("; ");
                d.push_str(&self.prove_signers(Which::A).await?);
                Ok(d)
            }
            Transition::T4 => {
                let (a, b) = (self.version(Which::A)?, self.version(Which::B)?);
                self.e.store.set_state(&a, VersionState::Enabled).await?;
                self.e.store.set_slots(&b, Some(&a)).await?;
                self.store_event(format!(
                    "version {a} ({}) re-enabled as secondary",
                    self.fp_str(Which::A)
                ));
                failpoint::hit(t, dir, "store");
                self.roll(t, dir, State::S3).await?;
                self.soak().await;
                self.prove_validators(&[Which::A, Which::B], &[]).await
            }
            Transition::T5 => Err(StepError::Foreign(
                "T5 finalize has no inverse: the old value is destroyed".into(),
            )),
        }
    }

    fn fp_str(&self, w: Which) -> String {
        self.fp(w)
            .map(|f| f.to_string())
            .unwrap_or_else(|| "-".into())
    }

    fn store_event(&self, detail: String) {
        self.emit(Event::StoreChanged { detail });
    }

    async fn soak(&mut self) {
        let soak = self.e.pb.timings.soak;
        if !soak.is_zero() {
            self.emit(Event::Waiting {
                reason: "soak".into(),
                seconds: soak.as_secs_f64(),
            });
            tokio::time::sleep(soak).await;
            self.waited += soak;
        }
    }

    /// Rolls every consumer `t` rolls onto its view of `state`, in playbook order, at most
    /// `concurrency` at a time. After a failure no further consumer is started; the ones
    /// already rolling finish (a rollout is never abandoned half-way), then the first failure
    /// in playbook order is returned.
    async fn roll(&mut self, t: Transition, dir: Direction, state: State) -> Result<(), StepError> {
        use futures_util::StreamExt;
        use std::sync::atomic::{AtomicBool, Ordering};

        let consumers: Vec<Arc<dyn Consumer>> = self
            .e
            .consumers
            .iter()
            .filter(|c| self.repair || hardcut::rolls(self.journal.hard_cut, t, dir, c.role()))
            .cloned()
            .collect();
        // One store read per role, not per consumer.
        let mut by_role: Vec<(protocol::Role, Slots)> = Vec::new();
        for c in &consumers {
            if !by_role.iter().any(|(r, _)| *r == c.role()) {
                by_role.push((c.role(), self.slots_for(state, c.role()).await?));
            }
        }
        // A hard cut's one wave switches validators and signers at once: its round trips
        // are sampled, not gated.
        let cut = self.journal.hard_cut && t == Transition::T4 && dir == Direction::Forward;
        let mut gates = Vec::new();
        for c in &consumers {
            gates.push(self.gate_for(c, state, cut).await?);
        }
        let failed = AtomicBool::new(false);
        let events = self.events.clone();
        let jobs = consumers.iter().enumerate().map(|(i, c)| {
            let slots = &by_role
                .iter()
                .find(|(r, _)| *r == c.role())
                .expect("slots computed for every role")
                .1;
            let failed = &failed;
            let events = events.clone();
            let gate: &dyn crate::consumer::Gate = if self.opts.ungated {
                &crate::consumer::Ungated
            } else {
                &gates[i]
            };
            async move {
                if failed.load(Ordering::SeqCst) {
                    return (i, None);
                }
                let result = c.apply(slots, gate, events.as_ref()).await;
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                } else {
                    failpoint::hit(t, dir, &format!("rolled.{}", c.name()));
                }
                (i, Some(result))
            }
        });
        let wave_started = Instant::now();
        let mut results: Vec<(usize, Option<Result<RolloutReport, ConsumerError>>)> =
            futures_util::stream::iter(jobs)
                .buffer_unordered(self.e.pb.concurrency.max(1))
                .collect()
                .await;
        let wave = wave_started.elapsed();
        results.sort_by_key(|(i, _)| *i);
        let mut first_error = None;
        let mut waited = Duration::ZERO;
        for (i, result) in results {
            let c = &consumers[i];
            match result {
                Some(Ok(report)) => {
                    *self.restarts.entry(c.name().to_string()).or_default() += report.restarts;
                    waited += report.waited;
                }
                Some(Err(source)) if first_error.is_none() => {
                    first_error = Some(StepError::Rollout {
                        consumer: c.name().to_string(),
                        source,
                    });
                }
                Some(Err(_)) | None => {}
            }
        }
        // Rollouts that overlap wait at the same time: never count more than the wave took.
        self.waited += waited.min(wave);
        match first_error {
            Some(e) => Err(e),
            None => {
                if dir == Direction::Forward && !consumers.is_empty() {
                    self.waves += 1;
                }
                Ok(())
            }
        }
    }

    /// T1: generate B (or find the one a crashed run already added) and add it to the store.
    async fn ensure_new_value(&mut self) -> Result<(), StepError> {
        self.find_new_in_store().await?;
        if self
            .journal
            .new
            .as_ref()
            .is_some_and(|n| n.version.is_some())
        {
            return Ok(());
        }
        let snap = self.e.store.snapshot().await?;
        let g = &self.e.pb.generate;
        let weak = policy::load_weak(&self.e.pb).map_err(StepError::Foreign)?;
        let value = loop {
            let v = SecretValue::generate(g.alphabet, g.length)?;
            crate::redact::remember(&self.e.pb.secret, &v);
            // Policy: never reuse a value the store has held, never a weak one.
            if snap
                .by_fingerprint(&v.fingerprint(&self.e.pb.secret))
                .is_none()
                && policy::violations(&self.e.pb, &v, &weak).is_empty()
            {
                break v;
            }
        };
        // Record the fingerprint before publishing, so a crash between the two is recognized.
        self.journal.new = Some(VersionRef {
            version: None,
            fingerprint: value.fingerprint(&self.e.pb.secret),
        });
        self.save().await?;
        failpoint::hit(Transition::T1, Direction::Forward, "generated");
        let info = self.e.store.add_version(&value).await?;
        self.journal.new = Some(VersionRef {
            version: Some(info.id.clone()),
            fingerprint: info.fingerprint,
        });
        self.save().await?;
        Ok(())
    }

    /// If the journal knows B's fingerprint but not its version, look it up in the store.
    async fn find_new_in_store(&mut self) -> Result<(), StepError> {
        let Some(new) = self.journal.new.clone() else {
            return Ok(());
        };
        if new.version.is_some() {
            return Ok(());
        }
        let snap = self.e.store.snapshot().await?;
        if let Some(v) = snap.by_fingerprint(&new.fingerprint) {
            self.emit(Event::Reconciled {
                detail: format!(
                    "found {} as store version {} (added before the last run stopped)",
                    new.fingerprint, v.id
                ),
            });
            self.journal.new = Some(VersionRef {
                version: Some(v.id.clone()),
                fingerprint: new.fingerprint,
            });
        } else {
            self.emit(Event::Reconciled {
                detail: format!(
                    "{} was never published; a fresh value will be generated",
                    new.fingerprint
                ),
            });
            self.journal.new = None;
        }
        self.save().await?;
        Ok(())
    }

    /// Compares the store with the journal after a crash; refuses foreign changes.
    async fn reconcile(&mut self) -> Result<(), EngineError> {
        if let Some(step) = self.journal.dirty_step() {
            self.emit(Event::Reconciled {
                detail: format!(
                    "{} was interrupted; re-reading the store and consumers instead of trusting the journal",
                    stage_name(step.transition, step.direction)
                ),
            });
        }
        self.find_new_in_store()
            .await
            .map_err(|e| EngineError::Step {
                stage: "reconcile".into(),
                command: "resume",
                source: Box::new(e),
            })?;
        let snap = self.e.store.snapshot().await?;
        let name = |id: &Option<String>| -> Option<Which> {
            let fp = id
                .as_deref()
                .and_then(|i| snap.version(i))
                .map(|v| &v.fingerprint)?;
            if Some(fp) == self.fp(Which::A).as_ref() {
                Some(Which::A)
            } else if Some(fp) == self.fp(Which::B).as_ref() {
                Some(Which::B)
            } else {
                None
            }
        };
        let p = name(&snap.primary);
        let s = name(&snap.secondary);
        if p.is_none() || (snap.secondary.is_some() && s.is_none()) {
            let msg = format!(
                "the store's slots (primary {:?}, secondary {:?}) hold neither the old value {} nor the new value {} of rotation {}: someone changed the store during the rotation",
                snap.primary_version().map(|v| v.fingerprint.to_string()),
                snap.secondary_version().map(|v| v.fingerprint.to_string()),
                self.journal.old.fingerprint,
                self.fp_str(Which::B),
                self.journal.id
            );
            self.journal.status = Status::Failed;
            self.save().await?;
            return Err(EngineError::NotStable(msg));
        }
        let mut observed = Vec::new();
        for c in &self.e.consumers {
            let instances = c.instances().await?;
            let held: Vec<String> = instances
                .iter()
                .map(|i| {
                    format!(
                        "{}={}/{}",
                        i.id,
                        i.primary.as_ref().map(|f| f.as_str()).unwrap_or("-"),
                        i.secondary.as_ref().map(|f| f.as_str()).unwrap_or("-")
                    )
                })
                .collect();
            observed.push(format!("{}: [{}]", c.name(), held.join(", ")));
        }
        self.emit(Event::Reconciled {
            detail: format!(
                "journal at {}; store primary={:?} secondary={:?}; instances {}",
                self.journal.state,
                p,
                s,
                observed.join("; ")
            ),
        });
        Ok(())
    }

    async fn preflight(&mut self) -> Result<(), EngineError> {
        let r = async {
            let mut d = self.prove_validators(&[Which::A], &[]).await?;
            d.push_str("; ");
            d.push_str(&self.prove_signers(Which::A).await?);
            Ok::<String, StepError>(d)
        }
        .await;
        match r {
            Ok(detail) => {
                self.emit(Event::Note {
                    message: format!("preflight: S0 holds: {detail}"),
                });
                Ok(())
            }
            Err(e @ StepError::FailsOpen { .. }) => Err(EngineError::FailsOpen(e.to_string())),
            Err(e) => Err(EngineError::NotStable(format!(
                "the fleet is not at S0: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::span;
    use std::time::Duration;

    #[test]
    fn a_wait_too_long_to_compute_is_an_error_never_a_shorter_wait() {
        let now = chrono::Utc::now();
        for huge in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(1 << 50),
        ] {
            let e = super::later(now, huge, "timings.grace").unwrap_err();
            assert!(e.to_string().contains("timings.grace"), "{e}");
        }
        let ok = super::later(now, Duration::from_secs(90), "timings.grace").unwrap();
        assert_eq!(ok - now, chrono::Duration::seconds(90));
        let far = crate::consumer::deadline_after(Duration::MAX);
        assert!(far > std::time::Instant::now() + Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn spans_read_like_ages() {
        let cases = [
            (40, "40s"),
            (300, "5m"),
            (7200, "2h"),
            (3600 + 120, "1h 2m"),
            (90 * 86_400, "90d"),
            (12 * 86_400 + 3 * 3600 + 59, "12d 3h"),
        ];
        for (secs, text) in cases {
            assert_eq!(span(Duration::from_secs(secs)), text);
        }
    }
}
