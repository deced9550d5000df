//! `rotor plan`: prints the waves; reads the store and journal, writes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, load};
use crate::engine::EngineError;
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
    let cluster = match &pb.cluster {
        Some(spec) => Some(
            crate::cluster::Cluster::connect(spec)
                .await
                .map_err(EngineError::from)?,
        ),
        None => None,
    };
    let store = crate::store::open(&pb, cluster.as_ref()).map_err(EngineError::from)?;
    let consumers = crate::consumer::open_all(&pb, cluster.as_ref()).map_err(EngineError::from)?;
    let mut instances = std::collections::BTreeMap::new();
    for c in &consumers {
        instances.insert(
            c.name().to_string(),
            c.desired_instances().await.map_err(EngineError::from)?,
        );
    }
    // A store that cannot be read (corrupt, wrong mode, unreachable) is reported as `check`
    // reports it, with the same exit code; only a store that does not exist yet is planned
    // from scratch.
    let snapshot = if store.exists().await.map_err(EngineError::from)? {
        Some(store.snapshot().await.map_err(EngineError::from)?)
    } else {
        None
    };
    // Loading only reads (a missing ConfigMap is no journal, and is not created).
    let journal = crate::engine::journal::open(&pb, cluster.as_ref())
        .map_err(EngineError::from)?
        .load()
        .await
        .map_err(EngineError::from)?;
    let plan = crate::engine::plan::plan(
        &pb,
        store.describe(),
        snapshot.as_ref(),
        journal.as_ref(),
        a.until.unwrap_or(State::S5),
        &instances,
    );
    out.result(&plan, || render_plan(&plan));
    Ok(Exit::Ok)
}
