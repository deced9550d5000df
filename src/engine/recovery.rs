//! Recovery: `resume` and `rollback` from the journal, reconciling the journal with the store
//! after a crash, and walking inverses back after a failed step (automatic rollback).
//!
//! A foreign change (the store's slots hold neither the old nor the new value) is refused,
//! never overwritten; a finalized rotation (S5: the old value destroyed) is never rolled back.

use super::journal::{Journal, Mode, Outcome, Status};
use super::lock::{Holder, LockGuard};
use super::step::{Run, stage_name};
use super::{Engine, EngineError, RunOptions, RunOutcome, RunReport, StepError};
use crate::events::Event;
use crate::protocol::{Direction, State, Transition, Which};
use crate::store::VersionState;

impl Engine {
    /// Continues the rotation in progress from its journal.
    pub async fn resume(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen().await?;
        // Nothing to resume is refused before the lock is taken (a refusal writes nothing).
        self.active_journal().await?;
        let guard = self.lock.acquire(Holder::me("resume"), opts.force).await?;
        let result = self.resume_locked(guard.as_ref(), opts).await;
        self.release(guard).await;
        self.finished("resume", &result).await;
        result
    }

    pub(super) async fn resume_locked(
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
        self.screen().await?;
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

    pub(super) async fn active_journal(&self) -> Result<Journal, EngineError> {
        match self.journals.load().await? {
            Some(j) if j.status.is_active() => Ok(j),
            Some(j) if j.state == State::S5 => Err(EngineError::Irreversible(j.id)),
            _ => Err(EngineError::NoRotation),
        }
    }
}

impl Run<'_> {
    /// After a forward failure: inverse of the failed step, then inverses to the target.
    pub(super) async fn auto_rollback(
        &mut self,
        failed: Transition,
        err: StepError,
    ) -> EngineError {
        let stage = stage_name(failed, Direction::Forward);
        let target = self.opts.rollback_to.min(failed.from());
        self.journal.target = target;
        let walked = self.walk_back(Some(failed), target).await;
        if let Err((stage, e)) = &walked
            && let Some(signal) = e.stopped()
        {
            // The rollback stopped at a safe point: it stays rolling back, for `rotor resume`.
            let during = self.journal.dirty_step().is_some().then(|| stage.clone());
            return self.stop(signal, during).await;
        }
        match walked {
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
            // Between two inverses is a safe point for a stop asked by a signal.
            if let Some(signal) = crate::stop::requested() {
                return Err((
                    stage_name(t, Direction::Inverse),
                    StepError::Stopped(signal),
                ));
            }
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
        let walked = self.walk_back(first, target).await;
        if let Err((stage, e)) = &walked
            && let Some(signal) = e.stopped()
        {
            let during = self.journal.dirty_step().is_some().then(|| stage.clone());
            return Err(self.stop(signal, during).await);
        }
        match walked {
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

    /// Compares the store with the journal after a crash; refuses foreign changes.
    pub(super) async fn reconcile(&mut self) -> Result<(), EngineError> {
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
}
