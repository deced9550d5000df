//! The controllers: Deployments (through ReplicaSets, rolling update with maxSurge /
//! maxUnavailable, Recreate, progress deadline), StatefulSets (ordered pods `name-N`, rolling
//! update one pod at a time from the highest ordinal) and DaemonSets (one pod per lab node,
//! rolling update by maxUnavailable), their status fields as the real controllers write them,
//! and garbage collection of orphaned pods and ReplicaSets.
//!
//! Owns: which pods should exist, workload and ReplicaSet status. Must never: run processes or
//! touch pod status (the kubelet's), or read Secret data.

use super::objects::Ptr as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::objects::{Store, label, name_of, namespace_of, now_rfc3339};
use super::resources::{self, Resource};

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Five random characters, as Kubernetes suffixes generated names.
pub(crate) fn random_suffix() -> String {
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A stable 10-character hash of a pod template (the `pod-template-hash` label).
pub(crate) fn template_hash(template: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    digest
        .iter()
        .take(10)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn set_default(obj: &mut Value, ptr: &str, value: Value) {
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    let mut cur = obj;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i == parts.len() - 1 {
            if cur.get(*p).is_none() {
                cur[*p] = value;
            }
            return;
        }
        if cur.get(*p).is_none() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// The API server's defaulting of workload specs (what `kubectl get -o yaml` shows).
pub(crate) fn default_workload(res: &Resource, obj: &mut Value) {
    match res.plural {
        "deployments" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
            if obj.ptr("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
                set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                set_default(
                    obj,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
        }
        "statefulsets" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if obj.ptr("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                set_default(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/partition",
                    json!(0),
                );
            }
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        }
        "daemonsets" => {
            set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if obj.ptr("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                set_default(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                    json!(1),
                );
                set_default(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
            }
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        }
        _ => {}
    }
    if let Some(cs) = obj
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for c in cs {
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                set_default(p, "/protocol", json!("TCP"));
            }
            set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "/imagePullPolicy", json!("IfNotPresent"));
        }
    }
    set_default(obj, "/spec/template/spec/restartPolicy", json!("Always"));
    set_default(
        obj,
        "/spec/template/spec/terminationGracePeriodSeconds",
        json!(30),
    );
    set_default(obj, "/spec/template/spec/dnsPolicy", json!("ClusterFirst"));
    set_default(
        obj,
        "/spec/template/spec/schedulerName",
        json!("default-scheduler"),
    );
}

/// An int-or-percent of `total`; percentages round up or down.
pub(crate) fn scaled(v: Option<&Value>, total: i64, default: &str, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or(json!(default));
    if let Some(i) = v.as_i64() {
        return i;
    }
    let s = v.as_str().unwrap_or(default);
    let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
    let x = pct * total as f64 / 100.0;
    if round_up {
        x.ceil() as i64
    } else {
        x.floor() as i64
    }
}

pub(crate) fn is_terminating(pod: &Value) -> bool {
    pod.ptr("/metadata/deletionTimestamp").is_some()
}

pub(crate) fn is_ready(pod: &Value) -> bool {
    pod.ptr("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn uid_of(v: &Value) -> &str {
    v.ptr("/metadata/uid").and_then(Value::as_str).unwrap_or("")
}

fn generation_of(v: &Value) -> i64 {
    v.ptr("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn controller_uid(v: &Value) -> Option<&str> {
    v.ptr("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|rs| rs.iter().find(|r| r["controller"] == true).or(rs.first()))
        .and_then(|r| r["uid"].as_str())
}

fn owner_ref(owner: &Value, res: &Resource) -> Value {
    json!([{
        "apiVersion": res.api_version(),
        "kind": res.kind,
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Progress bookkeeping of one Deployment (in memory, like the controller's own clock).
struct Progress {
    generation: i64,
    counts: (usize, usize, usize),
    last: Instant,
}

/// The controller loop's state.
pub(crate) struct Controller {
    store: Arc<Store>,
    nodes: Vec<String>,
    progress: HashMap<String, Progress>,
    /// Whether the last pass saw an unfinished Deployment rollout.
    in_progress: bool,
    /// Per workload uid: the resourceVersions it and its dependents had when last reconciled
    /// to a settled state. A workload whose signature is unchanged is skipped, so a pass
    /// costs work only for the workloads that changed (a real controller's work queue).
    settled: HashMap<String, u64>,
    /// Per unfinished Deployment uid: its signature and when it was last reconciled. Unchanged,
    /// it is revisited only every [`REVISIT`] (its progress deadline has second granularity).
    unfinished: HashMap<String, (u64, Instant)>,
    /// Per Deployment uid: (generation, pod-template-hash), so the template is hashed once.
    hashes: HashMap<String, (i64, String)>,
}

/// How often an unchanged, unfinished rollout is re-examined for its progress deadline.
const REVISIT: Duration = Duration::from_millis(250);

/// A hash of the resourceVersions of `objs`: changes whenever any of them is written.
fn signature<'a>(objs: impl Iterator<Item = &'a Value>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for o in objs {
        super::objects::rv_of(o).hash(&mut h);
        uid_of(o).hash(&mut h);
    }
    h.finish()
}

fn pods_res() -> &'static Resource {
    resources::get("pods")
}

impl Controller {
    pub fn new(store: Arc<Store>, nodes: Vec<String>) -> Controller {
        Controller {
            store,
            nodes,
            progress: HashMap::new(),
            in_progress: false,
            settled: HashMap::new(),
            unfinished: HashMap::new(),
            hashes: HashMap::new(),
        }
    }

    /// Runs until `shutdown` flips.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let store = self.store.clone();
        loop {
            let started = Instant::now();
            // A pass over thousands of objects is milliseconds of CPU: it runs on a blocking
            // thread so the API server and the kubelet keep the runtime's workers.
            let Ok((me, busy)) = tokio::task::spawn_blocking(move || {
                let busy = self.reconcile_all();
                (self, busy)
            })
            .await
            else {
                return;
            };
            self = me;
            // Time only matters (progress deadlines) while a rollout is in progress.
            let tick = if busy {
                REVISIT
            } else {
                Duration::from_secs(30)
            };
            // Batch the changes that arrive meanwhile, in proportion to what a pass costs.
            let batch = Duration::from_millis(10).max(started.elapsed());
            tokio::select! {
                _ = store.listeners.controller.notified() => {
                    tokio::time::sleep(batch).await;
                }
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn delete_pod(&self, pod: &Value) {
        let grace = pod
            .ptr("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let _ = self
            .store
            .mark_deleting(pods_res(), namespace_of(pod), name_of(pod), grace);
    }

    fn create_pod(
        &self,
        owner: &Value,
        owner_res: &Resource,
        name: String,
        template: &Value,
        extra: &[(&str, String)],
        node: &str,
    ) {
        let mut labels = template
            .ptr("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        for (k, v) in extra {
            labels[*k] = json!(v);
        }
        let mut meta = json!({
            "name": name,
            "namespace": namespace_of(owner),
            "labels": labels,
            "ownerReferences": owner_ref(owner, owner_res),
        });
        if let Some(a) = template.ptr("/metadata/annotations") {
            meta["annotations"] = a.clone();
        }
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["nodeName"] = json!(node);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        });
        if let Err(e) = self.store.create(pods_res(), pod) {
            tracing::debug!(error = %e.message, "lab: pod not created");
        }
    }

    /// The node with the fewest of `pods`.
    fn pick_node(&self, pods: &[&Value]) -> String {
        let nodes: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.ptr("/spec/nodeName").and_then(Value::as_str))
            .collect();
        self.least_used(&nodes)
    }

    /// The node named least often in `placed`.
    fn least_used(&self, placed: &[&str]) -> String {
        let mut counts: BTreeMap<&str, usize> =
            self.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for n in placed {
            if let Some(c) = counts.get_mut(n) {
                *c += 1;
            }
        }
        self.nodes
            .iter()
            .min_by_key(|n| counts.get(n.as_str()).copied().unwrap_or(0))
            .cloned()
            .unwrap_or_else(|| "lab-node-1".into())
    }

    /// The pod-template hash of workload `w`, computed once per generation.
    fn hash_of(&mut self, w: &Value) -> String {
        let generation = generation_of(w);
        match self.hashes.get(uid_of(w)) {
            Some((g, h)) if *g == generation => h.clone(),
            _ => {
                let h = template_hash(w.ptr("/spec/template").unwrap_or(&json!({})));
                self.hashes
                    .insert(uid_of(w).to_string(), (generation, h.clone()));
                h
            }
        }
    }

    fn write_status(&self, res: &'static Resource, obj: &Value, status: Value) {
        // The controller is the only writer of status: equal to the snapshot means no change.
        if obj.get("status") == Some(&status) {
            return;
        }
        let _ = self
            .store
            .update(res, namespace_of(obj), name_of(obj), |cur| {
                let mut n = cur.clone();
                n["status"] = status;
                Ok(n)
            });
    }

    /// One pass over every workload; true when some Deployment rollout is still in progress.
    pub fn reconcile_all(&mut self) -> bool {
        let pods = self.store.list_shared(pods_res(), None);
        let mut by_owner: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for p in pods {
            if let Some(u) = controller_uid(&p) {
                by_owner.entry(u.to_string()).or_default().push(p);
            }
        }
        let rs_res = resources::get("replicasets");
        let rsets = self.store.list_shared(rs_res, None);
        let mut rs_by_owner: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for r in rsets {
            if let Some(u) = controller_uid(&r) {
                rs_by_owner.entry(u.to_string()).or_default().push(r);
            }
        }
        let mut live_uids: HashSet<String> = HashSet::new();
        self.in_progress = false;
        let empty = Vec::new();
        let deploys = self.store.list_shared(resources::get("deployments"), None);
        for d in &deploys {
            live_uids.insert(uid_of(d).to_string());
            let rss = rs_by_owner.get(uid_of(d)).unwrap_or(&empty);
            for r in rss {
                live_uids.insert(uid_of(r).to_string());
            }
            let sig = signature(std::iter::once(&**d).chain(rss.iter().flat_map(|r| {
                std::iter::once(&**r).chain(
                    by_owner
                        .get(uid_of(r))
                        .unwrap_or(&empty)
                        .iter()
                        .map(|p| &**p),
                )
            })));
            if self.settled.get(uid_of(d)) == Some(&sig) {
                continue;
            }
            if let Some((s, at)) = self.unfinished.get(uid_of(d))
                && *s == sig
                && at.elapsed() < REVISIT
            {
                self.in_progress = true;
                continue;
            }
            let before = self.in_progress;
            self.in_progress = false;
            self.deployment(d, rss, &by_owner);
            // Unfinished rollouts are revisited while their progress deadline runs.
            if self.in_progress {
                self.settled.remove(uid_of(d));
                self.unfinished
                    .insert(uid_of(d).to_string(), (sig, Instant::now()));
            } else {
                self.unfinished.remove(uid_of(d));
                self.settled.insert(uid_of(d).to_string(), sig);
            }
            self.in_progress |= before;
        }
        let stss = self.store.list_shared(resources::get("statefulsets"), None);
        for s in &stss {
            live_uids.insert(uid_of(s).to_string());
            let pods = by_owner.get(uid_of(s)).unwrap_or(&empty);
            let sig = signature(std::iter::once(&**s).chain(pods.iter().map(|p| &**p)));
            if self.settled.get(uid_of(s)) != Some(&sig) {
                self.statefulset(s, pods);
                self.settled.insert(uid_of(s).to_string(), sig);
            }
        }
        let dss = self.store.list_shared(resources::get("daemonsets"), None);
        for d in &dss {
            live_uids.insert(uid_of(d).to_string());
            let pods = by_owner.get(uid_of(d)).unwrap_or(&empty);
            let sig = signature(std::iter::once(&**d).chain(pods.iter().map(|p| &**p)));
            if self.settled.get(uid_of(d)) != Some(&sig) {
                self.daemonset(d, pods);
                self.settled.insert(uid_of(d).to_string(), sig);
            }
        }
        // Garbage collection: dependents whose owner is gone.
        for (owner, ps) in &by_owner {
            if !live_uids.contains(owner) {
                for p in ps.iter().filter(|p| !is_terminating(p)) {
                    self.delete_pod(p);
                }
            }
        }
        for (owner, rs) in &rs_by_owner {
            if !live_uids.contains(owner) {
                for r in rs {
                    let _ = self.store.remove(rs_res, namespace_of(r), name_of(r));
                }
            }
        }
        self.progress.retain(|uid, _| live_uids.contains(uid));
        self.settled.retain(|uid, _| live_uids.contains(uid));
        self.unfinished.retain(|uid, _| live_uids.contains(uid));
        self.hashes.retain(|uid, _| live_uids.contains(uid));
        self.in_progress
    }

    fn deployment(
        &mut self,
        d: &Value,
        rss: &[Arc<Value>],
        by_owner: &HashMap<String, Vec<Arc<Value>>>,
    ) {
        let rs_res = resources::get("replicasets");
        let name = name_of(d).to_string();
        let ns = namespace_of(d).to_string();
        let desired = d.ptr("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let generation = generation_of(d);
        let hash = self.hash_of(d);
        let rs_name = format!("{name}-{hash}");
        // The ReplicaSet of the current template.
        let new_rs: Arc<Value> = match rss.iter().find(|r| name_of(r) == rs_name) {
            Some(r) => r.clone(),
            None => {
                let revision = rss
                    .iter()
                    .filter_map(|r| {
                        r.ptr("/metadata/annotations/deployment.kubernetes.io~1revision")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<i64>().ok())
                    })
                    .max()
                    .unwrap_or(0)
                    + 1;
                let mut tpl = d.ptr("/spec/template").cloned().unwrap_or(json!({}));
                tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d.ptr("/spec/selector").cloned().unwrap_or(json!({}));
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut labels = tpl["metadata"]["labels"].clone();
                labels["pod-template-hash"] = json!(hash);
                let rs = json!({
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": rs_name,
                        "namespace": ns,
                        "labels": labels,
                        "annotations": {
                            "deployment.kubernetes.io/revision": revision.to_string(),
                            "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        },
                        "ownerReferences": owner_ref(d, resources::get("deployments")),
                    },
                    "spec": {"replicas": 0, "selector": selector, "template": tpl},
                    "status": {"replicas": 0},
                });
                match self.store.create(rs_res, rs) {
                    Ok(r) => Arc::new(r),
                    Err(_) => return,
                }
            }
        };
        let revision = new_rs
            .ptr("/metadata/annotations/deployment.kubernetes.io~1revision")
            .cloned()
            .unwrap_or(json!("1"));
        if d.ptr("/metadata/annotations/deployment.kubernetes.io~1revision") != Some(&revision) {
            let _ = self
                .store
                .update(resources::get("deployments"), &ns, &name, |cur| {
                    let mut n = cur.clone();
                    n["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                        revision.clone();
                    Ok(n)
                });
        }
        let empty = Vec::new();
        let mut rs_all: Vec<&Value> = rss.iter().map(|r| &**r).collect();
        if !rss.iter().any(|x| name_of(x) == rs_name) {
            rs_all.push(&new_rs);
        }
        let all: Vec<&Value> = rs_all
            .iter()
            .flat_map(|r| by_owner.get(uid_of(r)).unwrap_or(&empty).iter())
            .map(|p| &**p)
            .collect();
        let live: Vec<&Value> = all.iter().copied().filter(|p| !is_terminating(p)).collect();
        let is_new = |p: &Value| label(p, "pod-template-hash") == Some(hash.as_str());
        let new: Vec<&Value> = live.iter().copied().filter(|p| is_new(p)).collect();
        let old: Vec<&Value> = live.iter().copied().filter(|p| !is_new(p)).collect();
        let new_ready = new.iter().filter(|p| is_ready(p)).count() as i64;
        let ready = live.iter().filter(|p| is_ready(p)).count() as i64;
        let total = live.len() as i64;
        let new_count = new.len() as i64;
        let paused = d.ptr("/spec/paused") == Some(&json!(true));
        let recreate = d.ptr("/spec/strategy/type") == Some(&json!("Recreate"));
        let make = |this: &Controller, n: i64| {
            let mut chosen: Vec<String> = Vec::new();
            for _ in 0..n {
                let placed: Vec<&str> = live
                    .iter()
                    .filter_map(|p| p.ptr("/spec/nodeName").and_then(Value::as_str))
                    .chain(chosen.iter().map(String::as_str))
                    .collect();
                let node = this.least_used(&placed);
                let pod_name = format!("{rs_name}-{}", random_suffix());
                this.create_pod(
                    &new_rs,
                    rs_res,
                    pod_name,
                    &new_rs["spec"]["template"],
                    &[],
                    &node,
                );
                chosen.push(node);
            }
        };
        if !paused && recreate {
            if !old.is_empty() {
                old.iter().for_each(|p| self.delete_pod(p));
            } else if all.iter().all(|p| !is_terminating(p) || is_new(p)) && new_count < desired {
                make(self, desired - new_count);
            }
        } else if !paused {
            let ru = d.ptr("/spec/strategy/rollingUpdate");
            let surge = scaled(ru.and_then(|r| r.get("maxSurge")), desired, "25%", true);
            let mut unavail = scaled(
                ru.and_then(|r| r.get("maxUnavailable")),
                desired,
                "25%",
                false,
            );
            if surge == 0 && unavail == 0 {
                unavail = 1;
            }
            let mut scaled_up = false;
            if new_count < desired {
                let n = (desired + surge - total).min(desired - new_count);
                if n > 0 {
                    make(self, n);
                    scaled_up = true;
                }
            }
            if new_count > desired {
                let mut extra: Vec<&Value> = new.clone();
                extra.sort_by_key(|p| is_ready(p));
                for p in extra.iter().take((new_count - desired) as usize) {
                    self.delete_pod(p);
                }
            }
            if !scaled_up && !old.is_empty() {
                let min_available = desired - unavail;
                let max_scaled_down = total - min_available - (new_count - new_ready);
                let mut deleted = 0;
                for p in old.iter().filter(|p| !is_ready(p)) {
                    if deleted >= max_scaled_down {
                        break;
                    }
                    self.delete_pod(p);
                    deleted += 1;
                }
                let can = (ready - min_available)
                    .min(max_scaled_down - deleted)
                    .max(0);
                for p in old.iter().filter(|p| is_ready(p)).take(can as usize) {
                    self.delete_pod(p);
                }
            }
        }
        // ReplicaSet status.
        for r in &rs_all {
            let ps: Vec<&Value> = by_owner
                .get(uid_of(r))
                .unwrap_or(&empty)
                .iter()
                .map(|p| &**p)
                .filter(|p| !is_terminating(p))
                .collect();
            let n = ps.len() as i64;
            let rd = ps.iter().filter(|p| is_ready(p)).count() as i64;
            let spec_replicas = if name_of(r) == rs_name {
                desired.max(n).min(desired)
            } else {
                n
            };
            let status = json!({
                "replicas": n, "fullyLabeledReplicas": n, "readyReplicas": rd,
                "availableReplicas": rd, "observedGeneration": generation_of(r),
            });
            // Only the controller writes these: equal to the snapshot means nothing to do.
            if r.ptr("/spec/replicas").and_then(Value::as_i64) == Some(spec_replicas)
                && r.get("status") == Some(&status)
            {
                continue;
            }
            let _ = self
                .store
                .update(rs_res, namespace_of(r), name_of(r), |cur| {
                    let mut c = cur.clone();
                    c["spec"]["replicas"] = json!(spec_replicas);
                    c["status"] = json!({
                        "replicas": n, "fullyLabeledReplicas": n, "readyReplicas": rd,
                        "availableReplicas": rd, "observedGeneration": generation_of(cur),
                    });
                    Ok(c)
                });
        }
        // Deployment status and conditions.
        let counts = (live.len(), new.len(), ready as usize);
        let now = Instant::now();
        let p = self
            .progress
            .entry(uid_of(d).to_string())
            .or_insert(Progress {
                generation,
                counts,
                last: now,
            });
        if p.generation != generation || p.counts != counts {
            p.generation = generation;
            p.counts = counts;
            p.last = now;
        }
        let since = now.duration_since(p.last);
        let deadline = d
            .ptr("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(600)
            .max(0) as u64;
        let complete = new.len() as i64 == desired && total == desired && ready == desired;
        if !complete && !paused {
            self.in_progress = true;
        }
        let ru = d.ptr("/spec/strategy/rollingUpdate");
        let unavail = if recreate {
            0
        } else {
            scaled(
                ru.and_then(|r| r.get("maxUnavailable")),
                desired,
                "25%",
                false,
            )
        };
        let (avail_status, avail_reason, avail_msg) = if ready >= desired - unavail {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        let (prog_status, prog_reason, prog_msg) = if complete {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else if since > Duration::from_secs(deadline) {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        };
        let old_conds = d.ptr("/status/conditions").cloned().unwrap_or(json!([]));
        let conditions = vec![
            condition(
                &old_conds,
                "Available",
                avail_status,
                avail_reason,
                avail_msg,
            ),
            condition(
                &old_conds,
                "Progressing",
                prog_status,
                prog_reason,
                &prog_msg,
            ),
        ];
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": total,
            "updatedReplicas": new.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conditions,
        });
        let unavailable = (desired.max(total) - ready).max(0);
        if unavailable > 0 {
            status["unavailableReplicas"] = json!(unavailable);
        }
        self.write_status(resources::get("deployments"), d, status);
    }

    fn statefulset(&mut self, s: &Value, pods: &[Arc<Value>]) {
        let res = resources::get("statefulsets");
        let name = name_of(s).to_string();
        let desired = s.ptr("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let template = s.ptr("/spec/template").cloned().unwrap_or(json!({}));
        let update_rev = format!("{name}-{}", template_hash(&template));
        let parallel = s.ptr("/spec/podManagementPolicy") == Some(&json!("Parallel"));
        let on_delete = s.ptr("/spec/updateStrategy/type") == Some(&json!("OnDelete"));
        let partition = s
            .ptr("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut by_ord: BTreeMap<i64, &Value> = BTreeMap::new();
        for p in pods {
            if let Some(i) = name_of(p)
                .strip_prefix(&format!("{name}-"))
                .and_then(|s| s.parse::<i64>().ok())
            {
                by_ord.insert(i, p);
            }
        }
        let rev_of = |p: &Value| {
            label(p, "controller-revision-hash")
                .unwrap_or_default()
                .to_string()
        };
        let healthy = |p: &Value| !is_terminating(p) && is_ready(p);
        let all_pods: Vec<&Value> = pods.iter().map(|p| &**p).collect();
        // Create missing pods (in order unless Parallel).
        for i in 0..desired {
            match by_ord.get(&i) {
                Some(p) if healthy(p) => continue,
                Some(_) if !parallel => break,
                Some(_) => continue,
                None => {
                    let node = self.pick_node(&all_pods);
                    let pod_name = format!("{name}-{i}");
                    self.create_pod(
                        s,
                        res,
                        pod_name.clone(),
                        &template,
                        &[
                            ("controller-revision-hash", update_rev.clone()),
                            ("statefulset.kubernetes.io/pod-name", pod_name),
                            ("apps.kubernetes.io/pod-index", i.to_string()),
                        ],
                        &node,
                    );
                    if !parallel {
                        break;
                    }
                }
            }
        }
        let all_healthy = (0..desired).all(|i| by_ord.get(&i).is_some_and(|p| healthy(p)));
        // Scale down from the highest ordinal.
        let extra: Vec<&&Value> = by_ord.range(desired..).rev().map(|(_, p)| p).collect();
        if !extra.is_empty() && extra.iter().all(|p| !is_terminating(p)) {
            if parallel {
                extra.iter().for_each(|p| self.delete_pod(p));
            } else if all_healthy || extra.iter().all(|p| !is_ready(p)) {
                self.delete_pod(extra[0]);
            }
        } else if extra.is_empty() && !on_delete && all_healthy {
            // Rolling update: one pod at a time, highest ordinal first.
            if let Some((_, p)) = by_ord
                .range(partition..desired)
                .rev()
                .find(|(_, p)| rev_of(p) != update_rev)
            {
                self.delete_pod(p);
            }
        }
        let live: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| !is_terminating(p))
            .collect();
        let ready = live.iter().filter(|p| is_ready(p)).count() as i64;
        let updated = live.iter().filter(|p| rev_of(p) == update_rev).count() as i64;
        let mut current_rev = s
            .ptr("/status/currentRevision")
            .and_then(Value::as_str)
            .unwrap_or(&update_rev)
            .to_string();
        if updated == desired && ready == desired && live.len() as i64 == desired {
            current_rev = update_rev.clone();
        }
        let current = live.iter().filter(|p| rev_of(p) == current_rev).count() as i64;
        let status = json!({
            "observedGeneration": generation_of(s),
            "replicas": live.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_rev,
            "updateRevision": update_rev,
            "collisionCount": 0,
        });
        self.write_status(res, s, status);
    }

    fn daemonset(&mut self, d: &Value, pods: &[Arc<Value>]) {
        let res = resources::get("daemonsets");
        let generation = generation_of(d);
        let hash = self.hash_of(d);
        let template = d.ptr("/spec/template").cloned().unwrap_or(json!({}));
        let desired = self.nodes.len() as i64;
        let on_delete = d.ptr("/spec/updateStrategy/type") == Some(&json!("OnDelete"));
        let max_unavail = scaled(
            d.ptr("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
            desired,
            "1",
            true,
        )
        .max(1);
        let live: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| !is_terminating(p))
            .collect();
        let on_node = |n: &str| {
            live.iter()
                .copied()
                .find(|p| p.ptr("/spec/nodeName").and_then(Value::as_str) == Some(n))
        };
        let is_new = |p: &Value| label(p, "controller-revision-hash") == Some(hash.as_str());
        for n in &self.nodes {
            if on_node(n).is_none() {
                let pod_name = format!("{}-{}", name_of(d), random_suffix());
                self.create_pod(
                    d,
                    res,
                    pod_name,
                    &template,
                    &[
                        ("controller-revision-hash", hash.clone()),
                        ("pod-template-generation", generation.to_string()),
                    ],
                    n,
                );
            }
        }
        // Pods on nodes the lab does not have.
        for p in &live {
            let n = p
                .ptr("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !self.nodes.iter().any(|x| x == n) {
                self.delete_pod(p);
            }
        }
        if !on_delete {
            let mut unavailable = self
                .nodes
                .iter()
                .filter(|n| !on_node(n).is_some_and(is_ready))
                .count() as i64;
            for p in live.iter().filter(|p| !is_new(p) && !is_ready(p)) {
                self.delete_pod(p);
            }
            for p in live.iter().filter(|p| !is_new(p) && is_ready(p)) {
                if unavailable >= max_unavail {
                    break;
                }
                self.delete_pod(p);
                unavailable += 1;
            }
        }
        let scheduled = self.nodes.iter().filter(|n| on_node(n).is_some()).count() as i64;
        let ready = live.iter().filter(|p| is_ready(p)).count() as i64;
        let updated = live.iter().filter(|p| is_new(p)).count() as i64;
        let mut status = json!({
            "observedGeneration": generation,
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "updatedNumberScheduled": updated,
        });
        if desired - ready > 0 {
            status["numberUnavailable"] = json!(desired - ready);
        }
        self.write_status(res, d, status);
    }
}

/// A condition, keeping its transition time when its status did not change.
fn condition(old: &Value, ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let prev = old
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let now = now_rfc3339();
    let transition = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match prev {
        Some(p) if p["status"] == status && p["reason"] == reason && p["message"] == message => {
            p["lastUpdateTime"].clone()
        }
        _ => json!(now),
    };
    json!({
        "type": ty, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_unavailable_rounds_down() {
        assert_eq!(scaled(Some(&json!("25%")), 2, "25%", true), 1);
        assert_eq!(scaled(Some(&json!("25%")), 2, "25%", false), 0);
        assert_eq!(scaled(None, 10, "25%", true), 3);
        assert_eq!(scaled(None, 10, "25%", false), 2);
        assert_eq!(scaled(Some(&json!(3)), 10, "25%", false), 3);
    }
}
