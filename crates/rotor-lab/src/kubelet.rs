//! The kubelet: runs every pod as a real process (or, for in-process images, an in-process
//! demo service) on its own loopback address, resolves its environment from Secrets and
//! ConfigMaps at start, probes readiness, restarts crashed containers with backoff, reports
//! pod status, and terminates pods (out of the endpoints, drain, SIGTERM, grace, SIGKILL).
//! `Ready` is the containers' readiness and every readiness gate's condition True; when a
//! client changes a gate's condition (`pods/status`), the loop asks the pod's task to write
//! its status again, and the endpoints follow.
//!
//! Secret volumes are materialised (see `volumes`) before the container first starts and kept
//! in step with their Secrets after the sync delay, without restarting anything.
//!
//! Owns: pod processes (by pid, never by name), pod IPs, pod status but for conditions it does
//! not own (kept as they are), pod log files, pod directories (Secret volumes). Must never: log
//! environment values or Secret data (only names), or decide which pods exist.

use super::objects::Ptr as _;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};

use super::controller::{is_ready, is_terminating};
use super::endpoints::Endpoints;
use super::faults::{CrashMode, Faults};
use super::objects::{Store, name_of, namespace_of, now_rfc3339};
use super::resources;
use super::topology::{INPROCESS_IMAGE, ImageSpec};
use super::volumes;

/// Loopback addresses for pods: 127.0.0.2..=254, then 127.0.1.2..=254, … Freed addresses are
/// reused oldest-freed first. One pool per process, so labs in one process never collide; an
/// address whose port is taken by someone else (another lab process) is skipped.
pub(crate) struct IpPool {
    next: u32,
    free: VecDeque<Ipv4Addr>,
}

static POOL: Mutex<IpPool> = Mutex::new(IpPool {
    next: 2,
    free: VecDeque::new(),
});

impl IpPool {
    fn take_any(&mut self) -> Ipv4Addr {
        if self.next > 254
            && let Some(ip) = self.free.pop_front()
        {
            return ip;
        }
        loop {
            let n = self.next;
            self.next += 1;
            if !matches!(n & 0xff, 0 | 1 | 255) {
                return Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff));
            }
        }
    }

    /// An address whose `port` is free now.
    pub fn take(port: u16) -> Ipv4Addr {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let mut skipped = Vec::new();
        let ip = loop {
            let ip = pool.take_any();
            if skipped.len() > 64 || std::net::TcpListener::bind((ip, port)).is_ok() {
                break ip;
            }
            skipped.push(ip);
        };
        pool.free.extend(skipped);
        ip
    }

    pub fn give(ip: Ipv4Addr) {
        POOL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push_back(ip);
    }
}

/// Spawns child processes from one long-lived thread, so `PR_SET_PDEATHSIG` (which fires when
/// the spawning *thread* exits) only fires when the lab goes away.
pub(crate) struct Spawner {
    tx: std::sync::mpsc::Sender<(
        tokio::process::Command,
        oneshot::Sender<std::io::Result<tokio::process::Child>>,
    )>,
}

impl Spawner {
    pub fn new() -> Spawner {
        type Req = (
            tokio::process::Command,
            oneshot::Sender<std::io::Result<tokio::process::Child>>,
        );
        let (tx, rx) = std::sync::mpsc::channel::<Req>();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("rotor-lab-spawner".into())
            .spawn(move || {
                let _g = handle.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "lab: cannot start the spawner thread"),
            );
        Spawner { tx }
    }

    async fn spawn(&self, cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

/// Everything pod tasks share.
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub faults: Faults,
    pub images: std::collections::BTreeMap<String, ImageSpec>,
    pub slow: HashMap<String, Duration>,
    pub drain: Duration,
    pub fleet_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// `<pods_dir>/<uid>/volumes/kubernetes.io~secret/<volume>`: Secret volumes.
    pub pods_dir: PathBuf,
    /// A running pod's Secret volume shows a change this long after it was first seen …
    pub secret_sync_delay: Duration,
    /// … plus a share of this, fixed per pod.
    pub secret_sync_jitter: Duration,
    pub spawner: Spawner,
    pub endpoints: Endpoints,
    pub http: reqwest::Client,
}

/// A running pod's control handle.
struct PodHandle {
    /// Some(grace seconds) asks the pod to terminate.
    stop: watch::Sender<Option<i64>>,
    /// Asks the pod's task to write its status again (see [`needs_resync`]).
    resync: Arc<Notify>,
    done: tokio::task::JoinHandle<()>,
}

/// Runs the kubelet loop until `shutdown`, then terminates every pod and waits for them.
pub(crate) async fn run(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut pods: HashMap<String, PodHandle> = HashMap::new();
    let pods_res = resources::get("pods");
    loop {
        let list = ctx.store.list_shared(pods_res, None);
        // Borrowed from `list`: a pass allocates only for pods it has not seen before.
        let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
        for p in &list {
            let uid = p.ptr("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            seen.insert(uid);
            match pods.get(uid) {
                None if is_terminating(p) => {
                    let _ = ctx.store.remove(pods_res, namespace_of(p), name_of(p));
                }
                None => {
                    let (stop, rx) = watch::channel(None);
                    let resync = Arc::new(Notify::new());
                    let done =
                        tokio::spawn(run_pod(ctx.clone(), Value::clone(p), rx, resync.clone()));
                    pods.insert(uid.to_string(), PodHandle { stop, resync, done });
                }
                Some(h) if is_terminating(p) && h.stop.borrow().is_none() => {
                    let grace = p
                        .ptr("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30);
                    let _ = h.stop.send(Some(grace));
                }
                Some(h) if !is_terminating(p) && needs_resync(p) => h.resync.notify_one(),
                Some(_) => {}
            }
        }
        pods.retain(|uid, h| {
            if !seen.contains(uid.as_str()) && h.stop.borrow().is_none() {
                let _ = h.stop.send(Some(0));
            }
            !h.done.is_finished()
        });
        drop(seen);
        drop(list);
        tokio::select! {
            // A short batching window: a rollout of hundreds of pods changes many at once.
            _ = ctx.store.listeners.kubelet.notified() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => break,
        }
    }
    for h in pods.values() {
        if h.stop.borrow().is_none() {
            let _ = h.stop.send(Some(5));
        }
    }
    for (_, h) in pods.drain() {
        let _ = h.done.await;
    }
}

/// The workload a pod belongs to (the Deployment for ReplicaSet-owned pods).
pub(crate) fn workload_of(store: &Store, pod: &Value) -> Option<String> {
    let owner = pod
        .ptr("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|a| a.first())?;
    let name = owner["name"].as_str()?;
    if owner["kind"] == "ReplicaSet" {
        let rs = store.get(resources::get("replicasets"), namespace_of(pod), name)?;
        return rs
            .ptr("/metadata/ownerReferences/0/name")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| Some(name.to_string()));
    }
    Some(name.to_string())
}

/// The first container's first containerPort (8080 when none).
pub(crate) fn pod_port(pod: &Value) -> u16 {
    pod.ptr("/spec/containers/0/ports/0/containerPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(8080)
}

/// Why a container cannot start (the waiting reason and message).
struct NotStarted {
    reason: &'static str,
    message: String,
}

fn decode(b64: &Value) -> OsString {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap_or(""))
        .unwrap_or_default();
    OsString::from_vec(bytes)
}

/// The container's environment, read from Secrets and ConfigMaps now (never again).
fn resolve_env(
    store: &Store,
    pod: &Value,
    c: &Value,
    ip: Ipv4Addr,
) -> Result<Vec<(String, OsString)>, NotStarted> {
    let ns = namespace_of(pod);
    let secrets = resources::get("secrets");
    let cms = resources::get("configmaps");
    let mut env: Vec<(String, OsString)> = Vec::new();
    let fail = |message: String| NotStarted {
        reason: "CreateContainerConfigError",
        message,
    };
    for ef in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = ef["prefix"].as_str().unwrap_or("");
        for (key, res, is_secret) in [("secretRef", secrets, true), ("configMapRef", cms, false)] {
            let Some(r) = ef.get(key) else { continue };
            let name = r["name"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            match store.get(res, ns, name) {
                Some(obj) => {
                    if let Some(data) = obj["data"].as_object() {
                        for (k, v) in data {
                            let val = if is_secret {
                                decode(v)
                            } else {
                                OsString::from(v.as_str().unwrap_or(""))
                            };
                            env.push((format!("{prefix}{k}"), val));
                        }
                    }
                }
                None if optional => {}
                None => {
                    let what = if is_secret { "secret" } else { "configmap" };
                    return Err(fail(format!("{what} \"{name}\" not found")));
                }
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        if let Some(v) = e.get("value").and_then(Value::as_str) {
            env.push((name.into(), v.into()));
            continue;
        }
        let Some(vf) = e.get("valueFrom") else {
            env.push((name.into(), OsString::new()));
            continue;
        };
        if let Some(r) = vf.get("secretKeyRef").or_else(|| vf.get("configMapKeyRef")) {
            let is_secret = vf.get("secretKeyRef").is_some();
            let obj_name = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            let res = if is_secret { secrets } else { cms };
            let kind = if is_secret { "Secret" } else { "ConfigMap" };
            match store.get(res, ns, obj_name) {
                None if optional => {}
                None => {
                    let what = if is_secret { "secret" } else { "configmap" };
                    return Err(fail(format!("{what} \"{obj_name}\" not found")));
                }
                Some(obj) => match obj["data"].get(key) {
                    Some(v) if is_secret => env.push((name.into(), decode(v))),
                    Some(v) => env.push((name.into(), v.as_str().unwrap_or("").into())),
                    None if optional => {}
                    None => {
                        return Err(fail(format!(
                            "couldn't find key {key} in {kind} {ns}/{obj_name}"
                        )));
                    }
                },
            }
            continue;
        }
        if let Some(path) = vf.ptr("/fieldRef/fieldPath").and_then(Value::as_str) {
            let v = match path {
                "metadata.name" => name_of(pod).to_string(),
                "metadata.namespace" => ns.to_string(),
                "status.podIP" => ip.to_string(),
                "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                _ => String::new(),
            };
            env.push((name.into(), v.into()));
        }
    }
    Ok(env)
}

/// Materialises the Secret volumes container `c` of `pod` mounts, in `pod_dir`, and starts
/// keeping them in step with their Secrets (the task, when there are any). A Secret that is
/// missing (and not optional) keeps the container from starting, as on a cluster.
fn mount_volumes(
    ctx: &Ctx,
    pod: &Value,
    c: &Value,
    pod_dir: &std::path::Path,
) -> Result<Option<tokio::task::JoinHandle<()>>, NotStarted> {
    let mounts = volumes::secret_mounts(pod, c).map_err(|message| NotStarted {
        reason: "CreateContainerConfigError",
        message,
    })?;
    let ns = namespace_of(pod);
    let mut unique: Vec<(volumes::Mount, PathBuf)> = Vec::new();
    for m in mounts {
        if !unique.iter().any(|(u, _)| u.volume.name == m.volume.name) {
            let dir = volumes::volume_dir(pod_dir, &m.volume.name);
            unique.push((m, dir));
        }
    }
    if unique.is_empty() {
        return Ok(None);
    }
    let failed = |m: &volumes::Mount, e: String| NotStarted {
        reason: "ContainerCreating",
        message: format!(
            "MountVolume.SetUp failed for volume {:?} : {e}",
            m.volume.name
        ),
    };
    let mut shown = Vec::new();
    for (m, dir) in &unique {
        let p = volumes::read(&ctx.store, ns, m).map_err(|e| failed(m, e))?;
        volumes::write(dir, &p).map_err(|e| failed(m, e.to_string()))?;
        shown.push(p);
    }
    let uid = pod
        .ptr("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let delay = volumes::pod_delay(uid, ctx.secret_sync_delay, ctx.secret_sync_jitter);
    Ok(Some(tokio::spawn(volumes::sync(
        ctx.store.clone(),
        ns.to_string(),
        name_of(pod).to_string(),
        unique,
        shown,
        delay,
    ))))
}

/// Container `c` as it starts on this host: every `env[].value`, `command[]` and `args[]` that
/// names a Secret volume's mount path names its host directory instead (pods have no mount
/// namespace), and each `subPath` mount is a copy made now, never refreshed.
fn on_host(c: &Value, pod: &Value, pod_dir: &std::path::Path) -> Result<Value, NotStarted> {
    let mounts = volumes::secret_mounts(pod, c).map_err(|message| NotStarted {
        reason: "CreateContainerConfigError",
        message,
    })?;
    if mounts.is_empty() {
        return Ok(c.clone());
    }
    let container = c["name"].as_str().unwrap_or("c");
    let mut host: Vec<(String, PathBuf)> = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let dir = volumes::volume_dir(pod_dir, &m.volume.name);
        match &m.sub_path {
            None => host.push((m.mount_path.clone(), dir)),
            Some(sub) => {
                let to = pod_dir
                    .join("volume-subpaths")
                    .join(&m.volume.name)
                    .join(container)
                    .join(i.to_string());
                volumes::copy_sub_path(&dir, sub, &to).map_err(|e| NotStarted {
                    reason: "CreateContainerConfigError",
                    message: format!(
                        "failed to prepare subPath for volumeMount {:?}: {e}",
                        m.volume.name
                    ),
                })?;
                host.push((m.mount_path.clone(), to));
            }
        }
    }
    let mut c = c.clone();
    let fix = |v: &mut Value| {
        if let Some(new) = v.as_str().and_then(|s| volumes::rewrite(s, &host)) {
            *v = Value::String(new);
        }
    };
    for key in ["command", "args"] {
        for v in c[key].as_array_mut().into_iter().flatten() {
            fix(v);
        }
    }
    for e in c["env"].as_array_mut().into_iter().flatten() {
        if let Some(v) = e.get_mut("value") {
            fix(v);
        }
    }
    Ok(c)
}

/// How a container runs.
enum Runner {
    Process(Vec<String>),
    InProcess(Vec<String>),
}

fn resolve_image(
    images: &std::collections::BTreeMap<String, ImageSpec>,
    c: &Value,
) -> Result<Runner, NotStarted> {
    let image = c["image"].as_str().unwrap_or("");
    let args: Vec<String> = c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let command: Vec<String> = c["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let bare = image.split('@').next().unwrap_or(image);
    let bare = match bare.rsplit_once(':') {
        Some((b, tag)) if !tag.contains('/') => b,
        _ => bare,
    };
    let spec = images.get(image).or_else(|| images.get(bare)).cloned();
    if matches!(spec, Some(ImageSpec::InProcess)) || bare == INPROCESS_IMAGE {
        return Ok(Runner::InProcess(args));
    }
    if !command.is_empty() {
        return Ok(Runner::Process(command.into_iter().chain(args).collect()));
    }
    let entry = match spec {
        Some(ImageSpec::Command(v)) if !v.is_empty() => v,
        _ if bare == "rotor-demo-service" || bare.ends_with("/rotor-demo-service") => {
            demo_service_exe().ok_or_else(|| NotStarted {
                reason: "ErrImagePull",
                message: "rotor-demo-service is not next to this executable and ROTOR_EXE is \
                          not set; build it (cargo build) or map the image under `images:`"
                    .into(),
            })?
        }
        _ => {
            return Err(NotStarted {
                reason: "ErrImagePull",
                message: format!(
                    "image \"{image}\" is not known to the lab; map it to an executable under \
                     `images:` in the topology"
                ),
            });
        }
    };
    Ok(Runner::Process(entry.into_iter().chain(args).collect()))
}

/// `rotor-demo-service` next to the current executable (or its parent, for test binaries in
/// `deps/`), else `$ROTOR_EXE demo-service`.
fn demo_service_exe() -> Option<Vec<String>> {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent().filter(|_| dir.ends_with("deps"))]
            .into_iter()
            .flatten()
        {
            let p = d.join("rotor-demo-service");
            if p.is_file() {
                return Some(vec![p.to_string_lossy().into_owned()]);
            }
        }
    }
    let rotor = std::env::var("ROTOR_EXE").ok()?;
    Some(vec![rotor, "demo-service".into()])
}

/// The pod's observable state, rendered into `status`.
struct PodState {
    ip: Ipv4Addr,
    started: String,
    phase: &'static str,
    ready: bool,
    ready_since: String,
    restarts: u32,
    state: Value,
    last_state: Value,
    container_id: String,
    workload: String,
    name: String,
    port: u16,
    terminating: bool,
}

/// The pod conditions the kubelet owns (`PodConditionByKubelet`). It writes these and keeps
/// every other condition as it finds it: a readiness gate's condition belongs to whoever sets
/// it through `pods/status`.
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

fn find_condition<'a>(conditions: &'a [Value], ty: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == ty)
}

/// Why the readiness gates of `spec` hold the pod back, given its `conditions`, worded as the
/// kubelet words it; None when every gate's condition is True.
fn gates_unready(spec: &Value, conditions: &[Value]) -> Option<String> {
    let gates = spec.get("readinessGates").and_then(Value::as_array)?;
    let msgs: Vec<String> = gates
        .iter()
        .filter_map(|g| {
            let ty = g["conditionType"].as_str().unwrap_or("");
            // A gate names a client's condition, never one the kubelet writes.
            let found =
                find_condition(conditions, ty).filter(|_| !KUBELET_CONDITIONS.contains(&ty));
            match found {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {ty:?} does not exist."
                )),
                Some(c) if c["status"] != "True" => Some(format!(
                    "the status of pod readiness gate {ty:?} is not \"True\", but {}",
                    c["status"].as_str().unwrap_or("")
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!msgs.is_empty()).then(|| msgs.join(", "))
}

/// `Ready` as the kubelet derives it (`GeneratePodReadyCondition`), without its timestamp:
/// `ContainersReady`'s status, reason and message while that is not True; else False with
/// reason `ReadinessGatesNotReady` while the condition of some readiness gate in `spec` is
/// missing from `conditions` or not True; else True.
fn ready_condition(spec: &Value, conditions: &[Value], containers_ready: &Value) -> Value {
    if containers_ready["status"] != "True" {
        let mut c = json!({"type": "Ready", "status": containers_ready["status"]});
        for k in ["reason", "message"] {
            if let Some(v) = containers_ready.get(k) {
                c[k] = v.clone();
            }
        }
        return c;
    }
    match gates_unready(spec, conditions) {
        Some(message) => json!({"type": "Ready", "status": "False",
                                "reason": "ReadinessGatesNotReady", "message": message}),
        None => json!({"type": "Ready", "status": "True"}),
    }
}

/// Whether a running pod's stored status disagrees with what its kubelet would write: one of
/// the kubelet's conditions is gone (a merge patch of `status.conditions` replaces the whole
/// list), or `Ready` does not follow `ContainersReady` and the readiness gates (a gate's
/// condition changed through `pods/status`, or a client wrote `Ready` itself).
fn needs_resync(pod: &Value) -> bool {
    let conditions = pod
        .ptr("/status/conditions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if KUBELET_CONDITIONS
        .iter()
        .any(|t| find_condition(conditions, t).is_none())
    {
        return true;
    }
    let (Some(ready), Some(containers)) = (
        find_condition(conditions, "Ready"),
        find_condition(conditions, "ContainersReady"),
    ) else {
        return true;
    };
    let want = ready_condition(&pod["spec"], conditions, containers);
    ["status", "reason", "message"]
        .iter()
        .any(|k| ready.get(*k) != want.get(*k))
}

impl PodState {
    /// The status to store, given the stored pod `current`: the kubelet's own fields and
    /// conditions, every other condition of `current` kept (first, as the kubelet's status
    /// manager merges them), and `Ready` computed from the containers and the readiness gates.
    fn status(&self, pod: &Value, current: &Value) -> Value {
        let r = if self.ready { "True" } else { "False" };
        let containers: Vec<&Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "",
                    "containerID": self.container_id,
                    "ready": self.ready, "started": self.state.get("running").is_some(),
                    "restartCount": self.restarts,
                    "state": self.state, "lastState": self.last_state,
                })
            })
            .collect();
        let mut containers_ready =
            json!({"type": "ContainersReady", "status": r, "lastTransitionTime": self.ready_since});
        if !self.ready {
            let names: Vec<&str> = containers
                .iter()
                .map(|c| c["name"].as_str().unwrap_or(""))
                .collect();
            containers_ready["reason"] = json!("ContainersNotReady");
            containers_ready["message"] = json!(format!(
                "containers with unready status: [{}]",
                names.join(" ")
            ));
        }
        let stored = current
            .ptr("/status/conditions")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut conditions: Vec<Value> = stored
            .iter()
            .filter(|c| {
                !c["type"]
                    .as_str()
                    .is_some_and(|t| KUBELET_CONDITIONS.contains(&t))
            })
            .cloned()
            .collect();
        let mut ready = ready_condition(&current["spec"], &conditions, &containers_ready);
        ready["lastTransitionTime"] = match find_condition(stored, "Ready") {
            Some(prev) if prev["status"] == ready["status"] => prev["lastTransitionTime"].clone(),
            _ => json!(now_rfc3339()),
        };
        conditions.extend([
            json!({"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": self.started}),
            json!({"type": "Initialized", "status": "True", "lastTransitionTime": self.started}),
            ready,
            containers_ready,
            json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": self.started}),
        ]);
        let ip = self.ip.to_string();
        json!({
            "phase": self.phase,
            "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.started,
            "qosClass": "BestEffort",
            "conditions": conditions,
            "containerStatuses": statuses,
        })
    }

    fn set_ready(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            self.ready_since = now_rfc3339();
        }
    }
}

/// Writes the pod's status (atomically over the stored pod, so conditions set by clients in
/// the meantime are kept) and puts the pod in or out of its workload's endpoints by the
/// `Ready` it wrote: ready containers and every readiness gate True.
fn publish(ctx: &Ctx, pod: &Value, st: &PodState) {
    let mut ready = false;
    let _ = ctx.store.update(
        resources::get("pods"),
        namespace_of(pod),
        name_of(pod),
        |cur| {
            let mut n = cur.clone();
            n["status"] = st.status(pod, cur);
            ready = is_ready(&n);
            Ok(n)
        },
    );
    let serving = ready && !st.terminating;
    ctx.endpoints.set(
        &st.workload,
        &st.name,
        serving.then_some(SocketAddr::from((st.ip, st.port))),
    );
}

/// Waits `d`, writing the status again whenever the kubelet loop asks for a resync; true when
/// the pod was asked to stop meanwhile.
async fn idle(
    ctx: &Ctx,
    pod: &Value,
    st: &PodState,
    d: Duration,
    stop: &mut watch::Receiver<Option<i64>>,
    resync: &Notify,
) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return false,
            _ = stop.changed() => return true,
            _ = resync.notified() => publish(ctx, pod, st),
        }
    }
}

/// A running container: a process or an in-process server.
enum Running {
    Process(tokio::process::Child),
    InProcess {
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Running {
    /// Waits for the container to exit; returns its exit code.
    async fn wait(&mut self) -> i32 {
        match self {
            Running::Process(c) => c.wait().await.ok().and_then(|s| s.code()).unwrap_or(137),
            Running::InProcess { task, .. } => {
                let _ = task.await;
                1
            }
        }
    }

    fn signal(&mut self, sig: Signal) {
        match self {
            Running::Process(c) => {
                if let Some(pid) = c.id() {
                    let _ = kill(Pid::from_raw(pid as i32), sig);
                }
            }
            Running::InProcess { stop, task } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if sig == Signal::SIGKILL {
                    task.abort();
                }
            }
        }
    }
}

async fn start(
    ctx: &Ctx,
    pod: &Value,
    runner: &Runner,
    env: Vec<(String, OsString)>,
    ip: Ipv4Addr,
    port: u16,
) -> Result<Running, String> {
    match runner {
        Runner::InProcess(args) => super::inprocess::start(args, env, SocketAddr::from((ip, port)))
            .await
            .map(|(stop, task)| Running::InProcess {
                stop: Some(stop),
                task,
            }),
        Runner::Process(argv) => {
            let dir = ctx.logs_dir.join(namespace_of(pod));
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(format!("{}.log", name_of(pod))))
                .map_err(|e| format!("cannot open the pod log: {e}"))?;
            let log_err = log
                .try_clone()
                .map_err(|e| format!("cannot open the pod log: {e}"))?;
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(std::env::var_os("PATH").map(|p| ("PATH".to_string(), p)))
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .process_group(0)
                .kill_on_drop(true);
            // SAFETY: only calls prctl(2), which is async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
            ctx.spawner
                .spawn(cmd)
                .await
                .map(Running::Process)
                .map_err(|e| format!("cannot start {}: {e}", argv[0]))
        }
    }
}

async fn probe(ctx: &Ctx, pod: &Value, ip: Ipv4Addr, port: u16) -> bool {
    let c = &pod["spec"]["containers"][0];
    let (path, pport) = match c.ptr("/readinessProbe/httpGet") {
        Some(h) => (
            h["path"].as_str().unwrap_or("/").to_string(),
            h["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(port),
        ),
        None => ("/healthz".into(), port),
    };
    let url = format!("http://{ip}:{pport}{path}");
    matches!(ctx.http.get(url).send().await, Ok(r) if r.status().is_success())
}

/// One pod's whole life.
async fn run_pod(
    ctx: Arc<Ctx>,
    pod: Value,
    mut stop: watch::Receiver<Option<i64>>,
    resync: Arc<Notify>,
) {
    let ns = namespace_of(&pod).to_string();
    let name = name_of(&pod).to_string();
    let port = pod_port(&pod);
    let ip = IpPool::take(port);
    let workload = workload_of(&ctx.store, &pod).unwrap_or_else(|| name.clone());
    let crash = ctx.faults.crash_mode(&ns, &workload);
    let now = now_rfc3339();
    let mut st = PodState {
        ip,
        started: now.clone(),
        phase: "Pending",
        ready: false,
        ready_since: now,
        restarts: 0,
        state: json!({"waiting": {"reason": "ContainerCreating"}}),
        last_state: json!({}),
        container_id: String::new(),
        workload: workload.clone(),
        name: name.clone(),
        port,
        terminating: false,
    };
    publish(&ctx, &pod, &st);
    tracing::debug!(namespace = %ns, pod = %name, %ip, "lab: pod scheduled");
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let slow = ctx.slow.get(node).copied().unwrap_or_default();
    let stopped = |s: &watch::Receiver<Option<i64>>| *s.borrow();
    let mut grace: Option<i64> = None;
    if !slow.is_zero() && idle(&ctx, &pod, &st, slow, &mut stop, &resync).await {
        grace = stopped(&stop);
    }
    let mut running: Option<Running> = None;
    let mut backoff = Duration::from_millis(250);
    let c0 = pod["spec"]["containers"][0].clone();
    let uid = pod
        .ptr("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .unwrap_or(&name)
        .to_string();
    let pod_dir = ctx.pods_dir.join(&uid);
    // Volumes are set up once, before the first start; a restart keeps them.
    let mut volume_sync: Option<Option<tokio::task::JoinHandle<()>>> = None;
    'life: while grace.is_none() {
        // Start (or restart) the container.
        let mounted = match &volume_sync {
            Some(_) => Ok(()),
            None => mount_volumes(&ctx, &pod, &c0, &pod_dir).map(|t| volume_sync = Some(t)),
        };
        let prepared = mounted
            .and_then(|()| on_host(&c0, &pod, &pod_dir))
            .and_then(|c| resolve_image(&ctx.images, &c).map(|r| (r, c)));
        let prepared = prepared.and_then(|(r, c)| {
            resolve_env(&ctx.store, &pod, &c, ip).map(|mut env| {
                let mut add = |k: &str, v: String| {
                    if !env.iter().any(|(n, _)| n == k) {
                        env.push((k.into(), v.into()));
                    }
                };
                add("HOST", ip.to_string());
                add("PORT", port.to_string());
                add(
                    "ROTOR_FLEET_DIR",
                    ctx.fleet_dir.to_string_lossy().into_owned(),
                );
                add("ROTOR_CONSUMER", workload.clone());
                add("ROTOR_INSTANCE", name.clone());
                (r, env)
            })
        });
        let (runner, env) = match prepared {
            Ok(x) => x,
            Err(ns_) => {
                st.state = json!({"waiting": {"reason": ns_.reason, "message": ns_.message}});
                st.set_ready(false);
                publish(&ctx, &pod, &st);
                if idle(&ctx, &pod, &st, Duration::from_secs(1), &mut stop, &resync).await {
                    grace = stopped(&stop);
                    break 'life;
                }
                continue 'life;
            }
        };
        let started = if crash == Some(CrashMode::Exit) {
            Err("crash_loop fault: the container exits at once".to_string())
        } else {
            start(&ctx, &pod, &runner, env, ip, port).await
        };
        let mut child = match started {
            Ok(c) => c,
            Err(msg) => {
                st.restarts += 1;
                st.last_state = json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": msg, "startedAt": now_rfc3339(), "finishedAt": now_rfc3339()}});
                st.state = json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off {backoff:?} restarting failed container")}});
                st.phase = "Running";
                st.set_ready(false);
                publish(&ctx, &pod, &st);
                if idle(&ctx, &pod, &st, backoff, &mut stop, &resync).await {
                    grace = stopped(&stop);
                    break 'life;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'life;
            }
        };
        let started_at = now_rfc3339();
        st.container_id = match &child {
            Running::Process(c) => format!("lab://{}", c.id().unwrap_or(0)),
            Running::InProcess { .. } => format!("lab://inprocess/{name}"),
        };
        st.phase = "Running";
        st.state = json!({"running": {"startedAt": started_at}});
        publish(&ctx, &pod, &st);
        let inprocess = matches!(child, Running::InProcess { .. });
        let mut fails = 0;
        let period = |ready: bool| {
            if ready {
                Duration::from_millis(1000)
            } else {
                Duration::from_millis(100)
            }
        };
        // A deadline, not a fresh sleep per turn: resyncs do not postpone the probe.
        let mut next_probe = tokio::time::Instant::now() + period(st.ready);
        loop {
            tokio::select! {
                code = child.wait() => {
                    st.restarts += 1;
                    st.last_state = json!({"terminated": {"exitCode": code,
                        "reason": if code == 0 { "Completed" } else { "Error" },
                        "startedAt": started_at, "finishedAt": now_rfc3339()}});
                    st.state = json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off {backoff:?} restarting failed container")}});
                    st.set_ready(false);
                    publish(&ctx, &pod, &st);
                    tracing::info!(namespace = %ns, pod = %name, code, "lab: container exited");
                    if idle(&ctx, &pod, &st, backoff, &mut stop, &resync).await {
                        grace = stopped(&stop);
                        break 'life;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'life;
                }
                _ = tokio::time::sleep_until(next_probe) => {
                    let ok = crash != Some(CrashMode::Unready)
                        && (inprocess || probe(&ctx, &pod, ip, port).await);
                    if ok {
                        fails = 0;
                        if !st.ready {
                            st.set_ready(true);
                            publish(&ctx, &pod, &st);
                        }
                    } else if st.ready {
                        fails += 1;
                        if fails >= 3 {
                            st.set_ready(false);
                            publish(&ctx, &pod, &st);
                        }
                    }
                    next_probe = tokio::time::Instant::now() + period(st.ready);
                }
                // A readiness gate's condition changed, or a client wrote over the kubelet's.
                _ = resync.notified() => publish(&ctx, &pod, &st),
                _ = stop.changed() => {
                    grace = stopped(&stop);
                    running = Some(child);
                    break 'life;
                }
            }
        }
    }
    // Termination: out of the endpoints first, then drain, SIGTERM, grace, SIGKILL.
    let grace = grace.unwrap_or(0).max(0) as u64;
    st.terminating = true;
    ctx.endpoints.set(&workload, &name, None);
    if let Some(mut child) = running {
        if grace > 0 {
            tokio::time::sleep(ctx.drain).await;
        }
        child.signal(Signal::SIGTERM);
        let exited = tokio::time::timeout(Duration::from_secs(grace), child.wait()).await;
        if exited.is_err() {
            child.signal(Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    if let Some(Some(t)) = volume_sync {
        t.abort();
    }
    if pod_dir.starts_with(&ctx.pods_dir) && pod_dir != ctx.pods_dir {
        let _ = std::fs::remove_dir_all(&pod_dir);
    }
    let _ = ctx.store.remove(resources::get("pods"), &ns, &name);
    IpPool::give(ip);
    tracing::debug!(namespace = %ns, pod = %name, "lab: pod gone");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(ty: &str, status: &str) -> Value {
        json!({"type": ty, "status": status})
    }

    #[test]
    fn ready_follows_the_containers_then_every_gate() {
        let spec = json!({"readinessGates": [{"conditionType": "a.io/x"}, {"conditionType": "b"}]});
        let not_ready = json!({"type": "ContainersReady", "status": "False",
            "reason": "ContainersNotReady", "message": "containers with unready status: [web]"});
        let r = ready_condition(&spec, &[], &not_ready);
        assert_eq!(
            (&r["status"], &r["reason"], &r["message"]),
            (
                &json!("False"),
                &json!("ContainersNotReady"),
                &json!("containers with unready status: [web]")
            )
        );
        let ok = cond("ContainersReady", "True");
        let r = ready_condition(&spec, &[cond("b", "False")], &ok);
        assert_eq!(r["reason"], "ReadinessGatesNotReady");
        assert_eq!(
            r["message"],
            "corresponding condition of pod readiness gate \"a.io/x\" does not exist., the \
             status of pod readiness gate \"b\" is not \"True\", but False"
        );
        let r = ready_condition(&spec, &[cond("a.io/x", "True"), cond("b", "True")], &ok);
        assert_eq!(r, json!({"type": "Ready", "status": "True"}));
        assert_eq!(ready_condition(&json!({}), &[], &ok)["status"], "True");
    }

    #[test]
    fn a_resync_is_asked_when_ready_disagrees_or_kubelet_conditions_are_gone() {
        let kubelet = |ready: Value| {
            vec![
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                ready,
                cond("ContainersReady", "True"),
                cond("PodScheduled", "True"),
            ]
        };
        let pod = |conds: Vec<Value>| {
            json!({"spec": {"readinessGates": [{"conditionType": "g"}]},
                   "status": {"conditions": conds}})
        };
        let held = json!({"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady",
            "message": "corresponding condition of pod readiness gate \"g\" does not exist."});
        assert!(!needs_resync(&pod(kubelet(held.clone()))));
        // The gate's condition arrived: Ready must follow.
        let mut with_gate = kubelet(held);
        with_gate.insert(0, cond("g", "True"));
        assert!(needs_resync(&pod(with_gate)));
        let mut proven = kubelet(cond("Ready", "True"));
        proven.insert(0, cond("g", "True"));
        assert!(!needs_resync(&pod(proven)));
        // A merge patch replaced the list.
        assert!(needs_resync(&pod(vec![cond("g", "True")])));
    }
}
