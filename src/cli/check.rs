//! `rotor check`: drift between the store and every consumer instance. Exit 5 on drift.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, engine, load};
use crate::exit::Exit;
use crate::output::{Output, render_check};

/// `rotor check` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML).
    pub playbook: PathBuf,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let report = engine(pb, out).await?.check().await?;
    out.result(&report, || render_check(&report));
    Ok(if report.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Drift
    })
}
