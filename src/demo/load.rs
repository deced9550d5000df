//! Continuous load through every signer→validator path of a fleet.
//!
//! Owns: worker tasks that, until stopped, ask a signer instance (picked from its consumer's
//! published endpoints) to call a validator instance (picked from the validator's endpoints),
//! and count every request and every failure. It never retries: a failure is a failure. Used by
//! `rotor demo`, the test suite and the benchmark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::playbook::Playbook;

/// One signer→validator path.
#[derive(Debug, Clone)]
pub struct LoadPath {
    /// `backend→auth`.
    pub name: String,
    /// The signer's endpoints file.
    pub signer_endpoints: PathBuf,
    /// The validator's endpoints file.
    pub target_endpoints: PathBuf,
    /// Path template on the signer with `{target}`.
    pub path: String,
    /// Status meaning success.
    pub expect: u16,
}

#[derive(Deserialize)]
struct Endpoints {
    endpoints: Vec<String>,
}

/// Endpoints file of a process consumer.
pub fn endpoints_file(pb: &Playbook, consumer: &str) -> PathBuf {
    pb.state_dir
        .join("fleet")
        .join(consumer)
        .join("endpoints.json")
}

fn read_endpoints(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Endpoints>(&b).ok())
        .map(|e| e.endpoints)
        .unwrap_or_default()
}

/// Every round trip the playbook declares, as a load path.
pub fn paths(pb: &Playbook) -> Vec<LoadPath> {
    let mut out = Vec::new();
    for c in pb.consumers.iter().filter(|c| c.role.signs()) {
        for r in &c.roundtrips {
            out.push(LoadPath {
                name: format!("{}→{}", c.name, r.to),
                signer_endpoints: endpoints_file(pb, &c.name),
                target_endpoints: endpoints_file(pb, &r.to),
                path: r.path.clone(),
                expect: r.expect,
            });
        }
    }
    out
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    failed: AtomicU64,
    per_path: Mutex<BTreeMap<String, (u64, u64)>>,
    failures: Mutex<Vec<String>>,
}

/// What the load saw.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// `(requests, failed)` per path.
    pub per_path: BTreeMap<String, (u64, u64)>,
    /// The first failures, for diagnosis (no values).
    pub first_failures: Vec<String>,
}

/// Running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` tasks per path, each sending one request every `interval`.
    pub fn start(paths: Vec<LoadPath>, workers: usize, interval: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut tasks = Vec::new();
        for p in paths {
            for w in 0..workers {
                let (p, stop, stats, client) =
                    (p.clone(), stop.clone(), stats.clone(), client.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = w;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let result = one(&client, &p, n).await;
                        stats.requests.fetch_add(1, Ordering::Relaxed);
                        let failed = result.is_err();
                        if let Err(detail) = result {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = stats.failures.lock().expect("stats");
                            if f.len() < 20 {
                                f.push(format!("{}: {detail}", p.name));
                            }
                        }
                        let mut pp = stats.per_path.lock().expect("stats");
                        let e = pp.entry(p.name.clone()).or_default();
                        e.0 += 1;
                        e.1 += u64::from(failed);
                    }
                }));
            }
        }
        Load { stop, stats, tasks }
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Stops the workers (each finishes its request in flight) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadReport {
            requests: self.stats.requests.load(Ordering::Relaxed),
            failed_requests: self.stats.failed.load(Ordering::Relaxed),
            per_path: self.stats.per_path.lock().expect("stats").clone(),
            first_failures: self.stats.failures.lock().expect("stats").clone(),
        }
    }
}

async fn one(client: &reqwest::Client, p: &LoadPath, n: usize) -> Result<(), String> {
    let signers = read_endpoints(&p.signer_endpoints);
    let targets = read_endpoints(&p.target_endpoints);
    if signers.is_empty() || targets.is_empty() {
        return Err("no published instance".into());
    }
    let signer = &signers[n % signers.len()];
    let target = &targets[(n / signers.len()) % targets.len()];
    let url = format!("http://{signer}{}", p.path.replace("{target}", target));
    match client.get(&url).send().await {
        Ok(r) if r.status().as_u16() == p.expect => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Err(format!("{signer} → {target}: status {status}: {body}"))
        }
        Err(e) => Err(format!("{signer} → {target}: {e}")),
    }
}
