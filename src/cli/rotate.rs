//! `rotor rotate`, `rotor resume`, `rotor rollback`.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, engine, load};
use crate::engine::journal::Mode;
use std::io::IsTerminal as _;

use crate::engine::{Confirm, Due, RunOptions, RunOutcome, RunReport};
use crate::exit::Exit;
use crate::output::{Format, Output, render_report};
use crate::protocol::State;

/// `rotor rotate` and `rotor resume` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The playbook (YAML).
    pub playbook: PathBuf,
    /// Do not ask before T4 (narrow) and T5 (finalize).
    #[arg(long, short)]
    pub yes: bool,
    /// Stop at this stage (S1..S5, or published, dual-accept, promoted, retired, finalized).
    #[arg(long)]
    pub until: Option<State>,
    /// Where automatic rollback goes after a failure (default S0).
    #[arg(long, default_value = "S0")]
    pub rollback_to: State,
    /// Take over the lock if its holder stopped renewing it (an expired Lease). Check first
    /// that the run that held it is really gone; a live lock is never taken.
    #[arg(long)]
    pub force: bool,
    /// How many consumers of one wave may roll (and be proven) at once; overrides the
    /// playbook's `concurrency` for this run (1 to 1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
}

/// `rotor rotate` arguments.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Scheduled mode: rotate only when the primary is older than the playbook's `max_age` (or
    /// Secret Manager's `next_rotation_time` has passed), resuming a rotation in progress
    /// first. Without a terminal it never asks (T4 and T5 proceed as with `--yes`). Exits 9
    /// when nothing is due.
    #[arg(long)]
    pub if_due: bool,
}

/// `rotor rekey` arguments.
#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    /// The playbook (YAML).
    pub playbook: PathBuf,
    /// Required: this is the after-a-leak path (grace 0, the old value destroyed right after
    /// every validator rejects it, no questions).
    #[arg(long, required = true)]
    pub emergency: bool,
    /// Why, for the journal and the audit log (never put a value here).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The incident id, recorded with the reason.
    #[arg(long, value_name = "ID")]
    pub incident: Option<String>,
    /// Take over the lock if its holder stopped renewing it (an expired Lease). A live lock is
    /// never taken: stop the run that holds it first.
    #[arg(long)]
    pub force: bool,
    /// How many consumers of one wave may roll (and be proven) at once (1 to 1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
}

/// `rotor rollback` arguments.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The playbook (YAML).
    pub playbook: PathBuf,
    /// Stop the rollback at this stable state (default S0).
    #[arg(long, default_value = "S0")]
    pub to: State,
    /// Take over the lock if its holder stopped renewing it (an expired Lease). Check first
    /// that the run that held it is really gone; a live lock is never taken.
    #[arg(long)]
    pub force: bool,
    /// How many consumers of one wave may roll (and be proven) at once; overrides the
    /// playbook's `concurrency` for this run (1 to 1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
}

struct Ask(Arc<Output>);

impl Confirm for Ask {
    fn confirm(&self, question: &str) -> bool {
        self.0.ask(question)
    }
}

fn options(
    out: &Arc<Output>,
    yes: bool,
    until: Option<State>,
    rollback_to: State,
    force: bool,
) -> RunOptions {
    RunOptions {
        mode: Mode::Operator,
        yes,
        until,
        rollback_to,
        confirm: Arc::new(Ask(out.clone())),
        force,
        reason: String::new(),
    }
}

/// The playbook with the command line's `--concurrency`, if given.
fn load_with(
    path: &std::path::Path,
    state_dir: Option<PathBuf>,
    concurrency: Option<u16>,
) -> Result<crate::playbook::Playbook, super::CliError> {
    let mut pb = load(path, state_dir)?;
    if let Some(n) = concurrency {
        pb.concurrency = usize::from(n);
    }
    Ok(pb)
}

fn finish(out: &Output, report: &RunReport) -> Exit {
    if out.format() == Format::Json {
        out.json(&serde_json::json!({"event": "report", "report": report}));
    } else {
        out.line(&render_report(report));
    }
    match report.outcome {
        RunOutcome::Declined => Exit::Declined,
        _ => Exit::Ok,
    }
}

pub(super) async fn rotate(
    r: RotateArgs,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let a = r.run;
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    if !r.if_due {
        let opts = options(out, a.yes, a.until, a.rollback_to, a.force);
        let report = engine(pb, out).await?.rotate(&opts).await?;
        return Ok(finish(out, &report));
    }
    // Scheduled: nobody is there to answer, so policy (this flag) confirms T4 and T5.
    let yes = a.yes || !std::io::stdin().is_terminal();
    let mut opts = options(out, yes, a.until, a.rollback_to, a.force);
    opts.mode = Mode::Scheduled;
    let engine = engine(pb, out).await?;
    let due = engine.due(chrono::Utc::now()).await?;
    out.result(
        &serde_json::json!({"event": "due", "due": &due}),
        || match &due {
            Due::InProgress { rotation, state } => {
                format!("rotation {rotation} is in progress at {state}: resuming it")
            }
            Due::Yes { reason } => format!("due: {reason}"),
            Due::No { reason, next } => format!(
                "not due: {reason}{}",
                next.map(|n| format!("; due at {}", n.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            ),
        },
    );
    let report = match due {
        Due::No { .. } => return Ok(Exit::NotDue),
        Due::InProgress { .. } => engine.resume(&opts).await?,
        Due::Yes { .. } => engine.rotate(&opts).await?,
    };
    Ok(finish(out, &report))
}

pub(super) async fn resume(a: RunArgs, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    let opts = options(out, a.yes, a.until, a.rollback_to, a.force);
    let report = engine(pb, out).await?.resume(&opts).await?;
    Ok(finish(out, &report))
}

pub(super) async fn rekey(
    a: RekeyArgs,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    if a.reason.trim().is_empty() {
        return Err(super::CliError {
            message: "--reason is empty\n  help: say why, e.g. --reason \"key printed in CI logs\""
                .into(),
            exit: Exit::Usage,
        });
    }
    let mut opts = options(out, true, None, State::S0, a.force);
    opts.mode = Mode::Emergency;
    opts.reason = match &a.incident {
        Some(i) => format!("{} (incident {i})", a.reason.trim()),
        None => a.reason.trim().to_string(),
    };
    let report = engine(pb, out).await?.rekey(&opts).await?;
    Ok(finish(out, &report))
}

pub(super) async fn rollback(
    a: RollbackArgs,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    let opts = options(out, true, None, a.to, a.force);
    let report = engine(pb, out).await?.rollback(&opts).await?;
    Ok(finish(out, &report))
}
