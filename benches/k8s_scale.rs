//! Benchmark: a full rotation (S0→S5) of 10, 100 and 1,000 Kubernetes consumers on the lab, at
//! the same concurrency budget, in one run. Each consumer is a one-replica Deployment reading
//! its own Secret; its pod is an in-process responder (`lab/inprocess-responder`) so 1,000 of
//! them fit on two cores. Consumer 0 signs (role `both`, a round trip to consumer 1); the rest
//! validate, so T2 and T4 roll every consumer and T3 rolls one.
//!
//! Prints, per fleet size: rotation wall time, API requests per consumer rollout (a consumer
//! rolled in one wave), peak consumers rolling at once, peak API requests in flight, and the
//! wall-time ratio against the 100-consumer fleet.
//!
//! Before each fleet size it also measures the lab's own floor: the same rollouts driven with
//! one merge patch per workload and one watch, no rotor (no Secret writes, pod lists, probes or
//! proofs), so rotor's share of the wall time can be told from the simulated cluster's.
//!
//! Run: `cargo bench --bench k8s_scale` (options: `-- --budget 64 --sizes 10,100,1000`).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rotor::cluster::Cluster;
use rotor::engine::journal::Mode;
use rotor::engine::{Engine, RunOptions};
use rotor::events::{Event, EventSink};
use rotor_lab::{INPROCESS_IMAGE, Lab, LabHandle, LabOptions, Topology};

const NS: &str = "bench";

/// Counts consumers rolling at once.
#[derive(Default)]
struct Rolling {
    now: AtomicUsize,
    peak: AtomicUsize,
    rollouts: AtomicUsize,
}

impl EventSink for Rolling {
    fn emit(&self, ev: &Event) {
        match ev {
            Event::RolloutStarted { .. } => {
                self.rollouts.fetch_add(1, Ordering::Relaxed);
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(n, Ordering::SeqCst);
            }
            Event::RolloutFinished { .. } => {
                self.now.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

fn topology(n: usize) -> String {
    let mut y = format!(
        "namespace: {NS}\nnodes:\n  - name: lab-node-1\ndrain: 0s\nobjects:\n  - apiVersion: v1\n    kind: Namespace\n    metadata: {{name: {NS}}}\n"
    );
    for i in 0..n {
        let peer = if i == 0 {
            r#", "--peer", "svc-1=header""#
        } else {
            ""
        };
        write!(
            y,
            r#"  - apiVersion: v1
    kind: Secret
    metadata: {{name: svc-{i}-secrets, namespace: {NS}}}
    stringData: {{SERVICE_SECRET: bench-placeholder-not-a-secret-0123456789abcdef}}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: svc-{i}, namespace: {NS}}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: svc-{i}}}}}
      template:
        metadata: {{labels: {{app: svc-{i}}}}}
        spec:
          containers:
            - name: svc
              image: {INPROCESS_IMAGE}
              args: ["--name", "svc-{i}"{peer}]
              ports: [{{containerPort: 8080}}]
              readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
              env:
                - name: SERVICE_SECRET
                  valueFrom: {{secretKeyRef: {{name: svc-{i}-secrets, key: SERVICE_SECRET}}}}
                - name: SERVICE_SECRET_PREVIOUS
                  valueFrom: {{secretKeyRef: {{name: svc-{i}-secrets, key: SERVICE_SECRET_PREVIOUS, optional: true}}}}
"#
        )
        .expect("write to string");
    }
    y
}

fn playbook(n: usize, budget: usize) -> String {
    let mut y = format!(
        "secret: service-secret\nenvironment: test\ngenerate: {{length: 32, alphabet: base64url}}\nconcurrency: {budget}\ncluster: {{namespace: {NS}, lock: lease, journal: configmap}}\nstore: {{kind: kubernetes, name: service-secret-store}}\ntimings: {{rollout_timeout: 10m, readiness_timeout: 2m, soak: 0s, grace: 0s, retention: 0s, probe_timeout: 30s}}\nconsumers:\n"
    );
    for i in 0..n {
        let (role, proof) = if i == 0 {
            (
                "both",
                "\n    probes: [{type: header, path: /api/ping, header: X-Service-Secret}]\n    roundtrips: [{to: svc-1, path: \"/relay/svc-1?target={target}\"}]",
            )
        } else {
            (
                "validator",
                "\n    probes: [{type: header, path: /api/ping, header: X-Service-Secret}]",
            )
        };
        write!(
            y,
            "  - name: svc-{i}\n    role: {role}\n    kind: kubernetes\n    workload: {{kind: Deployment, name: svc-{i}}}\n    secret: svc-{i}-secrets\n    slots: {{primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}}\n    fingerprints_path: /fingerprints{proof}\n"
        )
        .expect("write to string");
    }
    y
}

struct Figures {
    n: usize,
    seconds: f64,
    rollouts: usize,
    requests: u64,
    peak_rolling: usize,
    peak_in_flight: u64,
    /// CPU seconds (user + system) rotor's threads used during the rotation.
    rotor_cpu: f64,
    /// CPU seconds the lab's threads (API server, controller, kubelet, pods) used.
    lab_cpu: f64,
}

/// User + system CPU seconds per thread of this process, by thread id, with the thread's
/// name (`/proc/self/task/*/stat`, clock ticks of 10 ms). The lab and rotor run on runtimes
/// whose threads are named apart, so their CPU can be told apart.
fn thread_cpu() -> BTreeMap<u64, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
        let cpu = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64;
        out.insert(tid, (name, cpu / 100.0));
    }
    out
}

/// CPU seconds used between two [`thread_cpu`] snapshots by threads whose name starts with
/// `prefix`.
fn cpu_between(
    before: &BTreeMap<u64, (String, f64)>,
    after: &BTreeMap<u64, (String, f64)>,
    prefix: &str,
) -> f64 {
    after
        .iter()
        .filter(|(_, (name, _))| name.starts_with(prefix))
        .map(|(tid, (_, c))| c - before.get(tid).map_or(0.0, |(_, b)| *b))
        .sum()
}

/// Runtimes whose worker and blocking threads never idle out during a run, so per-thread
/// CPU accounting sees all of their work.
fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("runtime")
}

/// A lab of `n` workloads on `lab_rt`, in a scratch directory kept while the guard lives.
fn start_lab(lab_rt: &tokio::runtime::Runtime, n: usize) -> (tempfile::TempDir, LabHandle) {
    let dir = tempfile::Builder::new()
        .prefix("rotor-scale-")
        .tempdir()
        .expect("tempdir");
    let topo = Topology::parse(&topology(n), Path::new("<bench>")).expect("topology");
    let lab = lab_rt
        .block_on(Lab::start(LabOptions::new(topo, dir.path().join("lab"))))
        .expect("lab");
    (dir, lab)
}

/// Runs `f` with a client of `lab` on rotor's runtime, from a thread named `rotor-…` so its
/// CPU counts as rotor's.
fn on_rotor<T, F, Fut>(rotor_rt: &tokio::runtime::Runtime, lab: &LabHandle, f: F) -> T
where
    T: Send,
    F: FnOnce(Cluster) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    let kubeconfig = lab.kubeconfig_path().to_path_buf();
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("rotor-main".into())
            .spawn_scoped(scope, || {
                rotor_rt.block_on(async move {
                    let cluster = Cluster::from_kubeconfig_file(&kubeconfig, Some("rotor-lab"), NS)
                        .await
                        .expect("cluster");
                    f(cluster).await
                })
            })
            .expect("thread")
            .join()
            .expect("rotor thread")
    })
}

/// One fleet size: the lab (API server, controller, kubelet and the pods) on `lab_rt`, rotor
/// (engine, kube client, probes) on `rotor_rt`.
fn run(
    lab_rt: &tokio::runtime::Runtime,
    rotor_rt: &tokio::runtime::Runtime,
    n: usize,
    budget: usize,
) -> Figures {
    let (dir, lab) = start_lab(lab_rt, n);
    let pb =
        rotor::playbook::load_str(&playbook(n, budget), "<bench>", dir.path()).expect("playbook");
    let rolling = Arc::new(Rolling::default());
    let sink = rolling.clone();
    let before = lab.stats();
    // Driven from a thread named like rotor's runtime, so the engine's own polling counts as
    // rotor's CPU.
    let (report, seconds, cpu_before) = on_rotor(rotor_rt, &lab, async |cluster: Cluster| {
        let setup = Engine::open_with(
            pb.clone(),
            Arc::new(rotor::events::NullSink),
            Some(&cluster),
        )
        .expect("engine");
        setup.init().await.expect("init");
        setup.up().await.expect("up");
        let engine = Engine::open_with(pb, sink, Some(&cluster)).expect("engine");
        let cpu_before = thread_cpu();
        let started = Instant::now();
        let opts = RunOptions {
            mode: Mode::Operator,
            yes: true,
            ..RunOptions::default()
        };
        let report = engine.rotate(&opts).await.expect("rotation");
        (report, started.elapsed().as_secs_f64(), cpu_before)
    });
    let cpu_after = thread_cpu();
    let after = lab.stats();
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{:?} {:.2}s", s.transition, s.seconds))
        .collect();
    println!("  {n} consumers: {}", stages.join(", "));
    assert_eq!(format!("{:?}", report.state), "S5");
    lab_rt.block_on(lab.shutdown());
    Figures {
        n,
        seconds,
        rollouts: rolling.rollouts.load(Ordering::Relaxed),
        requests: after.total - before.total,
        peak_rolling: rolling.peak.load(Ordering::SeqCst),
        // The lab's gauge is cumulative over its life; setup runs at the same budget.
        peak_in_flight: after.peak_in_flight,
        rotor_cpu: cpu_between(&cpu_before, &cpu_after, "rotor"),
        lab_cpu: cpu_between(&cpu_before, &cpu_after, "lab"),
    }
}

/// The lab's own floor for n workloads: the same 2,001 rollouts as a rotation (two waves of
/// all n, one of a single workload) with no rotor at all: one merge patch per workload, one
/// watch on the Deployments to see them finish. No Secret writes, pod lists, probes or proofs.
fn lab_floor(
    lab_rt: &tokio::runtime::Runtime,
    rotor_rt: &tokio::runtime::Runtime,
    n: usize,
    budget: usize,
) -> f64 {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
    let (_dir, lab) = start_lab(lab_rt, n);
    let done = |d: &Deployment, generation: i64| {
        let st = d.status.clone().unwrap_or_default();
        st.observed_generation.unwrap_or(0) >= generation
            && st.replicas == Some(1)
            && st.updated_replicas == Some(1)
            && st.ready_replicas == Some(1)
            && st.available_replicas == Some(1)
    };
    let seconds = on_rotor(rotor_rt, &lab, async |cluster: Cluster| {
        let api: Api<Deployment> = Api::namespaced(cluster.client(), NS);
        // Every workload running before the clock starts.
        let all: Vec<usize> = (0..n).collect();
        let wave = async |ids: &[usize], tag: &str| {
            let pp = PatchParams::default();
            let gens: BTreeMap<String, i64> = futures_util::stream::iter(ids.iter().map(
                            |i| {
                                let (api, pp) = (&api, &pp);
                                async move {
                                    let body = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"bench.rotor.dev/wave": tag}}}}});
                                    let d = api
                                        .patch(&format!("svc-{i}"), pp, &Patch::Merge(&body))
                                        .await
                                        .expect("patch");
                                    (format!("svc-{i}"), d.metadata.generation.unwrap_or(0))
                                }
                            },
                        ))
                        .buffer_unordered(budget.max(1))
                        .collect()
                        .await;
            let list = api.list(&ListParams::default()).await.expect("list");
            let mut pending: std::collections::BTreeSet<String> = gens.keys().cloned().collect();
            for d in &list.items {
                let name = d.metadata.name.clone().unwrap_or_default();
                if gens.get(&name).is_some_and(|g| done(d, *g)) {
                    pending.remove(&name);
                }
            }
            let rv = list.metadata.resource_version.unwrap_or_default();
            let mut events = api
                .watch(&WatchParams::default(), &rv)
                .await
                .expect("watch")
                .boxed();
            while !pending.is_empty() {
                match events.try_next().await.expect("watch event") {
                    Some(WatchEvent::Modified(d) | WatchEvent::Added(d)) => {
                        let name = d.metadata.name.clone().unwrap_or_default();
                        if gens.get(&name).is_some_and(|g| done(&d, *g)) {
                            pending.remove(&name);
                        }
                    }
                    Some(_) => {}
                    None => panic!("watch ended with {} pending", pending.len()),
                }
            }
        };
        let started = Instant::now();
        wave(&all, "1").await;
        wave(&all[..1], "2").await;
        wave(&all, "3").await;
        started.elapsed().as_secs_f64()
    });
    lab_rt.block_on(lab.shutdown());
    seconds
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let budget: usize = arg(&args, "--budget", 64);
    let sizes: Vec<usize> = arg(&args, "--sizes", "10,100,1000".to_string())
        .split(',')
        .map(|s| s.trim().parse().expect("--sizes takes numbers"))
        .collect();
    let lab_rt = runtime("lab");
    let rotor_rt = runtime("rotor");
    let mut all = Vec::new();
    let mut floors = Vec::new();
    for &n in &sizes {
        floors.push((n, lab_floor(&lab_rt, &rotor_rt, n, budget)));
        let f = run(&lab_rt, &rotor_rt, n, budget);
        println!(
            "  {n} consumers done in {:.2}s ({} rollouts)",
            f.seconds, f.rollouts
        );
        all.push(f);
    }
    let base = all.iter().find(|f| f.n == 100).map(|f| f.seconds);
    println!(
        "\nthe lab alone, same rollouts (two waves of all, one of one), one patch per workload and one watch, no rotor:"
    );
    for (n, s) in &floors {
        println!(
            "{n:>9} workloads {s:>7.2}s{}",
            base.map(|b| format!("  = {:.2}x the rotation of 100 above", s / b))
                .unwrap_or_default()
        );
    }
    // With a budget of B, a wave of n consumers needs at least ceil(n / B) rollout windows:
    // the ratio a lab with unlimited CPU would show.
    let windows = |n: usize| n.div_ceil(budget.max(1)) as f64;
    println!("\nfull rotation S0→S5 on the lab, concurrency budget {budget} per wave");
    println!(
        "{:>9} {:>9} {:>9} {:>13} {:>9} {:>9} {:>11} {:>11} {:>8} {:>7} {:>8}",
        "consumers",
        "wall (s)",
        "rollouts",
        "API req/roll",
        "peak roll",
        "peak API",
        "rotor CPU s",
        "ms/consumer",
        "lab CPU s",
        "vs 100",
        "floor"
    );
    for f in &all {
        println!(
            "{:>9} {:>9.2} {:>9} {:>13.1} {:>9} {:>9} {:>11.2} {:>11.2} {:>8.1} {:>7} {:>8}",
            f.n,
            f.seconds,
            f.rollouts,
            f.requests as f64 / f.rollouts.max(1) as f64,
            f.peak_rolling,
            f.peak_in_flight,
            f.rotor_cpu,
            1000.0 * f.rotor_cpu / f.n as f64,
            f.lab_cpu,
            base.map(|b| format!("{:.2}x", f.seconds / b))
                .unwrap_or_else(|| "-".into()),
            base.map(|_| format!("{:.2}x", windows(f.n) / windows(100)))
                .unwrap_or_else(|| "-".into()),
        );
    }
}
