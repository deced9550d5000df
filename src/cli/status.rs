//! `rotor status`: the rotation's state, last step and lock holder. Reads only.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, load};
use crate::engine::journal::JournalFile;
use crate::engine::lock::{FileLock, RotationLock};
use crate::exit::Exit;
use crate::output::{Output, render_status};

/// `rotor status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML).
    pub playbook: PathBuf,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let journal = JournalFile::new(&pb.state_dir)
        .load()
        .map_err(crate::engine::EngineError::from)?;
    let holder = if pb.state_dir.exists() {
        FileLock::new(&pb.state_dir)
            .holder()
            .map_err(crate::engine::EngineError::from)?
    } else {
        None
    };
    let value = serde_json::json!({"journal": journal, "lock": holder});
    out.result(&value, || render_status(journal.as_ref(), holder.as_ref()));
    Ok(Exit::Ok)
}
