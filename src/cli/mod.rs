//! The command line: parses arguments and calls the engine. One file per command; the engine
//! never sees clap types.

mod check;
mod demo;
mod discover;
mod fleet;
mod graph;
mod manifests;
mod plan;
mod rotate;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::engine::{Engine, EngineError};
use crate::exit::Exit;
use crate::output::{Format, Output};
use crate::playbook::{self, Playbook};

/// rotor rotates a shared secret across the services that use it without a failed request.
#[derive(Debug, Parser)]
#[command(name = "rotor", version, about, long_about = None)]
pub struct Cli {
    /// Output format: `human` (progress bars on a terminal, lines otherwise) or `json` (one
    /// event per line).
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub output: Format,
    /// Override the playbook's state directory (journal, lock, audit log, fleet records).
    #[arg(long, global = true, env = "ROTOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context to use, over the playbook's `cluster.context`.
    #[arg(long, global = true, env = "ROTOR_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// rotor's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a rotation would do: waves, restarts, proofs. Changes nothing.
    Plan(plan::Args),
    /// Rotate the secret: S0 → S5 (or `--until`), rolling back automatically on failure.
    Rotate(rotate::RotateArgs),
    /// Continue an interrupted or paused rotation from its journal.
    Resume(rotate::RunArgs),
    /// Walk the rotation in progress back to S0 (or `--to`).
    Rollback(rotate::RollbackArgs),
    /// After a leak: rotate now with grace 0 and destroy the old value once every validator
    /// rejects it (`--emergency --reason TEXT`); takes over a rotation in progress.
    Rekey(rotate::RekeyArgs),
    /// Show the rotation's state, last step and lock holder.
    Status(status::Args),
    /// Compare what every consumer instance holds with the store; exit 5 on drift.
    Check(check::Args),
    /// Create the store with a first generated value (S0).
    Init(fleet::Args),
    /// Start the playbook's process consumers holding the store's current values.
    Up(fleet::Args),
    /// Stop the process consumers rotor started.
    Down(fleet::Args),
    /// Draw which secrets reach which consumers under which names (Mermaid or DOT).
    Graph(graph::Args),
    /// Map where a secret lives in a repository: who provides it, who reads it under which
    /// name, and what is wrong (duplicates, shared or weak values, names read but given nowhere).
    Discover(discover::Args),
    /// Print a CronJob, ServiceAccount, Role and RoleBinding that run the playbook on a schedule.
    Manifests(manifests::Args),
    /// Run the embedded demo: a local fleet rotated under load, with a report.
    Demo(demo::Args),
    /// The demo fleet's HTTP service (used by the demo playbook).
    #[command(hide = true)]
    DemoService(rotor_demo_service::ServiceArgs),
    /// List the test failpoints of a playbook.
    #[command(hide = true)]
    Failpoints(fleet::Args),
}

/// Entry point: parses, runs, prints the error once, picks the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::DemoService(args) = cli.command {
        return rotor_demo_service::main_blocking(args);
    }
    let out = Arc::new(Output::new(cli.output));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&format!("cannot start the async runtime: {e}"), 1);
            return Exit::Internal.into();
        }
    };
    let state_dir = cli.state_dir.clone();
    let _ = CONTEXT.set(cli.context.clone());
    let graceful = matches!(
        cli.command,
        Command::Rotate(_)
            | Command::Resume(_)
            | Command::Rollback(_)
            | Command::Rekey(_)
            | Command::Up(_)
    );
    let result = rt.block_on(async {
        if graceful {
            stop_on_signals(&out);
        }
        match cli.command {
            Command::Plan(a) => plan::run(a, state_dir, &out).await,
            Command::Rotate(a) => rotate::rotate(a, state_dir, &out).await,
            Command::Resume(a) => rotate::resume(a, state_dir, &out).await,
            Command::Rollback(a) => rotate::rollback(a, state_dir, &out).await,
            Command::Rekey(a) => rotate::rekey(a, state_dir, &out).await,
            Command::Status(a) => status::run(a, state_dir, &out).await,
            Command::Check(a) => check::run(a, state_dir, &out).await,
            Command::Init(a) => fleet::init(a, state_dir, &out).await,
            Command::Up(a) => fleet::up(a, state_dir, &out).await,
            Command::Down(a) => fleet::down(a, state_dir, &out).await,
            Command::Failpoints(a) => fleet::failpoints(a, state_dir, &out).await,
            Command::Graph(a) => graph::run(a, state_dir, &out).await,
            Command::Discover(a) => discover::run(a, &out).await,
            Command::Manifests(a) => manifests::run(a, state_dir, &out).await,
            Command::Demo(a) => demo::run(a, &out).await,
            Command::DemoService(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            out.error(&e.message, e.exit as u8);
            e.exit.into()
        }
    }
}

/// For commands that change the fleet: the first SIGINT or SIGTERM asks the run to stop at its
/// next safe point (`crate::stop`), and says so at once; a second one stops rotor there and
/// then, leaving the journal as a kill would (`rotor resume` or `rotor rollback` finish it).
fn stop_on_signals(out: &Arc<Output>) {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let out = out.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let sig = kind.as_raw_value();
                let name = crate::stop::name(sig);
                if crate::stop::request(sig) >= 2 {
                    out.notice(&format!(
                        "{name} again: stopping now. The journal holds the last step begun; `rotor status` shows it, `rotor resume` or `rotor rollback` finishes it"
                    ));
                    std::process::exit(crate::stop::exit_code(sig));
                }
                out.notice(&format!(
                    "{name} received: stopping at the next safe point (the instance in flight finishes, nothing new begins); send it again to stop at once"
                ));
            }
        });
    }
}

/// An error at the edge: the text users read and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Full message (may span lines, with `help:`).
    pub message: String,
    /// Exit code.
    pub exit: Exit,
}

impl CliError {
    /// A usage error (exit 2: nothing was changed).
    pub fn usage(message: String) -> CliError {
        CliError {
            message,
            exit: Exit::Usage,
        }
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        CliError {
            exit: e.exit(),
            message: e.to_string(),
        }
    }
}

impl From<playbook::PlaybookError> for CliError {
    fn from(e: playbook::PlaybookError) -> Self {
        CliError {
            exit: Exit::Usage,
            message: format!("playbook {e}"),
        }
    }
}

/// Result of a command.
pub type CliResult = Result<Exit, CliError>;

/// `--context`, set once by [`main`] before any command runs; read only by [`load`].
static CONTEXT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Loads a playbook and applies the `--state-dir` and `--context` overrides.
pub fn load(path: &std::path::Path, state_dir: Option<PathBuf>) -> Result<Playbook, CliError> {
    let mut pb = playbook::load_file(path)?;
    if let Some(d) = state_dir {
        pb.state_dir = std::path::absolute(&d).unwrap_or(d);
    }
    if let (Some(Some(context)), Some(cluster)) = (CONTEXT.get(), pb.cluster.as_mut()) {
        cluster.context = Some(context.clone());
    }
    Ok(pb)
}

/// Opens the engine for a playbook with `out` as its event sink.
pub async fn engine(pb: Playbook, out: &Arc<Output>) -> Result<Engine, CliError> {
    let events = crate::notify::around(&pb, out.clone());
    Ok(Engine::open(pb, events).await?)
}

/// Opens the engine for a command that writes: refuses, before anything is written, a store
/// that does not exist yet (`needs_store`; exit 2, nothing changed) and a `state_dir` rotor may
/// not use (see [`crate::state_dir`]), then creates and marks the state directory.
pub async fn engine_for_writing(
    pb: Playbook,
    out: &Arc<Output>,
    needs_store: bool,
) -> Result<Engine, CliError> {
    let state_dir = pb.state_dir.clone();
    let events = crate::notify::around(&pb, out.clone());
    let e = Engine::open(pb, events).await?;
    if needs_store && !e.store().exists().await.map_err(EngineError::from)? {
        return Err(EngineError::Store(crate::store::StoreError::Missing {
            store: e.store().describe(),
        })
        .into());
    }
    // The state directory is checked before anything is written into it, by whatever writes
    // first (lock, journal, store lock, fleet): a command refused before then creates nothing.
    crate::state_dir::check(&state_dir).map_err(CliError::usage)?;
    Ok(e)
}
