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
//! Run: `cargo bench --bench k8s_scale` (options: `-- --budget 64 --sizes 10,100,1000`).
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rotor::cluster::Cluster;
use rotor::engine::journal::Mode;
use rotor::engine::{Engine, RunOptions};
use rotor::events::{Event, EventSink};
use rotor::lab::{INPROCESS_IMAGE, Lab, LabOptions, Topology};

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
}

async fn run(n: usize, budget: usize) -> Figures {
    let dir = tempfile::Builder::new()
        .prefix("rotor-scale-")
        .tempdir()
        .expect("tempdir");
    let topo = Topology::parse(&topology(n), Path::new("<bench>")).expect("topology");
    let lab = Lab::start(LabOptions::new(topo, dir.path().join("lab")))
        .await
        .expect("lab");
    let pb =
        rotor::playbook::load_str(&playbook(n, budget), "<bench>", dir.path()).expect("playbook");
    let cluster = Cluster::from_kubeconfig_file(lab.kubeconfig_path(), Some("rotor-lab"), NS)
        .await
        .expect("cluster");
    let setup = Engine::open_with(
        pb.clone(),
        Arc::new(rotor::events::NullSink),
        Some(&cluster),
    )
    .expect("engine");
    setup.init().await.expect("init");
    setup.up().await.expect("up");
    let rolling = Arc::new(Rolling::default());
    let engine = Engine::open_with(pb, rolling.clone(), Some(&cluster)).expect("engine");
    let before = lab.stats();
    let started = Instant::now();
    let opts = RunOptions {
        mode: Mode::Operator,
        yes: true,
        ..RunOptions::default()
    };
    let report = engine.rotate(&opts).await.expect("rotation");
    let seconds = started.elapsed().as_secs_f64();
    let after = lab.stats();
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{:?} {:.2}s", s.transition, s.seconds))
        .collect();
    println!("  {n} consumers: {}", stages.join(", "));
    assert_eq!(format!("{:?}", report.state), "S5");
    lab.shutdown().await;
    Figures {
        n,
        seconds,
        rollouts: rolling.rollouts.load(Ordering::Relaxed),
        requests: after.total - before.total,
        peak_rolling: rolling.peak.load(Ordering::SeqCst),
        // The lab's gauge is cumulative over its life; setup runs at the same budget.
        peak_in_flight: after.peak_in_flight,
    }
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = Vec::new();
    for &n in &sizes {
        let f = rt.block_on(run(n, budget));
        println!(
            "  {n} consumers done in {:.2}s ({} rollouts)",
            f.seconds, f.rollouts
        );
        all.push(f);
    }
    let base = all.iter().find(|f| f.n == 100).map(|f| f.seconds);
    println!("\nfull rotation S0→S5 on the lab, concurrency budget {budget} per wave");
    println!(
        "{:>10} {:>10} {:>9} {:>22} {:>13} {:>15} {:>10}",
        "consumers",
        "wall (s)",
        "rollouts",
        "API req per rollout",
        "peak rolling",
        "peak in flight",
        "vs 100"
    );
    for f in &all {
        println!(
            "{:>10} {:>10.2} {:>9} {:>22.1} {:>13} {:>15} {:>10}",
            f.n,
            f.seconds,
            f.rollouts,
            f.requests as f64 / f.rollouts.max(1) as f64,
            f.peak_rolling,
            f.peak_in_flight,
            base.map(|b| format!("{:.2}x", f.seconds / b))
                .unwrap_or_else(|| "-".into()),
        );
    }
}
