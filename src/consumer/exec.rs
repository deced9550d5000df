//! The exec consumer: a command that points a consumer at the store's versions, for consumers
//! that read the store themselves (a Cloud Run service updated with
//! `gcloud run services update … --update-secrets=SERVICE_SECRET=service-secret:3`).
//!
//! Owns: running the `apply` command at every rollout with its template fields filled in and the
//! same fields in its environment (`ROTOR_SECRET`, `ROTOR_CONSUMER`, `ROTOR_STORE_SECRET`,
//! `ROTOR_PRIMARY_VERSION`, `ROTOR_SECONDARY_VERSION`, `ROTOR_PRIMARY_FINGERPRINT`,
//! `ROTOR_SECONDARY_FINGERPRINT`, `ROTOR_SECRET_REFS`, `ROTOR_UNSET_NAMES`), under the rollout
//! deadline (its process group is killed when it passes); remembering what it last applied in
//! `<state_dir>/exec/<consumer>.json` (fingerprints and version references only); and listing
//! its `targets` as instances for the probes.
//!
//! - `secret_refs`: `NAME=SECRET:VERSION` for every name the consumer declares that has a value
//!   now, comma-separated (`SERVICE_SECRET=service-secret:3,SERVICE_SECRET_PREVIOUS=service-secret:2`),
//!   the form Cloud Run's `--update-secrets` takes;
//! - `unset_names`: the declared names with no value now (the secondary name outside S1–S3),
//!   comma-separated, for `--remove-secrets`; empty when there are none.
//!
//! Must never: give the command a value (argv, environment or stdin), or put its output in an
//! error unshortened (the last lines only; the command never saw a value).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    Consumer, ConsumerError, Desired, Gate, Held, HeldSource, Instance, Reach, RolloutReport,
    Slots, configured_held, pass_gate,
};
use crate::events::{Event, EventSink};
use crate::playbook::{ExecSpec, Pickup, Playbook, SlotNames, StoreSpec, Timings};
use crate::protocol::Role;
use crate::secret::Fingerprint;
use crate::transport::Transport;

/// Lines of the command's stderr kept for an error.
const TAIL_LINES: usize = 12;

/// What the consumer was last pointed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    primary: Fingerprint,
    secondary: Option<Fingerprint>,
    primary_version: Option<String>,
    secondary_version: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
}

/// An exec consumer.
pub struct ExecConsumer {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) secret: String,
    /// The store's own name for the secret (`service-secret` in Secret Manager).
    store_secret: String,
    pub(super) slot_names: SlotNames,
    spec: ExecSpec,
    pub(super) timings: Timings,
    state_file: PathBuf,
    /// How rotor reaches its targets (plain HTTP unless it has `tls`).
    transport: Transport,
    /// Template fields beyond an exec consumer's (a dotenv consumer's `files`).
    extra: Vec<(&'static str, String)>,
}

impl ExecConsumer {
    /// The consumer `spec` of `playbook`.
    pub fn new(
        playbook: &Playbook,
        spec: &crate::playbook::ConsumerSpec,
        exec: &ExecSpec,
        transport: Transport,
    ) -> Self {
        let store_secret = match &playbook.store {
            StoreSpec::Gcp(g) => g.name.clone(),
            StoreSpec::Vault(v) => v.path.clone(),
            StoreSpec::Aws(a) => a.name.clone(),
            _ => playbook.secret.clone(),
        };
        ExecConsumer {
            name: spec.name.clone(),
            role: spec.role,
            secret: playbook.secret.clone(),
            store_secret,
            slot_names: spec.slots.clone(),
            spec: exec.clone(),
            timings: playbook.timings.clone(),
            state_file: playbook
                .state_dir
                .join("exec")
                .join(format!("{}.json", spec.name)),
            transport,
            extra: Vec::new(),
        }
    }

    /// The command and targets of a dotenv consumer: its record is
    /// `<state_dir>/dotenv/<consumer>.json`, and `{files}` lists its env files.
    pub(super) fn for_dotenv(
        playbook: &Playbook,
        spec: &crate::playbook::ConsumerSpec,
        dotenv: &crate::playbook::DotenvSpec,
        transport: Transport,
    ) -> Self {
        let mut c = ExecConsumer::new(playbook, spec, &dotenv.exec, transport);
        c.state_file = playbook
            .state_dir
            .join("dotenv")
            .join(format!("{}.json", spec.name));
        let files: Vec<String> = dotenv
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        c.extra.push(("files", files.join(" ")));
        c
    }

    /// The template fields for `slots` (never a value).
    fn fields(&self, d: &Desired<'_>, slots: &Slots) -> BTreeMap<&'static str, String> {
        let secondary_version = slots
            .secondary_version
            .clone()
            .filter(|_| d.secondary.is_some());
        let versions = super::by_name(
            &self.slot_names,
            slots.primary_version.clone().unwrap_or_default(),
            secondary_version.clone(),
        );
        let refs: Vec<String> = versions
            .iter()
            .map(|(name, v)| format!("{name}={}:{v}", self.store_secret))
            .collect();
        let unset: Vec<&str> = super::slot_names(&self.slot_names)
            .into_iter()
            .filter(|n| !versions.iter().any(|(m, _)| m == n))
            .collect();
        let mut fields = BTreeMap::from([
            ("secret", self.secret.clone()),
            ("consumer", self.name.clone()),
            ("store_secret", self.store_secret.clone()),
            (
                "primary_version",
                slots.primary_version.clone().unwrap_or_default(),
            ),
            ("secondary_version", secondary_version.unwrap_or_default()),
            ("primary_fingerprint", d.primary.to_string()),
            (
                "secondary_fingerprint",
                d.secondary
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            ("secret_refs", refs.join(",")),
            ("unset_names", unset.join(",")),
        ]);
        fields.extend(self.extra.iter().cloned());
        fields
    }

    /// Proves every target through `gate`.
    pub(super) async fn prove_targets(
        &self,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<(), ConsumerError> {
        for target in self.instances().await? {
            if let Some(addr) = target.addr {
                let at = Reach {
                    addr,
                    host: target.host.as_deref(),
                };
                pass_gate(gate, &self.name, &target.id, at, events).await?;
            }
        }
        Ok(())
    }

    pub(super) fn hook_error(&self, detail: String) -> ConsumerError {
        ConsumerError::Hook {
            consumer: self.name.clone(),
            program: self.spec.apply.first().cloned().unwrap_or_default(),
            detail,
        }
    }

    /// Runs `apply` with `fields`; `Ok` when it exits 0 within the rollout deadline.
    async fn run(&self, fields: &BTreeMap<&'static str, String>) -> Result<(), ConsumerError> {
        let argv: Vec<String> = self
            .spec
            .apply
            .iter()
            .map(|a| {
                fields
                    .iter()
                    .fold(a.clone(), |acc, (k, v)| acc.replace(&format!("{{{k}}}"), v))
            })
            .collect();
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| self.hook_error("the apply command is empty".into()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in fields {
            cmd.env(format!("ROTOR_{}", k.to_ascii_uppercase()), v);
        }
        let child = cmd.spawn().map_err(|e| ConsumerError::Spawn {
            consumer: self.name.clone(),
            program: program.clone(),
            detail: e.to_string(),
        })?;
        let pid = child.id();
        let limit = self.timings.rollout_timeout;
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(self.hook_error(format!(
                    "did not finish within the rollout timeout ({limit:?}); it was killed"
                )))
            }
            Ok(Err(e)) => Err(self.hook_error(format!("could not be waited for: {e}"))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stderr);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n    ");
                Err(self.hook_error(format!(
                    "exited with {}{}",
                    out.status,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; its last output:\n    {tail}")
                    }
                )))
            }
        }
    }

    /// Whether the record says the consumer was last pointed at `d` (and `slots`' versions).
    pub(super) fn recorded(&self, d: &Desired<'_>, slots: &Slots) -> bool {
        let secondary_version = slots
            .secondary_version
            .clone()
            .filter(|_| d.secondary.is_some());
        self.load().is_some_and(|prev| {
            prev.primary == d.primary
                && prev.secondary == d.secondary
                && prev.primary_version == slots.primary_version
                && prev.secondary_version == secondary_version
        })
    }

    /// Runs the command for `d` and records what it applied; how long the command took.
    pub(super) async fn run_recorded(
        &self,
        d: &Desired<'_>,
        slots: &Slots,
        events: &dyn EventSink,
    ) -> Result<Duration, ConsumerError> {
        let secondary_version = slots
            .secondary_version
            .clone()
            .filter(|_| d.secondary.is_some());
        let fields = self.fields(d, slots);
        events.emit(&Event::RolloutStarted {
            consumer: self.name.clone(),
            instances: self.spec.targets.len().max(1),
        });
        let started = Instant::now();
        self.run(&fields).await?;
        let waited = started.elapsed();
        self.save(&Applied {
            primary: d.primary.clone(),
            secondary: d.secondary.clone(),
            primary_version: slots.primary_version.clone(),
            secondary_version,
            at: chrono::Utc::now(),
        })?;
        Ok(waited)
    }

    /// The end of a rollout whose command took `waited`: reported, and its report.
    pub(super) fn finished(&self, events: &dyn EventSink, waited: Duration) -> RolloutReport {
        events.emit(&Event::RolloutFinished {
            consumer: self.name.clone(),
            restarts: 1,
        });
        RolloutReport {
            restarts: 1,
            waited,
        }
    }

    fn load(&self) -> Option<Applied> {
        let text = std::fs::read(&self.state_file).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save(&self, applied: &Applied) -> Result<(), ConsumerError> {
        let io = |e: std::io::Error| {
            self.hook_error(format!(
                "cannot record it in {}: {e}",
                self.state_file.display()
            ))
        };
        if let Some(dir) = self.state_file.parent() {
            // `<state_dir>/exec/`: the state directory is checked (and marked) first.
            if let Some(state_dir) = dir.parent() {
                crate::state_dir::prepare(state_dir)
                    .map_err(std::io::Error::other)
                    .map_err(io)?;
            }
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(applied).expect("serializes");
        crate::store::local::atomic_write(&self.state_file, &json, 0o600).map_err(io)
    }
}

#[async_trait]
impl Consumer for ExecConsumer {
    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        self.role
    }

    fn pickup(&self) -> Pickup {
        Pickup::Restart
    }

    /// Runs the command, records what it applied, then proves every target through `gate`
    /// before the next consumer moves (rotor cannot hold traffic back from a target it does not
    /// run, so the proof comes right after the change; a failure starts the rollback).
    async fn apply(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError> {
        let d = Desired::new(&self.slot_names, &self.secret, slots);
        // Already pointed there (a repeated step, a resume or rollback proving every consumer):
        // the command is not run again unless a target fails its proof.
        if self.recorded(&d, slots) && self.prove_targets(gate, events).await.is_ok() {
            return Ok(RolloutReport::default());
        }
        let waited = self.run_recorded(&d, slots, events).await?;
        self.prove_targets(gate, events).await?;
        Ok(self.finished(events, waited))
    }

    async fn desired_instances(&self) -> Result<usize, ConsumerError> {
        Ok(self.spec.targets.len())
    }

    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError> {
        let applied = self.load();
        let mut out = Vec::with_capacity(self.spec.targets.len());
        for t in &self.spec.targets {
            let host = ExecSpec::host_port(t);
            let addr = tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(host))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|mut a| a.next());
            let addr = addr.ok_or_else(|| ConsumerError::Observe {
                consumer: self.name.clone(),
                instance: t.clone(),
                detail: "the target does not resolve to an address".into(),
            })?;
            out.push(Instance {
                id: t.clone(),
                addr: Some(addr),
                primary: applied.as_ref().map(|a| a.primary.clone()),
                secondary: applied.as_ref().and_then(|a| a.secondary.clone()),
                pid: None,
                host: Some(host.to_string()),
            });
        }
        Ok(out)
    }

    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError> {
        let Some(primary) = &instance.primary else {
            return Err(ConsumerError::Observe {
                consumer: self.name.clone(),
                instance: instance.id.clone(),
                detail: format!(
                    "rotor has not applied this consumer yet ({} is missing); run `rotor up` once",
                    self.state_file.display()
                ),
            });
        };
        let names = super::by_name(
            &self.slot_names,
            primary.clone(),
            instance.secondary.clone(),
        )
        .into_iter()
        .collect();
        Ok((
            configured_held(
                self.role,
                names,
                primary.clone(),
                instance.secondary.clone(),
            ),
            HeldSource::Configured,
        ))
    }

    /// rotor does not run the consumer: nothing to stop.
    async fn stop(&self) -> Result<usize, ConsumerError> {
        Ok(0)
    }
}
