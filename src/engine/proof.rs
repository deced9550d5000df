//! Proofs: what must hold before a step counts as done.
//!
//! Store proofs read the slots back; validator proofs present values to every instance of every
//! validating consumer with each of its probes; signer proofs check what every signer instance
//! sends and run its round trips against every instance of the validators it calls.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::step::Run;
use super::{StepError, gate};
use crate::consumer::{Consumer, Instance};
use crate::playbook::{ConsumerSpec, Roundtrip};
use crate::probe;
use crate::protocol::{State, Which, store_slots};
use crate::store::VersionState;

impl Run<'_> {
    fn spec(&self, c: &Arc<dyn Consumer>) -> &ConsumerSpec {
        self.e
            .pb
            .consumer(c.name())
            .expect("consumers are opened from the playbook")
    }

    async fn serving(&self, c: &Arc<dyn Consumer>) -> Result<Vec<Instance>, StepError> {
        let instances = c.instances().await.map_err(|source| StepError::Rollout {
            consumer: c.name().to_string(),
            source,
        })?;
        if instances.is_empty() {
            return Err(StepError::Proof {
                consumer: c.name().into(),
                instance: "-".into(),
                detail: "no instance is serving; start the fleet with `rotor up`".into(),
            });
        }
        Ok(instances)
    }

    /// The store's slots hold what `state` says (and, for S0/S5, the retired value is gone).
    pub(super) async fn prove_store(&self, state: State) -> Result<String, StepError> {
        let snap = self.e.store.snapshot().await?;
        let plan = store_slots(state);
        let fp_of = |id: &Option<String>| {
            id.as_deref()
                .and_then(|i| snap.version(i))
                .map(|v| v.fingerprint.clone())
        };
        let want_p = self.fp(plan.primary);
        let want_s = plan.secondary.and_then(|w| self.fp(w));
        if fp_of(&snap.primary) != want_p || fp_of(&snap.secondary) != want_s {
            return Err(StepError::Foreign(format!(
                "store reads back primary {:?} secondary {:?}, expected {:?} / {:?}",
                fp_of(&snap.primary).map(|f| f.to_string()),
                fp_of(&snap.secondary).map(|f| f.to_string()),
                want_p.map(|f| f.to_string()),
                want_s.map(|f| f.to_string()),
            )));
        }
        let gone = |w: Which| -> bool {
            match self.fp(w) {
                None => true,
                Some(fp) => snap
                    .versions
                    .iter()
                    .filter(|v| v.fingerprint == fp)
                    .all(|v| v.state == VersionState::Destroyed),
            }
        };
        match state {
            State::S0 if !gone(Which::B) => Err(StepError::Foreign(format!(
                "{} is still readable in the store",
                self.fp_str(Which::B)
            ))),
            State::S5 if !gone(Which::A) => Err(StepError::Foreign(format!(
                "{} is still in the store",
                self.fp_str(Which::A)
            ))),
            _ => Ok(format!(
                "store reads back primary {}{}",
                self.fp_str(plan.primary),
                plan.secondary
                    .map(|w| format!(", secondary {}", self.fp_str(w)))
                    .unwrap_or_default()
            )),
        }
    }

    /// Every instance of every validating consumer accepts `accept` and rejects `reject` and a
    /// fresh canary, with every probe.
    pub(super) async fn prove_validators(
        &self,
        accept: &[Which],
        reject: &[Which],
    ) -> Result<String, StepError> {
        let mut yes = Vec::new();
        for w in accept {
            yes.push(self.labeled(*w).await?);
        }
        let mut no = Vec::new();
        for w in reject {
            no.push(self.labeled(*w).await?);
        }
        // Consumers are proven concurrently, within the playbook's concurrency budget, and in
        // order: the first failure in playbook order is reported and the probes still in
        // flight are dropped (a failing fleet is not probed to the end before rolling back).
        let counts: Vec<usize> = futures_util::stream::iter(
            self.e
                .consumers
                .iter()
                .filter(|c| c.role().validates())
                .map(|c| self.prove_validator(c, &yes, &no)),
        )
        .buffered(self.e.pb.concurrency.max(1))
        .try_collect()
        .await?;
        let count: usize = counts.iter().sum();
        let fps = |ws: &[Which]| ws.iter().map(|w| self.fp_str(*w)).collect::<Vec<_>>();
        let mut rejected = fps(reject);
        rejected.push("a canary".into());
        Ok(format!(
            "{count} validator instances accept {{{}}} and reject {{{}}}",
            fps(accept).join(", "),
            rejected.join(", ")
        ))
    }

    /// One validating consumer: every serving instance, every probe, every value, and a fresh
    /// canary per instance; returns how many instances were proven.
    async fn prove_validator(
        &self,
        c: &Arc<dyn Consumer>,
        accept: &[gate::Labeled],
        reject: &[gate::Labeled],
    ) -> Result<usize, StepError> {
        let timeout = self.e.pb.timings.probe_timeout;
        let spec = self.spec(c);
        let mut count = 0;
        for inst in self.serving(c).await? {
            let addr = inst.addr.ok_or_else(|| StepError::Proof {
                consumer: c.name().into(),
                instance: inst.id.clone(),
                detail: "instance has no address to probe".into(),
            })?;
            let mut reject = reject.to_vec();
            reject.push(gate::canary(&self.e.pb.generate).map_err(StepError::Foreign)?);
            let at = c.transport().reach(addr, inst.host.as_deref());
            gate::prove_validating(spec, at, accept, &reject, timeout)
                .await
                .map_err(|r| {
                    let (consumer, instance, detail) = (c.name().into(), inst.id.clone(), r.detail);
                    if r.fails_open {
                        StepError::FailsOpen {
                            consumer,
                            instance,
                            detail,
                        }
                    } else {
                        StepError::Proof {
                            consumer,
                            instance,
                            detail,
                        }
                    }
                })?;
            count += 1;
        }
        Ok(count)
    }

    /// A value for a probe: from the store while it is readable; a value that the store has
    /// disabled (A after T4) is re-read from nowhere, so negative proofs use the value the run
    /// read before disabling it.
    pub(super) async fn value_for_proof(
        &self,
        w: Which,
    ) -> Result<crate::secret::SecretValue, StepError> {
        if let Some(v) = self.proof_cache.lock().expect("cache").get(&w) {
            return Ok(v.clone());
        }
        let v = self.value(w).await?;
        self.proof_cache.lock().expect("cache").insert(w, v.clone());
        Ok(v)
    }

    /// Every signer instance sends `w`, and every round trip from every signer instance to
    /// every instance of its validators passes.
    pub(super) async fn prove_signers(&self, w: Which) -> Result<String, StepError> {
        let want = self.fp(w);
        let timeout = self.e.pb.timings.probe_timeout;
        let mut trips = 0;
        let mut signers = 0;
        for c in self.e.consumers.iter().filter(|c| c.role().signs()) {
            let spec = self.spec(c);
            for inst in self.serving(c).await? {
                let (held, _) = c.held(&inst).await.map_err(|source| StepError::Rollout {
                    consumer: c.name().into(),
                    source,
                })?;
                if held.sends != want {
                    return Err(StepError::Proof {
                        consumer: c.name().into(),
                        instance: inst.id.clone(),
                        detail: format!(
                            "sends {}, expected {w:?} ({})",
                            held.sends
                                .map(|f| f.to_string())
                                .unwrap_or_else(|| "nothing".into()),
                            self.fp_str(w)
                        ),
                    });
                }
                signers += 1;
                let from = inst.addr.ok_or_else(|| StepError::Proof {
                    consumer: c.name().into(),
                    instance: inst.id.clone(),
                    detail: "instance has no address".into(),
                })?;
                let at = c.transport().reach(from, inst.host.as_deref());
                for r in &spec.roundtrips {
                    let r = match r {
                        Roundtrip::Http(r) => r,
                        Roundtrip::Exec(x) => {
                            let Some(want) = &want else {
                                return Err(StepError::Foreign(format!(
                                    "no fingerprint of {w:?} to check what signers send"
                                )));
                            };
                            let value = self.value_for_proof(w).await?;
                            let signer = probe::Signer {
                                consumer: c.name(),
                                instance: &inst.id,
                                at,
                            };
                            gate::exec_verdict(x, signer, &value, want, timeout)
                                .await
                                .map_err(|detail| StepError::Proof {
                                    consumer: c.name().into(),
                                    instance: inst.id.clone(),
                                    detail,
                                })?;
                            trips += 1;
                            continue;
                        }
                    };
                    let target = self
                        .e
                        .consumers
                        .iter()
                        .find(|t| t.name() == r.to)
                        .expect("playbook validated roundtrip targets");
                    for ti in self.serving(target).await? {
                        let Some(to) = ti.addr else { continue };
                        probe::roundtrip(r, at, to, timeout).await.map_err(|e| {
                            StepError::Proof {
                                consumer: c.name().into(),
                                instance: inst.id.clone(),
                                detail: format!("round trip to {} instance {}: {e}", r.to, ti.id),
                            }
                        })?;
                        trips += 1;
                    }
                }
            }
        }
        Ok(format!(
            "{signers} signer instances send {}; {trips} round trips passed",
            self.fp_str(w)
        ))
    }
}
