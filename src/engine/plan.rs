//! `plan`: what a rotation would do, computed without changing anything.
//!
//! Owns: the wave list (which transition touches the store, which consumers restart, in which
//! order) from the playbook, the store's current slots and the journal. Reads only.

use serde::Serialize;

use crate::playbook::Playbook;
use crate::protocol::{Role, State, Transition};
use crate::store::StoreSnapshot;

use super::journal::Journal;

/// One consumer restarted by a wave.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRoll {
    /// Consumer.
    pub consumer: String,
    /// Its role.
    pub role: Role,
    /// Instances restarted (or reloaded).
    pub instances: usize,
    /// How: `restart`, or `reload (SIGHUP)`.
    pub pickup: String,
}

/// One transition of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Wave {
    /// Which transition.
    pub transition: Transition,
    /// Protocol name.
    pub name: &'static str,
    /// What happens to the store.
    pub store: Option<String>,
    /// Consumers restarted, in order.
    pub rolls: Vec<PlannedRoll>,
    /// What must hold before moving on.
    pub proof: String,
    /// A wait before this wave.
    pub wait: Option<String>,
    /// Whether the operator is asked first (unless `--yes`).
    pub confirm: bool,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Secret.
    pub secret: String,
    /// Environment.
    pub environment: String,
    /// Store description.
    pub store: String,
    /// Current primary fingerprint, if the store exists.
    pub current_primary: Option<String>,
    /// State the plan starts from.
    pub from: State,
    /// Rotation in progress, if any.
    pub rotation: Option<String>,
    /// Waves still to run.
    pub waves: Vec<Wave>,
    /// Instance restarts per consumer.
    pub restarts: Vec<(String, usize)>,
    /// Total instance restarts.
    pub total_restarts: usize,
    /// How rotor reaches each consumer reached over HTTPS (`tls`), by name.
    pub https: Vec<(String, String)>,
    /// How the values reach each consumer that does not get them as environment variables and
    /// a restart (values as files, reloads), by name.
    pub delivery: Vec<(String, String)>,
}

/// Computes the plan. `snapshot` is `None` when the store does not exist yet.
pub fn plan(
    pb: &Playbook,
    store: String,
    snapshot: Option<&StoreSnapshot>,
    journal: Option<&Journal>,
    until: State,
    instances: &std::collections::BTreeMap<String, usize>,
) -> Plan {
    let active = journal.filter(|j| j.status.is_active());
    let from = active.map(|j| j.state).unwrap_or(State::S0);
    let t = &pb.timings;
    let mut waves = Vec::new();
    let mut restarts: Vec<(String, usize)> =
        pb.consumers.iter().map(|c| (c.name.clone(), 0)).collect();
    for tr in Transition::ALL
        .into_iter()
        .filter(|tr| tr.from() >= from && tr.to() <= until)
    {
        let rolls: Vec<PlannedRoll> = pb
            .consumers
            .iter()
            .filter(|c| tr.rolls(c.role))
            .map(|c| PlannedRoll {
                consumer: c.name.clone(),
                role: c.role,
                instances: instances.get(&c.name).copied().unwrap_or(0),
                pickup: c.pickup_word(),
            })
            .collect();
        for r in &rolls {
            if let Some(e) = restarts.iter_mut().find(|(n, _)| *n == r.consumer) {
                e.1 += r.instances;
            }
        }
        let (store, proof, wait) = match tr {
            Transition::T1 => (
                Some(format!(
                    "generate B ({} {} chars), add it as secondary",
                    pb.generate.length,
                    format!("{:?}", pb.generate.alphabet).to_lowercase()
                )),
                "store reads back B's fingerprint".to_string(),
                None,
            ),
            Transition::T2 => (
                None,
                "every validator instance accepts B and still accepts A".into(),
                None,
            ),
            Transition::T3 => (
                Some("primary = B, secondary = A".into()),
                "every validator instance accepts B; every signer sends B; signer→validator round trips pass".into(),
                None,
            ),
            Transition::T4 => (
                Some("disable A".into()),
                "every validator instance accepts B and rejects A".into(),
                Some(format!("grace {}", humantime::format_duration(t.grace))),
            ),
            Transition::T5 => (
                Some("destroy A".into()),
                "A is gone from the store".into(),
                Some(format!("retention {}", humantime::format_duration(t.retention))),
            ),
        };
        waves.push(Wave {
            transition: tr,
            name: tr.name(),
            store,
            rolls,
            proof,
            wait,
            confirm: matches!(tr, Transition::T4 | Transition::T5),
        });
    }
    let total_restarts = restarts.iter().map(|(_, n)| n).sum();
    Plan {
        secret: pb.secret.clone(),
        environment: pb.environment.as_str().into(),
        store,
        current_primary: snapshot
            .and_then(|s| s.primary_version())
            .map(|v| v.fingerprint.to_string()),
        from,
        rotation: active.map(|j| j.id.clone()),
        waves,
        restarts,
        total_restarts,
        https: pb
            .consumers
            .iter()
            .filter_map(|c| c.tls.as_ref().map(|t| (c.name.clone(), t.describe())))
            .collect(),
        delivery: pb
            .consumers
            .iter()
            .filter_map(|c| {
                c.describe_delivery(&pb.state_dir)
                    .map(|d| (c.name.clone(), d))
            })
            .collect(),
    }
}
