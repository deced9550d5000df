//! `rotor manifests --playbook FILE --image IMAGE`: a CronJob, ServiceAccount, Role,
//! RoleBinding and the playbook's ConfigMap for running `rotor rotate --if-due` in a cluster
//! (`docs/scheduled.md`). Prints YAML; changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliError, CliResult, load};
use crate::exit::Exit;
use crate::output::Output;

/// `rotor manifests` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML) the CronJob runs.
    #[arg(long)]
    pub playbook: PathBuf,
    /// A container image with `rotor` on its PATH and `/bin/sh`.
    #[arg(long)]
    pub image: String,
    /// The CronJob's schedule (cron syntax, the cluster's time zone).
    #[arg(long, default_value = "17 3 * * *")]
    pub schedule: String,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let text = std::fs::read_to_string(&a.playbook).map_err(|e| CliError {
        message: format!("cannot read {}: {e}", a.playbook.display()),
        exit: Exit::Usage,
    })?;
    let opts = crate::manifests::Options {
        image: a.image,
        schedule: a.schedule,
    };
    let yaml = crate::manifests::render(&pb, &text, &opts).map_err(|e| CliError {
        message: format!(
            "playbook {}: {e}\n  help: docs/scheduled.md lists what a scheduled playbook needs",
            a.playbook.display()
        ),
        exit: Exit::Usage,
    })?;
    out.result(&serde_json::json!({"manifests": yaml}), || yaml.clone());
    Ok(Exit::Ok)
}
