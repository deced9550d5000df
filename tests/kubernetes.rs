//! rotor's Kubernetes path end to end on the lab: `playbooks/k8s-demo.yaml` (store Secret,
//! three Deployments reading their own Secrets, Lease lock, ConfigMap journal) rotated by the
//! real `rotor` binary under continuous load, with faults, crashes and races.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams};
use rotor::demo::load::{Load, LoadReport};
use rotor::playbook::Playbook;
use rotor_lab::{CrashMode, Fault, Lab, LabHandle, LabOptions};

use crate::common::{Out, record, rotor_exe, scratch_playbook, wait_for, walk};

pub(crate) const NS: &str = "demo";
const STORE: &str = "service-secret-store";
const JOURNAL: &str = "rotor-journal-service-secret-development";
const LEASE: &str = "rotor-service-secret-development";

/// The Kubernetes demo on a lab of its own, driven through the `rotor` binary. The lab also
/// serves the Secret Manager API, so a playbook with a `gcp` store runs here too.
pub(crate) struct K8sEnv {
    dir: tempfile::TempDir,
    playbook: PathBuf,
    pb: Playbook,
    lab: Option<LabHandle>,
    client: kube::Client,
    outputs: Mutex<Vec<String>>,
    values: Arc<Mutex<BTreeSet<String>>>,
    watching: Arc<AtomicBool>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// A demo playbook with test timings: no grace, a short lock so takeover tests are quick.
pub(crate) fn test_yaml(base: &str, edit: impl FnOnce(String) -> String) -> String {
    let y = base.replace("grace: 1s ", "grace: 0s ").replace(
        "  journal: configmap",
        "  lease_duration: 4s\n  journal: configmap",
    );
    assert!(y.contains("lease_duration: 4s") && y.contains("grace: 0s"));
    edit(y)
}

impl K8sEnv {
    async fn new() -> K8sEnv {
        K8sEnv::with(|y| y).await
    }

    async fn with(edit: impl FnOnce(String) -> String) -> K8sEnv {
        K8sEnv::from_yaml("k8s-demo.yaml", test_yaml(rotor::demo::K8S_DEMO, edit)).await
    }

    /// The lab demo topology with `yaml` (a playbook for it) in a scratch directory.
    pub(crate) async fn from_yaml(file: &str, yaml: String) -> K8sEnv {
        K8sEnv::from_parts(file, yaml, |_, _| {}).await
    }

    /// Like [`K8sEnv::from_yaml`], with the topology's objects edited by `edit` (which also
    /// gets the scratch directory) before the lab starts.
    async fn from_parts(
        file: &str,
        yaml: String,
        edit: impl FnOnce(&mut Vec<serde_json::Value>, &std::path::Path),
    ) -> K8sEnv {
        K8sEnv::from_topology(file, yaml, |topo, dir| edit(&mut topo.objects, dir)).await
    }

    /// Like [`K8sEnv::from_parts`], with the whole topology to edit (its sync delay, …).
    pub(crate) async fn from_topology(
        file: &str,
        yaml: String,
        edit: impl FnOnce(&mut rotor_lab::Topology, &std::path::Path),
    ) -> K8sEnv {
        let (dir, playbook, pb) = scratch_playbook("rotor-k8s-test-", file, yaml);
        let mut topo = rotor_lab::Topology::parse(
            rotor::demo::LAB_DEMO_TOPOLOGY,
            std::path::Path::new("<embedded>/playbooks/lab-demo.topology.yaml"),
        )
        .unwrap();
        edit(&mut topo, dir.path());
        topo.images.insert(
            "rotor-demo-service".into(),
            crate::common::demo_service_image(),
        );
        let mut opts = LabOptions::new(topo, dir.path().join("lab"));
        // The load generator reads endpoints where a process consumer would publish them.
        opts.fleet_dir = pb.state_dir.join("fleet");
        opts.drain = Some(Duration::from_millis(150));
        let lab = Lab::start(opts).await.unwrap();
        let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig_path()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let values = Arc::new(Mutex::new(BTreeSet::new()));
        let watching = Arc::new(AtomicBool::new(true));
        // Every value that ever sits in a Secret of the namespace (the store Secret, the
        // workloads' Secrets), so the leak check knows them all.
        let watcher = {
            let (values, watching) = (values.clone(), watching.clone());
            let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
            tokio::spawn(async move {
                while watching.load(Ordering::Relaxed) {
                    collect_values(&secrets, &values).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                collect_values(&secrets, &values).await;
            })
        };
        K8sEnv {
            dir,
            playbook,
            pb,
            lab: Some(lab),
            client,
            outputs: Mutex::new(Vec::new()),
            values,
            watching,
            watcher: Some(watcher),
        }
    }

    /// Starts a rotation, waits until `at_t2` says its lock records stage T2, then checks that
    /// a second rotation is refused (exit 4) naming the holder's command and stage, and that the
    /// first one completes.
    pub(crate) async fn two_rotors_race(&self, at_t2: impl AsyncFnMut() -> bool) {
        let first = self
            .command(&["rotate", "--yes"], &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            "the first rotor to reach T2",
            Duration::from_secs(60),
            at_t2,
        )
        .await;
        let second = self.rotor(&["rotate", "--yes"]).await;
        second.assert_code(4);
        assert!(
            second
                .stderr
                .contains("another rotation of this secret is running"),
            "{}",
            second.stderr
        );
        assert!(second.stderr.contains("(rotate)"), "{}", second.stderr);
        assert!(second.stderr.contains("at stage T"), "{}", second.stderr);
        let first = self.record(first.wait_with_output().await.unwrap());
        first.assert_code(0);
        assert_eq!(self.journal().await["state"], "S5");
    }

    pub(crate) fn playbook(&self) -> &Playbook {
        &self.pb
    }

    /// The playbook file the `rotor` commands read.
    pub(crate) fn playbook_path(&self) -> &std::path::Path {
        &self.playbook
    }

    pub(crate) fn lab(&self) -> &LabHandle {
        self.lab.as_ref().unwrap()
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// `rotor <args> <playbook>` with the lab's kubeconfig.
    pub(crate) fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(rotor_exe());
        cmd.args(args).arg(&self.playbook);
        cmd.current_dir(self.dir.path());
        cmd.env("KUBECONFIG", self.lab().kubeconfig_path());
        cmd.env("ROTOR_GCP_ENDPOINT", self.lab().url());
        cmd.env_remove("ROTOR_FAILPOINT");
        cmd.env_remove("ROTOR_CONTEXT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::null());
        cmd.kill_on_drop(true);
        cmd
    }

    pub(crate) async fn rotor(&self, args: &[&str]) -> Out {
        self.rotor_env(args, &[]).await
    }

    pub(crate) async fn rotor_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = self.command(args, env).output().await.unwrap();
        self.record(out)
    }

    pub(crate) fn record(&self, out: std::process::Output) -> Out {
        record(&self.outputs, out)
    }

    pub(crate) async fn up(&self) {
        self.rotor(&["init"]).await.assert_code(0);
        self.rotor(&["up"]).await.assert_code(0);
    }

    pub(crate) fn load(&self) -> Load {
        let paths = rotor::demo::load::paths(&self.pb);
        assert_eq!(paths.len(), 3, "three signer→validator paths");
        Load::start(paths, 1, Duration::from_millis(3))
    }

    #[track_caller]
    pub(crate) fn assert_no_failures(&self, r: &LoadReport) {
        assert_eq!(
            r.failed_requests, 0,
            "failed requests: {:#?}",
            r.first_failures
        );
        for (path, (n, _)) in &r.per_path {
            assert!(*n > 0, "no request on {path}");
        }
    }

    /// The journal ConfigMap's journal, as JSON.
    pub(crate) async fn journal(&self) -> serde_json::Value {
        let cm: ConfigMap = self.api().get(JOURNAL).await.unwrap();
        let text = cm.data.unwrap_or_default().remove("journal.json").unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The store Secret's annotations: `rotor.dev/primary` etc.
    async fn store_annotation(&self, key: &str) -> Option<String> {
        let s: Secret = self.api().get(STORE).await.unwrap();
        s.metadata
            .annotations
            .unwrap_or_default()
            .get(&format!("rotor.dev/{key}"))
            .cloned()
    }

    /// The fingerprint the store's primary slot holds.
    async fn store_primary(&self) -> String {
        let id = self.store_annotation("primary").await.unwrap();
        let versions: serde_json::Value =
            serde_json::from_str(&self.store_annotation("versions").await.unwrap()).unwrap();
        versions
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id.as_str())
            .unwrap()["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The data keys of the store Secret.
    async fn store_keys(&self) -> BTreeSet<String> {
        let s: Secret = self.api().get(STORE).await.unwrap();
        s.data.unwrap_or_default().into_keys().collect()
    }

    /// The pod-template annotation rotor set on a Deployment.
    pub(crate) async fn template_annotation(&self, deployment: &str) -> Option<String> {
        let d: Deployment = self.api().get(deployment).await.unwrap();
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("rotor.dev/service-secret")
            .cloned()
    }

    /// Every object of kind `K` in the namespace as (label, JSON text), for the leak check.
    async fn dump<K>(&self, kind: &str) -> Vec<(String, String)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .map(|o| {
                (
                    format!("{kind} {:?}", o.meta().name),
                    serde_json::to_string(&o).unwrap(),
                )
            })
            .collect()
    }

    /// Shuts the lab down and checks that no value leaked into any output, state file, pod log
    /// or API object other than the Secrets.
    pub(crate) async fn finish(mut self) {
        self.watching.store(false, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            w.await.unwrap();
        }
        let values = self.values.lock().unwrap().clone();
        assert!(values.len() >= 2, "the watcher saw {} values", values.len());
        let mut texts: Vec<(String, String)> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("output #{i}"), t.clone()))
            .collect();
        texts.extend(self.dump::<ConfigMap>("configmap").await);
        texts.extend(self.dump::<Lease>("lease").await);
        texts.extend(self.dump::<Deployment>("deployment").await);
        texts.extend(self.dump::<Pod>("pod").await);
        self.lab.take().unwrap().shutdown().await;
        for f in walk(self.dir.path()) {
            if let Ok(t) = std::fs::read(&f) {
                texts.push((
                    f.display().to_string(),
                    String::from_utf8_lossy(&t).into_owned(),
                ));
            }
        }
        assert!(
            texts.iter().any(|(n, _)| n.ends_with("audit.log")),
            "audit log not scanned"
        );
        assert!(
            texts
                .iter()
                .any(|(n, _)| n.ends_with(".log") && n.contains("/logs/")),
            "pod logs not scanned"
        );
        for v in &values {
            for (name, t) in &texts {
                assert!(
                    !t.contains(v.as_str()),
                    "a generated value leaked into {name}"
                );
            }
        }
    }
}

async fn collect_values(secrets: &Api<Secret>, values: &Mutex<BTreeSet<String>>) {
    let Ok(list) = secrets.list(&ListParams::default()).await else {
        return;
    };
    let mut set = values.lock().unwrap();
    for s in list {
        for v in s.data.unwrap_or_default().into_values() {
            let text = String::from_utf8_lossy(&v.0).into_owned();
            // The topology's placeholders are not generated values.
            if !text.starts_with("lab-placeholder") {
                set.insert(text);
            }
        }
    }
}

pub(crate) fn stages(out: &Out) -> Vec<String> {
    out.last_json()["report"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}.{}",
                s["transition"].as_str().unwrap(),
                s["direction"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_full_rotation_under_load_has_no_failed_request() {
    let env = K8sEnv::new().await;
    env.up().await;
    env.rotor(&["check"]).await.assert_code(0);
    let a = env.store_primary().await;
    let before = env.template_annotation("analytics").await.unwrap();
    assert_eq!(before, a, "up rolls every workload onto A");
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert!(
        report.requests > 100,
        "too little load: {}",
        report.requests
    );

    let last = out.last_json();
    assert_eq!(last["report"]["state"], "S5");
    assert_eq!(
        stages(&out),
        [
            "T1.forward",
            "T2.forward",
            "T3.forward",
            "T4.forward",
            "T5.forward"
        ]
    );
    // Role-aware waves: `both` rolls three times, validators twice; two pods each.
    assert_eq!(last["report"]["restarts"]["auth"], 6);
    assert_eq!(last["report"]["restarts"]["backend"], 6);
    assert_eq!(last["report"]["restarts"]["analytics"], 4);

    let j = env.journal().await;
    assert_eq!(j["state"], "S5");
    assert_eq!(j["status"], "completed");
    let b = j["new"]["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(env.store_primary().await, b);
    // The old value is gone from the store Secret; only B remains.
    assert_eq!(env.store_annotation("secondary").await, None);
    let keys = env.store_keys().await;
    assert!(!keys.contains("secondary"), "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("version-")).count(), 1);
    for d in ["auth", "backend", "analytics"] {
        assert_eq!(env.template_annotation(d).await.unwrap(), b, "{d}");
    }
    // Every pod holds B under every name, by its own report.
    let check = env.rotor(&["--output", "json", "check"]).await;
    check.assert_code(0);
    let c = check.last_json();
    let instances = c["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 6, "{c}");
    for inst in instances {
        for (_, fp) in inst["names"].as_object().unwrap() {
            assert_eq!(fp.as_str().unwrap(), b, "{inst}");
        }
    }
    // The Lease was given back.
    let lease: Lease = env.api().get(LEASE).await.unwrap();
    assert!(
        lease
            .spec
            .unwrap()
            .holder_identity
            .is_none_or(|h| h.is_empty()),
        "lease still held after the run"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_rollback_from_each_stage_returns_to_s0_under_load() {
    let env = K8sEnv::new().await;
    env.up().await;
    let a = env.store_primary().await;
    let load = env.load();
    for until in ["S1", "S2", "S3", "S4"] {
        env.rotor(&["rotate", "--yes", "--until", until])
            .await
            .assert_code(0);
        let j = env.journal().await;
        assert_eq!(j["state"], until);
        assert_eq!(j["status"], "paused");
        let b = j["new"]["fingerprint"].as_str().unwrap().to_string();
        env.rotor(&["rollback"]).await.assert_code(0);
        let j = env.journal().await;
        assert_eq!(j["state"], "S0", "after rollback from {until}");
        assert_eq!(j["status"], "rolled_back");
        assert_eq!(env.store_primary().await, a, "after rollback from {until}");
        assert_eq!(env.store_annotation("secondary").await, None);
        assert!(!env.store_keys().await.contains("secondary"));
        for d in ["auth", "backend", "analytics"] {
            let ann = env.template_annotation(d).await.unwrap();
            assert_eq!(ann, a, "{d} after rollback from {until}");
            assert!(!ann.contains(&b));
        }
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_crash_looping_pod_in_t2_rolls_back_with_no_failed_request() {
    let env = K8sEnv::with(|y| y.replace("readiness_timeout: 20s", "readiness_timeout: 4s")).await;
    env.up().await;
    let a = env.store_primary().await;
    // From now on every new analytics pod exits at once: T2 widens auth and backend, then
    // analytics' new pod never becomes Ready.
    env.lab().faults().add(Fault::CrashLoop {
        workload: "analytics".into(),
        namespace: Some(NS.into()),
        mode: CrashMode::Exit,
    });
    let load = env.load();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert!(
        out.stderr.contains("T2 widen forward failed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("analytics"), "{}", out.stderr);
    assert!(out.stderr.contains("CrashLoopBackOff"), "{}", out.stderr);
    assert!(out.stderr.contains("rolled back to S0"), "{}", out.stderr);
    let j = env.journal().await;
    assert_eq!(j["status"], "rolled_back");
    assert_eq!(j["state"], "S0");
    assert_eq!(env.store_primary().await, a);
    env.lab().faults().clear();
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_sigkill_mid_rollout_then_resume_completes() {
    let env = K8sEnv::new().await;
    env.up().await;
    let a = env.store_primary().await;
    let load = env.load();
    let mut child = env
        .command(&["--output", "json", "rotate", "--yes"], &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill rotor while T2 is rolling analytics: its template already says A,B but not every pod
    // runs it yet.
    wait_for(
        "analytics to start rolling",
        Duration::from_secs(60),
        async || {
            env.template_annotation("analytics")
                .await
                .is_some_and(|v| v.contains(','))
        },
    )
    .await;
    // Our own child, not yet waited for, so its pid is still its own.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    let j = env.journal().await;
    assert_eq!(j["status"], "running", "{j}");

    // The dead rotor's Lease is still held: resume names the holder and its stage.
    let held = env.rotor(&["resume", "--yes"]).await;
    held.assert_code(4);
    assert!(held.stderr.contains("T2"), "{}", held.stderr);
    // Once it expired, `--force` takes it over and resume finishes the rotation.
    let out = env.rotor(&["resume", "--yes", "--force"]).await;
    let out = if out.code() == Some(4) {
        wait_for(
            "the dead rotor's lease to expire",
            Duration::from_secs(20),
            async || {
                let l: Lease = env.api().get(LEASE).await.unwrap();
                let spec = l.spec.unwrap();
                let renewed = spec.renew_time.unwrap().0;
                let secs = spec.lease_duration_seconds.unwrap_or(4);
                jiff::Timestamp::now().as_second() > renewed.as_second() + i64::from(secs)
            },
        )
        .await;
        env.rotor(&["resume", "--yes", "--force"]).await
    } else {
        out
    };
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let j = env.journal().await;
    assert_eq!(j["state"], "S5");
    assert_eq!(j["status"], "completed");
    let b = j["new"]["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(env.store_primary().await, b);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_two_rotors_race_one_holds_the_lease_the_other_names_it() {
    let env = K8sEnv::new().await;
    env.up().await;
    env.two_rotors_race(async || {
        let l: Lease = match env.api().get(LEASE).await {
            Ok(l) => l,
            Err(_) => return false,
        };
        l.metadata
            .annotations
            .unwrap_or_default()
            .get("rotor.dev/holder")
            .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
            .is_some_and(|h| h["stage"].as_str().is_some_and(|s| s.starts_with("T2")))
    })
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_forbidden_patch_names_the_missing_rule_and_rolls_back() {
    let env = K8sEnv::new().await;
    env.up().await;
    let a = env.store_primary().await;
    env.lab().faults().add(Fault::Forbid {
        verb: "patch".into(),
        resource: "deployments".into(),
        namespace: Some(NS.into()),
        name: None,
        user: None,
    });
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    assert!(
        out.stderr
            .contains(r#"{apiGroups: ["apps"], resources: ["deployments"], verbs: ["patch"]}"#),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("namespace demo"), "{}", out.stderr);
    assert_eq!(env.journal().await["state"], "S0");
    assert_eq!(env.store_primary().await, a);
    // Nothing was patched: every workload still runs A alone.
    for d in ["auth", "backend", "analytics"] {
        assert_eq!(env.template_annotation(d).await.unwrap(), a, "{d}");
    }
    env.lab().faults().clear();
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_lab_command_reports_zero_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(rotor_exe())
        .args(["demo", "--lab", "--dir"])
        .arg(dir.path())
        .env("ROTOR_EXE", rotor_exe())
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let o = Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    o.assert_code(0);
    let r = o.last_json();
    assert_eq!(r["failed_requests"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["state"], "S5");
    assert_eq!(r["restarts"]["analytics"], 4, "{r}");
    let logs: Vec<PathBuf> = walk(&dir.path().join("lab"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(!logs.is_empty(), "the lab wrote no pod log");
    assert!(dir.path().join("state").join("audit.log").exists());
}

/// Restarts `deployment` (a pod-template annotation, as `kubectl rollout restart` does) and
/// waits until every pod runs the new template and is Ready. The template carries rotor's
/// readiness gate, which rotor alone would open after proving a pod; here someone opens it by
/// hand (`pods/status`) for every pod whose containers are ready, as a pre-gate fleet would
/// have let them serve.
async fn restart_and_wait(env: &K8sEnv, deployment: &str) {
    use kube::api::{Patch, PatchParams};
    let pods: Api<Pod> = env.api();
    let open_gates = async || {
        for p in pods
            .list(&ListParams::default().labels(&format!("app={deployment}")))
            .await
            .unwrap()
        {
            let conditions = p.status.and_then(|s| s.conditions).unwrap_or_default();
            let ready = |t: &str| {
                conditions
                    .iter()
                    .any(|c| c.type_ == t && c.status == "True")
            };
            if ready("ContainersReady") && !ready("rotor.dev/proven") {
                let body = serde_json::json!({"status": {"conditions": [
                    {"type": "rotor.dev/proven", "status": "True"}
                ]}});
                let name = p.metadata.name.unwrap();
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
                    .await;
            }
        }
    };
    let api: Api<Deployment> = env.api();
    let now = chrono::Utc::now().to_rfc3339();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"test/restartedAt": now}}}}});
    let d = api
        .patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = d.metadata.generation.unwrap();
    wait_for(
        &format!("{deployment} to roll"),
        Duration::from_secs(60),
        async || {
            open_gates().await;
            let d = api.get(deployment).await.unwrap();
            let s = d.status.unwrap_or_default();
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            s.observed_generation.unwrap_or(0) >= generation
                && s.updated_replicas.unwrap_or(0) == want
                && s.ready_replicas.unwrap_or(0) == want
                && s.replicas.unwrap_or(0) == want
        },
    )
    .await;
}

/// The founding incident on purpose: auth reads the primary as SERVICE_SECRET and SECRET_KEY,
/// and someone set SECRET_KEY by hand; backend sends a value auth does not accept. `check`
/// names both, then passes again once the fleet is repaired with `rotor up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_check_names_split_names_and_rejected_signers_on_a_broken_fleet() {
    use kube::api::{Patch, PatchParams};
    let env = K8sEnv::new().await;
    env.up().await;
    env.rotor(&["check"]).await.assert_code(0);
    let secrets: Api<Secret> = env.api();
    let hand_set = "hand-set-value-0123456789abcdefghijklmnopqrstuvwxyz";
    let set = |name: &'static str, key: &'static str| {
        let secrets = secrets.clone();
        async move {
            let patch = serde_json::json!({"stringData": {key: hand_set}});
            secrets
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    set("auth-secrets", "SECRET_KEY").await;
    set("backend-secrets", "SERVICE_SECRET").await;
    restart_and_wait(&env, "auth").await;
    restart_and_wait(&env, "backend").await;
    let out = env.rotor(&["check"]).await;
    out.assert_code(5);
    for needle in [
        "SERVICE_SECRET and SECRET_KEY name the primary slot but hold different values",
        "a value this store never had",
        "would reject what backend",
    ] {
        assert!(out.stdout.contains(needle), "{needle}\n{}", out.stdout);
    }
    assert!(!out.stdout.contains(hand_set) && !out.stderr.contains(hand_set));
    // rotor refuses to rotate from there. `up` writes the right values back into the Secrets
    // (the pod templates already carry the right fingerprints, so it rolls nothing); once the
    // pods restart, the fleet is whole again.
    env.rotor(&["rotate", "--yes"]).await.assert_code(5);
    env.rotor(&["up"]).await.assert_code(0);
    restart_and_wait(&env, "auth").await;
    restart_and_wait(&env, "backend").await;
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

/// The demo on the lab with analytics pods reading their fault from the returned file
/// (`--fault-file` of the demo service: read on every request).
async fn analytics_with_fault() -> (K8sEnv, PathBuf) {
    let mut fault = PathBuf::new();
    let env = K8sEnv::from_parts(
        "k8s-demo.yaml",
        test_yaml(rotor::demo::K8S_DEMO, |y| y),
        |objects, dir| {
            fault = dir.join("analytics-fault");
            let analytics = objects
                .iter_mut()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "analytics")
                .unwrap();
            let args = analytics["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array_mut()
                .unwrap();
            args.push("--fault-file".into());
            args.push(fault.display().to_string().into());
        },
    )
    .await;
    (env, fault)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_new_pods_that_fail_the_gate_stay_unready_and_the_rotation_rolls_back() {
    // `two-keys` breaks a pod that holds two values (it still answers its readiness probe).
    let (env, fault) = analytics_with_fault().await;
    env.up().await;
    let a = env.store_primary().await;
    // rotor's readiness gate is on every template it rolled, and open on every serving pod.
    let pods: Api<Pod> = env.api();
    let gated = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == "rotor.dev/proven"))
    };
    let proven = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "rotor.dev/proven" && c.status == "True")
            })
    };
    for p in pods.list(&ListParams::default()).await.unwrap() {
        assert!(gated(&p) && proven(&p), "{:?}", p.metadata.name);
    }

    std::fs::write(&fault, "two-keys").unwrap();
    let load = env.load();
    let out = env.rotor(&["rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(3);
    // The load went only to Ready pods: the broken analytics pod never was one.
    env.assert_no_failures(&report);
    assert!(
        out.stderr.contains("T2 widen forward failed")
            && out.stderr.contains("analytics")
            && out.stderr.contains("failed its gate"),
        "{}",
        out.stderr
    );
    let j = env.journal().await;
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S0"), Some("rolled_back"))
    );
    assert_eq!(env.store_primary().await, a);
    std::fs::write(&fault, "").unwrap();
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_a_pod_that_fails_its_proof_serves_until_a_proven_one_replaces_it() {
    let (env, fault) = analytics_with_fault().await;
    env.up().await;
    let pods: Api<Pod> = env.api();
    let ready_analytics = async || -> Vec<String> {
        let mut names: Vec<String> = pods
            .list(&ListParams::default().labels("app=analytics"))
            .await
            .unwrap()
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.metadata.name.unwrap())
            .collect();
        names.sort();
        names
    };
    let before = ready_analytics().await;
    assert_eq!(before.len(), 2);
    // The running analytics pods start accepting anything (they fail open), and so does every
    // pod started while the cause lasts.
    std::fs::write(&fault, "accept-all").unwrap();
    let up = env.rotor(&["up"]).await;
    up.assert_code(11);
    assert!(up.stderr.contains("fails open"), "{}", up.stderr);
    // rotor never took a Ready pod out by itself: the same pods still serve.
    assert_eq!(ready_analytics().await, before);
    // The cause is fixed: `up` alone replaces them with proven pods; the fleet rotates again.
    std::fs::write(&fault, "").unwrap();
    env.rotor(&["up"]).await.assert_code(0);
    let after = ready_analytics().await;
    assert_eq!(after.len(), 2);
    env.rotor(&["check"]).await.assert_code(0);
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    env.finish().await;
}
