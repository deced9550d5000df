//! Benchmark: time to revoke of `rotor rekey --emergency` against the floor of three rollout
//! waves, on the demo fleet plus a signer-only consumer (4 consumers × 2 instances) under load,
//! in one run; then a hard cut of the same fleet.
//!
//! 1. Starts the fleet and a load on every signer→validator path.
//! 2. Measures single rollouts: every consumer rolled once, in playbook order and at the
//!    playbook's concurrency, exactly as a wave of the engine rolls them (each onto a new
//!    primary, both values accepted everywhere, so every consumer restarts and no request
//!    fails), and takes the mean of four.
//! 3. Runs the emergency rekey and prints its time to revoke (start → the old value rejected
//!    by every validator instance), the ratio to 3 × a single rollout, the failed requests, and
//!    each consumer's rollouts against the protocol's minimum (validator 2, signer 1, both 3).
//!
//! Run: `cargo bench --bench emergency` (options: `-- --workers N --interval 5ms`).
#![allow(clippy::print_stdout)]

mod common;

use std::time::Instant;

use futures_util::StreamExt as _;
use rotor::consumer::Slots;
use rotor::demo::load;
use rotor::engine::journal::Mode;
use rotor::engine::{Engine, RunOptions};
use rotor::events::NullSink;
use rotor::protocol::Role;
use rotor::secret::SecretValue;

/// Rolls every consumer onto `slots` as one wave of the engine would (playbook order, the
/// playbook's concurrency); returns the wave's wall time and each consumer's.
async fn wave(engine: &Engine, slots: &Slots) -> (f64, Vec<f64>) {
    let started = Instant::now();
    let jobs = engine.consumers().iter().map(|c| async move {
        let t = Instant::now();
        c.apply(slots, &rotor::consumer::Ungated, &NullSink)
            .await
            .expect("rollout");
        t.elapsed().as_secs_f64()
    });
    let each: Vec<f64> = futures_util::stream::iter(jobs)
        .buffered(engine.playbook().concurrency.max(1))
        .collect()
        .await;
    (started.elapsed().as_secs_f64(), each)
}

/// A signer-only consumer beside the demo fleet, so every role's restarts are measured.
const SIGNER: &str = r#"  - name: reporter
    role: signer
    kind: process
    instances: 2
    command: ["{rotor}", "demo-service", "--name", "reporter", "--secret-name", "service-secret",
              "--primary-env", "SERVICE_SECRET", "--peer", "auth=header"]
    slots:
      primary: SERVICE_SECRET
    fingerprints_path: /fingerprints
    roundtrips:
      - to: auth
        path: "/relay/auth?target={target}"
"#;

/// One line of the figures: a label and a right-aligned value.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("{label:<44} {value:>10}");
}

fn secs(s: f64) -> String {
    format!("{s:.2}")
}

fn times(x: f64) -> String {
    format!("{x:.2}x")
}

fn of(part: u64, whole: u64) -> String {
    format!("{part} / {whole}")
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

fn minimum(role: Role) -> usize {
    match role {
        Role::Validator => 2,
        Role::Signer => 1,
        Role::Both => 3,
    }
}

fn main() {
    let common::Opts { workers, interval } = common::setup();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (pb, engine, _tmp) = common::demo_fleet_with(SIGNER).await;
        let running = load::Load::start(load::paths(&pb), workers, interval);
        let snap = engine.store().snapshot().await.expect("snapshot");
        let a = engine
            .store()
            .read_value(snap.primary.as_deref().expect("primary"))
            .await
            .expect("read");
        // Single rollouts in which every consumer restarts: widen to {A, X} first (validators
        // accept X before anyone sends it), then swap which one is sent, four times (every
        // consumer holds a new primary each time, and both values stay accepted everywhere),
        // then narrow back to A. Only the four swaps are measured.
        let extra = SecretValue::generate(pb.generate.alphabet, pb.generate.length).expect("gen");
        let mut singles = Vec::new();
        let mut per_consumer = vec![0.0; engine.consumers().len()];
        wave(&engine, &Slots::new(a.clone(), Some(extra.clone()))).await;
        for i in 0..4 {
            let slots = if i % 2 == 0 {
                Slots::new(extra.clone(), Some(a.clone()))
            } else {
                Slots::new(a.clone(), Some(extra.clone()))
            };
            let (t, each) = wave(&engine, &slots).await;
            singles.push(t);
            for (sum, e) in per_consumer.iter_mut().zip(each) {
                *sum += e / 4.0;
            }
        }
        wave(&engine, &Slots::new(a.clone(), None)).await;
        let single = singles.iter().sum::<f64>() / singles.len() as f64;
        // The protocol's own floor at concurrency 1: T2 and T4 roll the validating consumers,
        // T3 the sending ones, each one after the other.
        let protocol_floor: f64 = pb
            .consumers
            .iter()
            .zip(&per_consumer)
            .map(|(c, t)| {
                let waves = usize::from(c.role.validates()) * 2 + usize::from(c.role.signs());
                waves as f64 * t
            })
            .sum();
        let opts = RunOptions {
            mode: Mode::Emergency,
            yes: true,
            reason: "benchmark".into(),
            ..RunOptions::default()
        };
        let report = engine.rekey(&opts).await.expect("rekey");
        let load = running.stop().await;
        // Then a hard cut of the same fleet, under a fresh load: one wave, failures accepted.
        let running = load::Load::start(load::paths(&pb), workers, interval);
        let cut = engine
            .rekey(&RunOptions {
                hard_cut: true,
                ..opts.clone()
            })
            .await
            .expect("hard cut");
        let cut_load = running.stop().await;
        let _ = engine.down().await;
        let revoke = report.time_to_revoke_seconds.expect("time to revoke");
        println!(
            "emergency rekey of the demo fleet plus a signer-only consumer (4 consumers × 2 instances, concurrency {}), {workers} workers per path, {interval:?} between requests",
            pb.concurrency
        );
        println!(
            "single rollout (every consumer once, mean of {}): {:.2}s  [{}]",
            singles.len(),
            single,
            singles
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        row("", "seconds");
        row("time to revoke (rekey --emergency)", secs(revoke));
        row("3 × single rollout (the floor)", secs(3.0 * single));
        row("ratio (target ≤ 1.10x)", times(revoke / (3.0 * single)));
        row("protocol floor (each wave's own consumers)", secs(protocol_floor));
        row("ratio to the protocol floor", times(revoke / protocol_floor));
        row("rekey wall time (T1–T5)", secs(report.wall_seconds));
        row("rollout waves", report.waves);
        row(
            "failed requests during the rekey",
            of(load.failed_requests, load.requests),
        );
        println!("{:<12} {:<10} {:>9} {:>9} {:>9}", "consumer", "role", "restarts", "rollouts", "minimum");
        for c in &pb.consumers {
            let instances = match &c.kind {
                rotor::playbook::ConsumerKind::Process(p) => p.instances,
                _ => 1,
            };
            let restarts = report.restarts.get(&c.name).copied().unwrap_or(0);
            println!(
                "{:<12} {:<10} {:>9} {:>9} {:>9}",
                c.name,
                c.role.to_string(),
                restarts,
                restarts / instances.max(1),
                minimum(c.role)
            );
        }
        for s in &report.stages {
            println!("  {:?} {}: {:.2}s", s.transition, s.direction, s.seconds);
        }
        let sample = cut.hard_cut.clone().expect("a hard cut reports its sample");
        println!();
        row("rekey --emergency --hard-cut", "");
        let cut_revoke = cut.time_to_revoke_seconds.expect("time to revoke");
        row("time to revoke", secs(cut_revoke));
        row("ratio to the three-wave rekey above", times(cut_revoke / revoke));
        row("rollout waves", cut.waves);
        row("the wave (s)", secs(sample.window_seconds));
        row(
            "failed requests (the load's own count)",
            of(cut_load.failed_requests, cut_load.requests),
        );
        row(
            "failed round trips (rotor's report)",
            of(sample.failed_round_trips, sample.sampled_round_trips),
        );
        row(
            "failure rate: load / rotor's sample",
            percent(cut_load.failed_requests, cut_load.requests),
        );
        row("", percent(sample.failed_round_trips, sample.sampled_round_trips));
    });
}
