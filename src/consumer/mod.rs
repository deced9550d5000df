//! Consumers: the workloads that use the secret.
//!
//! Owns: the [`Consumer`] trait in rotor's own types and the factory from playbook specs. One
//! file per backend. A consumer converges its instances onto the slots it is given (one
//! instance at a time for restarts, in place for hot reloads) and reports what each instance
//! holds. Must never: put a value in argv, a log line or an error.

pub mod dotenv;
pub mod exec;
pub mod kubernetes;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};
use crate::events::EventSink;
use crate::playbook::{ConsumerKind, ConsumerSpec, Pickup, Playbook, SlotNames, SlotRef};
use crate::protocol::Role;
use crate::secret::{Fingerprint, SecretValue};
use crate::transport::{Target, TlsError, Transport};

/// The values one consumer must hold.
#[derive(Debug, Clone)]
pub struct Slots {
    /// The primary value.
    pub primary: SecretValue,
    /// The secondary value, if any.
    pub secondary: Option<SecretValue>,
    /// The store's version reference of the primary (`"3"`), for consumers that read the store
    /// themselves (an exec consumer updating a Cloud Run service to `secret:3`).
    pub primary_version: Option<String>,
    /// The store's version reference of the secondary.
    pub secondary_version: Option<String>,
}

impl Slots {
    /// Values without version references.
    pub fn new(primary: SecretValue, secondary: Option<SecretValue>) -> Slots {
        Slots {
            primary,
            secondary,
            primary_version: None,
            secondary_version: None,
        }
    }
}

/// What instances of a consumer must hold, computed from the slots and the names it declares.
///
/// The secondary reaches an instance only under the secondary name or a secondary alias; when
/// the consumer declares neither, it holds no secondary, so a change of secondary does not
/// restart it.
pub struct Desired<'a> {
    /// Fingerprint of the primary.
    pub primary: Fingerprint,
    /// Fingerprint of the secondary, if the consumer takes one.
    pub secondary: Option<Fingerprint>,
    /// Fingerprint per name.
    pub names: BTreeMap<String, Fingerprint>,
    /// Name → value, in the order they are set.
    pub values: Vec<(String, &'a SecretValue)>,
}

impl<'a> Desired<'a> {
    /// What `slots` turn into under `names` for logical secret `secret`.
    pub fn new(names: &SlotNames, secret: &str, slots: &'a Slots) -> Desired<'a> {
        let takes_secondary =
            names.secondary.is_some() || names.aliases.values().any(|r| *r == SlotRef::Secondary);
        let secondary = slots.secondary.as_ref().filter(|_| takes_secondary);
        let values = by_name(names, &slots.primary, secondary);
        let by_name = values
            .iter()
            .map(|(k, v)| (k.clone(), v.fingerprint(secret)))
            .collect();
        Desired {
            primary: slots.primary.fingerprint(secret),
            secondary: secondary.map(|v| v.fingerprint(secret)),
            names: by_name,
            values,
        }
    }
}

/// What each declared name carries, given what the primary and secondary slots carry (values,
/// fingerprints, …): the primary name, the secondary name when there is a secondary, then the
/// aliases in order; a secondary alias is left out when there is no secondary.
pub fn by_name<T: Clone>(names: &SlotNames, primary: T, secondary: Option<T>) -> Vec<(String, T)> {
    let mut out = vec![(names.primary.clone(), primary.clone())];
    if let (Some(name), Some(v)) = (&names.secondary, &secondary) {
        out.push((name.clone(), v.clone()));
    }
    for (alias, r) in &names.aliases {
        match (r, &secondary) {
            (SlotRef::Primary, _) => out.push((alias.clone(), primary.clone())),
            (SlotRef::Secondary, Some(v)) => out.push((alias.clone(), v.clone())),
            (SlotRef::Secondary, None) => {}
        }
    }
    out
}

/// Every slot and alias name a consumer declares.
pub fn slot_names(names: &SlotNames) -> Vec<&str> {
    names.all()
}

/// `now + d`, checked: when `d` is too long to add, a deadline ten years out (a deadline may
/// come out longer, never shorter; the playbook bounds every timing far below that).
pub fn deadline_after(d: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    [
        d,
        std::time::Duration::from_secs(10 * 365 * 86_400),
        std::time::Duration::from_secs(86_400),
    ]
    .into_iter()
    .find_map(|d| now.checked_add(d))
    .unwrap_or(now)
}

/// Asks an instance what it holds: `GET <scheme>://<addr><path>`, answered with a [`Held`].
/// The error text names the URL and what went wrong (never a value: the answer holds none).
pub async fn report_held(
    at: Target<'_>,
    path: &str,
    timeout: std::time::Duration,
) -> Result<Held, String> {
    let url = at.url(path);
    let resp = at
        .client()
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {}", http_failure(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url} answered {}", resp.status()));
    }
    // The answer is the peer's text: bounded, parsed strictly, never echoed.
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: reading the answer failed: {}", http_failure(&e)))?
    {
        if body.len() + chunk.len() > MAX_REPORT_BYTES {
            return Err(format!(
                "GET {url}: the answer is larger than {MAX_REPORT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    // serde's message may quote the peer's text: only its kind and position are reported.
    let held: Held = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "GET {url}: unexpected answer: not a fingerprints report ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if let Some(bad) = held.names.keys().find(|n| !is_variable_name(n)) {
        return Err(format!(
            "GET {url}: unexpected answer: a name of {} characters that is not a variable name",
            bad.chars().count()
        ));
    }
    Ok(held)
}

/// Largest fingerprints report rotor reads from an instance.
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// An environment variable or Secret key name: 1–253 of `A-Za-z0-9_.-`.
fn is_variable_name(n: &str) -> bool {
    (1..=253).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What an instance holds according to its configuration (no report from the instance).
pub fn configured_held(
    role: Role,
    names: BTreeMap<String, Fingerprint>,
    primary: Fingerprint,
    secondary: Option<Fingerprint>,
) -> Held {
    let accepts = if role.validates() {
        std::iter::once(primary.clone()).chain(secondary).collect()
    } else {
        Vec::new()
    };
    Held {
        names,
        accepts,
        sends: role.signs().then_some(primary),
    }
}

pub use crate::cluster::error_chain;

/// Why a request to an instance failed: a failed TLS handshake in an operator's words, or the
/// error's chain.
pub fn http_failure(e: &reqwest::Error) -> String {
    crate::transport::describe(e).unwrap_or_else(|| error_chain(e))
}

/// Fingerprints an instance holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Fingerprint per name (env variable) the instance sees, aliases included.
    pub names: BTreeMap<String, Fingerprint>,
    /// What it accepts (validators).
    pub accepts: Vec<Fingerprint>,
    /// What it sends (signers).
    pub sends: Option<Fingerprint>,
}

/// Where one held view came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldSource {
    /// The instance itself reported it (fingerprints endpoint).
    Reported,
    /// What rotor configured it with (its environment at start).
    Configured,
}

/// One running copy of a consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Stable identifier (`auth-0-7`).
    pub id: String,
    /// Where to reach it directly (not a load-balanced address).
    pub addr: Option<SocketAddr>,
    /// Fingerprints of the primary/secondary it was configured with.
    pub primary: Option<Fingerprint>,
    /// Secondary fingerprint.
    pub secondary: Option<Fingerprint>,
    /// Process id, for instances rotor runs itself (process consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `host:port` when the instance is reached by a host name (exec targets): probes dial
    /// that name, and TLS verifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Result of converging a consumer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutReport {
    /// Instances replaced or reloaded.
    pub restarts: usize,
    /// Time spent waiting for instances to become ready and to drain (not orchestration).
    pub waited: std::time::Duration,
}

/// Consumer failures, naming the consumer and the instance.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// A new instance did not become ready in time.
    #[error("consumer {consumer}: instance {instance} was not ready within {timeout:?}: {detail}")]
    NotReady {
        /// Consumer name.
        consumer: String,
        /// Instance id.
        instance: String,
        /// Deadline.
        timeout: std::time::Duration,
        /// Last health error or exit status.
        detail: String,
    },
    /// The whole rollout exceeded its deadline.
    #[error("consumer {consumer}: rollout did not finish within {timeout:?}")]
    RolloutTimeout {
        /// Consumer name.
        consumer: String,
        /// Deadline.
        timeout: std::time::Duration,
    },
    /// Pods did not converge onto the new template in time.
    #[error(
        "consumer {consumer}: rollout did not converge within {timeout:?}; left behind: {}\n  help: look at those pods (`kubectl describe pod`), fix the cause, then `rotor resume` or `rotor rollback`",
        .pods.join(", ")
    )]
    LeftBehind {
        /// Consumer name.
        consumer: String,
        /// Deadline.
        timeout: std::time::Duration,
        /// Each pod left behind, with why.
        pods: Vec<String>,
    },
    /// A `pickup: reload` consumer whose workload does not mount its Secret as a volume (bad
    /// input for this cluster: nothing was changed).
    #[error(
        "consumer {consumer}: pickup: reload needs the Secret mounted as a volume: {detail}\n  help: mount it (volumes[].secret.secretName and a container's volumeMounts, without subPath) and have the service re-read its files, or use `pickup: restart` (docs/playbook.md, Kubernetes consumers)"
    )]
    Unsuited {
        /// Consumer name.
        consumer: String,
        /// What the workload lacks.
        detail: String,
    },
    /// A pod of a `pickup: reload` consumer did not show the new values in time.
    #[error(
        "consumer {consumer}: pod {instance} did not pick up the new values of {detail}\n  help: check that the pod mounts the Secret as a volume and that the service re-reads its files when `..data` changes; a kubelet that refreshes later needs a longer `sync_period`"
    )]
    NotPickedUp {
        /// Consumer name.
        consumer: String,
        /// The pod.
        instance: String,
        /// The Secret, how long rotor waited since the write (sync period and grace), and
        /// what the pod still holds or why its proof fails (fingerprints only).
        detail: String,
    },
    /// A cluster call failed.
    #[error("consumer {consumer}: {source}")]
    Cluster {
        /// Consumer name.
        consumer: String,
        /// What failed, with what to do.
        #[source]
        source: Box<ClusterError>,
    },
    /// A consumer's `tls` files could not be used (read when the engine opens).
    #[error("{0}\n  help: fix the file or the playbook's `tls` mapping (docs/playbook.md, TLS)")]
    Tls(#[from] TlsError),
    /// Starting a process failed.
    #[error("consumer {consumer}: cannot start `{program}`: {detail}")]
    Spawn {
        /// Consumer name.
        consumer: String,
        /// argv[0].
        program: String,
        /// Why.
        detail: String,
    },
    /// Reading what an instance holds failed.
    #[error("consumer {consumer}: `{program}` {detail}")]
    Hook {
        /// Consumer name.
        consumer: String,
        /// argv[0] of the hook.
        program: String,
        /// What happened (exit status and the last lines it printed, or the deadline).
        detail: String,
    },
    /// An instance could not be observed.
    #[error("consumer {consumer}: instance {instance}: {detail}")]
    Observe {
        /// Consumer name.
        consumer: String,
        /// Instance id.
        instance: String,
        /// Why.
        detail: String,
    },
    /// A new (or running) instance failed its proof for the state the rollout enters; it never
    /// took traffic (a new one was stopped, a running one was left for a replacement).
    #[error("consumer {consumer}: instance {instance} failed its gate: {detail}")]
    Gate {
        /// Consumer name.
        consumer: String,
        /// Instance id.
        instance: String,
        /// What was presented and what the instance did (fingerprints only).
        detail: String,
        /// It accepted a canary.
        fails_open: bool,
    },
    /// A stop was asked (SIGINT, SIGTERM): the rollout stopped before its next instance, every
    /// instance it started before that one proven and published.
    #[error("consumer {consumer}: stopped by {} before its next instance", crate::stop::name(*.signal))]
    Stopped {
        /// Consumer name.
        consumer: String,
        /// The signal's number.
        signal: i32,
    },
    /// An env file a dotenv consumer cannot use as it is (bad input: nothing was written).
    #[error("consumer {consumer}: {file} {detail}")]
    EnvFile {
        /// Consumer name.
        consumer: String,
        /// The file, as the playbook resolves it.
        file: String,
        /// What is wrong, with what to do (never a line's text).
        detail: String,
    },
    /// Records or endpoints on disk.
    #[error("consumer {consumer}: {action}: {source}")]
    Io {
        /// Consumer name.
        consumer: String,
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ConsumerError {
    /// The instance the error is about, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            ConsumerError::NotReady { instance, .. }
            | ConsumerError::NotPickedUp { instance, .. }
            | ConsumerError::Observe { instance, .. }
            | ConsumerError::Gate { instance, .. } => Some(instance),
            _ => None,
        }
    }
}

/// Why an instance failed its proof.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// It accepted a canary (a value nobody issued): it accepts anything.
    pub fails_open: bool,
    /// What was presented and what it did (fingerprints only).
    pub detail: String,
}

impl From<String> for Refusal {
    fn from(detail: String) -> Refusal {
        Refusal {
            fails_open: false,
            detail,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Proves one instance, at its own address, for the state a rollout enters: a validator accepts
/// every value it must and rejects every value it must (always including a fresh canary); a
/// signer sends what it must and its round trips pass from that instance. A consumer asks its
/// gate before an instance takes traffic, and about every running instance it would keep.
#[async_trait]
pub trait Gate: Send + Sync {
    /// `Ok(what was proven)` or `Err(what failed)`; both name values by fingerprint only.
    async fn prove(&self, instance: &str, at: Reach<'_>) -> Result<String, Refusal>;
}

/// Where one instance is reached: its address, and the host name it is dialled by when it has
/// one (see [`Instance::host`]).
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    /// The instance's own address.
    pub addr: SocketAddr,
    /// `host:port` it is dialled by, if any.
    pub host: Option<&'a str>,
}

impl From<SocketAddr> for Reach<'static> {
    fn from(addr: SocketAddr) -> Reach<'static> {
        Reach { addr, host: None }
    }
}

/// Asks `gate` about one instance of `consumer` and reports the outcome as an
/// [`Event::InstanceGated`]; a failure becomes [`ConsumerError::Gate`].
pub async fn pass_gate(
    gate: &dyn Gate,
    consumer: &str,
    instance: &str,
    at: impl Into<Reach<'_>>,
    events: &dyn EventSink,
) -> Result<(), ConsumerError> {
    let started = std::time::Instant::now();
    let result = gate.prove(instance, at.into()).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let (passed, detail) = match &result {
        Ok(d) => (true, d.clone()),
        Err(r) => (false, r.detail.clone()),
    };
    events.emit(&crate::events::Event::InstanceGated {
        consumer: consumer.to_string(),
        instance: instance.to_string(),
        passed,
        detail,
        millis,
    });
    result.map(|_| ()).map_err(|r| ConsumerError::Gate {
        consumer: consumer.to_string(),
        instance: instance.to_string(),
        detail: r.detail,
        fails_open: r.fails_open,
    })
}

/// A gate that proves nothing (unit tests of a backend's mechanics, and tools that only start
/// processes).
pub struct Ungated;

#[async_trait]
impl Gate for Ungated {
    async fn prove(&self, _instance: &str, _at: Reach<'_>) -> Result<String, Refusal> {
        Ok("not gated".into())
    }
}

/// A consumer backend.
///
/// # Guarantees
/// `apply` is idempotent: instances already holding `slots` are left alone, so repeating it
/// after a crash equals running it once. While it runs, at least the configured number of
/// instances keeps serving (start new, wait ready, stop old).
#[async_trait]
pub trait Consumer: Send + Sync {
    /// The playbook's name for it.
    fn name(&self) -> &str;

    /// validator / signer / both.
    fn role(&self) -> Role;

    /// How it picks a change up.
    fn pickup(&self) -> Pickup;

    /// Converges every instance onto `slots`. No instance takes traffic before `gate` proved it;
    /// a running instance that holds `slots` but fails `gate` is replaced like a stale one.
    async fn apply(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError>;

    /// How many instances the consumer should run (what a rollout replaces).
    async fn desired_instances(&self) -> Result<usize, ConsumerError>;

    /// The instances currently serving, with the fingerprints rotor configured them with.
    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError>;

    /// What one instance actually holds, per name (asks the instance when it can report,
    /// otherwise returns what rotor configured).
    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError>;

    /// How rotor reaches this consumer's instances (plain HTTP unless it has `tls`). No
    /// default: a consumer that speaks TLS must never be reached in plain HTTP.
    fn transport(&self) -> &Transport;

    /// Starts the consumer's instances holding `slots` if none run (fleet bring-up).
    async fn start(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<(), ConsumerError> {
        self.apply(slots, gate, events).await.map(|_| ())
    }

    /// Stops every instance this consumer started.
    async fn stop(&self) -> Result<usize, ConsumerError>;

    /// Refuses, before a rotation changes anything, what would stop this consumer's rollout
    /// whatever the values (an env file rotor cannot rewrite); bad input, so its error exits 2.
    async fn preflight(&self) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// The files rotor writes the values into for this consumer, each read back (for `rotor
    /// check`, which compares them with the store like instances); none for consumers whose
    /// values rotor does not keep in files the consumer reads.
    async fn files(&self) -> Vec<FileView> {
        Vec::new()
    }

    /// Removes what rotor keeps of this consumer's stopped instances that started before
    /// `before` (a process consumer's logs), and returns how many files went. Never anything
    /// of a recorded or running instance; skipped (`Ok(0)`) while another rotor changes the
    /// fleet. Consumers that keep nothing per instance keep the default.
    async fn prune(&self, _before: chrono::DateTime<chrono::Utc>) -> Result<usize, ConsumerError> {
        Ok(0)
    }

    /// Processes of this consumer that run but serve no one (an interrupted start, an instance
    /// never published or left unpublished), for `rotor check`. Reads only: ending them is the
    /// next `apply`'s or `stop`'s job. None for consumers rotor does not run itself.
    async fn leftovers(&self) -> Result<Vec<Leftover>, ConsumerError> {
        Ok(Vec::new())
    }
}

/// A process rotor started for a consumer that still runs although no one reaches it: it may
/// hold a value the rotation has moved past (a "destroyed" old value kept alive). Never a
/// value: names and fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// The consumer.
    pub consumer: String,
    /// Its instance id (`None`: the process does not say, or not in an id's shape).
    pub instance: Option<String>,
    /// Its process id.
    pub pid: i32,
    /// What its record says.
    pub kind: LeftoverKind,
    /// Fingerprint per slot or alias name it holds.
    pub names: BTreeMap<String, Fingerprint>,
}

/// What the record of a [`Leftover`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftoverKind {
    /// No record: found by the fleet's tag in its environment.
    Unrecorded,
    /// Its record is still `starting`: the rotor starting it died before recording its pid.
    Starting,
    /// Recorded and running, but not published: never proven, or retired but not stopped.
    Unpublished,
}

impl Leftover {
    /// One line for `rotor check`: what runs, what it holds (each fingerprint through
    /// `label`), and the commands that end it.
    pub fn describe(&self, label: impl Fn(&Fingerprint) -> String) -> String {
        let who = match &self.instance {
            Some(id) => format!("{} {id}: process {}", self.consumer, self.pid),
            None => format!("{}: process {}", self.consumer, self.pid),
        };
        let what = match self.kind {
            LeftoverKind::Unrecorded => "runs without a record (its start was interrupted)",
            LeftoverKind::Starting => {
                "runs, but its start was interrupted before its pid was recorded"
            }
            LeftoverKind::Unpublished => "runs, recorded but not published",
        };
        let holds = if self.names.is_empty() {
            "no value rotor can name".to_string()
        } else {
            self.names
                .iter()
                .map(|(n, fp)| format!("{n}={}", label(fp)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{who} {what} and holds {holds}; no one reaches it. `rotor resume` or `rotor \
             rollback` (a rotation in progress), `rotor up` or `rotor down` ends it"
        )
    }
}

/// One file a consumer reads its values from, as rotor reads it back.
#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    /// The consumer that reads it.
    pub consumer: String,
    /// The file.
    pub file: String,
    /// Fingerprint per declared name the file gives a value.
    pub names: BTreeMap<String, Fingerprint>,
    /// What is wrong with it (names given twice, references instead of values, lines the
    /// grammar refuses, a mode others can read, or why it cannot be read); never a value.
    pub problems: Vec<String>,
}

/// Opens the consumers a playbook lists, in playbook order; `cluster` is the connection when
/// the playbook uses one.
pub fn open_all(
    playbook: &Playbook,
    cluster: Option<&Cluster>,
) -> Result<Vec<Arc<dyn Consumer>>, ConsumerError> {
    playbook
        .consumers
        .iter()
        .map(|c| open(playbook, c, cluster))
        .collect()
}

/// Opens one consumer.
pub fn open(
    playbook: &Playbook,
    spec: &ConsumerSpec,
    cluster: Option<&Cluster>,
) -> Result<Arc<dyn Consumer>, ConsumerError> {
    let transport = Transport::for_consumer(&spec.name, spec.tls.as_ref())?;
    Ok(match &spec.kind {
        ConsumerKind::Process(p) => {
            Arc::new(process::ProcessConsumer::new(playbook, spec, p, transport))
        }
        ConsumerKind::Kubernetes(k) => Arc::new(kubernetes::KubernetesConsumer::new(
            playbook,
            spec,
            k,
            cluster.ok_or_else(|| ConsumerError::Cluster {
                consumer: spec.name.clone(),
                source: Box::new(ClusterError::not_connected()),
            })?,
            transport,
        )),
        ConsumerKind::Exec(e) => Arc::new(exec::ExecConsumer::new(playbook, spec, e, transport)),
        ConsumerKind::Dotenv(d) => {
            Arc::new(dotenv::DotenvConsumer::new(playbook, spec, d, transport))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `body` as the answer to every request; returns its address.
    async fn answering(body: String) -> SocketAddr {
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { body }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_hostile_fingerprints_report_is_refused_without_being_echoed() {
        let value = "a-secret-value-that-must-never-be-printed-0123456789";
        let t = std::time::Duration::from_secs(5);
        let fp = Fingerprint::of("s", "x");
        let cases = [
            format!(r#"{{"names":{{}},"accepts":[],"sends":"{value}"}}"#),
            format!(r#"{{"names":{{"A":"{fp}"}},"accepts":"{value}","sends":null}}"#),
            format!(r#"{{"names":{{"{value}=":"{fp}"}},"accepts":[],"sends":null}}"#),
            format!(
                r#"{{"names":{{}},"accepts":[],"sends":"{}"}}"#,
                value.repeat(3000)
            ),
        ];
        for body in cases {
            let addr = answering(body.clone()).await;
            let err = report_held(addr.into(), "/fingerprints", t)
                .await
                .unwrap_err();
            assert!(!err.contains(value), "{err}");
            assert!(err.len() < 300, "{err}");
        }
        // A sound report passes, fingerprints parsed.
        let addr = answering(format!(
            r#"{{"names":{{"SERVICE_SECRET":"{fp}"}},"accepts":["{fp}"],"sends":"{fp}"}}"#
        ))
        .await;
        let held = report_held(addr.into(), "/fingerprints", t).await.unwrap();
        assert_eq!(held.sends, Some(fp));
    }
}
