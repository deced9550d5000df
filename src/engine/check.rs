//! `check`: drift between the store and what every consumer instance actually holds.
//!
//! Owns: comparing, per consumer instance and per name, the fingerprint it holds with the one
//! the store (and the rotation's state) says it should hold; flagging names that map to two
//! values, values the store never had, and validators that would reject what a signer sends;
//! and proving every instance: a validator accepts what the store says it must and rejects a
//! fresh canary (else it "fails open"), a signer's round trips pass. Reads only: probes and
//! round trips change nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::gate::Labeled;
use super::journal::Status;
use super::{Engine, EngineError};
use crate::consumer::HeldSource;
use crate::playbook::{SlotNames, SlotRef};
use crate::protocol::{Role, State, Which, accepts, consumer_slots, sends};
use crate::secret::Fingerprint;

/// What one instance holds.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// Consumer.
    pub consumer: String,
    /// Role.
    pub role: Role,
    /// Instance id.
    pub instance: String,
    /// Reported by the instance, or as configured by rotor.
    pub source: HeldSource,
    /// Fingerprint per name.
    pub names: BTreeMap<String, Fingerprint>,
    /// What it accepts.
    pub accepts: Vec<Fingerprint>,
    /// What it sends.
    pub sends: Option<Fingerprint>,
}

/// The drift report.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// The state the fleet should be in.
    pub state: State,
    /// Rotation in progress.
    pub rotation: Option<String>,
    /// Store primary fingerprint.
    pub store_primary: Option<Fingerprint>,
    /// Store secondary fingerprint.
    pub store_secondary: Option<Fingerprint>,
    /// Every instance.
    pub instances: Vec<InstanceView>,
    /// Every file a consumer reads its values from (dotenv consumers), as read back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::consumer::FileView>,
    /// Processes rotor started that run but serve no one (each is also a problem).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<crate::consumer::Leftover>,
    /// Every problem found (empty: no drift).
    pub problems: Vec<String>,
    /// A rotation in the middle of a step, or running with no run driving it: what it is and
    /// what to run. Each instance was compared with the states before and after that step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
}

impl Engine {
    /// Proves one running instance for `state` through the same gate a rollout uses: a
    /// validator accepts what the store says it must and rejects a fresh canary; a signer
    /// reports what it sends and its round trips pass. Returns the problem found, if any.
    async fn prove_instance(
        &self,
        c: &std::sync::Arc<dyn crate::consumer::Consumer>,
        state: State,
        inst: &crate::consumer::Instance,
        values: &BTreeMap<Which, Labeled>,
    ) -> Option<String> {
        let Some(addr) = inst.addr else {
            return Some(format!(
                "{} {}: has no address to prove it at",
                c.name(),
                inst.id
            ));
        };
        let accept = accepts(state, c.role())
            .into_iter()
            .filter_map(|w| values.get(&w).cloned())
            .collect();
        let sends = sends(state, c.role()).and_then(|w| values.get(&w).cloned());
        let gate = self.gate(c, accept, Vec::new(), sends, true);
        let at = crate::consumer::Reach {
            addr,
            host: inst.host.as_deref(),
        };
        let r = crate::consumer::Gate::prove(&gate, &inst.id, at)
            .await
            .err()?;
        Some(format!(
            "{} {}: {}{}",
            c.name(),
            inst.id,
            if r.fails_open { "fails open: " } else { "" },
            r.detail
        ))
    }

    /// The store's slot values judged by the policy (`super::policy`), and values the store
    /// held before under another version.
    async fn policy_problems(
        &self,
        snap: &crate::store::StoreSnapshot,
    ) -> Result<Vec<String>, EngineError> {
        let weak = super::policy::load_weak(&self.pb).map_err(EngineError::Io)?;
        let mut out = Vec::new();
        for (slot, id) in [("primary", &snap.primary), ("secondary", &snap.secondary)] {
            let Some(v) = id.as_deref().and_then(|i| snap.version(i)) else {
                continue;
            };
            if v.state != crate::store::VersionState::Enabled {
                continue;
            }
            let value = self.store.read_value(&v.id).await?;
            crate::redact::remember(&self.pb.secret, &value);
            for why in super::policy::violations(&self.pb, &value, &weak) {
                out.push(format!(
                    "policy: the store's {slot} {} (version {}) is {why}",
                    v.fingerprint, v.id
                ));
            }
            if let Some(earlier) = snap
                .versions
                .iter()
                .find(|o| o.id != v.id && o.fingerprint == v.fingerprint)
            {
                out.push(format!(
                    "policy: the store's {slot} {} (version {}) was already used by version {}",
                    v.fingerprint, v.id, earlier.id
                ));
            }
        }
        Ok(out)
    }

    /// Compares the store with every consumer instance.
    pub async fn check(&self) -> Result<DriftReport, EngineError> {
        self.screen_playbook().await?;
        let snap = self.store.snapshot().await?;
        let fp_of = |id: &Option<String>| {
            id.as_deref()
                .and_then(|i| snap.version(i))
                .map(|v| v.fingerprint.clone())
        };
        let journal = self.journals.load().await?.filter(|j| j.status.is_active());
        let (state, a, b) = match &journal {
            Some(j) => (
                j.state,
                Some(j.old.fingerprint.clone()),
                j.new.as_ref().map(|n| n.fingerprint.clone()),
            ),
            None => (State::S0, fp_of(&snap.primary), None),
        };
        let which = |w: Which| match w {
            Which::A => a.clone(),
            Which::B => b.clone(),
        };
        let label = |fp: &Fingerprint| -> String {
            if Some(fp) == a.as_ref() {
                format!("{fp} (A)")
            } else if Some(fp) == b.as_ref() {
                format!("{fp} (B)")
            } else {
                fp.to_string()
            }
        };
        let mut problems = Vec::new();
        let mut views = Vec::new();
        let mut files = Vec::new();
        let mut leftovers = Vec::new();
        // The values themselves, for the proofs (a disabled A is not readable: skipped).
        let version = |w: Which| match (&journal, w) {
            (Some(j), Which::A) => j.old.version.clone(),
            (Some(j), Which::B) => j.new.as_ref().and_then(|n| n.version.clone()),
            (None, Which::A) => snap.primary.clone(),
            (None, Which::B) => None,
        };
        let mut values: BTreeMap<Which, Labeled> = BTreeMap::new();
        for w in [Which::A, Which::B] {
            if let (Some(id), Some(fp)) = (version(w), which(w))
                && snap
                    .version(&id)
                    .is_some_and(|v| v.state == crate::store::VersionState::Enabled)
            {
                let value = self.store.read_value(&id).await?;
                crate::redact::remember(&self.pb.secret, &value);
                values.insert(
                    w,
                    Labeled {
                        label: format!("{w:?} ({fp})"),
                        value,
                    },
                );
            }
        }
        // A step in progress (or interrupted): an instance may hold the state before it or the
        // state after it; either is what the protocol allows there.
        let other = journal
            .as_ref()
            .and_then(|j| j.dirty_step())
            .map(|st| match st.direction {
                crate::protocol::Direction::Forward => st.transition.to(),
                crate::protocol::Direction::Inverse => st.transition.from(),
            });
        let expected_in = |s: State, c: &std::sync::Arc<dyn crate::consumer::Consumer>| {
            let spec = self.pb.consumer(c.name()).expect("consumer from playbook");
            let plan = consumer_slots(s, c.role());
            let mut expected: Vec<(String, Option<Fingerprint>)> =
                vec![(spec.slots.primary.clone(), which(plan.primary))];
            if let Some(sec) = &spec.slots.secondary {
                expected.push((sec.clone(), plan.secondary.and_then(which)));
            }
            for (alias, slot) in &spec.slots.aliases {
                let w = match slot {
                    SlotRef::Primary => Some(plan.primary),
                    SlotRef::Secondary => plan.secondary,
                };
                expected.push((alias.clone(), w.and_then(which)));
            }
            expected
        };
        // What `who` holding `names` gets wrong: nothing when it matches the state before or
        // after the step in progress.
        let judge = |who: &str,
                     names: &BTreeMap<String, Fingerprint>,
                     c: &std::sync::Arc<dyn crate::consumer::Consumer>| {
            let spec = self.pb.consumer(c.name()).expect("consumer from playbook");
            let now = names_problems(
                who,
                names,
                &expected_in(state, c),
                &spec.slots,
                state,
                &label,
                &snap,
            );
            match other {
                Some(o)
                    if !now.is_empty()
                        && names_problems(
                            who,
                            names,
                            &expected_in(o, c),
                            &spec.slots,
                            o,
                            &label,
                            &snap,
                        )
                        .is_empty() =>
                {
                    Vec::new()
                }
                _ => now,
            }
        };
        let mut serving: BTreeMap<String, Vec<crate::consumer::Instance>> = BTreeMap::new();
        for c in &self.consumers {
            serving.insert(c.name().to_string(), c.instances().await?);
        }
        for c in &self.consumers {
            let instances = serving.get(c.name()).cloned().unwrap_or_default();
            if instances.is_empty() {
                problems.push(format!("{}: no instance is running", c.name()));
            }
            // Processes rotor started that serve no one but may still hold a value.
            match c.leftovers().await {
                Ok(found) => {
                    problems.extend(found.iter().map(|l| l.describe(label)));
                    leftovers.extend(found);
                }
                Err(e) => problems.push(format!(
                    "{}: cannot look for processes left running: {e}",
                    c.name()
                )),
            }
            // The files the consumer reads its values from (a dotenv consumer's), like instances.
            for f in c.files().await {
                let who = format!("{} {}", c.name(), f.file);
                problems.extend(f.problems.iter().map(|p| format!("{who}: {p}")));
                problems.extend(judge(&who, &f.names, c));
                files.push(f);
            }
            for inst in instances {
                let (held, source) = match c.held(&inst).await {
                    Ok(h) => h,
                    Err(e) => {
                        problems.push(format!(
                            "{} {}: cannot read what it holds: {e}",
                            c.name(),
                            inst.id
                        ));
                        continue;
                    }
                };
                problems.extend(judge(&format!("{} {}", c.name(), inst.id), &held.names, c));
                let mut proof = self.prove_instance(c, state, &inst, &values).await;
                if proof.is_some()
                    && let Some(o) = other
                    && self.prove_instance(c, o, &inst, &values).await.is_none()
                {
                    proof = None;
                }
                problems.extend(proof);
                views.push(InstanceView {
                    consumer: c.name().into(),
                    role: c.role(),
                    instance: inst.id.clone(),
                    source,
                    names: held.names,
                    accepts: held.accepts,
                    sends: held.sends,
                });
            }
        }
        for s in views.iter().filter(|v| v.role.signs()) {
            let Some(sent) = &s.sends else { continue };
            for v in views.iter().filter(|v| v.role.validates()) {
                if !v.accepts.contains(sent) {
                    problems.push(format!(
                        "{} {} would reject what {} {} sends ({})",
                        v.consumer,
                        v.instance,
                        s.consumer,
                        s.instance,
                        label(sent)
                    ));
                }
            }
        }
        problems.dedup();
        problems.extend(self.policy_problems(&snap).await?);
        let in_progress = match &journal {
            Some(j)
                if other.is_some() || matches!(j.status, Status::Running | Status::RollingBack) =>
            {
                let holder = self.lock.holder().await.ok().flatten();
                let next =
                    crate::engine::lock::next_command(Some(j), holder.as_ref(), &self.pb.source)
                        .unwrap_or_default();
                Some(match j.dirty_step() {
                    Some(st) => format!(
                        "rotation {} is at {} in the middle of {} {} (each instance compared with the states before and after it); {next}",
                        j.id, j.state, st.transition, st.direction
                    ),
                    None => format!(
                        "rotation {} is at {} ({:?}); {next}",
                        j.id, j.state, j.status
                    ),
                })
            }
            _ => None,
        };
        Ok(DriftReport {
            state,
            rotation: journal.map(|j| j.id),
            store_primary: fp_of(&snap.primary),
            store_secondary: fp_of(&snap.secondary),
            instances: views,
            files,
            leftovers,
            problems,
            in_progress,
        })
    }
}

/// What is wrong with what `who` (an instance, a file) holds under each name, for `state`:
/// a name holding another value than `expected`, set when it should not be or missing; two
/// names of one slot holding different values; a value the store never had.
fn names_problems(
    who: &str,
    names: &BTreeMap<String, Fingerprint>,
    expected: &[(String, Option<Fingerprint>)],
    slots: &SlotNames,
    state: State,
    label: &dyn Fn(&Fingerprint) -> String,
    snap: &crate::store::StoreSnapshot,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in expected {
        let got = names.get(name);
        match (got, want) {
            (Some(g), Some(w)) if g != w => problems.push(format!(
                "{who}: {name} holds {}, expected {} at {state}",
                label(g),
                label(w)
            )),
            (None, Some(w)) => {
                problems.push(format!("{who}: {name} is not set, expected {}", label(w)))
            }
            (Some(g), None) => problems.push(format!(
                "{who}: {name} holds {}, expected nothing at {state}",
                label(g)
            )),
            _ => {}
        }
    }
    // One slot, two names, two values: the classic 403 cascade.
    let mut by_slot: BTreeMap<&str, Vec<(&String, &Fingerprint)>> = BTreeMap::new();
    by_slot
        .entry("primary")
        .or_default()
        .extend(names.get_key_value(&slots.primary));
    if let Some(sec) = &slots.secondary {
        by_slot
            .entry("secondary")
            .or_default()
            .extend(names.get_key_value(sec));
    }
    for (alias, slot) in &slots.aliases {
        let k = match slot {
            SlotRef::Primary => "primary",
            SlotRef::Secondary => "secondary",
        };
        by_slot
            .entry(k)
            .or_default()
            .extend(names.get_key_value(alias));
    }
    for (slot, same) in by_slot {
        if let Some((n0, f0)) = same.first()
            && let Some((n1, f1)) = same.iter().find(|(_, f)| f != f0)
        {
            problems.push(format!(
                "{who}: {n0} and {n1} name the {slot} slot but hold different values ({} vs {})",
                label(f0),
                label(f1)
            ));
        }
    }
    for fp in names.values() {
        if snap.by_fingerprint(fp).is_none() {
            problems.push(format!(
                "{who}: holds {fp}, a value this store never had (a test or hand-set value?)",
            ));
        }
    }
    problems
}
