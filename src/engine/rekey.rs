//! Emergency rekey and handover: a rekey takes the lock (asking an ordinary run that holds it
//! to hand over), takes the rotation in progress over or starts one, and drives it to S5 with
//! no grace, no retention and no questions.
//!
//! The ordinary run's side lives here too: it looks for a request between steps, during its
//! waits and while it asks the operator, and hands over only at a stable state. A rekey never
//! hands over.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::journal::Mode;
use super::lock::{self, Holder, LockError, LockGuard};
use super::step::Run;
use super::{Engine, EngineError, RunOptions, RunOutcome, RunReport};
use crate::events::Event;
use crate::protocol::State;

impl Engine {
    /// Emergency rekey after a leak: grace 0, T5 right after T4's negative proof, no questions.
    /// A rotation in progress is taken over from where it stands and driven forward to S5
    /// (a rollback in progress is finished first, then a new rotation starts).
    pub async fn rekey(&self, opts: &RunOptions) -> Result<RunReport, EngineError> {
        // Refused before the lock is taken: a refusal writes nothing.
        self.screen().await?;
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
}

impl Run<'_> {
    /// A standing request from an emergency rekey for this rotation (never honoured by a rekey
    /// itself).
    pub(super) fn handover_requested(&self) -> Option<lock::Handover> {
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
    pub(super) async fn ask(&self, question: String) -> Result<bool, lock::Handover> {
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
                    // A stop asked while the question waits: the caller stops here.
                    if crate::stop::requested().is_some() {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Whether this run must stop before its next step: its lock is lost (taken over, or its
    /// claim lapsed: an error), or an emergency rekey asked for the rotation (handed over at
    /// this stable state).
    pub(super) async fn interrupted(&mut self) -> Result<Option<RunReport>, EngineError> {
        if let Some(h) = self.guard.lost() {
            return Err(LockError::Lost(Box::new(h)).into());
        }
        // A stop asked by a signal: this stable state is the safe point.
        if let Some(signal) = crate::stop::requested() {
            return Err(self.stop(signal, None).await);
        }
        match self.handover_requested() {
            Some(req) => self.hand_over(req).await.map(Some),
            None => Ok(None),
        }
    }

    /// Stops at the current stable state for an emergency rekey that asked for the rotation.
    pub(super) async fn hand_over(
        &mut self,
        req: lock::Handover,
    ) -> Result<RunReport, EngineError> {
        let detail = format!(
            "handed over at {} to an emergency rekey by {} ({}); it continues the rotation from here",
            self.journal.state, req.by, req.reason
        );
        self.emit(Event::Note {
            message: detail.clone(),
        });
        self.pause(RunOutcome::HandedOver, detail).await
    }
}
