//! `rotor check`: drift between the store and every consumer instance, and the value policy.
//! Several playbooks are also checked together: one secret must not hold the same value in two
//! environments. Exit 5 on any problem; otherwise 13 when a rotation is in the middle of a step
//! or no run drives it (each instance compared with the states before and after that step).

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, engine, load};
use crate::exit::Exit;
use crate::output::{Output, render_check};

/// `rotor check` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbooks (YAML); playbooks of one secret in several environments are compared.
    #[arg(required = true)]
    pub playbooks: Vec<PathBuf>,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let mut reports = Vec::new();
    for path in &a.playbooks {
        let pb = load(path, state_dir.clone())?;
        let (secret, environment) = (pb.secret.clone(), pb.environment.as_str().to_string());
        let report = engine(pb, out).await?.check().await?;
        reports.push((secret, environment, report));
    }
    // The same value in two environments (fingerprints are per secret name, so comparable).
    let mut shared = Vec::new();
    for (i, (s1, e1, r1)) in reports.iter().enumerate() {
        for (s2, e2, r2) in &reports[i + 1..] {
            if s1 != s2 || e1 == e2 {
                continue;
            }
            let held = |r: &crate::engine::check::DriftReport| {
                [r.store_primary.clone(), r.store_secondary.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
            };
            for fp in held(r1).iter().filter(|fp| held(r2).contains(fp)) {
                shared.push(format!(
                    "policy: {s1} holds the same value {fp} in {e1} and {e2}: give each environment its own"
                ));
            }
        }
    }
    let clean = shared.is_empty() && reports.iter().all(|(_, _, r)| r.problems.is_empty());
    if let [(_, _, only)] = reports.as_slice() {
        out.result(only, || render_check(only));
    } else {
        let json = serde_json::json!({
            "reports": reports.iter().map(|(s, e, r)| serde_json::json!({"secret": s, "environment": e, "report": r})).collect::<Vec<_>>(),
            "problems": shared,
        });
        out.result(&json, || {
            let mut text = String::new();
            for (s, e, r) in &reports {
                text.push_str(&format!("== {s} ({e})\n{}\n", render_check(r)));
            }
            for p in &shared {
                text.push_str(&format!("problem: {p}\n"));
            }
            text
        });
    }
    let in_progress = reports.iter().any(|(_, _, r)| r.in_progress.is_some());
    Ok(match (clean, in_progress) {
        (false, _) => Exit::Drift,
        (true, true) => Exit::RotationInProgress,
        (true, false) => Exit::Ok,
    })
}
