//! rotor's integration tests: one binary, one module per area.

mod cli;
mod common;
mod crash;
mod lab;
mod kubernetes_lock;
mod playbook_errors;
mod rotation;
