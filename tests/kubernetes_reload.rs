//! `pickup: reload` on Kubernetes: the demo fleet's Deployments mount their Secrets as volumes
//! (the lab refreshes them after its sync delay, as the kubelet does) and re-read the files;
//! rotor rotates them without restarting a pod, waiting `sync_period` after each Secret write
//! before it proves, and rolls back a reload that pods do not pick up in time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::kubernetes::{K8sEnv, stages, test_yaml};

const SECRETS: [&str; 3] = ["auth-secrets", "backend-secrets", "analytics-secrets"];

/// A shipped file under playbooks/.
fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("playbooks")
            .join(name),
    )
    .unwrap()
}

/// `playbooks/k8s-reload.yaml` (every consumer `pickup: reload`) with test timings and the
/// given `sync_period`.
fn reload_yaml(sync_period: &str) -> String {
    test_yaml(&shipped("k8s-reload.yaml"), |y| {
        let from = "sync_period: 3s ";
        assert_eq!(y.matches(from).count(), SECRETS.len());
        y.replace(from, &format!("sync_period: {sync_period} "))
    })
}

/// `playbooks/lab-reload.topology.yaml`: every Deployment mounts its own Secret at
/// /etc/rotor/secrets (files 0400) and reads its values from there (`ROTOR_SECRETS_DIR`), not
/// from its environment; the lab refreshes running pods' volumes `delay` after a change.
fn mount_secrets(topo: &mut rotor_lab::Topology, delay: Duration) {
    *topo = rotor_lab::Topology::parse(
        &shipped("lab-reload.topology.yaml"),
        Path::new("playbooks/lab-reload.topology.yaml"),
    )
    .unwrap();
    assert_eq!(topo.secret_sync_delay, Some(Duration::from_secs(2)));
    topo.secret_sync_delay = Some(delay);
    let deployments: Vec<&Value> = topo
        .objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 3);
    for d in deployments {
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 0o400);
        let env = spec["containers"][0]["env"].as_array().unwrap();
        assert!(
            env.iter().all(|e| e.get("valueFrom").is_none()),
            "no value from the environment"
        );
    }
}

/// Every pod of the demo fleet: name → (uid, restart count).
async fn fleet(env: &K8sEnv) -> BTreeMap<String, (String, i32)> {
    let pods: Vec<Pod> = env
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c[0].restart_count);
            (
                p.metadata.name.clone().unwrap(),
                (p.metadata.uid.clone().unwrap(), restarts),
            )
        })
        .collect()
}

/// The data of the demo's consumer Secrets.
async fn secret_data(env: &K8sEnv) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for s in SECRETS {
        let secret: Secret = env.api().get(s).await.unwrap();
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        out.insert(s.to_string(), data);
    }
    out
}

type Writes = Arc<Mutex<Vec<(String, SystemTime)>>>;

/// Records when the data of each consumer Secret changed (seen through a watch: no earlier
/// than the write), until the task is aborted. The flag is set once the watch has seen every
/// Secret as it is.
fn watch_writes(env: &K8sEnv) -> (Writes, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let ready = Arc::new(AtomicBool::new(false));
    let api: Api<Secret> = env.api();
    let (rec, seen_all) = (writes.clone(), ready.clone());
    let task = tokio::spawn(async move {
        let mut last: BTreeMap<String, Value> = BTreeMap::new();
        let mut rv = "0".to_string();
        loop {
            let wp = WatchParams::default().timeout(290);
            let Ok(stream) = api.watch(&wp, &rv).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                let at = SystemTime::now();
                let s = match ev {
                    WatchEvent::Added(s) | WatchEvent::Modified(s) => s,
                    _ => continue,
                };
                rv = s.metadata.resource_version.clone().unwrap_or(rv);
                let name = s.metadata.name.clone().unwrap();
                if !SECRETS.contains(&name.as_str()) {
                    continue;
                }
                let data = serde_json::to_value(&s.data).unwrap();
                if let Some(prev) = last.insert(name.clone(), data.clone())
                    && prev != data
                {
                    rec.lock().unwrap().push((name, at));
                }
                if last.len() == SECRETS.len() {
                    seen_all.store(true, Ordering::SeqCst);
                }
            }
        }
    });
    (writes, ready, task)
}

/// The audit log's records with when each was written.
fn audit(env: &K8sEnv) -> Vec<(SystemTime, Value)> {
    let text = std::fs::read_to_string(env.playbook().state_dir.join("audit.log")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            let at: jiff::Timestamp = v["at"].as_str().unwrap().parse().unwrap();
            (SystemTime::from(at), v["record"].clone())
        })
        .collect()
}

/// When each proof of consumer `consumer` started, from the audit log (a record is written
/// when the proof ended; `millis` is how long it took).
fn proofs_started(env: &K8sEnv, consumer: &str) -> Vec<SystemTime> {
    audit(env)
        .into_iter()
        .filter(|(_, r)| r["event"] == "instance_gated" && r["consumer"] == consumer)
        .map(|(at, r)| at - Duration::from_secs_f64(r["millis"].as_f64().unwrap() / 1000.0))
        .collect()
}

/// When rotor said it waits for the kubelet's refresh of `secret`, after `since` (written right
/// after the Secret write returned).
fn sync_waits(env: &K8sEnv, secret: &str, since: SystemTime) -> Vec<SystemTime> {
    audit(env)
        .into_iter()
        .filter(|(at, r)| {
            *at >= since
                && r["event"] == "waiting"
                && r["reason"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("sync_period") && t.contains(secret))
        })
        .map(|(at, _)| at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_reload_rotates_mounted_secrets_without_restarting_a_pod() {
    const SYNC: Duration = Duration::from_secs(3);
    let env = K8sEnv::from_topology("k8s-reload.yaml", reload_yaml("3s"), |t, _| {
        // Well below the sync period: a proof that does not wait would come in far too early.
        mount_secrets(t, Duration::from_secs(1))
    })
    .await;
    env.up().await;
    env.rotor(&["check"]).await.assert_code(0);
    let plan = env.rotor(&["plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stdout.contains("sync period 3s") && plan.stdout.contains("pods are not restarted"),
        "{}",
        plan.stdout
    );
    let before = fleet(&env).await;
    assert_eq!(before.len(), 6, "{before:?}");
    assert!(before.values().all(|(_, r)| *r == 0), "{before:?}");
    let (writes, watching, watcher) = watch_writes(&env);
    // The watch has seen every Secret before rotor writes anything.
    crate::common::wait_for("the Secret watch", Duration::from_secs(30), async || {
        watching.load(Ordering::SeqCst)
    })
    .await;

    let load = env.load();
    let rotate_started = SystemTime::now();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    watcher.abort();
    assert_eq!(out.last_json()["report"]["state"], "S5");
    assert_eq!(stages(&out).len(), 5);
    for c in ["auth", "backend", "analytics"] {
        assert_eq!(out.last_json()["report"]["restarts"][c], 0, "{c}");
    }
    // Not one pod was replaced or restarted.
    assert_eq!(fleet(&env).await, before);
    // Every pod holds the new value, read from its files.
    env.rotor(&["check"]).await.assert_code(0);

    // After each write of a consumer's Secret, that consumer's pods were proven no earlier
    // than sync_period later. Measured twice: from rotor's own record of the wait, written as
    // the write returned (250ms of slack for writing it), and from the Secret watch, which
    // sees a write a little after it happened (1s of slack for a busy machine).
    let writes = writes.lock().unwrap().clone();
    let first_proof_after = |proofs: &[SystemTime], t: &SystemTime, what: &str| {
        let next = proofs
            .iter()
            .filter(|p| *p > t)
            .min()
            .unwrap_or_else(|| panic!("no proof after {what}"));
        next.duration_since(*t).unwrap()
    };
    for (secret, consumer) in SECRETS.iter().zip(["auth", "backend", "analytics"]) {
        let seen: Vec<SystemTime> = writes
            .iter()
            .filter(|(s, _)| s == secret)
            .map(|(_, t)| *t)
            .collect();
        let waits = sync_waits(&env, secret, rotate_started);
        assert!(seen.len() >= 2, "{secret} written {} times", seen.len());
        assert_eq!(
            waits.len(),
            seen.len(),
            "one sync wait per write of {secret}"
        );
        let proofs = proofs_started(&env, consumer);
        for (w, slack) in waits
            .iter()
            .map(|w| (w, Duration::from_millis(250)))
            .chain(seen.iter().map(|w| (w, Duration::from_secs(1))))
        {
            let waited = first_proof_after(&proofs, w, secret);
            assert!(
                waited + slack >= SYNC,
                "{consumer} was proven {waited:?} after {secret} was written (sync_period {SYNC:?})"
            );
        }
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_reload_not_picked_up_in_time_rolls_back_to_the_previous_data() {
    // The lab's kubelet refreshes 10s after a write; `up` waits 11s, so it converges. The
    // rollback below writes the previous data back well within 10s of the rotation's write, so
    // the pods never see the new values at all.
    let env = K8sEnv::from_topology("k8s-reload.yaml", reload_yaml("11s"), |t, _| {
        mount_secrets(t, Duration::from_secs(10))
    })
    .await;
    env.up().await;
    let before = fleet(&env).await;
    let data = secret_data(&env).await;
    // Now the playbook says the kubelet refreshes within 1s, and grants 1s more: too short.
    let text = std::fs::read_to_string(env.playbook_path()).unwrap();
    let short = text
        .replace("sync_period: 11s", "sync_period: 1s")
        .replace("readiness_timeout: 20s", "readiness_timeout: 1s");
    assert!(
        short.contains("readiness_timeout: 1s") && short.matches("sync_period: 1s").count() == 3
    );
    std::fs::write(env.playbook_path(), short).unwrap();

    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(3);
    env.assert_no_failures(&report);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("did not pick up the new values of Secret"),
        "{all}"
    );
    let named = before
        .keys()
        .any(|pod| all.contains(&format!("pod {pod} did not pick up")));
    assert!(named, "the error names the pod: {all}");
    // The rollback put the previous data back; no pod restarted.
    assert_eq!(secret_data(&env).await, data);
    assert_eq!(fleet(&env).await, before);
    assert_eq!(env.journal().await["state"], "S0");
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_reload_refuses_a_workload_that_does_not_mount_its_secret() {
    // analytics reads its Secret through env only; backend mounts it with subPath only.
    let env = K8sEnv::from_topology("k8s-reload.yaml", reload_yaml("3s"), |t, _| {
        mount_secrets(t, Duration::from_secs(1));
        for o in t.objects.iter_mut().filter(|o| o["kind"] == "Deployment") {
            let name = o["metadata"]["name"].as_str().unwrap().to_string();
            let spec = &mut o["spec"]["template"]["spec"];
            match name.as_str() {
                "analytics" => {
                    spec["volumes"] = json!([]);
                    spec["containers"][0]["volumeMounts"] = json!([]);
                    spec["containers"][0]["env"] = json!([{"name": "JWT_SECRET_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "analytics-secrets", "key": "JWT_SECRET_KEY"}}}]);
                }
                "backend" => {
                    spec["containers"][0]["volumeMounts"] = json!([{"name": "secrets",
                        "mountPath": "/etc/rotor/secrets/SERVICE_SECRET", "subPath": "SERVICE_SECRET"}]);
                }
                _ => {}
            }
        }
    })
    .await;
    env.rotor(&["init"]).await.assert_code(0);
    let data = secret_data(&env).await;
    for args in [&["plan"][..], &["check"], &["up"], &["rotate", "--yes"]] {
        let out = env.rotor(args).await;
        out.assert_code(2);
        assert!(
            out.stderr.contains(
                "consumer analytics: pickup: reload needs the Secret mounted as a volume: the pod \
                 template of deployment/analytics in namespace demo has no volume of Secret \
                 analytics-secrets"
            ) || out.stderr.contains(
                "consumer backend: pickup: reload needs the Secret mounted as a volume: \
                 deployment/backend in namespace demo mounts Secret backend-secrets with \
                 subPath (container backend at /etc/rotor/secrets/SERVICE_SECRET), a copy the \
                 kubelet never refreshes"
            ),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("help: mount it"), "{}", out.stderr);
    }
    // Nothing was written.
    assert_eq!(secret_data(&env).await, data);
}

#[test]
fn the_role_lets_a_reload_consumer_mark_the_pods_it_proved() {
    let verbs = |yaml: String| {
        let (_dir, _, pb) = crate::common::scratch_playbook("rotor-role-", "k8s.yaml", yaml);
        let rules = rotor::manifests::rules(&pb);
        rules["demo"]
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["pods".to_string()][..]))
            .unwrap()
            .verbs
            .clone()
    };
    assert_eq!(verbs(reload_yaml("3s")), ["list", "patch"]);
    assert_eq!(verbs(test_yaml(rotor::demo::K8S_DEMO, |y| y)), ["list"]);
}
