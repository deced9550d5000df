//! The lab: a local Kubernetes API server over plain HTTP on loopback whose pods are real
//! processes, each on its own `127.0.0.x` address. It is the test bed for rotor's Kubernetes
//! backend and a place to rehearse playbooks: `kube::Client` and `kubectl` work against it
//! unmodified.
//!
//! Layout: `api` (HTTP, verbs, discovery, admin endpoints), `objects` (store, resourceVersion,
//! watch fan-out), `patch`, `selector`, `table` (server-side printing), `resources` (the
//! resource table), `controller` (Deployments, StatefulSets, DaemonSets, ReplicaSets),
//! `kubelet` (pod processes, readiness and readiness gates, restarts, termination),
//! `volumes` (Secret volumes with the kubelet's layout and sync delay), `endpoints` (the
//! fleet's `endpoints.json` files), `inprocess` (in-process pods), `faults`
//! (fault injection and statistics), `topology` (the topology file), `secretmanager` (Google
//! Cloud Secret Manager's REST API v1 on the same address), `serviceaccounts` (TokenRequest,
//! TokenReview and the service-account signing key).
//!
//! Owns: everything under the lab's `dir` and the endpoints files under `fleet_dir`, and the
//! processes it starts (stopped by pid on shutdown). Must never: log Secret data or pod
//! environment values, or touch processes it did not start.
//!
//! The lab is rotor's test double, not part of rotor: it does not depend on the `rotor` crate
//! (its pods run `rotor-demo-service`, and nothing else is shared), so it can only ever speak
//! the wire protocols a real API server speaks.

/// The environment variable that points rotor's `gcp` store (and Google's own clients in our
/// tests) at another Secret Manager endpoint: `rotor-lab` prints it for its own address.
pub const GCP_ENDPOINT_ENV: &str = "ROTOR_GCP_ENDPOINT";

mod api;
mod controller;
mod endpoints;
mod error;
mod faults;
mod inprocess;
mod kubelet;
mod objects;
mod patch;
mod resources;
mod secretmanager;
mod selector;
mod serviceaccounts;
mod table;
mod topology;
mod volumes;

use self::objects::Ptr as _;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

pub use endpoints::EndpointsFile;
pub use error::LabError;
pub use faults::{ApiEffect, CrashMode, Fault, Faults, GcpEffect, GcpMethod, Stats};
pub use secretmanager::{
    AccessRecord, SecretManagerLab, SecretManagerStats, SecretSnapshot, VersionSnapshot,
    VersionState,
};
pub use topology::{INPROCESS_IMAGE, ImageSpec, MAX_SECRET_SYNC, NodeSpec, Topology};

/// The default drain: time between a pod leaving the endpoints and its SIGTERM.
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(300);

/// The default sync delay of Secret volumes: a running pod sees a Secret change this long
/// after it was written (a kubelet takes up to about a minute and a half; set
/// `secret_sync_delay` in the topology for that).
pub const DEFAULT_SECRET_SYNC_DELAY: Duration = Duration::from_secs(1);

/// Where the topology comes from.
#[derive(Debug, Clone)]
pub enum TopologySource {
    /// Already parsed (tests build it in code).
    Parsed(Topology),
    /// A YAML file.
    Path(PathBuf),
}

impl From<Topology> for TopologySource {
    fn from(t: Topology) -> TopologySource {
        TopologySource::Parsed(t)
    }
}

impl From<PathBuf> for TopologySource {
    fn from(p: PathBuf) -> TopologySource {
        TopologySource::Path(p)
    }
}

impl From<&Path> for TopologySource {
    fn from(p: &Path) -> TopologySource {
        TopologySource::Path(p.to_path_buf())
    }
}

/// How to start a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub topology: TopologySource,
    /// Logs (`logs/<ns>/<pod>.log`) and the kubeconfig go here.
    pub dir: PathBuf,
    /// `<fleet_dir>/<workload>/endpoints.json`; pods get it as `ROTOR_FLEET_DIR`.
    pub fleet_dir: PathBuf,
    /// Where the API server listens (loopback; port 0 picks one).
    pub listen: SocketAddr,
    /// Overrides the topology's drain.
    pub drain: Option<Duration>,
    /// Overrides the topology's `secret_sync_delay`.
    pub secret_sync_delay: Option<Duration>,
}

impl LabOptions {
    /// Defaults: fleet dir `<dir>/fleet`, listen `127.0.0.1:0`, the topology's drain.
    pub fn new(topology: impl Into<TopologySource>, dir: impl Into<PathBuf>) -> LabOptions {
        let dir = dir.into();
        LabOptions {
            topology: topology.into(),
            fleet_dir: dir.join("fleet"),
            dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain: None,
            secret_sync_delay: None,
        }
    }
}

/// The lab.
pub struct Lab;

/// A running lab. Dropping it without [`LabHandle::shutdown`] still kills its pods (SIGKILL
/// when the runtime drops their tasks, SIGTERM through the parent-death signal otherwise).
pub struct LabHandle {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    namespace: String,
    fleet_dir: PathBuf,
    pods_dir: PathBuf,
    faults: Faults,
    shared: Arc<api::Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn mkdir(p: &Path) -> Result<(), LabError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|source| LabError::Write {
            path: p.to_path_buf(),
            source,
        })
}

fn kubeconfig_text(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rotor-lab\n  cluster:\n    server: \
         http://{addr}\nusers:\n- name: rotor-lab\n  user:\n    token: rotor-lab-dummy-token\n\
         contexts:\n- name: rotor-lab\n  context:\n    cluster: rotor-lab\n    user: rotor-lab\n    \
         namespace: {namespace}\ncurrent-context: rotor-lab\npreferences: {{}}\n"
    )
}

impl Lab {
    /// Starts the API server, the controllers and the kubelet, and creates the topology's
    /// objects. Must run inside a tokio runtime.
    pub async fn start(opts: LabOptions) -> Result<LabHandle, LabError> {
        let topo = match opts.topology {
            TopologySource::Parsed(t) => t,
            TopologySource::Path(p) => Topology::load(&p)?,
        };
        mkdir(&opts.dir)?;
        mkdir(&opts.dir.join("logs"))?;
        mkdir(&opts.dir.join("pods"))?;
        mkdir(&opts.fleet_dir)?;
        let store = Arc::new(objects::Store::new());
        let faults = Faults::default();
        for f in &topo.faults {
            faults.add(f.clone());
        }
        let ns_res = resources::get("namespaces");
        let refused = |kind: &str, name: &str, e: error::ApiError| LabError::Object {
            kind: kind.to_string(),
            name: name.to_string(),
            message: e.message,
        };
        for ns in ["default", "kube-system"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                             "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            api::create_object(&store, ns_res, None, obj, false)
                .map_err(|e| refused("Namespace", ns, e))?;
        }
        for n in &topo.nodes {
            let obj = json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                           "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
            api::create_object(&store, resources::get("nodes"), None, obj, false)
                .map_err(|e| refused("Node", &n.name, e))?;
        }
        let mut objs: Vec<&Value> = topo.objects.iter().collect();
        objs.sort_by_key(|o| o["kind"] != "Namespace");
        for o in objs {
            let kind = o["kind"].as_str().unwrap_or("");
            let name = objects::name_of(o).to_string();
            let res = resources::by_kind(o["apiVersion"].as_str().unwrap_or(""), kind).ok_or_else(
                || LabError::Object {
                    kind: kind.into(),
                    name: name.clone(),
                    message: "unsupported kind".into(),
                },
            )?;
            if res.plural == "namespaces" && store.get(res, "", &name).is_some() {
                continue;
            }
            let ns = o
                .ptr("/metadata/namespace")
                .and_then(Value::as_str)
                .or(topo.namespace.as_deref())
                .unwrap_or("default")
                .to_string();
            if res.plural == "serviceaccounts" && name == "default" {
                // The topology's own `default` account replaces the one every namespace gets.
                let _ = store.remove(res, &ns, &name);
            }
            api::create_object(&store, res, Some(&ns), o.clone(), false)
                .map_err(|e| refused(kind, &name, e))?;
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| LabError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| LabError::Listen {
            addr: opts.listen,
            source,
        })?;
        let namespace = topo.namespace.clone().unwrap_or_else(|| "default".into());
        let kubeconfig = opts.dir.join("kubeconfig");
        let write_err = |source| LabError::Write {
            path: kubeconfig.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&kubeconfig)
            .map_err(write_err)?;
        f.write_all(kubeconfig_text(addr, &namespace).as_bytes())
            .map_err(write_err)?;
        let (shutdown, rx) = watch::channel(false);
        let tokens =
            serviceaccounts::Issuer::new(format!("http://{addr}")).map_err(LabError::SigningKey)?;
        let shared = Arc::new(api::Shared {
            store: store.clone(),
            faults: faults.clone(),
            stats: faults::StatsInner::default(),
            addr,
            shutdown: rx.clone(),
            logs_dir: opts.dir.join("logs"),
            secret_manager: SecretManagerLab::new(addr),
            tokens,
        });
        let mut tasks = Vec::new();
        let app = api::router(shared.clone());
        let mut srv_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = srv_rx.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "lab: the API server stopped");
            }
        }));
        let nodes: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
        let ctl = controller::Controller::new(store.clone(), nodes);
        tasks.push(tokio::spawn(ctl.run(rx.clone())));
        let slow: HashMap<String, Duration> = topo
            .nodes
            .iter()
            .filter_map(|n| n.slow.map(|d| (n.name.clone(), d)))
            .collect();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| LabError::Listen {
                addr,
                source: std::io::Error::other(e),
            })?;
        let ctx = Arc::new(kubelet::Ctx {
            store: store.clone(),
            faults: faults.clone(),
            images: topo.images.clone(),
            slow,
            drain: opts.drain.or(topo.drain).unwrap_or(DEFAULT_DRAIN),
            fleet_dir: opts.fleet_dir.clone(),
            logs_dir: opts.dir.join("logs"),
            pods_dir: opts.dir.join("pods"),
            secret_sync_delay: opts
                .secret_sync_delay
                .or(topo.secret_sync_delay)
                .unwrap_or(DEFAULT_SECRET_SYNC_DELAY),
            secret_sync_jitter: topo.secret_sync_jitter.unwrap_or_default(),
            spawner: kubelet::Spawner::new(),
            endpoints: endpoints::Endpoints::new(opts.fleet_dir.clone()),
            http,
        });
        tasks.push(tokio::spawn(kubelet::run(ctx, rx)));
        tracing::info!(%addr, "lab: API server listening");
        Ok(LabHandle {
            addr,
            kubeconfig,
            namespace,
            fleet_dir: opts.fleet_dir,
            pods_dir: opts.dir.join("pods"),
            faults,
            shared,
            shutdown,
            tasks,
        })
    }
}

impl LabHandle {
    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The kubeconfig (mode 0600): cluster, user and context `rotor-lab`, current.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig context's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Where the endpoints files are.
    pub fn fleet_dir(&self) -> &Path {
        &self.fleet_dir
    }

    /// Where the Secret volume `volume` of the pod with uid `pod_uid` lives on the host
    /// (`<dir>/pods/<uid>/volumes/kubernetes.io~secret/<volume>`, the kubelet's layout).
    pub fn secret_volume_dir(&self, pod_uid: &str, volume: &str) -> PathBuf {
        volumes::volume_dir(&self.pods_dir.join(pod_uid), volume)
    }

    /// Adds and clears faults at run time.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Request statistics so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// The Secret Manager API served on the same address: its endpoint, statistics, access
    /// log, and the secrets' state without going through HTTP.
    pub fn secret_manager(&self) -> &SecretManagerLab {
        &self.shared.secret_manager
    }

    /// The `iss` of the lab's service-account tokens: its own URL, `http://127.0.0.1:PORT`
    /// (`/.well-known/openid-configuration` is served there).
    pub fn service_account_issuer(&self) -> &str {
        self.shared.tokens.issuer()
    }

    /// The public key that verifies the lab's service-account tokens (ES256), as a PEM
    /// `PUBLIC KEY` (Vault's `pem_keys`); `/openid/v1/jwks` serves it as a JWK.
    pub fn service_account_public_key_pem(&self) -> String {
        self.shared.tokens.public_key_pem()
    }

    /// A token for the ServiceAccount `namespace/name`, as a TokenRequest for `audiences`
    /// (empty: the issuer) would mint it, but issued at `issued_at` and living `lifetime`
    /// (no 10-minute minimum): tests mint expired tokens this way. Not counted in the
    /// statistics. Fails when the ServiceAccount does not exist.
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        issued_at: std::time::SystemTime,
        lifetime: Duration,
    ) -> Result<String, LabError> {
        let mut auds: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        if auds.is_empty() {
            auds.push(self.service_account_issuer().to_string());
        }
        let spec = serviceaccounts::TokenSpec::new(auds, serviceaccounts::seconds(lifetime));
        serviceaccounts::mint(
            &self.shared.store,
            &self.shared.tokens,
            namespace,
            name,
            &spec,
            issued_at,
        )
        .map(|(token, _)| token)
        .map_err(|e| LabError::ServiceAccountToken {
            namespace: namespace.into(),
            name: name.into(),
            message: e.message,
        })
    }

    /// Stops the controllers, terminates every pod (SIGTERM, then SIGKILL after at most 5s)
    /// and waits for them, then stops the API server.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for LabHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
