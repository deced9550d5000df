//! Benchmark: rotates the demo fleet twice under the same load in one run — once with rotor,
//! once naively (overwrite the value, restart every instance at once, as an update-and-restart
//! controller does) — and prints failed requests for both side by side, plus rotor's
//! orchestration overhead (wall time minus time spent waiting for rollouts, soak and grace).
//!
//! Run: `cargo bench --bench rotation` (options: `-- --workers N --interval 5ms`).
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rotor::demo::{self, load};
use rotor::events::NullSink;
use rotor::secret::SecretValue;
use rotor::store::{self, VersionState};

struct Naive {
    requests: u64,
    failed: u64,
    seconds: f64,
    restarts: usize,
}

async fn naive(workers: usize, interval: Duration, window: Duration) -> Naive {
    let (pb, engine, _tmp) = common::demo_fleet().await;
    let running = load::Load::start(load::paths(&pb), workers, interval);
    // Let the load reach steady state for as long as rotor's T1 would take: a few requests.
    while running.requests() < 50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    // Overwrite: the new value replaces the old one in the store, the old one is destroyed.
    let st = store::open(&pb, None).expect("store");
    let snap = st.snapshot().await.expect("snapshot");
    let old = snap.primary.clone().expect("primary");
    let value = SecretValue::generate(pb.generate.alphabet, pb.generate.length).expect("generate");
    let v = st.add_version(&value).await.expect("add");
    st.set_slots(&v.id, None).await.expect("slots");
    st.set_state(&old, VersionState::Destroyed)
        .await
        .expect("destroy");
    // Restart every instance of every consumer at once.
    let slots = rotor::consumer::Slots::new(value, None);
    let mut restarts = 0;
    let stops = engine.consumers().iter().map(|c| c.stop());
    for n in futures_util::future::join_all(stops).await {
        restarts += n.expect("stop");
    }
    let starts = engine
        .consumers()
        .iter()
        .map(|c| c.start(&slots, &rotor::consumer::Ungated, &NullSink));
    for r in futures_util::future::join_all(starts).await {
        r.expect("start");
    }
    let seconds = started.elapsed().as_secs_f64();
    // Observe for as long as rotor's rotation took, so both columns see the same load window.
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let report = running.stop().await;
    let _ = engine.down().await;
    Naive {
        requests: report.requests,
        failed: report.failed_requests,
        seconds,
        restarts,
    }
}

fn main() {
    let common::Opts { workers, interval } = common::setup();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (pb, _dir, _tmp) = common::demo_playbook();
        let (r, err) = demo::run(pb, None, Arc::new(NullSink), workers, interval)
            .await
            .expect("demo run");
        if let Some(e) = err {
            println!("rotor run failed: {e}");
        }
        let n = naive(workers, interval, Duration::from_secs_f64(r.rotation_seconds)).await;
        let restarts: usize = r.restarts.values().sum();
        println!("rotation of the demo fleet (3 consumers × 2 instances), {workers} workers per path, {interval:?} between requests");
        println!("{:<34} {:>12} {:>12}", "", "rotor", "naive");
        println!("{:<34} {:>12} {:>12}", "requests", r.requests, n.requests);
        println!("{:<34} {:>12} {:>12}", "failed requests", r.failed_requests, n.failed);
        println!(
            "{:<34} {:>11.2}% {:>11.2}%",
            "failure rate",
            100.0 * r.failed_requests as f64 / r.requests.max(1) as f64,
            100.0 * n.failed as f64 / n.requests.max(1) as f64
        );
        println!("{:<34} {:>12} {:>12}", "instance restarts", restarts, n.restarts);
        println!("{:<34} {:>12.2} {:>12.2}", "wall time of the change (s)", r.rotation_seconds, n.seconds);
        println!("{:<34} {:>12.2} {:>12.2}", "load window (s)", r.rotation_seconds, r.rotation_seconds.max(n.seconds));
        println!("{:<34} {:>12.2} {:>12}", "waiting: rollouts+soak+grace (s)", r.waited_seconds, "-");
        println!(
            "{:<34} {:>12.3} {:>12}",
            "orchestration overhead (s)", r.orchestration_overhead_seconds, "-"
        );
        for s in &r.stages {
            println!("  rotor {:?} {}: {:.2}s", s.transition, s.direction, s.seconds);
        }
    });
}
