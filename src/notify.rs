//! Notifications and metrics: a webhook (Slack-compatible JSON `{"text": …}`) told when a run
//! starts, at every stage change, on a failed step, and when the run ends (completed, rolled
//! back, failed, paused); and a Prometheus text-format file for node-exporter's textfile
//! collector (age of the primary, last rotation time and duration, failures, rotation in
//! progress), rewritten atomically after every run.
//!
//! Owns: turning events into one-line messages, sending them without blocking the rotation (one
//! delivery task posts them in the order they happened; the end of the run waits for it with a
//! deadline), and the metrics file.
//! Must never: put a value in a message or a metric (events carry fingerprints only), or fail a
//! rotation because a notification could not be delivered (the first failure is a note in the
//! output, without the webhook's URL).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::events::{Event, EventSink, Flush, Tee};
use crate::exit::Exit;
use crate::playbook::Playbook;

/// How long the end of a run waits for messages still being delivered.
const FLUSH: Duration = Duration::from_secs(5);

/// Most messages waiting for delivery; later ones are dropped (a run emits a few dozen).
const QUEUE: usize = 1024;

/// The webhook sink.
pub struct Webhook {
    url: String,
    label: String,
    client: reqwest::Client,
    /// The delivery task and its queue, started with the first message.
    delivery: Mutex<Option<Delivery>>,
    /// Where the first failed delivery is reported (once: a dead webhook must not flood it).
    notes: Arc<dyn EventSink>,
    reported: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    /// Posts to `url` about secret `label` (`service-secret (production)`); the first failed
    /// delivery is reported to `notes`, without the URL (a webhook URL is a credential).
    pub fn new(url: String, label: String, notes: Arc<dyn EventSink>) -> Webhook {
        let client = crate::transport::public_client(FLUSH);
        Webhook {
            url,
            label,
            client,
            delivery: Mutex::new(None),
            notes,
            reported: Arc::default(),
        }
    }

    /// The message for `event`, if it is one a channel should hear about.
    pub fn message(label: &str, event: &Event) -> Option<String> {
        Some(match event {
            Event::RunStarted {
                rotation,
                command,
                state,
                target,
                ..
            } => format!(
                "rotor: {command} of {label} started (rotation {rotation}, {state} → {target})"
            ),
            Event::StepFinished {
                transition,
                direction,
                outcome,
                state,
                seconds,
            } if outcome == "ok" => {
                format!("rotor: {label}: {transition} {direction} ok in {seconds:.1}s → {state}")
            }
            Event::StepFailed {
                transition,
                direction,
                error,
            } => format!("rotor: {label}: {transition} {direction} FAILED: {error}"),
            Event::RunFinished {
                outcome,
                state,
                detail,
            } => format!("rotor: {label}: run {outcome} at {state}: {detail}"),
            _ => return None,
        })
    }
}

/// The queue of a webhook's messages and the task posting them one after the other.
struct Delivery {
    queue: tokio::sync::mpsc::Sender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Posts `text`; the first failure is reported to `notes`.
    async fn post(&self, text: String) {
        let sent = self
            .client
            .post(&self.url)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("the webhook refused a notification ({})", r.status()),
            Err(e) if e.is_timeout() => "the webhook did not answer in time".into(),
            Err(e) if e.is_connect() => "the webhook could not be reached".into(),
            Err(_) => "a notification could not be sent to the webhook".into(),
        };
        if !self
            .reported
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.notes.emit(&Event::Note {
                message: format!("{failure}; later failures this run are not reported"),
            });
        }
    }
}

impl EventSink for Webhook {
    fn emit(&self, event: &Event) {
        let Some(text) = Webhook::message(&self.label, event) else {
            return;
        };
        let text = crate::redact::redact(&text).into_owned();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut delivery = self.delivery.lock().expect("webhook mutex");
        let d = delivery.get_or_insert_with(|| {
            let (queue, mut rx) = tokio::sync::mpsc::channel::<String>(QUEUE);
            let me = Webhook {
                url: self.url.clone(),
                label: self.label.clone(),
                client: self.client.clone(),
                delivery: Mutex::new(None),
                notes: self.notes.clone(),
                reported: self.reported.clone(),
            };
            // One task, so a channel hears the messages in the order they happened.
            let task = rt.spawn(async move {
                while let Some(text) = rx.recv().await {
                    me.post(text).await;
                }
            });
            Delivery { queue, task }
        });
        let _ = d.queue.try_send(text);
    }

    /// Waits (a few seconds at most) for the messages still queued to be delivered.
    fn flush(&self) -> Flush<'_> {
        Box::pin(async {
            // Closing the queue ends the task once it has posted what is queued.
            let delivery = self.delivery.lock().expect("webhook mutex").take();
            if let Some(Delivery { queue, task }) = delivery {
                drop(queue);
                let _ = tokio::time::timeout(FLUSH, task).await;
            }
        })
    }
}

/// One secret's metrics, as written to the textfile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Age of the store's primary, when the store could be read.
    pub primary_age_seconds: Option<f64>,
    /// When the last rotation reached S5.
    pub last_rotation: Option<DateTime<Utc>>,
    /// How long that run took.
    pub last_rotation_seconds: Option<f64>,
    /// Runs that failed or rolled back, ever (kept across runs through the file itself).
    pub failures: u64,
    /// Whether a rotation is in progress (journal active).
    pub in_progress: bool,
}

/// The metrics file of one secret: a sink that rewrites the file on every
/// [`Event::Summary`].
pub struct MetricsFile {
    path: PathBuf,
    secret: String,
    environment: String,
    /// Where a failure to write the file is reported.
    notes: Arc<dyn EventSink>,
}

impl MetricsFile {
    /// `path` for `secret` in `environment`; a file that cannot be written is reported to
    /// `notes`.
    pub fn new(
        path: PathBuf,
        secret: &str,
        environment: &str,
        notes: Arc<dyn EventSink>,
    ) -> MetricsFile {
        MetricsFile {
            path,
            secret: secret.into(),
            environment: environment.into(),
            notes,
        }
    }

    fn labels(&self) -> String {
        format!(
            "secret=\"{}\",environment=\"{}\"",
            self.secret, self.environment
        )
    }

    /// What the file says now (defaults when it is missing or not rotor's).
    pub fn read(&self) -> Metrics {
        let mut m = Metrics::default();
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return m;
        };
        let labels = format!("{{{}}}", self.labels());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.split_once(&labels) else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            match name {
                "rotor_rotation_failures_total" => m.failures = v as u64,
                "rotor_last_rotation_timestamp_seconds" => {
                    m.last_rotation = DateTime::from_timestamp(v as i64, 0);
                }
                "rotor_last_rotation_duration_seconds" => m.last_rotation_seconds = Some(v),
                _ => {}
            }
        }
        m
    }

    /// The file's text for `m`.
    pub fn render(&self, m: &Metrics) -> String {
        let l = self.labels();
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(v) = value {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {v}\n"
                ));
            }
        };
        gauge(
            "rotor_primary_age_seconds",
            "gauge",
            "Age of the store's primary value.",
            m.primary_age_seconds,
        );
        gauge(
            "rotor_last_rotation_timestamp_seconds",
            "gauge",
            "When the last rotation reached S5 (Unix time).",
            m.last_rotation.map(|t| t.timestamp() as f64),
        );
        gauge(
            "rotor_last_rotation_duration_seconds",
            "gauge",
            "Wall time of the run that completed the last rotation.",
            m.last_rotation_seconds,
        );
        gauge(
            "rotor_rotation_failures_total",
            "counter",
            "Runs that failed or rolled back.",
            Some(m.failures as f64),
        );
        gauge(
            "rotor_rotation_in_progress",
            "gauge",
            "1 while a rotation of this secret is in progress.",
            Some(if m.in_progress { 1.0 } else { 0.0 }),
        );
        out
    }

    /// Writes `m` atomically (temp file, rename), so the collector never reads half a file.
    pub fn write(&self, m: &Metrics) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::store::local::atomic_write(&self.path, self.render(m).as_bytes(), 0o644)
    }

    /// The metrics after the command `summary` (an [`Event::Summary`]) describes, over what
    /// the file said before; `None` for any other event.
    pub fn after(&self, summary: &Event) -> Option<Metrics> {
        let Event::Summary {
            outcome,
            exit_code,
            wall_seconds,
            primary_age_seconds,
            in_progress,
            ..
        } = summary
        else {
            return None;
        };
        let mut m = self.read();
        m.primary_age_seconds = *primary_age_seconds;
        m.in_progress = *in_progress;
        if outcome == "completed" {
            m.last_rotation = Some(Utc::now());
            m.last_rotation_seconds = *wall_seconds;
        }
        // A rotation that failed or rolled back; not a command that did not apply (nothing to
        // resume, a lock held by another run, a usage error).
        let failed = [Exit::RolledBack, Exit::NeedsOperator, Exit::Internal];
        if outcome == "error" && failed.iter().any(|e| *e as u8 == *exit_code) {
            m.failures += 1;
        }
        Some(m)
    }
}

impl EventSink for MetricsFile {
    fn emit(&self, event: &Event) {
        let Some(m) = self.after(event) else {
            return;
        };
        if let Err(e) = self.write(&m) {
            self.notes.emit(&Event::Note {
                message: format!("could not write the metrics file: {e}"),
            });
        }
    }

    fn wants_summary(&self) -> bool {
        true
    }
}

/// `out` followed by the notifications `pb.notify` asks for (a webhook, a metrics file): the
/// sink the engine writes to. A `webhook_env` that is not set is reported to `out` and means no
/// webhook this run.
pub fn around(pb: &Playbook, out: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![out.clone()];
    if let Some(var) = &pb.notify.webhook_env {
        match std::env::var(var).ok().filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let label = format!("{} ({})", pb.secret, pb.environment.as_str());
                sinks.push(Arc::new(Webhook::new(url, label, out.clone())));
            }
            None => out.emit(&Event::Note {
                message: format!(
                    "notify.webhook_env names {var}, which is not set: no webhook notifications this run"
                ),
            }),
        }
    }
    if let Some(p) = &pb.notify.metrics_file {
        sinks.push(Arc::new(MetricsFile::new(
            p.clone(),
            &pb.secret,
            pb.environment.as_str(),
            out.clone(),
        )));
    }
    if sinks.len() == 1 {
        return out;
    }
    Arc::new(Tee(sinks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow webhook still hears the messages in the order they happened: the first one is
    /// answered late, and the second is not sent before it was (a channel showing "run
    /// completed" before the last step would mislead whoever reads it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_webhook_hears_every_message_in_order() {
        use axum::routing::post;
        let heard: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = {
            let heard = heard.clone();
            axum::Router::new().route(
                "/hook",
                post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let heard = heard.clone();
                    async move {
                        let text = body["text"].as_str().unwrap_or_default().to_string();
                        // The webhook's own slowness, not a wait for readiness.
                        if text.ends_with("first") {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        heard.lock().unwrap().push(text);
                        "ok"
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let hook = Webhook::new(url, "s (test)".into(), Arc::new(crate::events::NullSink));
        for error in ["first", "second", "third"] {
            hook.emit(&Event::StepFailed {
                transition: crate::protocol::Transition::T2,
                direction: crate::protocol::Direction::Forward,
                error: error.into(),
            });
        }
        hook.flush().await;
        let heard: Vec<String> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.rsplit(' ').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(heard, ["first", "second", "third"]);
    }

    #[test]
    fn metrics_round_trip_through_the_file_and_count_failures() {
        let dir = tempfile::tempdir().unwrap();
        let f = MetricsFile::new(
            dir.path().join("rotor.prom"),
            "s",
            "production",
            Arc::new(crate::events::NullSink),
        );
        let m = Metrics {
            primary_age_seconds: Some(12.5),
            last_rotation: DateTime::from_timestamp(1_800_000_000, 0),
            last_rotation_seconds: Some(5.75),
            failures: 2,
            in_progress: false,
        };
        f.write(&m).unwrap();
        let back = f.read();
        assert_eq!(back.failures, 2);
        assert_eq!(back.last_rotation, m.last_rotation);
        assert_eq!(back.last_rotation_seconds, Some(5.75));
        let text = std::fs::read_to_string(dir.path().join("rotor.prom")).unwrap();
        assert!(text.contains(
            "rotor_rotation_failures_total{secret=\"s\",environment=\"production\"} 2\n"
        ));
        let ended = |e: crate::engine::EngineError| Event::Summary {
            command: "rotate".into(),
            outcome: "error".into(),
            exit_code: e.exit() as u8,
            wall_seconds: None,
            primary_age_seconds: None,
            in_progress: false,
        };
        let failed = ended(crate::engine::EngineError::Io("disk full".into()));
        assert_eq!(f.after(&failed).unwrap().failures, 3);
        let not_applicable = ended(crate::engine::EngineError::NoRotation);
        assert_eq!(f.after(&not_applicable).unwrap().failures, 2);
    }

    #[test]
    fn messages_name_the_secret_and_skip_chatter() {
        let m = Webhook::message(
            "s (production)",
            &Event::RunFinished {
                outcome: "completed".into(),
                state: crate::protocol::State::S5,
                detail: "primary sha256:0123456789ab".into(),
            },
        )
        .unwrap();
        assert!(
            m.starts_with("rotor: s (production): run completed at S5"),
            "{m}"
        );
        assert!(m.ends_with(": primary sha256:0123456789ab"), "{m}");
        let note = Event::Note {
            message: "x".into(),
        };
        assert!(Webhook::message("s", &note).is_none());
    }
}
