//! `rotor demo`: the embedded local fleet, rotated under load, with a report whose last line is
//! one JSON object.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CliError, CliResult};
use crate::exit::Exit;
use crate::output::Output;

/// `rotor demo` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A playbook to run instead of the embedded `playbooks/local-demo.yaml` (its store and
    /// state are redirected to the scratch directory).
    #[arg(long)]
    pub playbook: Option<PathBuf>,
    /// Run the Kubernetes demo instead: start a lab (a local Kubernetes API server whose pods
    /// are real processes) and rotate `playbooks/k8s-demo.yaml` through it.
    #[arg(long)]
    #[cfg_attr(not(feature = "lab"), arg(hide = true))]
    pub lab: bool,
    /// With `--lab`: a lab topology file instead of the embedded
    /// `playbooks/lab-demo.topology.yaml`.
    #[arg(long, requires = "lab")]
    #[cfg_attr(not(feature = "lab"), arg(hide = true))]
    pub topology: Option<PathBuf>,
    /// Scratch directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Load workers per signer→validator path (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = workers)]
    pub workers: usize,
    /// Pause between two requests of one worker, e.g. `5ms` (1ms to 10s).
    #[arg(long, default_value = "5ms", value_parser = interval)]
    pub interval: Duration,
}

/// `--workers`: from 1 to 64.
fn workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err("give a number of workers from 1 to 64".into()),
    }
}

/// `--interval`: from 1ms to 10s (a zero interval would not pace the load at all).
fn interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(10) {
        return Err("give an interval from 1ms to 10s".into());
    }
    Ok(d)
}

pub(super) async fn run(a: Args, out: &Arc<Output>) -> CliResult {
    // Refused before the scratch directory exists: a refusal creates nothing.
    #[cfg(not(feature = "lab"))]
    if a.lab {
        return Err(no_lab());
    }
    let (dir, _keep) = crate::demo::scratch(a.dir.clone()).map_err(|e| CliError {
        message: format!("cannot create the demo directory: {e}"),
        exit: Exit::Internal,
    })?;
    let (report, err) = if a.lab {
        run_lab(&a, &dir, out).await?
    } else {
        let pb = crate::demo::demo_playbook(a.playbook.as_deref(), &dir)?;
        drives_load(&pb)?;
        out.line(&format!(
            "rotor demo: {} consumers on loopback, state in {}",
            pb.consumers.len(),
            dir.display()
        ));
        crate::demo::run(pb, None, out.clone(), a.workers, a.interval).await?
    };
    let restarts: Vec<String> = report
        .restarts
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{:?} {} {:.2}s", s.transition, s.direction, s.seconds))
        .collect();
    out.line(&format!(
        "\nreport\n  requests: {}\n  failed requests: {}\n  rotation: {} in {:.2}s (waiting {:.2}s, orchestration {:.2}s)\n  stages: {}\n  restarts: {}",
        report.requests,
        report.failed_requests,
        report.outcome,
        report.rotation_seconds,
        report.waited_seconds,
        report.orchestration_overhead_seconds,
        stages.join(", "),
        restarts.join(", ")
    ));
    for f in &report.first_failures {
        out.line(&format!("  failure: {f}"));
    }
    // The last line, in every output format: one JSON object.
    out.json(&report);
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(if report.failed_requests > 0 {
        Exit::FailedRequests
    } else {
        Exit::Ok
    })
}

/// The demo's traffic runs through the playbook's `http` round trips (signer relays); without
/// one it would report 0 failed requests out of 0.
fn drives_load(pb: &crate::playbook::Playbook) -> Result<(), CliError> {
    if crate::demo::load::paths(pb).is_empty() {
        return Err(CliError {
            message: "the demo drives its traffic through the playbook's http round trips (a signer's relay to a validator), and this playbook has none, so it would measure nothing\n  help: give a signer an http round trip (`- {to: <validator>, path: \"/relay/<validator>?target={target}\"}`), or rotate with `rotor rotate` and your own traffic".into(),
            exit: Exit::Usage,
        });
    }
    Ok(())
}

/// `--lab`: the demo through the Kubernetes path, on a lab started for the run.
#[cfg(feature = "lab")]
async fn run_lab(
    a: &Args,
    dir: &std::path::Path,
    out: &Arc<Output>,
) -> Result<(crate::demo::DemoReport, Option<crate::engine::EngineError>), CliError> {
    let pb = crate::demo::lab_playbook(a.playbook.as_deref(), dir)?;
    drives_load(&pb)?;
    let topology = crate::demo::lab_topology(a.topology.as_deref()).map_err(|e| CliError {
        message: format!("lab topology {e}"),
        exit: Exit::Usage,
    })?;
    out.line(&format!(
        "rotor demo --lab: {} Kubernetes consumers on a local lab, state in {}",
        pb.consumers.len(),
        dir.display()
    ));
    crate::demo::run_lab(pb, topology, dir, out.clone(), a.workers, a.interval)
        .await
        .map_err(|e| match e {
            crate::demo::LabDemoError::Engine(e) => CliError::from(e),
            other => CliError {
                message: other.to_string(),
                exit: Exit::Internal,
            },
        })
}

/// `--lab` in a rotor built without the lab.
#[cfg(not(feature = "lab"))]
async fn run_lab(
    _a: &Args,
    _dir: &std::path::Path,
    _out: &Arc<Output>,
) -> Result<(crate::demo::DemoReport, Option<crate::engine::EngineError>), CliError> {
    Err(no_lab())
}

/// Why `--lab` cannot run in this build.
#[cfg(not(feature = "lab"))]
fn no_lab() -> CliError {
    CliError {
        message: "this rotor was built without the lab (cargo feature `lab`), so `demo --lab` cannot run\n  help: build with the default features: cargo build --release -p rotor".into(),
        exit: Exit::Usage,
    }
}

#[cfg(all(test, not(feature = "lab")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_lab_without_the_lab_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("demo");
        let a = Args {
            playbook: None,
            lab: true,
            topology: None,
            dir: Some(scratch.clone()),
            workers: 1,
            interval: Duration::from_millis(5),
        };
        let out = Arc::new(Output::new(crate::output::Format::Json));
        let e = run(a, &out).await.unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("built without the lab"), "{}", e.message);
        assert!(!scratch.exists());
    }
}
