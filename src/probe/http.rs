//! HTTP probes (stub, being written).
use std::net::SocketAddr;
use std::time::Duration;

use super::{ProbeError, Verdict};
use crate::playbook::{ProbeSpec, RoundtripSpec};
use crate::secret::SecretValue;

pub(super) async fn present(
    _spec: &ProbeSpec,
    _addr: SocketAddr,
    _value: &SecretValue,
    _timeout: Duration,
) -> Result<Verdict, ProbeError> {
    todo!()
}

pub(super) async fn roundtrip(
    _spec: &RoundtripSpec,
    _signer: SocketAddr,
    _target: SocketAddr,
    _timeout: Duration,
) -> Result<(), ProbeError> {
    todo!()
}
