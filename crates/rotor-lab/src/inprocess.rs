//! In-process pods (image `lab/inprocess-responder`, or any image mapped to `inprocess`): the
//! demo service's router served from inside the lab on the pod's loopback address, built from
//! the container's args and the environment the kubelet resolved. No process, no log file:
//! 1,000 of them fit on two cores.
//!
//! Owns: those listeners. Must never: read the lab process's own environment for values.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;

use clap::Parser;
use tokio::sync::oneshot;

use rotor_demo_service::{self as service, AppState, ServiceArgs};

#[derive(Debug, Parser)]
#[command(name = "inprocess-responder", no_binary_name = true)]
struct Cli {
    #[command(flatten)]
    args: ServiceArgs,
}

/// Binds `addr` and serves until the returned sender fires (or is dropped).
pub(crate) async fn start(
    args: &[String],
    env: Vec<(String, OsString)>,
    addr: SocketAddr,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>), String> {
    let cli = Cli::try_parse_from(args).map_err(|e| format!("invalid args: {e}"))?;
    let env: HashMap<String, OsString> = env.into_iter().collect();
    let state =
        AppState::from_lookup(&cli.args, |k| env.get(k).cloned()).map_err(|e| format!("{e:#}"))?;
    let app = service::router(state).map_err(|e| format!("{e:#}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = service::serve(listener, app, async move {
            let _ = rx.await;
        })
        .await;
    });
    Ok((tx, task))
}
