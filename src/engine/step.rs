//! One run (`Run`) and its step loop: forward to a target state, with the waits (grace,
//! retention) and confirmations before T4 and T5, and the values and slots each step works on.
//!
//! Every step is journaled before it starts and after it ends, and nothing is written once the
//! lock is lost; a wait that cannot be computed stops the run, never shortens the wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::commands::Audit;
use super::journal::{Journal, JournalError, Mode, Outcome, Status};
use super::lock::LockGuard;
use super::{
    Engine, EngineError, RunOptions, RunOutcome, RunReport, StageTiming, StepError, failpoint,
    gate, hardcut, span,
};
use crate::consumer::Slots;
use crate::events::{Event, EventSink};
use crate::protocol::{self, Direction, State, Transition, Which};
use crate::secret::{Fingerprint, SecretValue};

/// One run of rotate/resume/rollback: the journal, the lock, the report.
pub(super) struct Run<'e> {
    pub(super) e: &'e Engine,
    pub(super) journal: Journal,
    pub(super) guard: &'e dyn LockGuard,
    pub(super) events: Arc<dyn EventSink>,
    pub(super) opts: RunOptions,
    pub(super) started: Instant,
    /// Time to revoke: from the rotation's first start (the journal's `started_at`, through
    /// every resume) to this run's T4 proof that the old value is rejected everywhere.
    pub(super) revoked: Option<Duration>,
    pub(super) stages: Vec<StageTiming>,
    pub(super) restarts: BTreeMap<String, usize>,
    pub(super) waited: Duration,
    /// Values read for proofs, so a negative proof can present A after T4 disabled it.
    pub(super) proof_cache: Mutex<BTreeMap<Which, SecretValue>>,
    /// Forward rollout waves this run made.
    pub(super) waves: usize,
    /// What a hard cut's wave did to sampled round trips.
    pub(super) hard_cut: Option<hardcut::HardCutReport>,
    /// A recovery run (`resume`, `rollback`): every step also proves the consumers it does not
    /// roll, so an instance that holds the right fingerprints but fails its proof is replaced.
    pub(super) repair: bool,
}

pub(super) fn stage_name(t: Transition, dir: Direction) -> String {
    format!("{t} {dir}")
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

impl<'e> Run<'e> {
    pub(super) fn new(
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

    /// How long the rotation has been going: from its first start (the journal's
    /// `started_at`) to the state it reached last, through every interrupted run and resume.
    /// Never less than this run's own time: a wall clock stepped back (or a journal from a
    /// machine whose clock was ahead) can only make it longer, never shorter.
    pub(super) fn since_first_start(&self) -> Duration {
        let reached = self
            .journal
            .reached
            .get(&self.journal.state)
            .copied()
            .unwrap_or_else(Utc::now);
        let journal = (reached - self.journal.started_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        journal.max(self.started.elapsed())
    }

    pub(super) fn emit(&self, ev: Event) {
        self.events.emit(&ev);
    }

    pub(super) fn emit_start(&self, command: &str) {
        self.emit(Event::RunStarted {
            rotation: self.journal.id.clone(),
            secret: self.journal.secret.clone(),
            environment: self.journal.environment.clone(),
            command: command.into(),
            state: self.journal.state,
            target: self.journal.target,
        });
    }

    /// Says that the rotation continues as the hard cut it was started as.
    pub(super) fn note_continuing_cut(&self) {
        self.emit(Event::Note {
            message: "this rotation is a hard cut (started with --hard-cut): it continues as one, so T4 rolls every consumer at once and requests fail until that wave ends".into(),
        });
    }

    /// Writes the journal, unless this run lost its lock (then nothing more is written).
    pub(super) async fn save(&mut self) -> Result<(), JournalError> {
        if let Some(h) = self.guard.lost() {
            return Err(JournalError::LockLost {
                holder: format!("{} ({})", h.identity, h.command),
            });
        }
        self.e.journals.save(&mut self.journal).await
    }

    // ---- values -------------------------------------------------------------------------

    pub(super) fn fp(&self, w: Which) -> Option<Fingerprint> {
        match w {
            Which::A => Some(self.journal.old.fingerprint.clone()),
            Which::B => self.journal.new.as_ref().map(|n| n.fingerprint.clone()),
        }
    }

    pub(super) fn fp_str(&self, w: Which) -> String {
        self.fp(w)
            .map(|f| f.to_string())
            .unwrap_or_else(|| "-".into())
    }

    pub(super) fn version(&self, w: Which) -> Result<String, StepError> {
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

    pub(super) async fn value(&self, w: Which) -> Result<SecretValue, StepError> {
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

    pub(super) async fn slots_for(
        &self,
        state: State,
        role: protocol::Role,
    ) -> Result<Slots, StepError> {
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
    pub(super) async fn labeled(&self, w: Which) -> Result<gate::Labeled, StepError> {
        Ok(gate::Labeled {
            label: format!("{w:?} ({})", self.fp_str(w)),
            value: self.value_for_proof(w).await?,
        })
    }

    pub(super) fn store_event(&self, detail: String) {
        self.emit(Event::StoreChanged { detail });
    }

    // ---- driving ------------------------------------------------------------------------

    pub(super) async fn forward_to(&mut self, until: State) -> Result<RunReport, EngineError> {
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
                if let Some(signal) = err.stopped() {
                    return Err(self
                        .stop(signal, Some(stage_name(t, Direction::Forward)))
                        .await);
                }
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

    /// Sleeps `d`, or less when an emergency rekey asks for the rotation or the lock is lost
    /// meanwhile; returns how long it slept.
    async fn wait(&self, d: Duration) -> Duration {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            if self.handover_requested().is_some()
                || self.guard.lost().is_some()
                || crate::stop::requested().is_some()
            {
                break;
            }
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(200));
            tokio::time::sleep(step).await;
        }
        started.elapsed()
    }

    /// Ends the run for a stop asked by `signal`, at a safe point: `during` names the step in
    /// progress, which stays open in the journal (as after a crash: `resume` re-runs it, which
    /// converges, and `rollback` undoes it); between steps, a forward run is paused and a
    /// rollback stays rolling back. Every instance rolled so far was proven before it took
    /// traffic, and none was begun after the signal.
    pub(super) async fn stop(&mut self, signal: i32, during: Option<String>) -> EngineError {
        if during.is_none() && self.journal.status == Status::Running {
            self.journal.status = Status::Paused;
        }
        if let Err(e) = self.save().await {
            return e.into();
        }
        self.guard.set_stage(None, &self.journal.state.to_string());
        let e = EngineError::Stopped {
            signal,
            state: self.journal.state,
            during,
            playbook: self.e.pb.source.clone(),
        };
        self.emit(Event::Note {
            message: e.to_string(),
        });
        e
    }

    pub(super) async fn pause(
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
                Ok(_) if crate::stop::requested().is_some() => {
                    let signal = crate::stop::requested().unwrap_or_default();
                    return Err(self.stop(signal, None).await);
                }
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
    pub(super) async fn step(&mut self, t: Transition, dir: Direction) -> Result<(), StepError> {
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
            // Stopped at a safe point: the step stays open in the journal, as after a crash.
            Err(err) if err.stopped().is_some() => {
                self.save().await?;
                Err(err)
            }
            Ok(detail) => {
                self.emit(Event::ProofPassed {
                    transition: t,
                    direction: dir,
                    detail: detail.clone(),
                });
                self.journal.end(Outcome::Ok, detail);
                self.save().await?;
                if (t, dir) == (Transition::T4, Direction::Forward) {
                    self.revoked = Some(self.since_first_start());
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
}

#[cfg(test)]
mod tests {
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
}
