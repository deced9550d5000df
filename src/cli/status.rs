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
use crate::playbook::{JournalKind, LockKind};

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
    let mut unlisted = Vec::new();
    let cluster = match &pb.cluster {
        Some(spec) if lease || configmap => Some(
            crate::cluster::Cluster::connect(spec)
                .await
                .map_err(EngineError::from)?,
        ),
        // Only the instance list needs it: a cluster out of reach is reported, not fatal.
        Some(spec) => match crate::cluster::Cluster::connect(spec).await {
            Ok(c) => Some(c),
            Err(e) => {
                unlisted.push(format!("the cluster: {e}"));
                None
            }
        },
        _ => None,
    };
    let journals = journal::open(&pb, cluster.as_ref()).map_err(EngineError::from)?;
    let journal = journals.load().await.map_err(EngineError::from)?;
    let lock = lock::open(&pb, cluster.as_ref(), None).map_err(EngineError::from)?;
    // A store that keeps its own lock and schedule (Secret Manager, Vault, AWS).
    let gcp = pb.store.keeps_own_lock();
    // The file lock creates its directory when opened: skip it when there is none.
    let (holder, stale) = if lease || gcp || pb.state_dir.exists() {
        (
            lock.holder().await.map_err(EngineError::from)?,
            lock.stale().await.map_err(EngineError::from)?,
        )
    } else {
        (None, None)
    };
    let playbook = a.playbook.display().to_string();
    let next = crate::engine::lock::next_command(journal.as_ref(), holder.as_ref(), &playbook);
    let liveness = holder.as_ref().map(crate::engine::lock::Holder::liveness);
    let next_rotation = if gcp {
        crate::store::open(&pb, None)
            .map_err(EngineError::from)?
            .next_rotation()
            .await
            .map_err(EngineError::from)?
    } else {
        None
    };
    // Every serving instance, with its address, pid and fingerprints (reads only).
    let mut instances = Vec::new();
    let consumers = match crate::consumer::open_all(&pb, cluster.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            unlisted.push(format!("the consumers: {e}"));
            Vec::new()
        }
    };
    for c in consumers {
        match c.instances().await {
            Ok(list) => instances.extend(list.into_iter().map(|i| {
                serde_json::json!({
                    "consumer": c.name(),
                    "id": i.id,
                    "addr": i.addr,
                    "pid": i.pid,
                    "primary": i.primary,
                    "secondary": i.secondary,
                })
            })),
            Err(e) => unlisted.push(format!("{}: {e}", c.name())),
        }
    }
    let value = serde_json::json!({
        "journal": journal,
        "lock": holder,
        "lock_liveness": liveness,
        "stale_lock": stale,
        "next": next,
        "journal_location": journals.describe(),
        "lock_location": lock.describe(),
        "next_rotation": next_rotation,
        "instances": instances,
        "unlisted": unlisted,
    });
    out.result(&value, || {
        let mut text = render_status(journal.as_ref(), holder.as_ref(), stale.as_ref(), &playbook);
        if !instances.is_empty() {
            text.push_str("\ninstances:");
            for i in &instances {
                text.push_str(&format!(
                    "\n  {} {} {} pid {} primary {} secondary {}",
                    i["consumer"].as_str().unwrap_or("-"),
                    i["id"].as_str().unwrap_or("-"),
                    i["addr"].as_str().unwrap_or("-"),
                    i["pid"]
                        .as_i64()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    i["primary"].as_str().unwrap_or("-"),
                    i["secondary"].as_str().unwrap_or("-"),
                ));
            }
        }
        for u in &unlisted {
            text.push_str(&format!("\ncannot list instances of {u}"));
        }
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
