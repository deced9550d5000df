//! The Kubernetes consumer: a Deployment, StatefulSet or DaemonSet that reads the slots from a
//! Secret, under the consumer's key names.
//!
//! Owns: writing the slot keys of the workload's Secret (replace guarded by the
//! resourceVersion read; a 409 re-reads and re-decides), rolling the workload by patching a
//! pod-template annotation `rotor.dev/<secret>` that carries the fingerprints its pods must hold,
//! waiting for the rollout with a deadline (observedGeneration, updated/ready/available
//! replicas, `ProgressDeadlineExceeded`, a new pod not ready within the readiness timeout), and
//! the convergence gate: every pod of the workload runs the new template and is Ready before
//! the stage is proven, and a pod left behind is named. Instances are pods, reached on their own
//! IP and port, never through a Service.
//!
//! A Secret may be shared by several consumers. A consumer that does not validate never removes
//! a value from a Secret that a validating consumer also reads: it only sets what it sends, so a
//! validator pod that restarts on its own at any moment still gets every value it must accept.
//!
//! With `pickup: reload` the pods mount the Secret as a volume: rotor writes it, restarts
//! nothing, waits the consumer's `sync_period` from the write (the kubelet refreshes mounted
//! Secrets after a delay; the wait may come out longer, never shorter), then proves every pod
//! where it runs (asking, when the consumer reports fingerprints, until it holds the new
//! values) and marks each proven pod with the annotation on the pod itself. `plan`, `check`
//! and every rollout refuse such a consumer whose template does not mount the Secret.
//!
//! Must never: put a value in an annotation, a label, an event, an error or a log line (the
//! annotation holds fingerprints only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{
    Consumer, ConsumerError, Desired, Gate, Held, HeldSource, Instance, RolloutReport, Slots,
    configured_held, pass_gate, report_held,
};
use crate::cluster::{Call, Cluster, ClusterError, retry};
use crate::events::{Event, EventSink};
use crate::playbook::DEFAULT_SYNC_PERIOD;
use crate::playbook::{
    ConsumerKind, ConsumerSpec, KubernetesSpec, Pickup, Playbook, SlotNames, Timings, WorkloadKind,
};
use crate::protocol::Role;
use crate::secret::{Fingerprint, SecretValue};
use crate::transport::Transport;

/// How often a rollout is polled at first, and at most.
const POLL: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_millis(500);
/// Between two polls that read the workload only, how often its pods are listed too.
const PODS_EVERY: u32 = 4;
/// The pod condition rotor's readiness gate waits for: True once rotor proved the pod.
pub const GATE_CONDITION: &str = "rotor.dev/proven";
/// How often one Secret write is re-decided after losing a race.
const CONFLICT_RETRIES: usize = 5;

/// A workload consumer.
pub struct KubernetesConsumer {
    name: String,
    role: Role,
    secret: String,
    slot_names: SlotNames,
    spec: KubernetesSpec,
    fingerprints_path: Option<String>,
    timings: Timings,
    /// Another consumer of the playbook that validates reads the same Secret.
    shared_with_validator: bool,
    annotation: String,
    client: kube::Client,
    /// How rotor reaches its pods (plain HTTP unless it has `tls`).
    transport: Transport,
    /// `restart` rolls the workload; `reload` updates the Secret its pods mount and waits for
    /// the kubelet's refresh.
    pickup: Pickup,
}

/// How a pod template delivers the consumer's Secret as files (`pickup: reload` needs it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SecretMounts {
    /// Volumes that carry the Secret (`secret` or a `projected` source): name, and the keys
    /// it projects when it lists `items`.
    volumes: Vec<(String, Option<Vec<String>>)>,
    /// Each whole mount of such a volume: (container, mountPath, volume).
    mounted: Vec<(String, String, String)>,
    /// Each `subPath` mount of such a volume (a copy the kubelet never refreshes):
    /// (container, mountPath).
    sub_path: Vec<(String, String)>,
    /// Containers that read the Secret from their environment (`env[].valueFrom.secretKeyRef`
    /// or `envFrom[].secretRef`): read once, at start.
    env: Vec<String>,
}

fn secret_mounts(spec: Option<&k8s_openapi::api::core::v1::PodSpec>, secret: &str) -> SecretMounts {
    let mut out = SecretMounts::default();
    let Some(spec) = spec else { return out };
    for v in spec.volumes.iter().flatten() {
        let keys = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
            items
                .as_ref()
                .map(|i| i.iter().map(|k| k.key.clone()).collect::<Vec<_>>())
        };
        if let Some(s) = &v.secret
            && s.secret_name.as_deref() == Some(secret)
        {
            out.volumes.push((v.name.clone(), keys(&s.items)));
            continue;
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &src.secret
                && s.name == secret
            {
                out.volumes.push((v.name.clone(), keys(&s.items)));
            }
        }
    }
    for c in &spec.containers {
        let by_env = c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == secret)
        }) || c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret));
        if by_env {
            out.env.push(c.name.clone());
        }
        for m in c.volume_mounts.iter().flatten() {
            if !out.volumes.iter().any(|(v, _)| *v == m.name) {
                continue;
            }
            match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(_) => out.sub_path.push((c.name.clone(), m.mount_path.clone())),
                None => out
                    .mounted
                    .push((c.name.clone(), m.mount_path.clone(), m.name.clone())),
            }
        }
    }
    out
}

/// What rotor reads of a workload, whatever its kind.
#[derive(Debug, Clone, Default)]
struct WorkloadView {
    generation: i64,
    observed: i64,
    /// Pods it should run.
    desired: i32,
    /// Pods running the current template.
    updated: i32,
    /// Ready pods.
    ready: i32,
    /// Available pods.
    available: i32,
    /// Every pod it counts (old ones included), where the kind reports it.
    total: Option<i32>,
    /// StatefulSet: current and update revisions agree.
    revisions_agree: bool,
    /// `ProgressDeadlineExceeded` message, when set.
    stalled: Option<String>,
    /// The template's rotor annotation.
    annotation: Option<String>,
    /// Label selector in list form.
    selector: String,
    /// First containerPort of the template.
    first_port: Option<u16>,
    /// Condition types of the template's readiness gates.
    gates: Vec<String>,
    /// How the template mounts the consumer's Secret.
    mounts: SecretMounts,
}

impl WorkloadView {
    fn rolled_out(&self) -> bool {
        self.observed >= self.generation
            && self.updated == self.desired
            && self.ready == self.desired
            && self.available == self.desired
            && self.total.is_none_or(|t| t == self.desired)
            && self.revisions_agree
    }
}

/// One pod as the gate sees it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    annotation: Option<String>,
    ready: bool,
    terminating: bool,
    ip: Option<IpAddr>,
    port: Option<u16>,
    age: Duration,
    /// `CrashLoopBackOff: …`, `exited 1`, …
    waiting: Option<String>,
    /// Every container is ready (the `ContainersReady` condition): what a gate waits for.
    containers_ready: bool,
    /// The pod's spec lists rotor's readiness gate.
    gated: bool,
    /// The status of rotor's gate condition (`True`, `False`), if set.
    proven: Option<String>,
}

fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn template_facts(
    t: &PodTemplateSpec,
    key: &str,
    secret: &str,
) -> (Option<String>, Option<u16>, Vec<String>, SecretMounts) {
    let annotation = t
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key).cloned());
    let gates = t
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .map(|g| g.iter().map(|g| g.condition_type.clone()).collect())
        .unwrap_or_default();
    (
        annotation,
        first_port(t.spec.as_ref()),
        gates,
        secret_mounts(t.spec.as_ref(), secret),
    )
}

fn first_port(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Option<u16> {
    spec.and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
}

fn deployment_view(d: Deployment, key: &str, secret: &str) -> WorkloadView {
    let spec = d.spec.unwrap_or_default();
    let status = d.status.unwrap_or_default();
    let (annotation, first_port, gates, mounts) = template_facts(&spec.template, key, secret);
    let stalled = status.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .then(|| c.message.clone().unwrap_or_default())
    });
    WorkloadView {
        generation: d.metadata.generation.unwrap_or(0),
        observed: status.observed_generation.unwrap_or(0),
        desired: spec.replicas.unwrap_or(1),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        total: Some(status.replicas.unwrap_or(0)),
        revisions_agree: true,
        stalled,
        annotation,
        selector: selector_string(&spec.selector),
        first_port,
        gates,
        mounts,
    }
}

fn statefulset_view(s: StatefulSet, key: &str, secret: &str) -> WorkloadView {
    let spec = s.spec.unwrap_or_default();
    let status = s.status.unwrap_or_default();
    let (annotation, first_port, gates, mounts) = template_facts(&spec.template, key, secret);
    WorkloadView {
        generation: s.metadata.generation.unwrap_or(0),
        observed: status.observed_generation.unwrap_or(0),
        desired: spec.replicas.unwrap_or(1),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        total: Some(status.replicas),
        revisions_agree: status.current_revision.is_some()
            && status.current_revision == status.update_revision,
        stalled: None,
        annotation,
        selector: selector_string(&spec.selector),
        first_port,
        gates,
        mounts,
    }
}

fn daemonset_view(d: DaemonSet, key: &str, secret: &str) -> WorkloadView {
    let spec = d.spec.unwrap_or_default();
    let status = d.status.unwrap_or_default();
    let (annotation, first_port, gates, mounts) = template_facts(&spec.template, key, secret);
    WorkloadView {
        generation: d.metadata.generation.unwrap_or(0),
        observed: status.observed_generation.unwrap_or(0),
        desired: status.desired_number_scheduled,
        updated: status.updated_number_scheduled.unwrap_or(0),
        ready: status.number_ready,
        available: status.number_available.unwrap_or(0),
        total: Some(status.current_number_scheduled),
        revisions_agree: status.number_unavailable.unwrap_or(0) == 0,
        stalled: None,
        annotation,
        selector: selector_string(&spec.selector),
        first_port,
        gates,
        mounts,
    }
}

fn pod_view(p: Pod, key: &str) -> PodView {
    let status = p.status.unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .map(|c| c.status.clone())
    };
    let ready = condition("Ready").as_deref() == Some("True");
    let containers_ready = match condition("ContainersReady") {
        Some(s) => s == "True",
        None => {
            let cs = status.container_statuses.iter().flatten();
            ready || (cs.clone().count() > 0 && cs.clone().all(|c| c.ready))
        }
    };
    let proven = condition(GATE_CONDITION);
    let gated = p
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == GATE_CONDITION));
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some(format!(
                "{}{} (restarts: {})",
                w.reason.clone().unwrap_or_else(|| "Waiting".into()),
                w.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
                c.restart_count
            ))
        })
        .or_else(|| status.reason.clone());
    let age = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| {
            let secs = (jiff::Timestamp::now() - t.0).get_seconds().max(0);
            Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        })
        .unwrap_or_default();
    PodView {
        name: p.metadata.name.unwrap_or_default(),
        annotation: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned()),
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
        ip: status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
        port: first_port(p.spec.as_ref()),
        age,
        waiting,
        containers_ready,
        gated,
        proven,
    }
}

/// Why a template that mounts Secret `secret` as `m` says cannot serve a `pickup: reload`
/// consumer whose slot keys are `keys`, if it cannot: no volume of the Secret, a volume no
/// container mounts, a volume mounted only with `subPath` (never refreshed), or `items` that
/// leave a key out.
fn reload_problem(
    m: &SecretMounts,
    w: &crate::playbook::WorkloadRef,
    secret: &str,
    keys: &[&str],
) -> Option<String> {
    if m.volumes.is_empty() {
        return Some(format!(
            "the pod template of {w} has no volume of Secret {secret} (it reads it from the \
             environment, or not at all), so its pods would never see a new value without a \
             restart"
        ));
    }
    // Every container must see a change: one that holds a copy (subPath) or read the Secret
    // into its environment keeps the old value for good, while the proof may reach another.
    if !m.sub_path.is_empty() {
        return Some(format!(
            "{w} mounts Secret {secret} with subPath ({}), a copy the kubelet never refreshes",
            m.sub_path
                .iter()
                .map(|(c, p)| format!("container {c} at {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !m.env.is_empty() {
        return Some(format!(
            "{w} reads Secret {secret} into the environment of container {}, which never \
             changes without a restart",
            m.env.join(", ")
        ));
    }
    if m.mounted.is_empty() {
        return Some(format!(
            "no container of {w} mounts the volume {} of Secret {secret}",
            m.volumes
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let projected = |key: &str| {
        m.mounted.iter().any(|(_, _, vol)| {
            m.volumes.iter().any(|(v, items)| {
                v == vol && items.as_ref().is_none_or(|i| i.iter().any(|k| k == key))
            })
        })
    };
    keys.iter().find(|k| !projected(k)).map(|key| {
        format!(
            "the volumes of Secret {secret} that {w} mounts list `items` without {key}, so that \
             key never reaches its pods"
        )
    })
}

/// Whether `held` (what a pod reports) is what `d` wants under `names`: the primary's and
/// the secondary's names carry `d`'s fingerprints, and a secondary rotor no longer sets is gone
/// (unless `keep_values`: the Secret keeps it for a validator that shares it). Aliases are not
/// compared: a program may not report every name the playbook declares. None when it is; else
/// what differs (fingerprints only).
fn held_differs(
    names: &SlotNames,
    keep_values: bool,
    held: &Held,
    d: &Desired<'_>,
) -> Option<String> {
    let mut out = Vec::new();
    for name in std::iter::once(&names.primary).chain(names.secondary.as_ref()) {
        let has = held.names.get(name);
        match d.names.get(name) {
            Some(want) if has != Some(want) => out.push(format!(
                "{name} is {}, expected {want}",
                has.map_or_else(|| "missing".to_string(), |f| f.to_string())
            )),
            None if !keep_values && has.is_some() => {
                out.push(format!("{name} is still set, expected none"));
            }
            _ => {}
        }
    }
    (!out.is_empty()).then(|| out.join(", "))
}

/// `sha256:aaa` or `sha256:aaa,sha256:bbb` (primary, then secondary).
fn annotation_value(primary: &Fingerprint, secondary: Option<&Fingerprint>) -> String {
    match secondary {
        Some(s) => format!("{primary},{s}"),
        None => primary.to_string(),
    }
}

fn parse_annotation(text: &str) -> Option<(Fingerprint, Option<Fingerprint>)> {
    let mut parts = text.split(',');
    let primary = Fingerprint::parse(parts.next()?.trim())?;
    let secondary = match parts.next() {
        Some(s) => Some(Fingerprint::parse(s.trim())?),
        None => None,
    };
    parts.next().is_none().then_some((primary, secondary))
}

impl KubernetesConsumer {
    /// Opens the consumer on `cluster`.
    pub fn new(
        playbook: &Playbook,
        spec: &ConsumerSpec,
        k: &KubernetesSpec,
        cluster: &Cluster,
        transport: Transport,
    ) -> Self {
        let shared_with_validator = playbook.consumers.iter().any(|other| {
            other.name != spec.name
                && other.role.validates()
                && matches!(&other.kind, ConsumerKind::Kubernetes(o)
                    if o.secret == k.secret && o.workload.namespace == k.workload.namespace)
        });
        KubernetesConsumer {
            name: spec.name.clone(),
            role: spec.role,
            secret: playbook.secret.clone(),
            slot_names: spec.slots.clone(),
            spec: k.clone(),
            fingerprints_path: spec.fingerprints_path.clone(),
            timings: playbook.timings.clone(),
            shared_with_validator,
            annotation: format!("rotor.dev/{}", playbook.secret),
            client: cluster.client(),
            transport,
            pickup: spec.pickup,
        }
    }

    fn ns(&self) -> &str {
        &self.spec.workload.namespace
    }

    fn cluster_error(&self, e: ClusterError) -> ConsumerError {
        ConsumerError::Cluster {
            consumer: self.name.clone(),
            source: Box::new(e),
        }
    }

    fn workload_call(&self, verb: &'static str) -> Call {
        Call::new(
            verb,
            self.spec.workload.kind.resource(),
            "apps",
            self.ns(),
            &self.spec.workload.name,
        )
    }

    async fn view(&self) -> Result<WorkloadView, ConsumerError> {
        let name = &self.spec.workload.name;
        let call = self.workload_call("get");
        let key = &self.annotation;
        let secret = &self.spec.secret;
        let c = self.client.clone();
        let r = match self.spec.workload.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(c, self.ns());
                retry(&call, || api.get(name))
                    .await
                    .map(|d| deployment_view(d, key, secret))
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(c, self.ns());
                retry(&call, || api.get(name))
                    .await
                    .map(|s| statefulset_view(s, key, secret))
            }
            WorkloadKind::DaemonSet => {
                let api: Api<DaemonSet> = Api::namespaced(c, self.ns());
                retry(&call, || api.get(name))
                    .await
                    .map(|d| daemonset_view(d, key, secret))
            }
        };
        r.map_err(|e| self.cluster_error(e))
    }

    /// Sets the template annotation and adds rotor's readiness gate to the template's gates
    /// (a merge patch: idempotent, so safe to retry; the gates a template already lists stay).
    async fn patch_template(&self, value: &str, gates: &[String]) -> Result<(), ConsumerError> {
        let mut gates: Vec<serde_json::Value> = gates
            .iter()
            .filter(|g| g.as_str() != GATE_CONDITION)
            .map(|g| json!({"conditionType": g}))
            .collect();
        gates.push(json!({"conditionType": GATE_CONDITION}));
        self.patch_template_json(json!({"spec": {"template": {
            "metadata": {"annotations": {&self.annotation: value}},
            "spec": {"readinessGates": gates},
        }}}))
        .await
    }

    /// A merge patch of the workload (its pod template).
    async fn patch_template_json(&self, body: serde_json::Value) -> Result<(), ConsumerError> {
        let name = &self.spec.workload.name;
        let call = self.workload_call("patch");
        let pp = PatchParams::default();
        let patch = Patch::Merge(&body);
        let c = self.client.clone();
        let r = match self.spec.workload.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(c, self.ns());
                retry(&call, || api.patch(name, &pp, &patch))
                    .await
                    .map(|_| ())
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(c, self.ns());
                retry(&call, || api.patch(name, &pp, &patch))
                    .await
                    .map(|_| ())
            }
            WorkloadKind::DaemonSet => {
                let api: Api<DaemonSet> = Api::namespaced(c, self.ns());
                retry(&call, || api.patch(name, &pp, &patch))
                    .await
                    .map(|_| ())
            }
        };
        r.map_err(|e| self.cluster_error(e))
    }

    async fn pods(&self, selector: &str) -> Result<Vec<PodView>, ConsumerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        let call = Call::collection("list", "pods", "", self.ns());
        let lp = ListParams::default().labels(selector);
        let list = retry(&call, || api.list(&lp))
            .await
            .map_err(|e| self.cluster_error(e))?;
        let mut pods: Vec<PodView> = list
            .items
            .into_iter()
            .map(|p| pod_view(p, &self.annotation))
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// Sets rotor's gate condition on pod `name` through `pods/status` (a strategic merge patch:
    /// conditions merge by type, so the kubelet's own conditions stay).
    async fn set_proven(
        &self,
        name: &str,
        proven: bool,
        message: &str,
    ) -> Result<(), ConsumerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        let call = Call::new("patch", "pods/status", "", self.ns(), name);
        let body = json!({"status": {"conditions": [{
            "type": GATE_CONDITION,
            "status": if proven { "True" } else { "False" },
            "reason": if proven { "Proven" } else { "ProofFailed" },
            "message": message.chars().take(512).collect::<String>(),
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }]}});
        let pp = PatchParams::default();
        let patch = Patch::Strategic(&body);
        retry(&call, || api.patch_status(name, &pp, &patch))
            .await
            .map(|_| ())
            .map_err(|e| self.cluster_error(e))
    }

    /// Where rotor reaches pod `p` directly.
    fn pod_addr(&self, view: &WorkloadView, p: &PodView) -> Option<SocketAddr> {
        Some(SocketAddr::new(p.ip?, self.port(view.first_port, p.port)?))
    }

    /// Proves one pod whose containers are ready through `gate`, at its own IP, then opens its
    /// readiness gate; a pod that fails keeps its gate closed (condition False: never Ready,
    /// never an endpoint) and the rollout fails.
    async fn prove_pod(
        &self,
        view: &WorkloadView,
        p: &PodView,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<(), ConsumerError> {
        let Some(addr) = self.pod_addr(view, p) else {
            return Err(ConsumerError::Gate {
                consumer: self.name.clone(),
                instance: p.name.clone(),
                detail: "the pod has no IP or port to prove it at".into(),
                fails_open: false,
            });
        };
        match pass_gate(gate, &self.name, &p.name, addr, events).await {
            Ok(()) => self.set_proven(&p.name, true, "proven by rotor").await,
            Err(e) => {
                let _ = self
                    .set_proven(&p.name, false, "failed rotor's proof (see rotor's output)")
                    .await;
                Err(e)
            }
        }
    }

    /// Pods of template `expected` that must be replaced: Ready pods that fail `gate` (they hold
    /// the right fingerprints but no longer do what they must) and pods whose gate rotor closed
    /// (a proof failed, and a run may have died before replacing them). When there are any, the
    /// workload is restarted the way `kubectl rollout restart` does it (template annotation
    /// `rotor.dev/restarted-at`): every pod is replaced by one the rollout proves, and the
    /// workload's own strategy keeps the old pods serving until their replacements are Ready —
    /// a broken pod is only ever replaced by a proven one. Needs no permission beyond the
    /// rollout's own. Returns how many pods must go.
    async fn replace_failing(
        &self,
        view: &WorkloadView,
        pods: &[PodView],
        expected: &str,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<usize, ConsumerError> {
        let current = |p: &&PodView| !p.terminating && p.annotation.as_deref() == Some(expected);
        let mut failed = pods
            .iter()
            .filter(current)
            .filter(|p| p.proven.as_deref() == Some("False"))
            .count();
        for p in pods.iter().filter(current).filter(|p| p.ready) {
            let Some(addr) = self.pod_addr(view, p) else {
                continue;
            };
            if pass_gate(gate, &self.name, &p.name, addr, events)
                .await
                .is_err()
            {
                failed += 1;
            }
        }
        if failed > 0 {
            let stamp = jiff::Timestamp::now().to_string();
            self.patch_template_json(json!({"spec": {"template": {"metadata": {"annotations": {
                "rotor.dev/restarted-at": stamp,
            }}}}}))
            .await?;
        }
        Ok(failed)
    }

    /// Writes the slot keys of the workload's Secret; returns whether it changed.
    async fn write_secret(&self, d: &Desired<'_>) -> Result<bool, ConsumerError> {
        let name = &self.spec.secret;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.ns());
        let keep_values = !self.role.validates() && self.shared_with_validator;
        let mut attempt = 0;
        loop {
            let call = Call::new("get", "secrets", "", self.ns(), name);
            let mut secret = match retry(&call, || api.get(name)).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => {
                    return Err(ConsumerError::Observe {
                        consumer: self.name.clone(),
                        instance: format!("secrets/{name}"),
                        detail: format!(
                            "the Secret {name} that {} reads does not exist in namespace {}; create it (rotor writes its keys but does not create Secrets a workload depends on)",
                            self.spec.workload,
                            self.ns()
                        ),
                    });
                }
                Err(e) => return Err(self.cluster_error(e)),
            };
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            let mut changed = false;
            let wanted: BTreeMap<&str, &SecretValue> =
                d.values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            for key in super::slot_names(&self.slot_names) {
                match wanted.get(key) {
                    Some(v) => {
                        let same = data.get(key).is_some_and(|b| {
                            SecretValue::new(String::from_utf8_lossy(&b.0).into_owned()).ct_eq(v)
                        });
                        if !same {
                            data.insert(
                                key.to_string(),
                                ByteString(v.expose().as_bytes().to_vec()),
                            );
                            changed = true;
                        }
                    }
                    None if keep_values => {}
                    None => changed |= data.remove(key).is_some(),
                }
            }
            if !changed {
                return Ok(false);
            }
            secret.string_data = None;
            let call = Call::new("update", "secrets", "", self.ns(), name);
            let pp = PostParams::default();
            match retry(&call, || api.replace(name, &pp, &secret)).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_conflict() && attempt + 1 < CONFLICT_RETRIES => {
                    attempt += 1;
                }
                Err(e) => return Err(self.cluster_error(e)),
            }
        }
    }

    fn port(&self, view_port: Option<u16>, pod_port: Option<u16>) -> Option<u16> {
        self.spec.port.or(pod_port).or(view_port)
    }

    /// Pods that block convergence onto `expected`, each with why.
    fn left_behind(view: &WorkloadView, pods: &[PodView], expected: &str) -> Vec<String> {
        let mut out: Vec<String> = pods
            .iter()
            .filter_map(|p| {
                if p.annotation.as_deref() != Some(expected) {
                    Some(format!(
                        "{} (old template{})",
                        p.name,
                        if p.terminating { ", terminating" } else { "" }
                    ))
                } else if !p.terminating && !p.ready {
                    Some(format!(
                        "{} (not ready{})",
                        p.name,
                        p.waiting
                            .as_ref()
                            .map(|w| format!(": {w}"))
                            .unwrap_or_default()
                    ))
                } else {
                    None
                }
            })
            .collect();
        let serving = pods
            .iter()
            .filter(|p| !p.terminating && p.ready && p.annotation.as_deref() == Some(expected))
            .count();
        if out.is_empty() && serving != usize::try_from(view.desired).unwrap_or(0) {
            out.push(format!(
                "{serving} of {} pods ready on the new template",
                view.desired
            ));
        }
        out
    }

    /// Waits until every pod runs the template annotated `expected` and is Ready.
    async fn wait(
        &self,
        expected: &str,
        old_pods: &BTreeSet<String>,
        gate: &dyn Gate,
        events: &dyn EventSink,
        d: &Desired<'_>,
    ) -> Result<usize, ConsumerError> {
        let deadline = super::deadline_after(self.timings.rollout_timeout);
        let mut poll = POLL;
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let mut polls: u32 = 0;
        loop {
            let view = self.view().await?;
            // The pod list (the heaviest read) is taken when the workload says it has rolled
            // out (the convergence gate), when it stalled or the deadline passed (to name the
            // pods), and otherwise every few polls (crash loops, replaced instances).
            let settled = view.rolled_out() && view.annotation.as_deref() == Some(expected);
            // A gated template's pods wait for rotor: while some pod is not Ready (it may be
            // waiting for its proof), list them on every poll.
            let gating = view.gates.iter().any(|g| g == GATE_CONDITION)
                && view.total.is_none_or(|t| t > view.ready);
            let fresh = settled
                || gating
                || view.stalled.is_some()
                || Instant::now() >= deadline
                || polls.is_multiple_of(PODS_EVERY);
            polls += 1;
            if fresh {
                let pods = self.pods(&view.selector).await?;
                // Pods rotor has not decided on yet; one whose gate rotor closed (it failed)
                // stays closed and is replaced, never proven again.
                for p in pods.iter().filter(|p| {
                    p.gated
                        && p.containers_ready
                        && !p.terminating
                        && p.proven.is_none()
                        && p.annotation.as_deref() == Some(expected)
                }) {
                    self.prove_pod(&view, p, gate, events).await?;
                }
                // A stop asked (SIGTERM to the CronJob's pod): the pods proven so far serve; a
                // new pod not yet proven stays un-Ready behind its gate, so the rollout waits
                // with the old pods serving until `resume` proves it (or `rollback` undoes).
                if let Some(signal) = crate::stop::requested() {
                    return Err(ConsumerError::Stopped {
                        consumer: self.name.clone(),
                        signal,
                    });
                }
                for p in old_pods {
                    if !gone.contains(p) && !pods.iter().any(|q| &q.name == p) {
                        gone.insert(p.clone());
                        events.emit(&Event::InstanceReplaced {
                            consumer: self.name.clone(),
                            old: Some(p.clone()),
                            new: format!("{} pod", self.spec.workload.name),
                            primary: d.primary.clone(),
                            secondary: d.secondary.clone(),
                        });
                    }
                }
                if let Some(message) = &view.stalled {
                    let stuck = pods
                        .iter()
                        .find(|p| p.annotation.as_deref() == Some(expected) && !p.ready);
                    return Err(ConsumerError::NotReady {
                        consumer: self.name.clone(),
                        instance: stuck
                            .map_or_else(|| self.spec.workload.name.clone(), |p| p.name.clone()),
                        timeout: self.timings.rollout_timeout,
                        detail: format!(
                            "ProgressDeadlineExceeded: {message}{}",
                            stuck
                                .and_then(|p| p.waiting.as_ref())
                                .map(|w| format!("; {w}"))
                                .unwrap_or_default()
                        ),
                    });
                }
                // (A pod whose gate rotor closed is on its way out, not late.)
                if let Some(p) = pods.iter().find(|p| {
                    p.annotation.as_deref() == Some(expected)
                        && !p.ready
                        && !p.terminating
                        && p.proven.as_deref() != Some("False")
                        && p.age > self.timings.readiness_timeout
                }) {
                    return Err(ConsumerError::NotReady {
                        consumer: self.name.clone(),
                        instance: p.name.clone(),
                        timeout: self.timings.readiness_timeout,
                        detail: p
                            .waiting
                            .clone()
                            .unwrap_or_else(|| "the pod never became Ready".into()),
                    });
                }
                let behind = Self::left_behind(&view, &pods, expected);
                if view.rolled_out()
                    && view.annotation.as_deref() == Some(expected)
                    && behind.is_empty()
                {
                    return Ok(old_pods.len());
                }
                if Instant::now() >= deadline {
                    return Err(ConsumerError::LeftBehind {
                        consumer: self.name.clone(),
                        timeout: self.timings.rollout_timeout,
                        pods: behind,
                    });
                }
            }
            tokio::time::sleep(poll).await;
            // Back off: a long rollout is polled less often, so hundreds of consumers rolling
            // at once do not flood the API server.
            poll = (poll * 3 / 2).min(POLL_MAX);
        }
    }

    /// How long the kubelet may take to show a Secret change in a mounted volume.
    fn sync_period(&self) -> Duration {
        self.spec.sync_period.unwrap_or(DEFAULT_SYNC_PERIOD)
    }

    /// For `pickup: reload`: the workload's pods must mount the consumer's Secret as a volume
    /// (see [`reload_problem`]); otherwise no pod would ever see a new value without a restart.
    fn check_reload(&self, view: &WorkloadView) -> Result<(), ConsumerError> {
        if self.pickup != Pickup::Reload {
            return Ok(());
        }
        let keys = super::slot_names(&self.slot_names);
        match reload_problem(&view.mounts, &self.spec.workload, &self.spec.secret, &keys) {
            None => Ok(()),
            Some(detail) => Err(ConsumerError::Unsuited {
                consumer: self.name.clone(),
                detail,
            }),
        }
    }

    /// What differs between what a pod reports and `d` (see [`held_differs`]).
    fn held_differs(&self, held: &Held, d: &Desired<'_>) -> Option<String> {
        let keep_values = !self.role.validates() && self.shared_with_validator;
        held_differs(&self.slot_names, keep_values, held, d)
    }

    /// Sets rotor's annotation on pod `name` itself (not on the template: no restart), once
    /// rotor proved it holds `value`.
    async fn annotate_pod(&self, name: &str, value: &str) -> Result<(), ConsumerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        let call = Call::new("patch", "pods", "", self.ns(), name);
        let body = json!({"metadata": {"annotations": {&self.annotation: value}}});
        let pp = PatchParams::default();
        let patch = Patch::Merge(&body);
        retry(&call, || api.patch(name, &pp, &patch))
            .await
            .map(|_| ())
            .map_err(|e| self.cluster_error(e))
    }

    /// Checks one running pod after the sync period: when the consumer reports fingerprints,
    /// that it holds `d` (else it is not refreshed yet), then `gate`. Without a report the
    /// gate itself tells: a pod that fails it may not be refreshed yet and is asked again
    /// until the deadline, except one that accepted a canary. A proven pod gets rotor's
    /// annotation (and its readiness gate's condition, when its template has one).
    async fn reload_one(
        &self,
        view: &WorkloadView,
        p: &PodView,
        d: &Desired<'_>,
        expected: &str,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<Result<(), String>, ConsumerError> {
        let Some(addr) = self.pod_addr(view, p) else {
            return Ok(Err("it has no IP or port yet".into()));
        };
        if let Some(path) = &self.fingerprints_path {
            match report_held(self.transport.at(addr), path, self.timings.probe_timeout).await {
                Err(e) => return Ok(Err(format!("its fingerprints could not be read: {e}"))),
                Ok(held) => {
                    if let Some(diff) = self.held_differs(&held, d) {
                        return Ok(Err(format!("it still holds other values: {diff}")));
                    }
                }
            }
            // It holds the values: a failed proof is a real failure.
            if let Err(e) = pass_gate(gate, &self.name, &p.name, addr, events).await {
                if p.gated {
                    let _ = self
                        .set_proven(&p.name, false, "failed rotor's proof (see rotor's output)")
                        .await;
                }
                return Err(e);
            }
        } else {
            match pass_gate(gate, &self.name, &p.name, addr, events).await {
                Ok(()) => {}
                Err(
                    e @ ConsumerError::Gate {
                        fails_open: true, ..
                    },
                ) => return Err(e),
                Err(ConsumerError::Gate { detail, .. }) => {
                    return Ok(Err(format!("its proof fails: {detail}")));
                }
                Err(e) => return Err(e),
            }
        }
        if p.gated && p.proven.as_deref() != Some("True") {
            self.set_proven(&p.name, true, "proven by rotor").await?;
        }
        self.annotate_pod(&p.name, expected).await?;
        events.emit(&Event::InstanceReplaced {
            consumer: self.name.clone(),
            old: Some(p.name.clone()),
            new: p.name.clone(),
            primary: d.primary.clone(),
            secondary: d.secondary.clone(),
        });
        Ok(Ok(()))
    }

    /// `pickup: reload`: writes the Secret the pods mount, restarts nothing, waits
    /// `sync_period` from the write (the kubelet's refresh; never shorter), then proves every
    /// pod: when the consumer reports fingerprints, it is asked until it holds the new values,
    /// and a pod still behind `readiness_timeout` after the sync period fails the rollout,
    /// named. Already converged pods (rotor's annotation on the pod says so, and the Secret
    /// already held the values) are left alone.
    async fn reload(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError> {
        let d = Desired::new(&self.slot_names, &self.secret, slots);
        let expected = annotation_value(&d.primary, d.secondary.as_ref());
        let view = self.view().await?;
        self.check_reload(&view)?;
        // Read before the write: only rotor marks a pod, and only once it proved it.
        let pods = self.pods(&view.selector).await?;
        let changed = self.write_secret(&d).await?;
        // Taken after the write returned: the wait counts from no earlier than the write.
        let written = Instant::now();
        let live: Vec<&PodView> = pods.iter().filter(|p| !p.terminating).collect();
        let desired = usize::try_from(view.desired).unwrap_or(0);
        if !changed
            && live.len() == desired
            && live
                .iter()
                .all(|p| p.ready && p.annotation.as_deref() == Some(expected.as_str()))
        {
            return Ok(RolloutReport::default());
        }
        events.emit(&Event::RolloutStarted {
            consumer: self.name.clone(),
            instances: desired,
        });
        let sync = self.sync_period();
        events.emit(&Event::Waiting {
            reason: format!(
                "sync_period: the kubelet refreshes Secret {} in the pods of {} (no restart)",
                self.spec.secret, self.spec.workload
            ),
            seconds: sync.as_secs_f64(),
        });
        let prove_from = written
            .checked_add(sync)
            .unwrap_or_else(|| super::deadline_after(sync));
        tokio::time::sleep_until(prove_from.into()).await;
        let grace = self.timings.readiness_timeout;
        let deadline = prove_from
            .checked_add(grace)
            .unwrap_or_else(|| super::deadline_after(grace));
        let mut proven: BTreeSet<String> = BTreeSet::new();
        let mut poll = POLL;
        loop {
            let view = self.view().await?;
            self.check_reload(&view)?;
            let pods = self.pods(&view.selector).await?;
            let mut behind: Vec<(String, String)> = Vec::new();
            for p in pods.iter().filter(|p| !p.terminating) {
                if proven.contains(&p.name) {
                    continue;
                }
                if !p.containers_ready {
                    behind.push((
                        p.name.clone(),
                        format!(
                            "it is not ready{}",
                            p.waiting
                                .as_ref()
                                .map(|w| format!(": {w}"))
                                .unwrap_or_default()
                        ),
                    ));
                    continue;
                }
                match self
                    .reload_one(&view, p, &d, &expected, gate, events)
                    .await?
                {
                    Ok(()) => {
                        proven.insert(p.name.clone());
                    }
                    Err(why) => behind.push((p.name.clone(), why)),
                }
            }
            let serving = pods
                .iter()
                .filter(|p| !p.terminating && proven.contains(&p.name))
                .count();
            let desired = usize::try_from(view.desired).unwrap_or(0);
            if behind.is_empty() && serving >= desired {
                break;
            }
            if Instant::now() >= deadline {
                let (instance, detail) = behind.into_iter().next().unwrap_or_else(|| {
                    (
                        self.spec.workload.name.clone(),
                        format!("{serving} of {desired} pods proven"),
                    )
                });
                return Err(ConsumerError::NotPickedUp {
                    consumer: self.name.clone(),
                    instance,
                    detail: format!(
                        "Secret {} within {:.1?} of the write (sync_period {sync:?} + \
                         readiness_timeout {grace:?}): {detail}",
                        self.spec.secret,
                        written.elapsed()
                    ),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 3 / 2).min(POLL_MAX);
        }
        events.emit(&Event::RolloutFinished {
            consumer: self.name.clone(),
            restarts: 0,
        });
        Ok(RolloutReport {
            restarts: 0,
            waited: written.elapsed(),
        })
    }

    fn names_for(
        &self,
        primary: &Fingerprint,
        secondary: Option<&Fingerprint>,
    ) -> BTreeMap<String, Fingerprint> {
        super::by_name(&self.slot_names, primary, secondary)
            .into_iter()
            .map(|(name, fp)| (name, fp.clone()))
            .collect()
    }
}

#[async_trait]
impl Consumer for KubernetesConsumer {
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
        self.pickup
    }

    /// Writes the Secret, patches the template (annotation and rotor's readiness gate), then
    /// proves every new pod at its own IP as soon as its containers are ready and opens its gate
    /// through `pods/status`: an unproven pod never becomes Ready, never joins the endpoints and
    /// never counts as available, so the rollout stalls at `maxUnavailable` and the old pods keep
    /// serving. Ready pods of the wanted template that fail `gate` are taken out and replaced.
    async fn apply(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError> {
        if self.pickup == Pickup::Reload {
            return self.reload(slots, gate, events).await;
        }
        let started = Instant::now();
        let d = Desired::new(&self.slot_names, &self.secret, slots);
        let expected = annotation_value(&d.primary, d.secondary.as_ref());
        // The Secret first: a pod started from now on (by us or by anyone) gets the new keys.
        self.write_secret(&d).await?;
        let view = self.view().await?;
        let pods = self.pods(&view.selector).await?;
        let gated = view.gates.iter().any(|g| g == GATE_CONDITION);
        let replaced = self
            .replace_failing(&view, &pods, &expected, gate, events)
            .await?;
        if view.annotation.as_deref() == Some(expected.as_str())
            && gated
            && replaced == 0
            && view.rolled_out()
            && Self::left_behind(&view, &pods, &expected).is_empty()
        {
            return Ok(RolloutReport::default());
        }
        let old: BTreeSet<String> = pods
            .iter()
            .filter(|p| p.annotation.as_deref() != Some(expected.as_str()))
            .map(|p| p.name.clone())
            .collect();
        events.emit(&Event::RolloutStarted {
            consumer: self.name.clone(),
            instances: usize::try_from(view.desired).unwrap_or(0),
        });
        if view.annotation.as_deref() != Some(expected.as_str()) || !gated {
            self.patch_template(&expected, &view.gates).await?;
        }
        let wait_started = Instant::now();
        let restarts = self.wait(&expected, &old, gate, events, &d).await? + replaced;
        let waited = wait_started.elapsed();
        events.emit(&Event::RolloutFinished {
            consumer: self.name.clone(),
            restarts,
        });
        tracing::debug!(consumer = %self.name, total = ?started.elapsed(), "rollout finished");
        Ok(RolloutReport { restarts, waited })
    }

    async fn desired_instances(&self) -> Result<usize, ConsumerError> {
        let view = self.view().await?;
        self.check_reload(&view)?;
        Ok(usize::try_from(view.desired).unwrap_or(0))
    }

    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError> {
        let view = self.view().await?;
        self.check_reload(&view)?;
        let pods = self.pods(&view.selector).await?;
        Ok(pods
            .into_iter()
            .filter(|p| p.ready && !p.terminating)
            .map(|p| {
                let parsed = p.annotation.as_deref().and_then(parse_annotation);
                let addr = match (p.ip, self.port(view.first_port, p.port)) {
                    (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
                    _ => None,
                };
                Instance {
                    id: p.name,
                    addr,
                    primary: parsed.as_ref().map(|(p, _)| p.clone()),
                    secondary: parsed.and_then(|(_, s)| s),
                    pid: None,
                    host: None,
                }
            })
            .collect())
    }

    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError> {
        let observe = |detail: String| ConsumerError::Observe {
            consumer: self.name.clone(),
            instance: instance.id.clone(),
            detail,
        };
        if let Some(path) = &self.fingerprints_path {
            let addr = instance
                .addr
                .ok_or_else(|| observe("the pod has no IP or port yet".into()))?;
            let held = report_held(self.transport.at(addr), path, self.timings.probe_timeout)
                .await
                .map_err(observe)?;
            return Ok((held, HeldSource::Reported));
        }
        let Some(primary) = &instance.primary else {
            return Err(observe(format!(
                "the pod carries no `{}` annotation and the consumer has no fingerprints_path, so rotor cannot tell what it holds; run `rotor up` once so rotor rolls it with the annotation",
                self.annotation
            )));
        };
        let names = self.names_for(primary, instance.secondary.as_ref());
        let held = configured_held(
            self.role,
            names,
            primary.clone(),
            instance.secondary.clone(),
        );
        Ok((held, HeldSource::Configured))
    }

    /// Rotor does not own the workload: nothing to stop.
    async fn stop(&self) -> Result<usize, ConsumerError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_round_trips() {
        let a = Fingerprint::of("s", "a");
        let b = Fingerprint::of("s", "b");
        assert_eq!(
            parse_annotation(&annotation_value(&a, None)),
            Some((a.clone(), None))
        );
        assert_eq!(
            parse_annotation(&annotation_value(&a, Some(&b))),
            Some((a, Some(b)))
        );
        assert_eq!(parse_annotation("not a fingerprint"), None);
        assert_eq!(parse_annotation("sha256:aaaaaaaaaaaa,x"), None);
    }

    #[test]
    fn secret_mounts_see_secret_and_projected_volumes_and_subpaths() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "volumes": [
                {"name": "keys", "secret": {"secretName": "auth-secrets",
                    "items": [{"key": "SERVICE_SECRET", "path": "s"}]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "cfg"}},
                    {"secret": {"name": "auth-secrets"}}]}},
                {"name": "other", "secret": {"secretName": "other"}},
            ],
            "containers": [
                {"name": "web", "volumeMounts": [
                    {"name": "keys", "mountPath": "/etc/keys"},
                    {"name": "other", "mountPath": "/etc/other"}]},
                {"name": "side", "volumeMounts": [
                    {"name": "all", "mountPath": "/etc/all/s", "subPath": "s"}]},
            ],
        }))
        .unwrap();
        let m = secret_mounts(Some(&spec), "auth-secrets");
        assert_eq!(
            m.volumes,
            [
                ("keys".to_string(), Some(vec!["SERVICE_SECRET".to_string()])),
                ("all".to_string(), None)
            ]
        );
        assert_eq!(
            m.mounted,
            [(
                "web".to_string(),
                "/etc/keys".to_string(),
                "keys".to_string()
            )]
        );
        assert_eq!(m.sub_path, [("side".to_string(), "/etc/all/s".to_string())]);
        assert_eq!(secret_mounts(None, "auth-secrets"), SecretMounts::default());
        assert!(secret_mounts(Some(&spec), "nope").volumes.is_empty());
    }

    #[test]
    fn a_reload_consumer_needs_every_key_in_a_mounted_volume() {
        let w = crate::playbook::WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "auth".into(),
            namespace: "demo".into(),
        };
        let keys = ["S", "S_PREVIOUS"];
        let s = |v: &str| v.to_string();
        let problem = |m: &SecretMounts| reload_problem(m, &w, "auth-secrets", &keys);
        let e = problem(&SecretMounts::default()).unwrap();
        assert!(e.contains("has no volume of Secret auth-secrets"), "{e}");
        let mut m = SecretMounts {
            volumes: vec![(s("keys"), None)],
            ..Default::default()
        };
        let e = problem(&m).unwrap();
        assert!(
            e.contains("no container of deployment/auth in namespace demo mounts the volume keys"),
            "{e}"
        );
        m.sub_path = vec![(s("web"), s("/etc/keys/S"))];
        let e = problem(&m).unwrap();
        assert!(
            e.contains("with subPath (container web at /etc/keys/S)"),
            "{e}"
        );
        // A whole mount in one container does not make up for a copy in another.
        m.mounted = vec![(s("web"), s("/etc/keys"), s("keys"))];
        m.sub_path = vec![(s("sidecar"), s("/etc/keys/S"))];
        let e = problem(&m).unwrap();
        assert!(e.contains("container sidecar at /etc/keys/S"), "{e}");
        m.sub_path.clear();
        // Nor for a container that reads the Secret into its environment.
        m.env = vec![s("sidecar")];
        let e = problem(&m).unwrap();
        assert!(
            e.contains("into the environment of container sidecar"),
            "{e}"
        );
        m.env.clear();
        assert_eq!(problem(&m), None);
        // `items` that leave a key out, unless another mounted volume carries it.
        m.volumes = vec![(s("keys"), Some(vec![s("S")]))];
        let e = problem(&m).unwrap();
        assert!(e.contains("list `items` without S_PREVIOUS"), "{e}");
        m.volumes.push((s("prev"), Some(vec![s("S_PREVIOUS")])));
        assert!(problem(&m).is_some(), "an unmounted volume does not count");
        m.mounted.push((s("web"), s("/etc/prev"), s("prev")));
        assert_eq!(problem(&m), None);
    }

    #[test]
    fn a_pod_holds_the_values_when_its_primary_and_secondary_match() {
        let names = SlotNames {
            primary: "S".into(),
            secondary: Some("S_PREVIOUS".into()),
            aliases: BTreeMap::from([("KEY".into(), crate::playbook::SlotRef::Primary)]),
        };
        let (a, b) = (SecretValue::new("a".into()), SecretValue::new("b".into()));
        let fp = |v: &SecretValue| v.fingerprint("s");
        let held = |pairs: &[(&str, &SecretValue)]| Held {
            names: pairs.iter().map(|(n, v)| (n.to_string(), fp(v))).collect(),
            ..Held::default()
        };
        let both = Slots::new(b.clone(), Some(a.clone()));
        let d = Desired::new(&names, "s", &both);
        // An alias it does not report is not held against it.
        assert_eq!(
            held_differs(&names, false, &held(&[("S", &b), ("S_PREVIOUS", &a)]), &d),
            None
        );
        let e = held_differs(&names, false, &held(&[("S", &a)]), &d).unwrap();
        assert!(
            e.contains(&format!("S is {}, expected {}", fp(&a), fp(&b))),
            "{e}"
        );
        assert!(e.contains("S_PREVIOUS is missing"), "{e}");
        // No secondary any more: one still held is a difference, unless the Secret keeps it.
        let only = Slots::new(b.clone(), None);
        let d = Desired::new(&names, "s", &only);
        let stale = held(&[("S", &b), ("S_PREVIOUS", &a)]);
        let e = held_differs(&names, false, &stale, &d).unwrap();
        assert!(e.contains("S_PREVIOUS is still set, expected none"), "{e}");
        assert_eq!(held_differs(&names, true, &stale, &d), None);
    }

    #[test]
    fn selectors_render_as_the_api_expects() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "auth".into())])),
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
            ]),
        };
        assert_eq!(selector_string(&sel), "app=auth,tier in (a,b)");
    }

    #[test]
    fn a_rollout_is_done_only_when_every_count_agrees() {
        let done = WorkloadView {
            generation: 3,
            observed: 3,
            desired: 2,
            updated: 2,
            ready: 2,
            available: 2,
            total: Some(2),
            revisions_agree: true,
            ..Default::default()
        };
        assert!(done.rolled_out());
        assert!(
            !WorkloadView {
                observed: 2,
                ..done.clone()
            }
            .rolled_out()
        );
        assert!(
            !WorkloadView {
                total: Some(3),
                ..done.clone()
            }
            .rolled_out()
        );
        assert!(
            !WorkloadView {
                updated: 1,
                ..done.clone()
            }
            .rolled_out()
        );
        assert!(
            !WorkloadView {
                revisions_agree: false,
                ..done
            }
            .rolled_out()
        );
    }
}
