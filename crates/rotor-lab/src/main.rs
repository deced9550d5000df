//! The lab as a stand-alone binary: `rotor-lab --topology FILE [--dir DIR] [--listen ADDR]`.
//! Starts the lab, prints where it is, runs until SIGTERM/SIGINT, then stops every pod it
//! started and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rotor_lab::{Lab, LabOptions};

/// A local Kubernetes API server on loopback whose pods are real processes.
#[derive(Debug, Parser)]
#[command(name = "rotor-lab", version)]
struct Cli {
    /// The topology file (nodes, drain, Secret volume sync delay, images, faults, objects).
    #[arg(long, value_name = "FILE")]
    topology: PathBuf,
    /// Where logs, the kubeconfig and the fleet's endpoints files go (default: a new temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The API server's address (loopback).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = match cli.dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("rotor-lab-")
            .tempdir()
            .context("cannot create a temp dir")?
            .keep(),
    };
    let mut opts = LabOptions::new(cli.topology.as_path(), dir.clone());
    opts.listen = cli.listen;
    let lab = Lab::start(opts).await?;
    say(&format!("rotor-lab: API server on {}", lab.url()));
    say(&format!(
        "rotor-lab: kubeconfig {}",
        lab.kubeconfig_path().display()
    ));
    say(&format!(
        "rotor-lab: pod logs under {}",
        dir.join("logs").display()
    ));
    say(&format!(
        "export KUBECONFIG={}",
        lab.kubeconfig_path().display()
    ));
    say(&format!(
        "export {}={}   # the Secret Manager API v1 on the same address",
        rotor_lab::GCP_ENDPOINT_ENV,
        lab.url()
    ));
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    say("rotor-lab: stopping every pod");
    lab.shutdown().await;
    Ok(())
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROTOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rotor-lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
