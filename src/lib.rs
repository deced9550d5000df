//! rotor rotates a shared secret across the services that use it without a failed request.
//!
//! The protocol (`protocol`) says what must hold in each state; the engine (`engine`) walks the
//! states with a journal and a lock; stores (`store`), consumers (`consumer`) and probes
//! (`probe`) are the backends it drives; `cli` parses arguments and calls the engine, which never
//! sees clap types; `output` is the only module that prints. `secret` and `jwt` come from
//! `crates/rotor-secret`, the one place rotor, its lab and its demo service share code.
//! docs/architecture.md maps the whole workspace.

pub use rotor_secret::{jwt, secret};

pub mod cli;
pub mod cluster;
pub mod consumer;
pub mod demo;
pub mod discover;
pub mod dotenv;
pub mod engine;
pub mod events;
pub mod exit;
pub mod graph;
pub mod manifests;
pub mod notify;
pub mod output;
pub mod playbook;
pub mod probe;
pub mod protocol;
pub mod redact;
pub mod state_dir;
pub mod stop;
pub mod store;
pub mod transport;
