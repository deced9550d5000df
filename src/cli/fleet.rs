//! `rotor init`, `rotor up`, `rotor down`: create the store, start and stop process consumers.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, engine, engine_for_writing, load};
use crate::exit::Exit;
use crate::output::Output;

/// Arguments: just the playbook.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbook (YAML).
    pub playbook: PathBuf,
}

pub(super) async fn init(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let e = engine_for_writing(pb, out, false).await?;
    let fp = e.init().await?;
    out.result(
        &serde_json::json!({"event": "initialized", "store": e.store().describe(), "primary": fp}),
        || format!("created {} with primary {fp}", e.store().describe()),
    );
    Ok(Exit::Ok)
}

pub(super) async fn up(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let e = engine_for_writing(pb, out, true).await?;
    e.up().await?;
    let mut started = Vec::new();
    for c in e.consumers() {
        let n = c
            .instances()
            .await
            .map_err(crate::engine::EngineError::from)?
            .len();
        started.push(serde_json::json!({"consumer": c.name(), "instances": n}));
    }
    out.result(
        &serde_json::json!({"event": "up", "consumers": started}),
        || format!("fleet up: {}", serde_json::Value::Array(started.clone())),
    );
    Ok(Exit::Ok)
}

pub(super) async fn down(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let n = engine(pb, out).await?.down().await?;
    out.result(&serde_json::json!({"event": "down", "stopped": n}), || {
        format!("stopped {n} instances")
    });
    Ok(Exit::Ok)
}

pub(super) async fn failpoints(
    a: Args,
    state_dir: Option<PathBuf>,
    out: &Arc<Output>,
) -> CliResult {
    let pb = load(&a.playbook, state_dir)?;
    let consumers: Vec<(String, crate::protocol::Role)> = pb
        .consumers
        .iter()
        .map(|c| (c.name.clone(), c.role))
        .collect();
    let mut all = crate::engine::failpoint::all(&consumers);
    // The points of a process instance's start (crate::consumer::process::START_POINTS).
    for c in &pb.consumers {
        if matches!(c.kind, crate::playbook::ConsumerKind::Process(_)) {
            all.extend(crate::consumer::process::failpoints(&c.name));
        }
    }
    out.result(&all, || all.join("\n"));
    Ok(Exit::Ok)
}
