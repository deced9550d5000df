//! Gates: the proof one instance must pass, at its own address, before it takes traffic.
//!
//! Owns: what "proven for a state" means for one instance of one consumer, and the canary.
//! - A validating instance accepts every value it must accept in the state its rollout enters
//!   and rejects every value it must reject there (A from S4 on), and it rejects a **canary**: a
//!   fresh value of the playbook's shape (alphabet, length) from the OS CSPRNG that was never
//!   issued, never stored and is dropped after the probe. An instance that accepts the canary
//!   fails open.
//! - A signing instance reports (when it can) that it sends the value the state wants, and
//!   each of its round trips passes from that instance to every serving instance of the
//!   validators it calls. A hard cut skips the round trips: its validators switch in the same
//!   wave, so some are still on the other value by design.
//!
//! The same checks serve the consumers' gates (`Consumer::apply`), the pre-flight before T1,
//! the proofs after a wave and `rotor check`. Must never: put a value (canary included) in a
//! message; values are named by fingerprint, the canary as "a canary".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::consumer::{Consumer, Gate, Reach, Refusal, report_held};
use crate::playbook::{ConsumerSpec, ExecRoundtrip, Generate, Roundtrip};
use crate::probe::{self, Verdict};
use crate::secret::{Fingerprint, SecretValue};
use crate::transport::{Target, Transport};

/// A value presented in a proof, with the name messages give it.
#[derive(Clone)]
pub struct Labeled {
    /// `A (sha256:…)` or `a canary`.
    pub label: String,
    /// The value.
    pub value: SecretValue,
}

/// How messages name the canary.
const CANARY: &str = "a canary value rotor never issued";

/// A fresh canary of the playbook's shape: never issued, never stored.
pub fn canary(g: &Generate) -> Result<Labeled, String> {
    let value = SecretValue::generate(g.alphabet, g.length).map_err(|e| e.to_string())?;
    Ok(Labeled {
        label: CANARY.into(),
        value,
    })
}

/// Presents every value to the validating instance `at` with every probe of `spec`:
/// `accept` must be accepted, `reject` rejected. `Ok` says how many presentations passed.
pub async fn prove_validating(
    spec: &ConsumerSpec,
    at: Target<'_>,
    accept: &[Labeled],
    reject: &[Labeled],
    timeout: Duration,
) -> Result<usize, Refusal> {
    let mut n = 0;
    for p in &spec.probes {
        let cases = accept
            .iter()
            .map(|v| (v, Verdict::Accepted))
            .chain(reject.iter().map(|v| (v, Verdict::Rejected)));
        for (v, want) in cases {
            let got = probe::present(p, at, &v.value, timeout)
                .await
                .map_err(|e| Refusal {
                    fails_open: false,
                    detail: e.to_string(),
                })?;
            if got != want {
                let fails_open = want == Verdict::Rejected && v.label.starts_with(CANARY);
                return Err(Refusal {
                    fails_open,
                    detail: format!(
                        "{} at {}: {}{}",
                        probe::describe(p),
                        at.name(),
                        match want {
                            Verdict::Accepted =>
                                format!("rejected {}, which it must accept", v.label),
                            Verdict::Rejected =>
                                format!("accepted {}, which it must reject", v.label),
                        },
                        if fails_open {
                            " (it fails open: it accepts values nobody issued)"
                        } else {
                            ""
                        }
                    ),
                });
            }
            n += 1;
        }
    }
    Ok(n)
}

/// What one consumer's instances must do in the state a rollout enters. Borrows the engine's
/// playbook and consumers (a wave of a thousand consumers builds a thousand gates).
pub struct InstanceGate<'a> {
    /// The consumer's playbook entry (probes, round trips, fingerprints path).
    pub spec: &'a ConsumerSpec,
    /// Values a validating instance must accept.
    pub accept: Vec<Labeled>,
    /// Values a validating instance must reject (the canary is added on every proof).
    pub reject: Vec<Labeled>,
    /// The fingerprint a signing instance must send.
    pub sends: Option<Fingerprint>,
    /// The value behind `sends`, to tell a broken target from a broken signer.
    pub sends_value: Option<Labeled>,
    /// Every consumer's playbook entry (the round-trip targets' probes).
    pub specs: &'a [ConsumerSpec],
    /// Run the round trips (not in a hard cut's wave).
    pub round_trips: bool,
    /// Every consumer of the playbook, to find round-trip targets.
    pub consumers: &'a [Arc<dyn Consumer>],
    /// Shape of the canary.
    pub generate: &'a Generate,
    /// Deadline of one probe.
    pub timeout: Duration,
    /// How rotor reaches this consumer's instances.
    pub transport: &'a Transport,
}

impl InstanceGate<'_> {
    async fn prove_sends(&self, instance: &str, at: Target<'_>) -> Result<String, String> {
        let mut out = Vec::new();
        if let (Some(want), Some(path)) = (&self.sends, &self.spec.fingerprints_path) {
            let held = report_held(at, path, self.timeout).await?;
            if held.sends.as_ref() != Some(want) {
                return Err(format!(
                    "it reports sending {}, expected {want}",
                    held.sends
                        .map(|f| f.to_string())
                        .unwrap_or_else(|| "nothing".into())
                ));
            }
            out.push(format!("sends {want}"));
        }
        if !self.round_trips {
            return Ok(out.join(", "));
        }
        let mut trips = 0;
        let mut skipped = 0;
        for r in &self.spec.roundtrips {
            let r = match r {
                Roundtrip::Http(r) => r,
                Roundtrip::Exec(x) => {
                    self.exec_trip(x, instance, at).await?;
                    trips += 1;
                    continue;
                }
            };
            let Some(target) = self.consumers.iter().find(|t| t.name() == r.to) else {
                continue;
            };
            let serving = target
                .instances()
                .await
                .map_err(|e| format!("listing {}: {e}", r.to))?;
            for ti in serving {
                let Some(to) = ti.addr else { continue };
                if let Err(e) = probe::roundtrip(r, at, to, self.timeout).await {
                    // A target instance retired while the trip ran is no failure of this one,
                    // nor is a target that refuses the very value this instance must send
                    // when it is presented directly: that target fails its own proof.
                    let still = target
                        .instances()
                        .await
                        .map(|now| now.iter().any(|i| i.id == ti.id))
                        .unwrap_or(true);
                    if still
                        && !self
                            .target_refuses(target.as_ref(), to, ti.host.as_deref())
                            .await
                    {
                        return Err(format!("round trip to {} instance {}: {e}", r.to, ti.id));
                    }
                    skipped += 1;
                    continue;
                }
                trips += 1;
            }
        }
        out.push(format!("{trips} round trips passed"));
        if skipped > 0 {
            out.push(format!(
                "{skipped} skipped (the target instance refuses the value itself, or left)"
            ));
        }
        Ok(out.join(", "))
    }

    /// The exec round trip `spec` says this instance sends the value it must.
    async fn exec_trip(
        &self,
        spec: &ExecRoundtrip,
        instance: &str,
        at: Target<'_>,
    ) -> Result<(), String> {
        let (Some(want), Some(value)) = (&self.sends, &self.sends_value) else {
            return Err(format!(
                "{}: no value to check (the state sends nothing)",
                probe::describe_exec(spec)
            ));
        };
        exec_verdict(
            spec,
            probe::Signer {
                consumer: &self.spec.name,
                instance,
                at,
            },
            &value.value,
            want,
            self.timeout,
        )
        .await
    }

    /// True when the validator instance of `consumer` at `addr` rejects, presented directly,
    /// the value this gate's instance must send: the target is broken, not the sender.
    async fn target_refuses(
        &self,
        consumer: &dyn Consumer,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> bool {
        let (Some(v), Some(spec)) = (
            &self.sends_value,
            self.specs.iter().find(|s| s.name == consumer.name()),
        ) else {
            return false;
        };
        let at = consumer.transport().reach(addr, host);
        prove_validating(spec, at, std::slice::from_ref(v), &[], self.timeout)
            .await
            .is_err()
    }
}

#[async_trait]
impl Gate for InstanceGate<'_> {
    async fn prove(&self, instance: &str, reach: Reach<'_>) -> Result<String, Refusal> {
        let mut done = Vec::new();
        let at = self.transport.reach(reach.addr, reach.host);
        if self.spec.role.validates() {
            let mut reject = self.reject.clone();
            reject.push(canary(self.generate).map_err(Refusal::from)?);
            prove_validating(self.spec, at, &self.accept, &reject, self.timeout).await?;
            let names = |vs: &[Labeled]| {
                vs.iter()
                    .map(|v| v.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            done.push(format!(
                "accepts {{{}}}, rejects {{{}}}",
                names(&self.accept),
                names(&reject)
            ));
        }
        if self.spec.role.signs() {
            done.push(
                self.prove_sends(instance, at)
                    .await
                    .map_err(Refusal::from)?,
            );
        }
        Ok(done.join("; "))
    }
}

/// Runs the exec round trip `spec` for `signer`, which must send `value` (`want`): `Ok` when the
/// command says it does; the error says what it found otherwise (by fingerprint only).
pub async fn exec_verdict(
    spec: &ExecRoundtrip,
    signer: probe::Signer<'_>,
    value: &SecretValue,
    want: &Fingerprint,
    timeout: Duration,
) -> Result<(), String> {
    match probe::exec_roundtrip(spec, signer, value, want, timeout).await {
        Ok(Verdict::Accepted) => Ok(()),
        Ok(Verdict::Rejected) => Err(format!(
            "{} at {}: it sends something other than {want}",
            probe::describe_exec(spec),
            signer.at.name()
        )),
        Err(e) => Err(e.to_string()),
    }
}
