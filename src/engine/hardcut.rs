//! `rekey --emergency --hard-cut`: one wave instead of three, and an honest count of what it
//! broke.
//!
//! Owns: which consumers a hard cut rolls when (T2 and T3 only move the store; T4 rolls every
//! consumer at once onto S4's view: signers send B and validators accept only B), and the
//! sampler that runs signer→validator round trips from every signer instance to every
//! instance of the validators it calls for as long as that wave rolls, counting the ones that
//! fail. rotor cannot see its users' traffic; the sample is traffic of the same kind, over
//! the same window, and the report says so.
//!
//! Must never: count a round trip that could not reach the signer (an instance restarting) as
//! refused — those are reported apart — or stop sampling before the wave ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumer::Consumer;
use crate::playbook::RoundtripSpec;
use crate::probe::{self, Trip};
use crate::protocol::{Direction, Role, Transition};

/// What a hard cut's wave did to round trips, as rotor sampled them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HardCutReport {
    /// Round trips rotor made while the wave rolled (every signer instance to every instance
    /// of the validators it calls, over and over).
    pub sampled_round_trips: u64,
    /// Of those, how many the validator refused (the signer answered with an error): the
    /// failed requests the cut caused, in rotor's sample.
    pub failed_round_trips: u64,
    /// Round trips that could not reach the signer at all (an instance restarting), counted
    /// apart: not a verdict about the values.
    pub unreachable: u64,
    /// The wave's length: from its first restart to its last instance ready, seconds.
    pub window_seconds: f64,
    /// Signing consumers without a round trip in the playbook: their failures were not sampled.
    pub unsampled: Vec<String>,
}

impl HardCutReport {
    /// One line for people: the failures, the sample, the wave, what was not sampled.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} sampled round trips failed during the {:.2}s wave ({} could not reach a restarting signer)",
            self.failed_round_trips,
            self.sampled_round_trips,
            self.window_seconds,
            self.unreachable
        );
        if !self.unsampled.is_empty() {
            s.push_str(&format!(
                "; not sampled (no http round trip in the playbook; exec round trips run in the proof after the wave): {}",
                self.unsampled.join(", ")
            ));
        }
        s
    }
}

/// Whether a forward or inverse `t` rolls `role`, for a hard cut (`hard_cut`) or the ordinary
/// three waves.
pub fn rolls(hard_cut: bool, t: Transition, dir: Direction, role: Role) -> bool {
    if hard_cut && dir == Direction::Forward {
        return match t {
            Transition::T2 | Transition::T3 => false,
            Transition::T4 => true,
            _ => t.rolls(role),
        };
    }
    t.rolls(role)
}

/// One signer → validator pair to sample.
struct Pair {
    signer: Arc<dyn Consumer>,
    spec: RoundtripSpec,
    validator: Arc<dyn Consumer>,
}

/// Round trips running in the background until [`Sampler::stop`].
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<HardCutReport>,
    started: Instant,
}

impl Sampler {
    /// Starts sampling the round trips that `consumers`' specs name.
    pub fn start(
        consumers: &[Arc<dyn Consumer>],
        roundtrips: impl Fn(&str) -> Vec<RoundtripSpec>,
        timeout: Duration,
    ) -> Sampler {
        let mut pairs = Vec::new();
        let mut unsampled = Vec::new();
        for c in consumers.iter().filter(|c| c.role().signs()) {
            let specs = roundtrips(c.name());
            if specs.is_empty() {
                unsampled.push(c.name().to_string());
            }
            for spec in specs {
                if let Some(v) = consumers.iter().find(|v| v.name() == spec.to) {
                    pairs.push(Pair {
                        signer: c.clone(),
                        spec,
                        validator: v.clone(),
                    });
                }
            }
        }
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sample(pairs, unsampled, timeout, rx));
        Sampler {
            stop,
            task,
            started: Instant::now(),
        }
    }

    /// Stops sampling (the round trips in flight finish) and returns the counts.
    pub async fn stop(self) -> HardCutReport {
        let window = self.started.elapsed();
        let _ = self.stop.send(true);
        let mut report = self.task.await.unwrap_or_default();
        report.window_seconds = window.as_secs_f64();
        report
    }
}

async fn sample(
    pairs: Vec<Pair>,
    unsampled: Vec<String>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> HardCutReport {
    let mut r = HardCutReport {
        unsampled,
        ..HardCutReport::default()
    };
    while !*stop.borrow() {
        let mut made = 0;
        for p in &pairs {
            // Instances come and go during the wave: list them every round.
            let (Ok(from), Ok(to)) = (p.signer.instances().await, p.validator.instances().await)
            else {
                continue;
            };
            for (f, fh) in from
                .iter()
                .filter_map(|i| i.addr.map(|a| (a, i.host.as_deref())))
            {
                for t in to.iter().filter_map(|i| i.addr) {
                    if *stop.borrow() {
                        return r;
                    }
                    made += 1;
                    r.sampled_round_trips += 1;
                    match probe::trip(&p.spec, p.signer.transport().reach(f, fh), t, timeout).await
                    {
                        Trip::Passed => {}
                        Trip::Refused(_) => r.failed_round_trips += 1,
                        Trip::Unreachable(_) => r.unreachable += 1,
                    }
                }
            }
        }
        if made == 0 {
            // Nothing to sample right now (no instance listed): wait for the next round or the
            // end of the wave.
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;

    #[test]
    fn a_hard_cut_rolls_everyone_once_at_t4_and_inverses_stay_ordinary() {
        use Direction::{Forward, Inverse};
        use Transition::*;
        for role in [Role::Validator, Role::Signer, Role::Both] {
            assert!(!rolls(true, T2, Forward, role));
            assert!(!rolls(true, T3, Forward, role));
            assert!(rolls(true, T4, Forward, role));
            for t in [T1, T2, T3, T4] {
                assert_eq!(rolls(true, t, Inverse, role), t.rolls(role));
                assert_eq!(rolls(false, t, Forward, role), t.rolls(role));
            }
        }
    }
}
