//! Exec probes (stub, being written).
use std::net::SocketAddr;
use std::time::Duration;

use super::{ProbeError, Verdict};
use crate::playbook::ExecVia;
use crate::secret::SecretValue;

pub(super) async fn present(
    _command: &[String],
    _via: &ExecVia,
    _addr: SocketAddr,
    _value: &SecretValue,
    _timeout: Duration,
) -> Result<Verdict, ProbeError> {
    todo!()
}
