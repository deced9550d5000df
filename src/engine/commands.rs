//! The engine's commands around a rotation's steps: `init`, `up`, `down`, `due` and `rotate`
//! (with its preflight), the screening of the playbook for values that every rotation command
//! runs first, the lock's release, and the audit log.
//!
//! A refusal writes nothing: a screened playbook, a store that exists (`init`), a rotation in
//! progress and a failed preflight are refused before a journal of a new rotation is written.
//! The audit log is redacted: it never holds a value.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::journal::{Journal, Mode, VersionRef};
use super::lock::{Holder, LockGuard};
use super::step::Run;
use super::{Engine, EngineError, RunOptions, RunReport, StepError, gate, policy, span};
use crate::consumer::{Consumer, ConsumerError, Slots};
use crate::events::{Event, EventSink};
use crate::protocol::{self, State, Which};
use crate::secret::{Fingerprint, SecretValue};
use crate::store::{StoreError, StoreSnapshot, VersionState};

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

/// Appends every event to `<state_dir>/audit.log` as a JSON line (rotated by size, see
/// [`super::audit`]).
pub(super) struct Audit {
    file: Mutex<super::audit::AuditFile>,
    /// `user@host pid N`, as the lock names a holder.
    who: String,
    pub(super) rotation: Mutex<Option<String>>,
    /// The rotation's mode and reason, once known.
    pub(super) context: Mutex<Option<(Mode, String)>>,
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
        let _ = f.append(&line);
    }
}

impl Engine {
    /// Gives the lock back at the end of a run, after pruning old state while the lock is
    /// still this run's (never once it was lost); a failure only means the lock lapses later.
    pub(super) async fn release(&self, guard: Box<dyn LockGuard>) {
        if guard.lost().is_none() {
            self.prune().await;
        }
        if let Err(e) = guard.release().await {
            self.events.emit(&Event::Note {
                message: format!(
                    "could not release the lock ({e}); it lapses when its lease expires"
                ),
            });
        }
    }

    pub(super) fn audit(&self) -> Result<Arc<Audit>, EngineError> {
        crate::state_dir::prepare(&self.pb.state_dir).map_err(EngineError::Io)?;
        let path = self.pb.state_dir.join("audit.log");
        let keep = &self.pb.keep;
        let file = super::audit::AuditFile::open(&path, keep.audit_log_size, keep.audit_logs)
            .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        Ok(Arc::new(Audit {
            file: Mutex::new(file),
            who: Holder::me("-").identity,
            rotation: Mutex::new(None),
            context: Mutex::new(None),
        }))
    }

    pub(super) fn sink(&self, audit: &Arc<Audit>) -> Arc<dyn EventSink> {
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

    /// [`Engine::screen_playbook`], then each consumer's own preflight (an env file rotor
    /// could not rewrite): what every command that changes the fleet refuses before it takes
    /// the lock, so a refusal writes nothing.
    pub async fn screen(&self) -> Result<(), EngineError> {
        self.screen_playbook().await?;
        for c in &self.consumers {
            c.preflight().await?;
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
            // The engine's own handle on the consumer (it outlives `c`'s borrow); never a
            // plain-HTTP stand-in for a consumer that speaks TLS.
            transport: self
                .consumers
                .iter()
                .find(|o| o.name() == c.name())
                .expect("consumers are opened from the playbook")
                .transport(),
        }
    }

    /// Starts every consumer holding the store's current slots (fleet bring-up).
    pub async fn up(&self) -> Result<(), EngineError> {
        self.screen().await?;
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
            let (when, who) = match &self.pb.store {
                crate::playbook::StoreSpec::Vault(_) => (
                    "the store's rotor-next-rotation (custom_metadata)",
                    "the store (custom_metadata rotor-next-rotation)",
                ),
                crate::playbook::StoreSpec::Aws(_) => (
                    "the secret's next rotation (AWS's NextRotationDate or the tag rotor-next-rotation)",
                    "the secret (AWS's NextRotationDate or the tag rotor-next-rotation)",
                ),
                _ => ("Secret Manager's next_rotation_time", "Secret Manager"),
            };
            if now >= at {
                return Ok(Due::Yes {
                    reason: format!("{when} {at_text} has passed"),
                });
            }
            why.push_str(&format!(", {who} schedules the next rotation at {at_text}"));
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(Due::No { reason: why, next })
    }

    /// Starts a rotation from S0.
    pub async fn rotate(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen().await?;
        let guard = self.lock.acquire(Holder::me("rotate"), opts.force).await?;
        let result = self.rotate_locked(guard.as_ref(), opts).await;
        self.release(guard).await;
        self.finished("rotate", &result).await;
        result
    }

    pub(super) async fn rotate_locked(
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
}

impl Run<'_> {
    async fn preflight(&mut self) -> Result<(), EngineError> {
        // A reload consumer that could never pick a value up (a workload that does not mount
        // its Secret) is bad input: refused (exit 2) before any proof or change.
        for c in self
            .e
            .consumers
            .iter()
            .filter(|c| c.pickup() == crate::playbook::Pickup::Reload)
        {
            c.desired_instances().await?;
        }
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
