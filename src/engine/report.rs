//! The report: how a run ended ([`RunOutcome`]), what it did ([`RunReport`], with one
//! [`StageTiming`] per step), the summary event after each rotation command, and [`span`], the
//! way durations read in messages.
//!
//! Reporting never fails a run: the summary reads the store once, and a read that fails only
//! leaves its fields empty.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Serialize;

use super::step::Run;
use super::{Engine, EngineError, hardcut};
use crate::events::Event;
use crate::protocol::{Direction, State, Transition};

/// A duration as people write ages: `90d`, `12d 3h`, `5h 2m`, `40s`.
pub fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// How a run ended (when it did not fail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Reached S5.
    Completed,
    /// Stopped at a stable state on purpose.
    Paused,
    /// The operator declined a confirmation.
    Declined,
    /// Rolled back to the requested state on request.
    RolledBack,
    /// An emergency rekey asked for the rotation; this run stopped at a stable state and gave
    /// it the lock.
    HandedOver,
}

impl RunOutcome {
    /// The exit code a command that ended this way returns.
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            RunOutcome::Declined => crate::exit::Exit::Declined,
            RunOutcome::HandedOver => crate::exit::Exit::HandedOver,
            _ => crate::exit::Exit::Ok,
        }
    }
}

/// Duration of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    /// `T2`.
    pub transition: Transition,
    /// forward / inverse.
    pub direction: Direction,
    /// ok / failed.
    pub outcome: String,
    /// Seconds.
    pub seconds: f64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Rotation id.
    pub rotation: String,
    /// State at the end.
    pub state: State,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Why it stopped where it stopped.
    pub detail: String,
    /// Steps in order.
    pub stages: Vec<StageTiming>,
    /// Instance restarts per consumer.
    pub restarts: BTreeMap<String, usize>,
    /// Seconds spent waiting on rollouts (readiness, drain), soak and grace.
    pub waited_seconds: f64,
    /// Wall time of the run in seconds.
    pub wall_seconds: f64,
    /// A hard cut's sampled round trips during its one wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_cut: Option<hardcut::HardCutReport>,
    /// The rotation's first start (its journal's `started_at`, through every interrupted run,
    /// resume and takeover) → the old value rejected by every validator instance (T4's
    /// proof), once the rotation got there; never less than this run's own time to it.
    pub time_to_revoke_seconds: Option<f64>,
    /// Rollout waves this run made (forward T2, T3, T4).
    pub waves: usize,
}

impl Engine {
    /// After a rotation command: an [`Event::Summary`] with the store's state for the sinks
    /// that want one (reading the store costs a call, so only then), then every sink flushed.
    /// Never fails the run.
    pub(super) async fn finished(&self, command: &str, result: &Result<RunReport, EngineError>) {
        if self.events.wants_summary() {
            self.summarize(command, result).await;
        }
        self.events.flush().await;
    }

    async fn summarize(&self, command: &str, result: &Result<RunReport, EngineError>) {
        let primary_age_seconds = match self.store.snapshot().await {
            Ok(snap) => snap
                .primary_version()
                .map(|v| (Utc::now() - v.created_at).num_milliseconds() as f64 / 1000.0),
            Err(_) => None,
        };
        let in_progress = matches!(self.journals.load().await, Ok(Some(j)) if j.status.is_active());
        let (outcome, exit_code, wall_seconds) = match result {
            Ok(r) => {
                let outcome = serde_json::to_value(&r.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (outcome, r.outcome.exit() as u8, Some(r.wall_seconds))
            }
            Err(e) => ("error".to_string(), e.exit() as u8, None),
        };
        self.events.emit(&Event::Summary {
            command: command.to_string(),
            outcome,
            exit_code,
            wall_seconds,
            primary_age_seconds,
            in_progress,
        });
    }
}

impl Run<'_> {
    pub(super) fn report(&self, outcome: RunOutcome, detail: String) -> RunReport {
        self.emit(Event::RunFinished {
            outcome: format!("{outcome:?}").to_lowercase(),
            state: self.journal.state,
            detail: detail.clone(),
        });
        RunReport {
            rotation: self.journal.id.clone(),
            state: self.journal.state,
            outcome,
            detail,
            stages: self.stages.clone(),
            restarts: self.restarts.clone(),
            waited_seconds: self.waited.as_secs_f64(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            time_to_revoke_seconds: self
                .revoked
                .or_else(|| self.revoked_earlier())
                .map(|d| d.as_secs_f64()),
            waves: self.waves,
            hard_cut: self.hard_cut.clone(),
        }
    }
}

impl Run<'_> {
    /// Time to revoke of a rotation that got past T4 in an earlier run (this one resumed T5
    /// or finalized after a pause at S4): the journal's first start → when it reached S4.
    fn revoked_earlier(&self) -> Option<std::time::Duration> {
        if self.journal.state < State::S4 || self.journal.rolling_back() {
            return None;
        }
        let reached = self.journal.reached.get(&State::S4)?;
        Some(
            (*reached - self.journal.started_at)
                .to_std()
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::span;
    use std::time::Duration;

    #[test]
    fn spans_read_like_ages() {
        let cases = [
            (40, "40s"),
            (300, "5m"),
            (7200, "2h"),
            (3600 + 120, "1h 2m"),
            (90 * 86_400, "90d"),
            (12 * 86_400 + 3 * 3600 + 59, "12d 3h"),
        ];
        for (secs, text) in cases {
            assert_eq!(span(Duration::from_secs(secs)), text);
        }
    }
}
