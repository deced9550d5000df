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
use crate::transport::Transport;

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
    /// How the signer is reached (its `tls`), or why its TLS files cannot be used: then every
    /// request of the path fails with that reason, never falls back to plain HTTP.
    pub transport: Result<Transport, String>,
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
        for r in c.roundtrips.iter().filter_map(|r| r.http()) {
            out.push(LoadPath {
                name: format!("{}→{}", c.name, r.to),
                signer_endpoints: endpoints_file(pb, &c.name),
                target_endpoints: endpoints_file(pb, &r.to),
                path: r.path.clone(),
                expect: r.expect,
                transport: Transport::for_consumer(&c.name, c.tls.as_ref())
                    .map_err(|e| e.to_string()),
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
        let mut tasks = Vec::new();
        for p in paths {
            for w in 0..workers {
                let (p, stop, stats) = (p.clone(), stop.clone(), stats.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = w;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let result = one(&p, n).await;
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

/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of a failed answer kept to describe it.
const DESCRIBED: usize = 200;

async fn one(p: &LoadPath, n: usize) -> Result<(), String> {
    let transport = p.transport.as_ref().map_err(|e| e.clone())?;
    let signers = read_endpoints(&p.signer_endpoints);
    let targets = read_endpoints(&p.target_endpoints);
    if signers.is_empty() || targets.is_empty() {
        return Err("no published instance".into());
    }
    let signer = &signers[n % signers.len()];
    let target = &targets[(n / signers.len()) % targets.len()];
    let addr: std::net::SocketAddr = signer
        .parse()
        .map_err(|_| format!("{signer}: not an address"))?;
    let at = transport.at(addr);
    let url = at.url(&p.path.replace("{target}", target));
    match at.client().get(&url).timeout(REQUEST_TIMEOUT).send().await {
        Ok(r) if r.status().as_u16() == p.expect => Ok(()),
        Ok(mut r) => {
            let status = r.status().as_u16();
            // The peer's answer, read only as far as it is described.
            let mut body = Vec::new();
            while body.len() < DESCRIBED {
                match r.chunk().await {
                    Ok(Some(c)) => body.extend_from_slice(&c),
                    _ => break,
                }
            }
            let body: String = String::from_utf8_lossy(&body)
                .chars()
                .take(DESCRIBED)
                .collect();
            Err(format!("{signer} → {target}: status {status}: {body}"))
        }
        Err(e) => Err(format!("{signer} → {target}: {e}")),
    }
}
