//! Benchmark: a soak. N consecutive rotations of the demo fleet under continuous load, each run as
//! its own `rotor rotate --yes` process (as a scheduled job runs it). After every rotation it
//! prints, against N:
//!
//! - failed requests so far;
//! - the state directory's files and bytes;
//! - the store file's bytes and version records;
//! - rotor's peak RSS, fds and threads during that rotation (sampled from `/proc`);
//! - the consumers' total RSS and fds, and how many instances each consumer runs.
//!
//! The target: everything flat, except what the retention settings allow to grow up to their
//! bounds.
//!
//! Run: `cargo bench --bench soak` (options: `-- --rotations 50 --keep-history 10 --keep-logs 3
//! --keep-destroyed 10 --keep-audit-size 64KiB --workers 2 --interval 5ms`).
#![allow(clippy::print_stdout)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::arg;
use rotor::demo::load;

/// Files and bytes under `dir`.
fn du(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// `(rss KiB, fds, threads)` of process `pid`, from `/proc`.
fn usage(pid: u32) -> Option<(u64, usize, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((field("VmRSS:")?, fds, field("Threads:")? as usize))
}

/// Runs `rotor <args>` to the end, sampling its RSS, fds and threads; its exit code and peaks.
fn run_sampled(args: &[&str], dir: &Path) -> (Option<i32>, (u64, usize, usize)) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rotor"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rotor starts");
    let mut peak = (0, 0, 0);
    loop {
        if let Some((rss, fds, threads)) = usage(child.id()) {
            peak = (peak.0.max(rss), peak.1.max(fds), peak.2.max(threads));
        }
        match child.try_wait().expect("wait") {
            Some(status) => return (status.code(), peak),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn main() {
    let common::Opts { workers, interval } = common::setup();
    let rotations: usize = arg("--rotations")
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (_, dir, _guard) = common::demo_playbook();
        let playbook = dir.join("soak.yaml");
        // Retention small enough that 50 rotations reach every bound (`keep`, docs/playbook.md).
        let history: usize = arg("--keep-history")
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let logs: usize = arg("--keep-logs").and_then(|n| n.parse().ok()).unwrap_or(3);
        let destroyed: usize = arg("--keep-destroyed")
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let audit = arg("--keep-audit-size").unwrap_or_else(|| "64KiB".into());
        let keep = format!(
            "keep:\n  history: {history}\n  instance_logs: {logs}\n  destroyed_versions: {destroyed}\n  audit_log_size: {audit}\n  audit_logs: 2\n"
        );
        println!("{}", keep.replace('\n', " "));
        std::fs::write(&playbook, format!("{}\n{keep}", rotor::demo::LOCAL_DEMO))
            .expect("write playbook");
        // The playbook every `rotor` process of the soak reads, as it reads it.
        let pb = rotor::playbook::load_file(&playbook).expect("the soak playbook loads");
        let pbs = playbook.to_str().expect("utf-8 path").to_string();
        let state_dir = pb.state_dir.clone();
        let store_file = match &pb.store {
            rotor::playbook::StoreSpec::Local { path } => path.clone(),
            other => panic!("the soak runs the local demo store, not {other:?}"),
        };
        let rotor = |args: &[&str]| {
            let mut all: Vec<&str> = args.to_vec();
            all.push(&pbs);
            run_sampled(&all, &dir)
        };
        assert_eq!(rotor(&["init"]).0, Some(0), "init");
        assert_eq!(rotor(&["up"]).0, Some(0), "up");
        let running = load::Load::start(load::paths(&pb), workers, interval);
        println!(
            "{:>3} {:>6} {:>8} {:>6} {:>11} {:>8} {:>6} {:>9} {:>5} {:>5} {:>10} {:>6} {:>9}",
            "N",
            "secs",
            "failed",
            "state",
            "state_bytes",
            "store_b",
            "vers",
            "rotor_kib",
            "fds",
            "thr",
            "fleet_kib",
            "f_fds",
            "instances"
        );
        let started = Instant::now();
        for n in 1..=rotations {
            let t = Instant::now();
            let (code, (rss, fds, threads)) = rotor(&["rotate", "--yes"]);
            assert_eq!(code, Some(0), "rotation {n} failed");
            let (files, bytes) = du(&state_dir);
            let store_bytes = std::fs::metadata(&store_file).map(|m| m.len()).unwrap_or(0);
            let versions = std::fs::read(&store_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["versions"].as_array().map(Vec::len))
                .unwrap_or(0);
            // The fleet: every instance `status` lists, by pid.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotor"))
                .args(["--output", "json", "status", &pbs])
                .current_dir(&dir)
                .output()
                .expect("status");
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            let (mut fleet_rss, mut fleet_fds) = (0, 0);
            for i in status["instances"].as_array().into_iter().flatten() {
                *per
                    .entry(i["consumer"].as_str().unwrap_or("-").to_string())
                    .or_default() += 1;
                if let Some((r, f, _)) = i["pid"].as_u64().and_then(|p| usage(p as u32)) {
                    fleet_rss += r;
                    fleet_fds += f;
                }
            }
            let instances: Vec<String> = per.values().map(|c| c.to_string()).collect();
            println!(
                "{n:>3} {:>6.1} {:>8} {files:>6} {bytes:>11} {store_bytes:>8} {versions:>6} {rss:>9} {fds:>5} {threads:>5} {fleet_rss:>10} {fleet_fds:>6} {:>9}",
                t.elapsed().as_secs_f64(),
                running.failed(),
                instances.join("/")
            );
        }
        let report = running.stop().await;
        let _ = rotor(&["down"]);
        println!(
            "\n{rotations} rotations in {:.0}s: {} requests, {} failed",
            started.elapsed().as_secs_f64(),
            report.requests,
            report.failed_requests
        );
    });
}
