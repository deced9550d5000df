//! Output: the only module that prints.
//!
//! Owns: rendering events (progress bars on a terminal, plain lines otherwise, one JSON object
//! per line with `--output json`), plans, status, drift reports, run reports and errors. Must
//! never: receive a value — everything it renders is already fingerprints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::engine::RunReport;
use crate::engine::check::DriftReport;
use crate::engine::journal::Journal;
use crate::engine::lock::Holder;
use crate::engine::plan::Plan;
use crate::events::{Event, EventSink};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people (progress bars on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// The printer.
pub struct Output {
    format: Format,
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Output {
    /// A printer for `format`; progress bars only when stderr is a terminal.
    pub fn new(format: Format) -> Output {
        Output {
            format,
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Prints a line for people (stdout in human mode; nothing in JSON mode).
    pub fn line(&self, text: &str) {
        if self.format == Format::Human {
            self.println(text);
        }
    }

    fn println(&self, text: &str) {
        let text = &*crate::redact::redact(text);
        let bar = self.bar.lock().expect("bar mutex");
        match bar.as_ref() {
            Some(b) => b.println(text),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
            }
        }
    }

    /// Prints a JSON value as one line (JSON mode), whatever the format.
    pub fn json<T: Serialize>(&self, value: &T) {
        let text = serde_json::to_string(value).expect("serializes");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", crate::redact::redact(&text));
    }

    /// Prints a result: JSON as one object, or the human rendering.
    pub fn result<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        match self.format {
            Format::Json => self.json(value),
            Format::Human => self.println(human().trim_end()),
        }
    }

    /// Prints an error to stderr (and as a JSON event in JSON mode).
    pub fn error(&self, message: &str, exit: u8) {
        self.finish_bar();
        if self.format == Format::Json {
            self.json(&serde_json::json!({"event": "error", "message": message, "exit": exit}));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "error: {}", crate::redact::redact(message));
    }

    /// A notice on stderr that stays on screen (any progress line finished first), and the same
    /// as a JSON event (`{"event": "notice", "message"}`) in JSON mode.
    pub fn notice(&self, message: &str) {
        self.finish_bar();
        if self.format == Format::Json {
            self.json(&serde_json::json!({"event": "notice", "message": message}));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", crate::redact::redact(message));
    }

    /// Asks a yes/no question on the terminal; false when stdin is not a terminal.
    pub fn ask(&self, question: &str) -> bool {
        self.finish_bar();
        if !std::io::stdin().is_terminal() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{question} [not a terminal: declining; pass --yes]");
            return false;
        }
        {
            // Not held while waiting for the answer: other output must not queue behind it.
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{question} [y/N] ");
            let _ = err.flush();
        }
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() {
            return false;
        }
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
    }

    fn finish_bar(&self) {
        if let Some(b) = self.bar.lock().expect("bar mutex").take() {
            b.finish_and_clear();
        }
    }

    fn start_bar(&self, msg: String) {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_message(msg);
        *self.bar.lock().expect("bar mutex") = Some(b);
    }

    fn bar_message(&self, msg: String) {
        if let Some(b) = self.bar.lock().expect("bar mutex").as_ref() {
            b.set_message(crate::redact::redact(&msg).into_owned());
        }
    }
}

impl EventSink for Output {
    fn emit(&self, event: &Event) {
        // The summary is for the sinks that asked for it (the metrics file); what the output
        // prints does not depend on the playbook's notify section.
        if matches!(event, Event::Summary { .. }) {
            return;
        }
        if self.format == Format::Json {
            self.json(event);
            return;
        }
        match event {
            Event::RunStarted {
                rotation,
                secret,
                environment,
                command,
                state,
                target,
            } => self.println(&format!(
                "{command} {secret} ({environment}): rotation {rotation}, {state} → {target}"
            )),
            Event::StepStarted {
                transition,
                direction,
                rolls,
            } => {
                let what = if rolls.is_empty() {
                    "store only".to_string()
                } else {
                    format!("rolls {}", rolls.join(", "))
                };
                let msg = format!("{transition} {direction}: {what}");
                if self.tty {
                    self.start_bar(msg);
                } else {
                    self.println(&msg);
                }
            }
            Event::InstanceReloaded {
                consumer,
                instance,
                signal,
                primary,
                secondary,
            } => {
                let msg = format!(
                    "  {consumer}: {instance} reloaded ({signal}; primary {primary}{})",
                    secondary
                        .as_ref()
                        .map(|s| format!(", secondary {s}"))
                        .unwrap_or_default()
                );
                if self.tty {
                    self.bar_message(msg.trim().to_string());
                } else {
                    self.println(&msg);
                }
            }
            Event::InstanceReplaced {
                consumer,
                old,
                new,
                primary,
                secondary,
            } => {
                let msg = format!(
                    "  {consumer}: {} → {new} (primary {primary}{})",
                    old.as_deref().unwrap_or("(none)"),
                    secondary
                        .as_ref()
                        .map(|s| format!(", secondary {s}"))
                        .unwrap_or_default()
                );
                if self.tty {
                    self.bar_message(msg.trim().to_string());
                } else {
                    self.println(&msg);
                }
            }
            Event::StepFinished {
                transition,
                direction,
                outcome,
                seconds,
                state,
            } => {
                self.finish_bar();
                self.println(&format!(
                    "✔ {transition} {direction} {outcome} in {seconds:.2}s → {state}"
                ));
            }
            Event::ProofPassed { detail, .. } => self.println(&format!("  proof: {detail}")),
            Event::StepFailed {
                transition,
                direction,
                error,
            } => {
                self.finish_bar();
                self.println(&format!("✘ {transition} {direction} failed: {error}"));
            }
            Event::StoreChanged { detail } => self.println(&format!("  store: {detail}")),
            Event::Waiting { reason, seconds } => {
                self.println(&format!("  waiting {seconds:.1}s: {reason}"))
            }
            Event::Reconciled { detail } => self.println(&format!("  reconcile: {detail}")),
            Event::RunFinished { detail, .. } => {
                self.finish_bar();
                self.println(detail);
            }
            Event::Note { message } => self.println(&format!("  {message}")),
            // A failed gate says why (the step's failure follows); passes only move the bar.
            Event::InstanceGated {
                consumer,
                instance,
                passed: false,
                detail,
                ..
            } => {
                let msg = format!("  {consumer}: instance {instance} failed its gate: {detail}");
                self.println(&msg);
            }
            Event::InstanceGated {
                consumer,
                instance,
                millis,
                ..
            } => {
                if self.tty {
                    self.bar_message(format!("{consumer}: {instance} proven in {millis:.0} ms"));
                }
            }
            Event::RolloutStarted { .. }
            | Event::RolloutFinished { .. }
            | Event::Summary { .. } => {}
        }
    }
}

/// Human rendering of a plan.
pub fn render_plan(p: &Plan) -> String {
    let mut s = format!(
        "Plan for {} ({}), store {}\n  current primary: {}\n",
        p.secret,
        p.environment,
        p.store,
        p.current_primary
            .as_deref()
            .unwrap_or("(store not initialized)")
    );
    if let Some(r) = &p.rotation {
        s.push_str(&format!("  rotation {r} in progress at {}\n", p.from));
    }
    for (consumer, how) in &p.https {
        s.push_str(&format!("  {consumer}: {how}\n"));
    }
    for (consumer, how) in &p.delivery {
        s.push_str(&format!("  {consumer}: {how}\n"));
    }
    for w in &p.waves {
        if let Some(wait) = &w.wait {
            s.push_str(&format!("  … {wait}\n"));
        }
        s.push_str(&format!(
            "  wave {:?} {}{}\n",
            w.transition,
            w.name,
            if w.confirm {
                "  [asks first unless --yes]"
            } else {
                ""
            }
        ));
        if let Some(st) = &w.store {
            s.push_str(&format!("      store: {st}\n"));
        }
        for r in &w.rolls {
            s.push_str(&format!(
                "      {}: {} ({}, {} instances, one at a time)\n",
                r.pickup, r.consumer, r.role, r.instances
            ));
        }
        s.push_str(&format!("      proof: {}\n", w.proof));
    }
    let per: Vec<String> = p.restarts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    // Reloads are counted with restarts (each is one instance taken through its proof).
    let reloads = p
        .waves
        .iter()
        .flat_map(|w| &w.rolls)
        .any(|r| r.pickup.starts_with("reload"));
    s.push_str(&format!(
        "  instance {}: {} (total {})\n  nothing was changed",
        if reloads {
            "restarts and reloads"
        } else {
            "restarts"
        },
        per.join(", "),
        p.total_restarts
    ));
    s
}

/// Human rendering of `status`.
pub fn render_status(
    j: Option<&Journal>,
    holder: Option<&Holder>,
    stale: Option<&Holder>,
    playbook: &str,
) -> String {
    let mut s = String::new();
    match j {
        None => s.push_str("no rotation recorded for this secret\n"),
        Some(j) => {
            s.push_str(&format!(
                "rotation {} ({:?}, mode {:?})\n  state: {}\n  status: {:?}\n  target: {}\n  old: {} (version {})\n",
                j.id,
                j.status,
                j.mode,
                j.state,
                j.status,
                j.target,
                j.old.fingerprint,
                j.old.version.as_deref().unwrap_or("-")
            ));
            if let Some(n) = &j.new {
                s.push_str(&format!(
                    "  new: {} (version {})\n",
                    n.fingerprint,
                    n.version.as_deref().unwrap_or("not yet published")
                ));
            }
            if let Some(step) = j.steps.last() {
                s.push_str(&format!(
                    "  last step: {} {} {:?} (started {})\n",
                    step.transition,
                    step.direction,
                    step.outcome,
                    step.started_at.format("%Y-%m-%d %H:%M:%S UTC")
                ));
                if !step.detail.is_empty() {
                    s.push_str(&format!("    {}\n", step.detail));
                }
            }
        }
    }
    match (holder, stale) {
        (Some(h), _) => s.push_str(&format!(
            "  lock: held by {} ({}) since {}, at stage {}{}",
            h.identity,
            h.command,
            h.since.format("%Y-%m-%d %H:%M:%S UTC"),
            h.stage,
            h.hint()
        )),
        (None, Some(old)) => s.push_str(&format!(
            "  lock: free (its holder file still names {} ({}), since {}, last at stage {}: a run that ended without releasing it; the file is stale and the next run replaces it)",
            old.identity,
            old.command,
            old.since.format("%Y-%m-%d %H:%M:%S UTC"),
            old.stage
        )),
        (None, None) => s.push_str("  lock: free"),
    }
    if let Some(req) = holder.and_then(|h| h.handover.as_ref()) {
        s.push_str(&format!(
            "\n  handover: asked by {} at {} ({}); it stops at its next stable state",
            req.by,
            req.at.format("%Y-%m-%d %H:%M:%S UTC"),
            req.reason
        ));
    }
    if let Some(next) = crate::engine::lock::next_command(j, holder, playbook) {
        s.push_str(&format!("\n  next: {next}"));
    }
    s
}

/// Human rendering of a drift report.
pub fn render_check(r: &DriftReport) -> String {
    let mut s = format!(
        "store: primary {} secondary {} (expected state {})\n",
        r.store_primary.as_ref().map(|f| f.as_str()).unwrap_or("-"),
        r.store_secondary
            .as_ref()
            .map(|f| f.as_str())
            .unwrap_or("-"),
        r.state
    );
    for v in &r.instances {
        let names: Vec<String> = v.names.iter().map(|(n, f)| format!("{n}={f}")).collect();
        s.push_str(&format!(
            "  {} {} [{}, {:?}]: {}\n",
            v.consumer,
            v.instance,
            v.role,
            v.source,
            names.join(" ")
        ));
    }
    for f in &r.files {
        let names: Vec<String> = f.names.iter().map(|(n, p)| format!("{n}={p}")).collect();
        s.push_str(&format!(
            "  {} file {}: {}\n",
            f.consumer,
            f.file,
            names.join(" ")
        ));
    }
    if let Some(p) = &r.in_progress {
        s.push_str(&format!("in progress: {p}\n"));
    }
    if r.problems.is_empty() {
        s.push_str("no drift");
    } else {
        s.push_str(&format!("{} problem(s):\n", r.problems.len()));
        for p in &r.problems {
            s.push_str(&format!("  ✘ {p}\n"));
        }
    }
    s
}

/// Human rendering of a run report.
pub fn render_report(r: &RunReport) -> String {
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|s| format!("{:?} {} {:.2}s", s.transition, s.direction, s.seconds))
        .collect();
    let restarts: Vec<String> = r.restarts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let mut text = format!(
        "rotation {} at {} ({:?}) in {:.2}s\n  stages: {}\n  restarts: {}",
        r.rotation,
        r.state,
        r.outcome,
        r.wall_seconds,
        stages.join(", "),
        restarts.join(", ")
    );
    if let Some(t) = r.time_to_revoke_seconds {
        text.push_str(&format!(
            "\n  time to revoke: {t:.2}s (the rotation's first start → the old value rejected by every validator instance), {} rollout waves this run",
            r.waves
        ));
    }
    if let Some(h) = &r.hard_cut {
        text.push_str(&format!(
            "\n  hard cut: {}; your callers saw failures over the same window",
            h.summary()
        ));
    }
    text
}
