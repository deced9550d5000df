//! The transitions: what T1–T5 do forward and inverse (one exhaustive `match` each), a hard
//! cut's one wave, and the rollouts that put consumers onto a state's view.
//!
//! Every body converges: re-running it after a crash equals running it once. B's fingerprint is
//! journaled before B is published, and A is disabled only after the negative proof passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::journal::VersionRef;
use super::step::Run;
use super::{StepError, failpoint, gate, hardcut, policy};
use crate::consumer::{Consumer, ConsumerError, RolloutReport, Slots};
use crate::events::Event;
use crate::protocol::{self, Direction, State, Transition, Which};
use crate::secret::SecretValue;
use crate::store::VersionState;

impl<'e> Run<'e> {
    pub(super) async fn forward(&mut self, t: Transition) -> Result<String, StepError> {
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
                    .map(|c| {
                        c.roundtrips
                            .iter()
                            .filter_map(|r| r.http())
                            .cloned()
                            .collect()
                    })
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

    pub(super) async fn inverse(&mut self, t: Transition) -> Result<String, StepError> {
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
                // After a failure, or once a stop is asked, no further consumer begins.
                if failed.load(Ordering::SeqCst) || crate::stop::requested().is_some() {
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
        let mut not_begun = false;
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
                Some(Err(_)) => {}
                None => not_begun = true,
            }
        }
        // Consumers left for a stop asked meanwhile (and no failure): the step stops here.
        if first_error.is_none()
            && not_begun
            && let Some(signal) = crate::stop::requested()
        {
            first_error = Some(StepError::Stopped(signal));
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
        let info = self
            .e
            .store
            .add_version_for(&value, &self.journal.id)
            .await?;
        self.journal.new = Some(VersionRef {
            version: Some(info.id.clone()),
            fingerprint: info.fingerprint,
        });
        self.save().await?;
        Ok(())
    }

    /// If the journal knows B's fingerprint but not its version, look it up in the store.
    pub(super) async fn find_new_in_store(&mut self) -> Result<(), StepError> {
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
}
