//! The demo fleet's HTTP service as a stand-alone binary (same as `rotor demo-service`).

use std::process::ExitCode;

use clap::Parser;

/// The demo fleet's HTTP service: validates and signs with a shared secret read from the
/// environment (or from the files of $ROTOR_SECRETS_DIR, re-read on SIGHUP and on change),
/// reports fingerprints, relays to peers.
#[derive(Debug, Parser)]
#[command(name = "rotor-demo-service", version)]
struct Cli {
    #[command(flatten)]
    args: rotor_demo_service::ServiceArgs,
}

fn main() -> ExitCode {
    rotor_demo_service::main_blocking(Cli::parse().args)
}
