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
    /// Scratch directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Load workers per signer→validator path.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Pause between two requests of one worker, e.g. `5ms`.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

pub(super) async fn run(a: Args, out: &Arc<Output>) -> CliResult {
    let (dir, _keep) = crate::demo::scratch(a.dir).map_err(|e| CliError {
        message: format!("cannot create the demo directory: {e}"),
        exit: Exit::Internal,
    })?;
    let pb = crate::demo::demo_playbook(a.playbook.as_deref(), &dir)?;
    out.line(&format!(
        "rotor demo: {} consumers on loopback, state in {}",
        pb.consumers.len(),
        dir.display()
    ));
    let (report, err) = crate::demo::run(pb, out.clone(), a.workers, a.interval).await?;
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
