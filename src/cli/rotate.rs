//! `rotor rotate`, `rotor resume`, `rotor rollback`.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, engine_for_writing, load};
use crate::engine::journal::Mode;
use std::io::IsTerminal as _;

use crate::engine::{Confirm, Due, RunOptions, RunReport};
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
    /// when nothing is due. PLAYBOOK may be a directory of playbooks (see `--parallel`).
    #[arg(long)]
    pub if_due: bool,
    /// With `--if-due` and a directory of playbooks: how many secrets rotate at once.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "if_due")]
    pub parallel: usize,
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
    /// When an ordinary rotation is running, rekey asks it to stop at its next stable state
    /// and hand the rotation over (it does not wait for grace), and waits this long for it.
    /// At most 24h.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = handover_timeout)]
    pub handover_timeout: std::time::Duration,
    /// One wave instead of three: every consumer at once onto the new value alone. Requests
    /// between a signer and a validator fail until the wave ends; rotor samples round trips
    /// during it and reports the failures. Asks twice unless --yes; refused without a
    /// terminal unless --yes.
    #[arg(long)]
    pub hard_cut: bool,
    /// With --hard-cut: do not ask (scripts, no terminal).
    #[arg(long, short, requires = "hard_cut")]
    pub yes: bool,
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
        ..RunOptions::default()
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
    report.outcome.exit()
}

pub(super) async fn rotate(
    r: RotateArgs,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let a = r.run;
    if r.if_due && a.playbook.is_dir() {
        return rotate_dir(&a, r.parallel, state_dir, out).await;
    }
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    if !r.if_due {
        let opts = options(out, a.yes, a.until, a.rollback_to, a.force);
        let report = engine_for_writing(pb, out, true)
            .await?
            .rotate(&opts)
            .await?;
        return Ok(finish(out, &report));
    }
    if_due(pb, &a, out).await
}

/// One scheduled run of one playbook.
async fn if_due(pb: crate::playbook::Playbook, a: &RunArgs, out: &Arc<Output>) -> CliResult {
    // Scheduled: nobody is there to answer, so policy (this flag) confirms T4 and T5.
    let yes = a.yes || !std::io::stdin().is_terminal();
    let mut opts = options(out, yes, a.until, a.rollback_to, a.force);
    opts.mode = Mode::Scheduled;
    let label = format!("{} ({})", pb.secret, pb.environment.as_str());
    let engine = engine_for_writing(pb, out, true).await?;
    let due = engine.due(chrono::Utc::now()).await?;
    out.result(
        &serde_json::json!({"event": "due", "secret": label, "due": &due}),
        || match &due {
            Due::InProgress { rotation, state } => {
                format!("{label}: rotation {rotation} is in progress at {state}: resuming it")
            }
            Due::Yes { reason } => format!("{label}: due: {reason}"),
            Due::No { reason, next } => format!(
                "{label}: not due: {reason}{}",
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

/// `--if-due` over every playbook (`*.yaml`, `*.yml`) of a directory: at most `parallel`
/// secrets at once, one run per secret and environment. Exit: the worst failure if any run
/// failed, else 0 if something rotated, else 9.
async fn rotate_dir(
    a: &RunArgs,
    parallel: usize,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let usage = |message: String| super::CliError {
        message,
        exit: Exit::Usage,
    };
    if state_dir.is_some() {
        return Err(usage(
            "--state-dir names one state directory; over a directory of playbooks each keeps its own\n  help: drop --state-dir, or run one playbook".into(),
        ));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.playbook)
        .map_err(|e| usage(format!("cannot read {}: {e}", a.playbook.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(usage(format!(
            "{} holds no playbook (*.yaml)",
            a.playbook.display()
        )));
    }
    // Every playbook loads before anything runs: a bad one changes nothing anywhere.
    let mut pbs = Vec::with_capacity(files.len());
    let mut seen = std::collections::BTreeMap::new();
    for f in &files {
        let pb = load_with(f, None, a.concurrency)?;
        let key = (pb.secret.clone(), pb.environment.as_str().to_string());
        if let Some(other) = seen.insert(key.clone(), f.clone()) {
            return Err(usage(format!(
                "{} and {} both rotate {} ({}): one rotation per secret and environment\n  help: keep one playbook per secret and environment in the directory",
                other.display(),
                f.display(),
                key.0,
                key.1
            )));
        }
        pbs.push((f.clone(), pb));
    }
    use futures_util::StreamExt as _;
    let results: Vec<(PathBuf, Result<Exit, super::CliError>)> =
        futures_util::stream::iter(pbs.into_iter().map(|(f, pb)| async move {
            let r = if_due(pb, a, out).await;
            (f, r)
        }))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut summary = Vec::new();
    let mut worst: Option<Exit> = None;
    let mut rotated = false;
    for (f, r) in &results {
        let (exit, message) = match r {
            Ok(e) => (*e, None),
            Err(e) => (e.exit, Some(e.message.clone())),
        };
        // A run an emergency rekey took over is not a failure of this job: the rekey finishes it.
        if exit == Exit::Ok || exit == Exit::HandedOver {
            rotated = true;
        } else if exit != Exit::NotDue {
            if let Some(m) = &message {
                out.error(&format!("{}: {m}", f.display()), exit as u8);
            }
            worst = Some(worst.map_or(exit, |w| if (exit as u8) > (w as u8) { exit } else { w }));
        }
        summary.push(serde_json::json!({"playbook": f, "exit": exit as u8, "error": message}));
    }
    out.result(
        &serde_json::json!({"event": "summary", "results": summary}),
        || {
            results
                .iter()
                .map(|(f, r)| {
                    let code = match r {
                        Ok(e) => *e as u8,
                        Err(e) => e.exit as u8,
                    };
                    format!("{}: exit {code}", f.display())
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(worst.unwrap_or(if rotated { Exit::Ok } else { Exit::NotDue }))
}

pub(super) async fn resume(a: RunArgs, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    let opts = options(out, a.yes, a.until, a.rollback_to, a.force);
    let report = engine_for_writing(pb, out, true)
        .await?
        .resume(&opts)
        .await?;
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
    if a.hard_cut && !a.yes && !confirm_hard_cut(out) {
        return Err(super::CliError {
            message: "--hard-cut not confirmed; nothing was changed\n  help: without --hard-cut, `rotor rekey --emergency` revokes in three waves with no failed request; to cut without questions pass --yes".into(),
            exit: Exit::Declined,
        });
    }
    let mut opts = options(out, true, None, State::S0, a.force);
    opts.mode = Mode::Emergency;
    opts.hard_cut = a.hard_cut;
    opts.handover_timeout = a.handover_timeout;
    opts.reason = match &a.incident {
        Some(i) => format!("{} (incident {i})", a.reason.trim()),
        None => a.reason.trim().to_string(),
    };
    let report = engine_for_writing(pb, out, true)
        .await?
        .rekey(&opts)
        .await?;
    Ok(finish(out, &report))
}

/// `--handover-timeout`: a duration of at most 24h.
fn handover_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > std::time::Duration::from_secs(86_400) {
        return Err("at most 24h: a rekey that waits longer is not an emergency".into());
    }
    Ok(d)
}

/// Asks twice: a hard cut causes failed requests on purpose.
fn confirm_hard_cut(out: &Output) -> bool {
    out.ask(
        "--hard-cut rolls every consumer at once onto the new value alone: requests between services fail until the wave ends. Cut?",
    ) && out.ask("Once more: accept failed requests for the length of one rollout wave?")
}

pub(super) async fn rollback(
    a: RollbackArgs,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let pb = load_with(&a.playbook, state_dir, a.concurrency)?;
    let opts = options(out, true, None, a.to, a.force);
    let report = engine_for_writing(pb, out, true)
        .await?
        .rollback(&opts)
        .await?;
    Ok(finish(out, &report))
}
