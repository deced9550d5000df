//! The demo: a local fleet rotated under continuous load.
//!
//! Owns: bringing the embedded fleet (`playbooks/local-demo.yaml`) up in a scratch directory,
//! driving load through every signer→validator path while the engine rotates S0→S5, stopping
//! everything it started, and the report. Must never: leave a process running.

#[cfg(feature = "lab")]
mod lab;
pub mod load;
#[cfg(test)]
mod service_tests;

#[cfg(feature = "lab")]
pub use lab::{LabDemoError, lab_topology, run_lab};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::Cluster;
use crate::engine::journal::Mode;
use crate::engine::{Engine, EngineError, RunOptions, StageTiming};
use crate::events::EventSink;
use crate::playbook::{self, Playbook, StoreSpec};

/// The embedded demo playbook.
pub const LOCAL_DEMO: &str = include_str!("../../playbooks/local-demo.yaml");
/// The embedded Kubernetes demo playbook (`rotor demo --lab`).
pub const K8S_DEMO: &str = include_str!("../../playbooks/k8s-demo.yaml");
/// The lab topology the Kubernetes demo runs on.
pub const LAB_DEMO_TOPOLOGY: &str = include_str!("../../playbooks/lab-demo.topology.yaml");

/// What the demo measured. The CLI prints it as the last line of output.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Requests sent through signer→validator paths.
    pub requests: u64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// Instance restarts per consumer.
    pub restarts: BTreeMap<String, usize>,
    /// Steps and their durations.
    pub stages: Vec<StageTiming>,
    /// Final state (`S5`).
    pub state: String,
    /// `completed`, or the error that stopped the rotation.
    pub outcome: String,
    /// Wall time of the rotation.
    pub rotation_seconds: f64,
    /// Time the rotation spent waiting on rollouts, soak and grace.
    pub waited_seconds: f64,
    /// Rotation wall time minus waiting.
    pub orchestration_overhead_seconds: f64,
    /// Requests and failures per path.
    pub per_path: BTreeMap<String, (u64, u64)>,
    /// First failures, if any.
    pub first_failures: Vec<String>,
}

/// Loads the demo playbook (embedded, or `file`) with its store and state under `dir`.
pub fn demo_playbook(file: Option<&Path>, dir: &Path) -> Result<Playbook, playbook::PlaybookError> {
    let mut pb = match file {
        Some(f) => playbook::load_file(f)?,
        None => playbook::load_str(LOCAL_DEMO, "<embedded>/playbooks/local-demo.yaml", dir)?,
    };
    // A Vault or AWS store is the server's (the demo runs against it); any other store is the
    // demo's own file.
    if !matches!(pb.store, StoreSpec::Vault(_) | StoreSpec::Aws(_)) {
        pb.store = StoreSpec::Local {
            path: dir.join("demo-store.json"),
        };
    }
    pb.state_dir = dir.join("state");
    Ok(pb)
}

/// Loads the Kubernetes demo playbook (embedded, or `file`) with its state under `dir`. Its
/// store, lock and journal stay in the cluster, which `rotor demo --lab` starts.
pub fn lab_playbook(file: Option<&Path>, dir: &Path) -> Result<Playbook, playbook::PlaybookError> {
    let mut pb = match file {
        Some(f) => playbook::load_file(f)?,
        None => playbook::load_str(K8S_DEMO, "<embedded>/playbooks/k8s-demo.yaml", dir)?,
    };
    pb.state_dir = dir.join("state");
    Ok(pb)
}

/// Runs the demo in `dir`: init, fleet up, load, rotate, load stop, fleet down. `cluster` is
/// the connected cluster when the playbook uses one.
pub async fn run(
    pb: Playbook,
    cluster: Option<&Cluster>,
    events: Arc<dyn EventSink>,
    workers: usize,
    interval: Duration,
) -> Result<(DemoReport, Option<EngineError>), EngineError> {
    let events = crate::notify::around(&pb, events);
    let engine = match cluster {
        Some(c) => Engine::open_with(pb.clone(), events.clone(), Some(c))?,
        None => Engine::open(pb.clone(), events.clone()).await?,
    };
    engine.init().await?;
    let result = async {
        engine.up().await?;
        let load = load::Load::start(load::paths(&pb), workers, interval);
        let started = Instant::now();
        let opts = RunOptions {
            mode: Mode::Operator,
            yes: true,
            ..RunOptions::default()
        };
        let outcome = engine.rotate(&opts).await;
        let rotation_seconds = started.elapsed().as_secs_f64();
        let load = load.stop().await;
        Ok::<_, EngineError>((outcome, load, rotation_seconds))
    }
    .await;
    // Stop everything we started, whatever happened.
    let _ = engine.down().await;
    let (outcome, load, rotation_seconds) = result?;
    let (report, err) = match outcome {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let waited = report
        .as_ref()
        .map(|r| r.waited_seconds)
        .unwrap_or_default();
    Ok((
        DemoReport {
            requests: load.requests,
            failed_requests: load.failed_requests,
            restarts: report
                .as_ref()
                .map(|r| r.restarts.clone())
                .unwrap_or_default(),
            stages: report
                .as_ref()
                .map(|r| r.stages.clone())
                .unwrap_or_default(),
            state: report
                .as_ref()
                .map(|r| format!("{:?}", r.state))
                .unwrap_or_else(|| "-".into()),
            outcome: match &err {
                None => "completed".into(),
                Some(e) => e.to_string(),
            },
            rotation_seconds,
            waited_seconds: waited,
            orchestration_overhead_seconds: (rotation_seconds - waited).max(0.0),
            per_path: load.per_path,
            first_failures: load.first_failures,
        },
        err,
    ))
}

/// A scratch directory for the demo (removed when dropped unless kept).
pub fn scratch(dir: Option<PathBuf>) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((std::path::absolute(&d)?, None))
        }
        None => {
            let t = tempfile::Builder::new().prefix("rotor-demo-").tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}
