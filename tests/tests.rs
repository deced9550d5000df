//! rotor's integration tests: one binary, one module per area.

mod architecture;
mod aws;
mod cli;
mod cloudrun;
mod common;
mod compose;
mod crash;
mod discover;
mod files;
mod gates;
mod gcp;
mod gcp_lab;
mod hardening;
mod host_targets;
mod kubernetes;
mod kubernetes_lock;
mod kubernetes_reload;
mod lab;
mod orphans;
mod playbook_errors;
mod rotation;
mod third_party;
mod tls;
mod tls_client;
mod vault;
