//! Benchmark: what per-instance gates cost and what they prevent, in one run.
//!
//! 1. The broken-new-instance case: the demo fleet whose analytics instances reject every value
//!    once they hold two (a broken two-key branch; they still answer their health check),
//!    rotated under the same load twice — with gates, and without (instances published after
//!    their health check alone, as before gates; the proofs after each wave still run). Failed
//!    requests side by side.
//! 2. The time a gate adds per instance on the healthy demo fleet (p50, p90, max over every
//!    gate of a full rotation, canary included), and the rotation's wall time with and without
//!    gates.
//!
//! Run: `cargo bench --bench gates` (options: `-- --workers N --interval 5ms --rounds N`).
#![allow(clippy::print_stdout)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor::demo::{self, load};
use rotor::engine::RunOptions;
use rotor::events::{Event, EventSink};

/// Keeps how long every passed gate took.
#[derive(Default)]
struct Gates(Mutex<Vec<f64>>);

impl EventSink for Gates {
    fn emit(&self, event: &Event) {
        if let Event::InstanceGated {
            passed: true,
            millis,
            ..
        } = event
        {
            self.0.lock().expect("gates").push(*millis);
        }
    }
}

/// The demo playbook with analytics reading its fault from `faults/analytics`.
fn faulty_playbook() -> String {
    demo::LOCAL_DEMO.replace(
        r#""--primary-env", "JWT_SECRET_KEY", "--secondary-env", "JWT_SECRET_KEY_PREVIOUS"]"#,
        r#""--primary-env", "JWT_SECRET_KEY", "--secondary-env", "JWT_SECRET_KEY_PREVIOUS",
              "--fault-file", "faults/analytics"]"#,
    )
}

struct Outcome {
    requests: u64,
    failed: u64,
    seconds: f64,
    result: String,
}

/// One rotation of a fresh demo fleet under load; `fault` goes to analytics' fault file.
async fn rotation(
    opts: &common::Opts,
    fault: Option<&str>,
    ungated: bool,
    gates: Arc<Gates>,
) -> Outcome {
    let (dir, guard) = demo::scratch(None).expect("scratch dir");
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, faulty_playbook()).expect("write playbook");
    let pb = demo::demo_playbook(Some(&file), &dir).expect("bench playbook");
    let (pb, engine, _guard) = common::start_with(pb, guard, gates).await;
    if let Some(f) = fault {
        std::fs::create_dir_all(pb.base_dir.join("faults")).expect("faults dir");
        std::fs::write(pb.base_dir.join("faults/analytics"), f).expect("fault");
    }
    let running = load::Load::start(load::paths(&pb), opts.workers, opts.interval);
    while running.requests() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let r = engine
        .rotate(&RunOptions {
            yes: true,
            ungated,
            ..RunOptions::default()
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let report = running.stop().await;
    let _ = engine.down().await;
    Outcome {
        requests: report.requests,
        failed: report.failed_requests,
        seconds,
        result: match r {
            Ok(r) => format!("{:?} at {}", r.outcome, r.state),
            Err(e) => format!("exit {}", e.exit() as u8),
        },
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let opts = common::setup();
    let rounds: usize = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--rounds")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        println!("# broken new instances (analytics rejects everything once it holds two values)");
        println!(
            "{:<10} {:>9} {:>8} {:>8} {:>9}  outcome",
            "", "requests", "failed", "failed%", "seconds"
        );
        for round in 0..rounds {
            for (name, ungated) in [("gated", false), ("ungated", true)] {
                let o = rotation(&opts, Some("two-keys"), ungated, Arc::default()).await;
                println!(
                    "{:<10} {:>9} {:>8} {:>7.2}% {:>9.2}  {} (round {})",
                    name,
                    o.requests,
                    o.failed,
                    100.0 * o.failed as f64 / o.requests.max(1) as f64,
                    o.seconds,
                    o.result,
                    round + 1
                );
            }
        }

        println!();
        println!("# healthy demo fleet: time per gate (canary included) and rotation wall time");
        let gates = Arc::new(Gates::default());
        let mut gated_s = Vec::new();
        let mut ungated_s = Vec::new();
        for _ in 0..rounds {
            let g = rotation(&opts, None, false, gates.clone()).await;
            assert_eq!(g.failed, 0, "a healthy rotation failed requests");
            gated_s.push(g.seconds);
            let u = rotation(&opts, None, true, Arc::default()).await;
            ungated_s.push(u.seconds);
        }
        let mut ms = gates.0.lock().expect("gates").clone();
        ms.sort_by(f64::total_cmp);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "gates: {} (every instance of every rollout, and every kept instance)",
            ms.len()
        );
        println!(
            "per gate: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (target p50 <= 20 ms)",
            percentile(&ms, 0.5),
            percentile(&ms, 0.9),
            ms.last().copied().unwrap_or(f64::NAN)
        );
        let (g, u) = (mean(&gated_s), mean(&ungated_s));
        println!(
            "rotation wall time: gated {g:.2} s, ungated {u:.2} s, ratio {:.2}x (mean of {rounds})",
            g / u
        );
    });
}
