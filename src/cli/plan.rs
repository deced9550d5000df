//! `rotor plan`: prints the waves; reads the store and journal, writes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, load};
use crate::engine::journal::JournalFile;
use crate::exit::Exit;
use crate::output::{Output, render_plan};
use crate::protocol::State;

/// `rotor plan` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML).
    pub playbook: PathBuf,
    /// Plan only up to this stage (S1..S5 or its name).
    #[arg(long)]
    pub until: Option<State>,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    // Read-only on purpose: no engine (which would create the state directory), no lock.
    let store = crate::store::open(&pb);
    let snapshot = if store.exists().await.unwrap_or(false) {
        store.snapshot().await.ok()
    } else {
        None
    };
    let journal = JournalFile::new(&pb.state_dir).load().ok().flatten();
    let plan = crate::engine::plan::plan(
        &pb,
        store.describe(),
        snapshot.as_ref(),
        journal.as_ref(),
        a.until.unwrap_or(State::S5),
    );
    out.result(&plan, || render_plan(&plan));
    Ok(Exit::Ok)
}
