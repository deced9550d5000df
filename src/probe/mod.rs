//! Probes: round trips that prove a value works (or is refused) against one instance.
//!
//! Owns: presenting a value to one instance (`header`, `jwt`, `exec`) and signer→validator
//! round trips. Probes always target one instance's own address, never a load-balanced one.
//! Must never: put the value in argv, a URL, a log line or an error message.

mod exec;
mod http;

use std::net::SocketAddr;
use std::time::Duration;

use crate::playbook::{ExecRoundtrip, ProbeSpec, RoundtripSpec};
use crate::secret::Fingerprint;
use crate::secret::SecretValue;
pub use crate::transport::Target;

/// What an instance did with a presented value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It accepted the value.
    Accepted,
    /// It refused the value.
    Rejected,
}

/// A probe could not reach a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Network or process failure.
    #[error("{probe} against {target}: {detail}")]
    Failed {
        /// Probe description (`header X-Service-Secret GET /api/ping`).
        probe: String,
        /// Instance address or id.
        target: String,
        /// What happened (status, connection error, exit code).
        detail: String,
    },
}

/// Presents `value` to the instance `at` (an address: plain HTTP; or a [`Target`] with its
/// consumer's transport) as `spec` says and returns its verdict.
pub async fn present(
    spec: &ProbeSpec,
    at: impl Into<Target<'_>>,
    value: &SecretValue,
    timeout: Duration,
) -> Result<Verdict, ProbeError> {
    let at = at.into();
    match spec {
        ProbeSpec::Header { .. } | ProbeSpec::Jwt { .. } => {
            http::present(spec, at, value, timeout).await
        }
        ProbeSpec::Exec { command, via } => exec::present(command, via, at, value, timeout).await,
    }
}

/// Asks the signer instance at `signer` to call the validator instance at `target` with what it
/// sends; `Ok` when the validator accepted.
pub async fn roundtrip(
    spec: &RoundtripSpec,
    signer: impl Into<Target<'_>>,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    http::roundtrip(spec, signer.into(), target, timeout).await
}

/// Who an exec round trip checks: one signer instance.
#[derive(Clone, Copy, Debug)]
pub struct Signer<'a> {
    /// The consumer's name.
    pub consumer: &'a str,
    /// The instance's id.
    pub instance: &'a str,
    /// Where rotor reaches it.
    pub at: Target<'a>,
}

/// Runs the exec round trip `spec` for the signer instance `signer`, which must send `value`
/// (fingerprint `fingerprint`): `Accepted` when the command says it does (exit 0), `Rejected`
/// when it says it sends something else (exit 1).
pub async fn exec_roundtrip(
    spec: &ExecRoundtrip,
    signer: Signer<'_>,
    value: &SecretValue,
    fingerprint: &Fingerprint,
    timeout: Duration,
) -> Result<Verdict, ProbeError> {
    let env = [
        ("ROTOR_EXPECTED_FINGERPRINT", fingerprint.to_string()),
        ("ROTOR_CONSUMER", signer.consumer.to_string()),
        ("ROTOR_INSTANCE", signer.instance.to_string()),
        ("ROTOR_INSTANCE_ADDR", signer.at.addr.to_string()),
        ("ROTOR_INSTANCE_URL", signer.at.url("")),
    ];
    exec::run(
        &spec.command,
        &spec.via,
        &env,
        value,
        timeout,
        signer.instance,
    )
    .await
}

/// A short description of an exec round trip for messages.
pub fn describe_exec(spec: &ExecRoundtrip) -> String {
    format!(
        "exec round trip {}",
        spec.command.first().map(String::as_str).unwrap_or("")
    )
}

/// How one round trip went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trip {
    /// The signer answered with the expected status: the validator accepted what it sent.
    Passed,
    /// The signer answered with another status (the validator refused, or the signer could not
    /// reach it); the detail says which.
    Refused(String),
    /// The signer itself could not be reached (an instance restarting, a timeout).
    Unreachable(String),
}

/// Like [`roundtrip`], but classifies the outcome instead of failing (for sampling traffic).
pub async fn trip(
    spec: &RoundtripSpec,
    signer: impl Into<Target<'_>>,
    target: SocketAddr,
    timeout: Duration,
) -> Trip {
    http::trip(spec, signer.into(), target, timeout).await
}

/// A short description of a probe for messages.
pub fn describe(spec: &ProbeSpec) -> String {
    match spec {
        ProbeSpec::Header { path, header, .. } => format!("header {header} GET {path}"),
        ProbeSpec::Jwt { path, .. } => format!("jwt GET {path}"),
        ProbeSpec::Exec { command, .. } => {
            format!("exec {}", command.first().map(String::as_str).unwrap_or(""))
        }
    }
}
