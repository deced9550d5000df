//! `rotor status`: the rotation's state, last step and lock holder, wherever the playbook keeps
//! them (state directory, the cluster's ConfigMap and Lease, or the Secret Manager secret's
//! annotation), and Secret Manager's own rotation schedule when the store has one. Reads only:
//! creates nothing, not even the state directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, load};
use crate::engine::EngineError;
use crate::engine::{journal, lock};
use crate::exit::Exit;
use crate::output::{Output, render_status};
use crate::playbook::{JournalKind, LockKind, StoreSpec};

/// `rotor status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML).
    pub playbook: PathBuf,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let lease = pb
        .cluster
        .as_ref()
        .is_some_and(|c| c.lock == LockKind::Lease);
    let configmap = pb
        .cluster
        .as_ref()
        .is_some_and(|c| c.journal == JournalKind::ConfigMap);
    let cluster = match &pb.cluster {
        Some(spec) if lease || configmap => Some(
            crate::cluster::Cluster::connect(spec)
                .await
                .map_err(EngineError::from)?,
        ),
        _ => None,
    };
    let journals = journal::open(&pb, cluster.as_ref()).map_err(EngineError::from)?;
    let journal = journals.load().await.map_err(EngineError::from)?;
    let lock = lock::open(&pb, cluster.as_ref(), None).map_err(EngineError::from)?;
    let gcp = matches!(pb.store, StoreSpec::Gcp(_));
    // The file lock creates its directory when opened: skip it when there is none.
    let holder = if lease || gcp || pb.state_dir.exists() {
        lock.holder().await.map_err(EngineError::from)?
    } else {
        None
    };
    let next_rotation = if gcp {
        crate::store::open(&pb, None)
            .map_err(EngineError::from)?
            .next_rotation()
            .await
            .map_err(EngineError::from)?
    } else {
        None
    };
    let value = serde_json::json!({
        "journal": journal,
        "lock": holder,
        "journal_location": journals.describe(),
        "lock_location": lock.describe(),
        "next_rotation": next_rotation,
    });
    out.result(&value, || {
        let mut text = render_status(journal.as_ref(), holder.as_ref());
        if let Some(at) = next_rotation {
            text.push_str(&format!(
                "\nSecret Manager schedule: next rotation due {}",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        text
    });
    Ok(Exit::Ok)
}
