//! Process consumer: N local processes that rotor starts, each on its own loopback port, each
//! with the secret's slots in its environment.
//!
//! Owns: starting, adopting, replacing and stopping those processes. Instances outlive the rotor
//! invocation that started them (`rotor up` exits; a later `rotate`, or `resume` after rotor was
//! killed, finds them again), so every fact lives on disk under
//! `<state_dir>/fleet/<consumer>/` (layout in `process/disk.rs`): one record per instance, the published
//! `endpoints.json` that peers and load generators read, and one log per instance.
//!
//! Rollouts replace one instance at a time: start a new one, wait until it answers its health
//! check, publish it, unpublish the old one, let it drain, stop it. The fleet therefore never
//! serves fewer than the configured number of ready instances.
//!
//! With `delivery: file` the values reach an instance as files in its own directory
//! (`ROTOR_SECRETS_DIR`, layout in `process/disk.rs`), and with `pickup: reload` a rollout
//! rewrites one instance's files, sends it `reload_signal` and proves it (health, reported
//! fingerprints, gate) before the next; a failed proof restores that instance's previous files
//! and signals it again. The files are the truth of what an instance holds: a record names what
//! the instance was last proven with, and an instance whose files or record differ from the
//! desired values is reloaded again (rewriting and signalling are idempotent), so a rotor killed
//! between writing and signalling leaves nothing `resume` or `rollback` cannot finish.
//!
//! No instance runs unrecorded: its record is written before it is spawned (state `starting`,
//! no pid) and completed with its pid after, and its environment carries the fleet's tag
//! (`ROTOR_FLEET_ID`, from `fleet/<consumer>/fleet-id`, with `ROTOR_CONSUMER` and
//! `ROTOR_INSTANCE`). Whatever rotor changes the fleet next (under its lock: `apply` for `up`,
//! `rotate`, `resume`, `rollback`; `stop` for `down`) finds every process that carries the tag
//! in `/proc` and ends each one that no running record accounts for; `check` names them
//! ([`Consumer::leftovers`]).
//!
//! Must never: put a value in argv, a record, a log line, an event or an error. Values reach an
//! instance only through its environment or its secrets directory; everything else names them
//! by fingerprint. Never signal a process it cannot prove is its own: a recorded pid with its
//! start time, or a process whose environment carries the fleet's tag.

mod disk;
mod os;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use self::disk::{Layout, Record, RecordState, SecretsDir};
use super::{
    Consumer, ConsumerError, Desired, Gate, Held, HeldSource, Instance, Leftover, LeftoverKind,
    RolloutReport, Slots, configured_held, http_failure, pass_gate, report_held, slot_names,
};
use crate::events::{Event, EventSink};
use crate::playbook::{
    ConsumerSpec, Delivery, Pickup, Playbook, ProcessSpec, SlotNames, StopSignal, Timings,
};
use crate::protocol::Role;
use crate::secret::Fingerprint;
use crate::secret::SecretValue;
use crate::transport::Transport;

/// Interval between two health checks of a starting instance.
const READY_POLL: Duration = Duration::from_millis(25);
/// Deadline of one health request.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a reload that has not taken is signalled again within one proof.
const RESIGNALS: u32 = 2;

/// When a reload proof signals the instance again: at a third and at two thirds of the
/// readiness window. A server may drop a signal that arrives while it is still taking the last
/// one (HAProxy's master while it re-executes itself), so a reload that has not taken after a
/// third of the window is asked for again; a reload is idempotent, so a second signal to a
/// server that is merely slow costs one more swap of its workers.
struct Resignal {
    at: Vec<Instant>,
}

impl Resignal {
    fn new(until: Instant) -> Self {
        let now = Instant::now();
        let window = until.saturating_duration_since(now);
        let at = (1..=RESIGNALS)
            .filter_map(|k| now.checked_add(window / (RESIGNALS + 1) * k))
            .collect();
        Self { at }
    }

    /// Signals `rec` again when the next point of the window has passed.
    fn poll(&mut self, consumer: &ProcessConsumer, rec: &Record, sig: nix::sys::signal::Signal) {
        if self.at.first().is_some_and(|t| Instant::now() >= *t) {
            self.at.remove(0);
            consumer.signal_again(rec, sig);
        }
    }
}

/// The variable that tags every instance with its fleet (`fleet/<consumer>/fleet-id`).
const FLEET_ID_ENV: &str = "ROTOR_FLEET_ID";
/// Longest instance id read back from a tagged process's environment.
const MAX_INSTANCE_ID: usize = 255;

/// The points of an instance's start, in the order rotor passes them: the `starting` record is
/// in place and nothing runs yet; the process was spawned, its pid not yet recorded; the
/// `running` record is written to its temp file, not yet renamed; renamed (recorded,
/// unpublished). Each is a test failpoint `instance.<consumer>.<point>` ([`failpoints`]).
pub const START_POINTS: [&str; 4] = ["before-spawn", "spawned", "before-rename", "renamed"];

/// The test failpoints of process consumer `consumer` (what `rotor failpoints` lists for it).
pub fn failpoints(consumer: &str) -> Vec<String> {
    START_POINTS
        .iter()
        .map(|p| format!("instance.{consumer}.{p}"))
        .collect()
}

/// Test-only: when `ROTOR_FAILPOINT` is `name`, rotor dies here with SIGKILL; when it is
/// `name:stop`, rotor stops itself here (SIGSTOP), so a test can deliver a real signal
/// (SIGKILL; SIGINT to its process group, as Ctrl-C does) at exactly this point, then SIGCONT.
fn failpoint(name: &str) {
    use nix::sys::signal::{Signal, raise};
    let Ok(want) = std::env::var("ROTOR_FAILPOINT") else {
        return;
    };
    if want == name {
        let _ = raise(Signal::SIGKILL);
    } else if want.strip_suffix(":stop") == Some(name) {
        let _ = raise(Signal::SIGSTOP);
    }
}

/// What a scan of `/proc` found of one process that carries this fleet's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tagged {
    /// Its `ROTOR_INSTANCE` (absent or unreadable: `None`; it is then no record's).
    instance: Option<String>,
    /// Fingerprint per slot or alias name its environment gives a value.
    names: BTreeMap<String, Fingerprint>,
}

/// Placeholder for the running rotor executable in `command[0]`.
const ROTOR_PLACEHOLDER: &str = "{rotor}";
/// Overrides the executable `{rotor}` stands for.
const ROTOR_EXE_ENV: &str = "ROTOR_EXE";

/// The rotor executable `{rotor}` stands for: `$ROTOR_EXE` when set, else this executable.
pub(crate) fn rotor_exe() -> std::io::Result<OsString> {
    match std::env::var_os(ROTOR_EXE_ENV) {
        Some(exe) if !exe.is_empty() => Ok(exe),
        _ => {
            let exe = std::env::current_exe()?;
            Ok(if exe.exists() {
                exe.into_os_string()
            } else {
                // The binary was replaced (an upgrade, a rebuild) while this rotor runs: Linux
                // still executes the running image through /proc/self/exe.
                OsString::from("/proc/self/exe")
            })
        }
    }
}

/// Per-process counter that keeps ids started within one millisecond apart.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How instances this rotor process spawned exited (adopted instances are not in here).
type Exits = Arc<Mutex<HashMap<String, watch::Receiver<Option<String>>>>>;

/// N local processes.
pub struct ProcessConsumer {
    name: String,
    role: Role,
    /// Secret name (fingerprint domain).
    secret: String,
    spec: ProcessSpec,
    slot_names: SlotNames,
    fingerprints_path: Option<String>,
    timings: Timings,
    /// `<state_dir>/fleet`, handed to instances as `ROTOR_FLEET_DIR`.
    fleet_dir: PathBuf,
    /// `<state_dir>/fleet/<consumer>`.
    layout: Layout,
    /// Working directory of instances (the playbook's directory when it exists).
    cwd: Option<PathBuf>,
    /// Serializes changes made by this rotor process (the flock covers other processes).
    serial: tokio::sync::Mutex<()>,
    exits: Exits,
    /// How rotor reaches its instances (plain HTTP unless it has `tls`).
    transport: Transport,
    /// How instances pick a change up (`reload` only with `delivery: file`).
    pickup: Pickup,
}

impl DesiredExt for Desired<'_> {
    fn matches(&self, r: &Record) -> bool {
        r.primary == self.primary && r.secondary == self.secondary && r.names == self.names
    }
}

trait DesiredExt {
    fn matches(&self, r: &Record) -> bool;
}

impl ProcessConsumer {
    /// Opens the consumer.
    pub fn new(
        playbook: &Playbook,
        spec: &ConsumerSpec,
        p: &ProcessSpec,
        transport: Transport,
    ) -> Self {
        let fleet_dir = playbook.state_dir.join("fleet");
        ProcessConsumer {
            name: spec.name.clone(),
            role: spec.role,
            secret: playbook.secret.clone(),
            spec: p.clone(),
            slot_names: spec.slots.clone(),
            fingerprints_path: spec.fingerprints_path.clone(),
            timings: playbook.timings.clone(),
            layout: Layout::new(&fleet_dir, &spec.name),
            fleet_dir,
            cwd: playbook
                .base_dir
                .is_dir()
                .then(|| playbook.base_dir.clone()),
            serial: tokio::sync::Mutex::new(()),
            exits: Arc::default(),
            transport,
            pickup: spec.pickup,
        }
    }

    /// Values reach instances as files.
    fn files(&self) -> bool {
        self.spec.delivery == Delivery::File
    }

    /// The signal a reload sends, when rollouts reload.
    fn reload_signal(&self) -> Option<StopSignal> {
        match self.pickup {
            Pickup::Reload if self.files() => self.spec.reload_signal,
            _ => None,
        }
    }

    fn secrets(&self, id: &str) -> SecretsDir {
        SecretsDir::new(self.layout.secrets_dir(id))
    }

    /// Writes `d` as instance `id`'s current files; returns the set it replaced.
    fn write_files(&self, id: &str, d: &Desired<'_>) -> Result<Option<String>, ConsumerError> {
        let values: Vec<(&str, &[u8])> = d
            .values
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose().as_bytes()))
            .collect();
        self.secrets(id)
            .write(&self.slot_env_names(), &values)
            .map_err(self.io(format!("writing the files of instance {id}")))
    }

    /// Fingerprint per name of what instance `id`'s files hold now (`None` when they cannot be
    /// read: they then match nothing).
    fn files_held(&self, id: &str) -> Option<BTreeMap<String, Fingerprint>> {
        let read = self.secrets(id).read(&self.slot_env_names()).ok()?;
        let mut out = BTreeMap::new();
        for (name, bytes) in read {
            let value = SecretValue::new(String::from_utf8(bytes).ok()?);
            out.insert(name, value.fingerprint(&self.secret));
        }
        Some(out)
    }

    /// Whether `r` holds `d`: its record, and with `delivery: file` its files too.
    fn holds(&self, r: &Record, d: &Desired<'_>) -> bool {
        d.matches(r) && (!self.files() || self.files_held(&r.id).as_ref() == Some(&d.names))
    }
    fn io(&self, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConsumerError + '_ {
        let action = action.into();
        move |source| ConsumerError::Io {
            consumer: self.name.clone(),
            action,
            source,
        }
    }

    /// The fingerprints and environment the slots turn into for this consumer.
    fn desired<'a>(&self, slots: &'a Slots) -> Desired<'a> {
        Desired::new(&self.slot_names, &self.secret, slots)
    }

    /// Every slot and alias name (whatever the slots hold now): never inherited from rotor.
    fn slot_env_names(&self) -> Vec<&str> {
        slot_names(&self.slot_names)
    }

    /// argv with `{rotor}` resolved.
    fn argv(&self) -> Result<Vec<OsString>, ConsumerError> {
        let Some(first) = self.spec.command.first() else {
            return Err(ConsumerError::Spawn {
                consumer: self.name.clone(),
                program: String::new(),
                detail: "the command is empty".into(),
            });
        };
        let program: OsString = if first == ROTOR_PLACEHOLDER {
            rotor_exe().map_err(|e| ConsumerError::Spawn {
                consumer: self.name.clone(),
                program: first.clone(),
                detail: format!("cannot find the rotor executable: {e}"),
            })?
        } else {
            first.into()
        };
        Ok(std::iter::once(program)
            .chain(self.spec.command[1..].iter().map(OsString::from))
            .collect())
    }

    /// A fresh instance id, unused by any record or log of this consumer.
    fn new_id(&self) -> String {
        loop {
            let millis = chrono::Utc::now().timestamp_millis();
            let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 10_000;
            let id = format!("{}-{millis}-{n:04}", self.name);
            if !self.layout.record_path(&id).exists()
                && !self.layout.log_path(&id).exists()
                && !self.layout.secrets_dir(&id).exists()
            {
                return id;
            }
        }
    }

    /// Whether `id` has the shape [`ProcessConsumer::new_id`] gives ids
    /// (`<consumer>-<digits>-<digits>`, bounded): only such an id read back from a process
    /// names a record or a secrets directory.
    fn is_instance_id(&self, id: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        id.len() <= MAX_INSTANCE_ID
            && id
                .strip_prefix(self.name.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.split_once('-'))
                .is_some_and(|(millis, n)| digits(millis) && digits(n))
    }

    /// A free port on the consumer's host (bind port 0, read it, release it).
    fn free_port(&self) -> Result<u16, ConsumerError> {
        TcpListener::bind((self.spec.host, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(self.io(format!("choosing a port on {}", self.spec.host)))
    }

    /// Starts one instance holding `d` and records it (unpublished). Does not wait for it.
    ///
    /// Its record comes first (`starting`, no pid), then the process (tagged), then the record
    /// with its pid: a rotor killed anywhere in between leaves a record or a tag, or both, for
    /// the next [`ProcessConsumer::reconcile`] to find (the [`START_POINTS`]).
    fn spawn(&self, d: &Desired<'_>) -> Result<Record, ConsumerError> {
        self.layout
            .create()
            .map_err(self.io("creating the fleet directories"))?;
        let fleet_id = self.layout.ensure_fleet_id().map_err(self.io(format!(
            "creating the fleet's tag {}",
            self.layout.fleet_id_path().display()
        )))?;
        let argv = self.argv()?;
        let program = argv[0].to_string_lossy().into_owned();
        let spawn_err = |detail: String| ConsumerError::Spawn {
            consumer: self.name.clone(),
            program: program.clone(),
            detail,
        };
        let id = self.new_id();
        let addr = SocketAddr::new(self.spec.host, self.free_port()?);
        let log = self
            .layout
            .open_log(&id)
            .map_err(self.io(format!("opening {}", self.layout.log_path(&id).display())))?;
        let log_err = log
            .try_clone()
            .map_err(self.io(format!("opening {}", self.layout.log_path(&id).display())))?;

        let mut extra = vec![
            ("HOST", OsString::from(self.spec.host.to_string())),
            ("PORT", OsString::from(addr.port().to_string())),
            ("ROTOR_FLEET_DIR", self.fleet_dir.clone().into_os_string()),
            ("ROTOR_CONSUMER", OsString::from(&self.name)),
            ("ROTOR_INSTANCE", OsString::from(&id)),
            ("ROTOR_SECRET", OsString::from(&self.secret)),
            (FLEET_ID_ENV, OsString::from(&fleet_id)),
        ];
        // With files, the values are in the directory and none in the environment.
        let values: &[(String, &SecretValue)] = if self.files() {
            if let Err(e) = self.write_files(&id, d) {
                // Nothing runs yet: the partial directory goes now, not at a later reconcile.
                let _ = self.layout.remove_secrets(&id);
                return Err(e);
            }
            extra.push((
                "ROTOR_SECRETS_DIR",
                self.layout.secrets_dir(&id).into_os_string(),
            ));
            &[]
        } else {
            &d.values
        };
        let env = child_env(
            std::env::vars_os(),
            &self.slot_env_names(),
            &self.spec.env,
            &extra,
            values,
        );

        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut rec = Record {
            id: id.clone(),
            state: RecordState::Starting,
            pid: 0,
            pid_start_ticks: 0,
            addr,
            primary: d.primary.clone(),
            secondary: d.secondary.clone(),
            names: d.names.clone(),
            published: false,
            started_at: chrono::Utc::now(),
        };
        // Recorded before it can run: from here on a crash leaves at least this record.
        if let Err(e) = self.layout.write_record(&rec) {
            let _ = self.layout.remove_secrets(&id);
            return Err(self.io(format!("recording instance {id}"))(e));
        }
        let point = |p: &str| failpoint(&format!("instance.{}.{p}", self.name));
        point(START_POINTS[0]);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = self.layout.remove_record(&id);
                let _ = self.layout.remove_secrets(&id);
                return Err(spawn_err(e.to_string()));
            }
        };
        point(START_POINTS[1]);
        // Not waited for yet, so the pid is ours (at worst a zombie) until the reaper below runs.
        let identity = child
            .id()
            .and_then(|pid| Some((pid as i32, os::stat(pid as i32)?)));
        // Reap it while this rotor lives; readiness reads the exit status from here.
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown exit status ({e})"),
            };
            let _ = tx.send(Some(status));
        });
        let Some((pid, stat)) = identity else {
            // Helpers it forked, if any, carry the tag: the next reconcile ends them.
            let _ = self.layout.remove_record(&id);
            let _ = self.layout.remove_secrets(&id);
            return Err(spawn_err(
                "the process vanished before it could be recorded".into(),
            ));
        };
        rec.state = RecordState::Running;
        rec.pid = pid;
        rec.pid_start_ticks = stat.start_ticks;
        if let Err(e) = self
            .layout
            .write_record_then(&rec, || point(START_POINTS[2]))
        {
            os::kill_now(pid, stat.start_ticks);
            // The `starting` record stays: a helper outside the group may outlive the kill, and
            // the next reconcile ends whatever carries the tag, then removes the record.
            let _ = self.layout.remove_secrets(&id);
            return Err(self.io(format!("recording instance {id}"))(e));
        }
        point(START_POINTS[3]);
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, rx);
        Ok(rec)
    }

    /// The exit status of an instance this rotor spawned, waiting up to `limit` for the
    /// reaper to collect it. `None` for adopted instances.
    async fn exit_status(&self, id: &str, limit: Duration) -> Option<String> {
        let mut rx = {
            let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
            exits.get(id)?.clone()
        };
        let status = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        status.ok()?.ok()?.clone()
    }

    /// Waits until `rec` answers its health check with 200, up to the readiness timeout (or
    /// `deadline`, whichever is first). On failure the instance is stopped and its record
    /// removed.
    async fn wait_ready(&self, rec: &Record, deadline: Instant) -> Result<(), ConsumerError> {
        let timeout = self.timings.readiness_timeout;
        let started = Instant::now();
        // (A readiness timeout too long to add is bounded by the rollout's deadline.)
        let ready_by = started.checked_add(timeout).unwrap_or(deadline);
        let until = ready_by.min(deadline);
        let at = self.transport.at(rec.addr);
        let url = at.url(&self.spec.health_path);
        let client = at.client();
        let log = self.layout.log_path(&rec.id);
        let mut last = String::from("no answer yet");
        // The last check that got an answer (a status, or a failure other than a timeout).
        let mut answered: Option<String> = None;
        let failure = loop {
            if !os::alive(rec.pid, rec.pid_start_ticks) {
                let status = self
                    .exit_status(&rec.id, Duration::from_millis(500))
                    .await
                    .unwrap_or_else(|| "exit status unknown".into());
                break format!(
                    "the process exited ({status}) before it was ready; log: {}",
                    log.display()
                );
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if Instant::now() >= deadline && ready_by > deadline {
                    self.discard(rec).await?;
                    return Err(self.rollout_timeout());
                }
                break format!("last health check: {last}; log: {}", log.display());
            }
            match client
                .get(&url)
                .timeout(left.min(HEALTH_REQUEST_TIMEOUT))
                .send()
                .await
            {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) => {
                    last = format!("GET {url} answered {}", r.status());
                    answered = Some(last.clone());
                }
                // A check cut short by its deadline says less than the answer before it (on a
                // busy machine the last check may be the slow one): keep that answer too.
                Err(e) if e.is_timeout() => {
                    last = format!("GET {url} timed out");
                    if let Some(a) = &answered {
                        last.push_str(&format!(" (the check before: {a})"));
                    }
                }
                Err(e) => {
                    last = format!("GET {url} failed: {}", http_failure(&e));
                    answered = Some(last.clone());
                }
            }
            tokio::time::sleep(READY_POLL.min(until.saturating_duration_since(Instant::now())))
                .await;
        };
        self.discard(rec).await?;
        Err(ConsumerError::NotReady {
            consumer: self.name.clone(),
            instance: rec.id.clone(),
            timeout,
            detail: failure,
        })
    }

    fn rollout_timeout(&self) -> ConsumerError {
        ConsumerError::RolloutTimeout {
            consumer: self.name.clone(),
            timeout: self.timings.rollout_timeout,
        }
    }

    /// Stops an instance (no drain) and removes its record.
    /// Forgets instance `id`: its record, its remembered exit and its secret files.
    fn forget(&self, id: &str) -> Result<(), ConsumerError> {
        self.layout
            .remove_record(id)
            .map_err(self.io(format!("removing the record of instance {id}")))?;
        self.forget_exit(id);
        self.layout
            .remove_secrets(id)
            .map_err(self.io(format!("removing the files of instance {id}")))
    }

    /// What an interrupted start leaves, cleared (under the fleet's lock): every process with
    /// the fleet's tag that `keep` does not account for is ended (those of `starting` records
    /// included), the `starting` records forgotten, stale temp files and the secret files of
    /// instances not in `keep` removed. Returns how many processes were ended.
    async fn clear_interrupted<'r>(
        &self,
        keep: &[Record],
        starting: impl IntoIterator<Item = &'r Record>,
    ) -> Result<usize, ConsumerError> {
        let ended = self.end_unrecorded(keep).await?;
        for rec in starting {
            tracing::info!(consumer = %self.name, instance = %rec.id,
                "removing the record of an instance whose start was interrupted");
            self.forget(&rec.id)?;
        }
        self.remove_stale_temps()?;
        self.remove_orphan_secrets(keep)?;
        Ok(ended)
    }

    async fn discard(&self, rec: &Record) -> Result<(), ConsumerError> {
        os::terminate(
            rec.pid,
            rec.pid_start_ticks,
            os::stop_signal(self.spec.stop_signal),
        )
        .await;
        self.forget(&rec.id)?;
        Ok(())
    }

    fn forget_exit(&self, id: &str) {
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Writes the endpoints of the published records (id order), if they changed.
    fn publish_set(&self, records: &[Record]) -> Result<(), ConsumerError> {
        let addrs = records
            .iter()
            .filter(|r| r.published)
            .map(|r| r.addr)
            .collect();
        self.layout
            .set_endpoints(addrs)
            .map(|_| ())
            .map_err(self.io("writing endpoints.json"))
    }

    /// Marks `rec` published (record first, then endpoints: a crash in between is repaired by
    /// the next reconcile, which lists every published record).
    fn publish(&self, fleet: &mut Vec<Record>, mut rec: Record) -> Result<(), ConsumerError> {
        rec.published = true;
        self.layout
            .write_record(&rec)
            .map_err(self.io(format!("publishing instance {}", rec.id)))?;
        fleet.push(rec);
        fleet.sort_by(|a, b| a.id.cmp(&b.id));
        self.publish_set(fleet)
    }

    /// Takes `id` out of the endpoints (endpoints first, then the record), lets it drain, stops
    /// it and removes its record. Returns the time spent draining.
    async fn retire(
        &self,
        fleet: &mut Vec<Record>,
        id: &str,
        drain: bool,
    ) -> Result<Duration, ConsumerError> {
        let Some(pos) = fleet.iter().position(|r| r.id == id) else {
            return Ok(Duration::ZERO);
        };
        let mut rec = fleet.remove(pos);
        self.publish_set(fleet)?;
        rec.published = false;
        self.layout
            .write_record(&rec)
            .map_err(self.io(format!("unpublishing instance {}", rec.id)))?;
        let mut waited = Duration::ZERO;
        if drain && !self.timings.drain.is_zero() {
            let t = Instant::now();
            tokio::time::sleep(self.timings.drain).await;
            waited = t.elapsed();
        }
        self.discard(&rec).await?;
        Ok(waited)
    }

    /// Repairs the fleet after anything (crash, kill, a rotor killed mid-rollout): drops records
    /// of dead processes, stops live instances that were never published (drained first if
    /// they are still listed), ends every process carrying the fleet's tag that no published
    /// record accounts for (an interrupted start: a `starting` record or none), removes stale
    /// temp files, and makes `endpoints.json` list exactly the live published records. Writes
    /// nothing when everything already agrees. Returns the published fleet. Only under the
    /// fleet's lock.
    async fn reconcile(&self, waited: &mut Duration) -> Result<Vec<Record>, ConsumerError> {
        // A tag that cannot be read stops the repair before it changes anything.
        self.fleet_tag()?;
        let records = self
            .layout
            .load_records()
            .map_err(self.io("reading instance records"))?;
        let listed = self
            .layout
            .load_endpoints()
            .map_err(self.io("reading endpoints.json"))?
            .endpoints;
        let mut fleet = Vec::new();
        let mut stray = Vec::new();
        let mut starting = Vec::new();
        for rec in records {
            if rec.state == RecordState::Starting {
                // Its rotor died while starting it (this one holds the lock): whatever runs
                // with its tag is ended below, then the record goes.
                starting.push(rec);
            } else if !os::alive(rec.pid, rec.pid_start_ticks) {
                tracing::info!(consumer = %self.name, instance = %rec.id, pid = rec.pid,
                    "dropping the record of an instance that is no longer running");
                self.forget(&rec.id)?;
            } else if rec.published {
                fleet.push(rec);
            } else {
                stray.push(rec);
            }
        }
        self.publish_set(&fleet)?;
        let drain = stray.iter().any(|r| listed.contains(&r.addr));
        if drain && !self.timings.drain.is_zero() {
            let t = Instant::now();
            tokio::time::sleep(self.timings.drain).await;
            *waited += t.elapsed();
        }
        for rec in stray {
            tracing::info!(consumer = %self.name, instance = %rec.id,
                "stopping an instance that was started but never published");
            self.discard(&rec).await?;
        }
        self.clear_interrupted(&fleet, &starting).await?;
        Ok(fleet)
    }

    /// The fleet's tag, if it has one (a malformed tag file is an error).
    fn fleet_tag(&self) -> Result<Option<String>, ConsumerError> {
        self.layout.fleet_id().map_err(self.io(format!(
            "reading the fleet's tag {}",
            self.layout.fleet_id_path().display()
        )))
    }

    /// Every running process that carries this fleet's tag (`ROTOR_FLEET_ID` and
    /// `ROTOR_CONSUMER`), recorded or not, with what its environment holds (none at all when
    /// the fleet never had a tag: no instance was started with one).
    fn tagged(&self) -> Result<Vec<os::Found<Tagged>>, ConsumerError> {
        let Some(fleet_id) = self.fleet_tag()? else {
            return Ok(Vec::new());
        };
        let names = self.slot_env_names();
        Ok(os::scan(|env| {
            if env.get(FLEET_ID_ENV)? != fleet_id.as_bytes()
                || env.get("ROTOR_CONSUMER")? != self.name.as_bytes()
            {
                return None;
            }
            // Read from the process's memory: used as a name only when it has an id's shape.
            let instance = env
                .get("ROTOR_INSTANCE")
                .and_then(|i| std::str::from_utf8(i).ok())
                .filter(|i| self.is_instance_id(i))
                .map(str::to_string);
            let names = names
                .iter()
                .filter_map(|n| {
                    let v = std::str::from_utf8(env.get(n)?).ok()?;
                    Some((n.to_string(), Fingerprint::of(&self.secret, v)))
                })
                .collect();
            Some(Tagged { instance, names })
        }))
    }

    /// Ends every process that carries the fleet's tag but belongs to none of `keep` (the
    /// running records that stay): instances whose start was interrupted, and whatever they
    /// or a stopped instance left running. Returns how many it ended. Only under the fleet's
    /// lock (no start of this fleet is in flight).
    async fn end_unrecorded(&self, keep: &[Record]) -> Result<usize, ConsumerError> {
        let mut ended = 0;
        for p in self.tagged()? {
            let id = p.what.instance.as_deref();
            if id.is_some_and(|id| keep.iter().any(|r| r.id == id)) {
                continue;
            }
            tracing::warn!(consumer = %self.name, pid = p.pid, instance = id.unwrap_or("?"),
                "stopping a process of the fleet that no running record accounts for");
            if os::terminate(p.pid, p.start_ticks, os::stop_signal(self.spec.stop_signal)).await {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Removes the temp files a killed rotor left (under the fleet's lock).
    fn remove_stale_temps(&self) -> Result<(), ConsumerError> {
        let n = self
            .layout
            .remove_stale_temps()
            .map_err(self.io("removing stale temporary files"))?;
        if n > 0 {
            tracing::info!(consumer = %self.name, files = n,
                "removed temporary files left by an interrupted write");
        }
        Ok(())
    }

    /// Removes the secrets directories of instances that have no record (left by a rotor
    /// killed between writing them and recording the instance).
    fn remove_orphan_secrets(&self, fleet: &[Record]) -> Result<(), ConsumerError> {
        let ids = self
            .layout
            .secrets_ids()
            .map_err(self.io("listing the secrets directories"))?;
        for id in ids {
            if !fleet.iter().any(|r| r.id == id) && !self.layout.record_path(&id).exists() {
                self.layout
                    .remove_secrets(&id)
                    .map_err(self.io(format!("removing the files of instance {id}")))?;
            }
        }
        Ok(())
    }

    /// The convergence itself (see [`Consumer::apply`]); `deadline` bounds readiness waits.
    async fn converge(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
        deadline: Instant,
    ) -> Result<RolloutReport, ConsumerError> {
        let _serial = self.serial.lock().await;
        self.layout
            .create()
            .map_err(self.io("creating the fleet directories"))?;
        let Some(_flock) = self
            .layout
            .lock(deadline)
            .await
            .map_err(self.io("locking the fleet directory"))?
        else {
            return Err(self.rollout_timeout());
        };
        let want = self.spec.instances;
        let d = self.desired(slots);
        let mut report = RolloutReport::default();
        let mut fleet = self.reconcile(&mut report.waited).await?;

        // Stale: holds other values, or holds the right ones but fails its proof (an instance
        // that broke after it was proven, or one published before gates existed). A failing
        // instance keeps serving until a proven replacement is published.
        let mut stale = Vec::new();
        for r in &fleet {
            if !self.holds(r, &d)
                || pass_gate(gate, &self.name, &r.id, r.addr, events)
                    .await
                    .is_err()
            {
                stale.push(r.id.clone());
            }
        }
        let mut matching = fleet.len() - stale.len();
        // Every stale instance is replaced while fewer than `want` match; then top up.
        let starts = stale.len().min(want.saturating_sub(matching))
            + want.saturating_sub(matching + stale.len());
        if stale.is_empty() && matching == want {
            return Ok(report);
        }
        if let Some(signal) = self.reload_signal() {
            // Reload: every stale instance in place, one at a time; then top up or retire.
            events.emit(&Event::RolloutStarted {
                consumer: self.name.clone(),
                instances: stale.len() + want.saturating_sub(fleet.len()),
            });
            for id in stale {
                self.stop_point()?;
                let Some(pos) = fleet.iter().position(|r| r.id == id) else {
                    continue;
                };
                if self.secrets(&id).current().is_none() {
                    // Started without files (the playbook said `delivery: env` then): it cannot
                    // re-read anything, so it is replaced like a restart would.
                    let new = self
                        .start_ready(&d, gate, events, deadline, &mut report)
                        .await?;
                    let new_id = new.id.clone();
                    self.publish(&mut fleet, new)?;
                    report.waited += self.retire(&mut fleet, &id, true).await?;
                    self.replaced(events, Some(id), new_id, &d);
                    continue;
                }
                let rec = self
                    .reload(&fleet[pos], signal, &d, gate, events, deadline, &mut report)
                    .await?;
                fleet[pos] = rec;
            }
            // Every instance now holds the desired values; top up or retire below.
            matching = fleet.len();
        } else {
            events.emit(&Event::RolloutStarted {
                consumer: self.name.clone(),
                instances: starts,
            });
            // Restart: each stale instance is replaced by a proven new one (started before the
            // old one is retired), or retired when `want` instances already match.
            for old in stale {
                self.stop_point()?;
                if matching >= want {
                    report.waited += self.retire(&mut fleet, &old, true).await?;
                    continue;
                }
                let new = self
                    .start_ready(&d, gate, events, deadline, &mut report)
                    .await?;
                let new_id = new.id.clone();
                self.publish(&mut fleet, new)?;
                matching += 1;
                report.waited += self.retire(&mut fleet, &old, true).await?;
                self.replaced(events, Some(old), new_id, &d);
            }
        }
        while matching < want {
            self.stop_point()?;
            let new = self
                .start_ready(&d, gate, events, deadline, &mut report)
                .await?;
            let new_id = new.id.clone();
            self.publish(&mut fleet, new)?;
            matching += 1;
            self.replaced(events, None, new_id, &d);
        }
        while matching > want {
            let Some(extra) = fleet.first().map(|r| r.id.clone()) else {
                break;
            };
            report.waited += self.retire(&mut fleet, &extra, true).await?;
            matching -= 1;
        }

        events.emit(&Event::RolloutFinished {
            consumer: self.name.clone(),
            restarts: report.restarts,
        });
        Ok(report)
    }

    /// Between two instances of a rollout: stops when a stop was asked (the instance before
    /// this point finished, proven and published; the next one is not begun).
    fn stop_point(&self) -> Result<(), ConsumerError> {
        match crate::stop::requested() {
            Some(signal) => Err(ConsumerError::Stopped {
                consumer: self.name.clone(),
                signal,
            }),
            None => Ok(()),
        }
    }

    /// Reloads one running instance onto `d`: rewrites its files, sends it `signal`, and proves
    /// it (health check; the fingerprints it reports, if it can; `gate`) within the readiness
    /// timeout. Returns its record, updated once proven. On failure its previous files are
    /// restored and it is signalled again, so it goes back to what it held; the error is the
    /// failed proof's. Never restarts it.
    #[allow(clippy::too_many_arguments)]
    async fn reload(
        &self,
        rec: &Record,
        signal: StopSignal,
        d: &Desired<'_>,
        gate: &dyn Gate,
        events: &dyn EventSink,
        deadline: Instant,
        report: &mut RolloutReport,
    ) -> Result<Record, ConsumerError> {
        if Instant::now() >= deadline {
            return Err(self.rollout_timeout());
        }
        let dir = self.secrets(&rec.id);
        // The current set can be restored after a failed proof only if it is what the record
        // says the instance holds: after a kill between writing and signalling, it holds values
        // the instance was never proven with, and the rollback rewrites the record's instead.
        let restorable = self.files_held(&rec.id).as_ref() == Some(&rec.names);
        let previous = self.write_files(&rec.id, d)?.filter(|_| restorable);
        // Test-only: `ROTOR_FAILPOINT=reload.<consumer>.written` kills rotor here, with the files
        // rewritten and the instance not yet signalled.
        failpoint(&format!("reload.{}.written", self.name));
        let sig = os::stop_signal(signal);
        report.restarts += 1;
        tracing::info!(consumer = %self.name, instance = %rec.id, pid = rec.pid,
            signal = signal.name(), "reloading instance");
        let t = Instant::now();
        let proof = if os::signal_process(rec.pid, rec.pid_start_ticks, sig) {
            self.prove_reload(rec, d, sig, gate, events, deadline).await
        } else {
            Err(self.not_reloaded(rec, "the process is not running".into()))
        };
        report.waited += t.elapsed();
        match proof {
            Ok(()) => {
                let mut next = rec.clone();
                next.primary = d.primary.clone();
                next.secondary = d.secondary.clone();
                next.names = d.names.clone();
                self.layout
                    .write_record(&next)
                    .map_err(self.io(format!("recording instance {}", rec.id)))?;
                dir.prune(None)
                    .map_err(self.io(format!("removing the old files of instance {}", rec.id)))?;
                events.emit(&Event::InstanceReloaded {
                    consumer: self.name.clone(),
                    instance: rec.id.clone(),
                    signal: signal.name().to_string(),
                    primary: d.primary.clone(),
                    secondary: d.secondary.clone(),
                });
                Ok(next)
            }
            Err(e) => {
                tracing::warn!(consumer = %self.name, instance = %rec.id, error = %e,
                    "the reload failed its proof; restoring the instance's previous files");
                let names = self.slot_env_names();
                let restored = match &previous {
                    Some(v) => dir.activate(v, &names),
                    // No earlier set that the record vouches for (see `restorable`): the
                    // record's values are not known here, so leave the files to the rollback,
                    // which rewrites them.
                    None => Ok(()),
                };
                restored.map_err(self.io(format!("restoring the files of instance {}", rec.id)))?;
                if previous.is_some() && os::signal_process(rec.pid, rec.pid_start_ticks, sig) {
                    // Best effort: it answers again before the rollout's failure is reported.
                    let until = Instant::now()
                        .checked_add(self.timings.readiness_timeout)
                        .unwrap_or(deadline)
                        .min(deadline);
                    let _ = self.poll_health(rec, until).await;
                }
                if let Some(v) = dir.current() {
                    let _ = dir.prune(Some(&v));
                }
                Err(e)
            }
        }
    }

    /// Sends `sig` to `rec` again (see [`Resignal`]), logging it.
    fn signal_again(&self, rec: &Record, sig: nix::sys::signal::Signal) {
        tracing::info!(consumer = %self.name, instance = %rec.id, pid = rec.pid,
            signal = %sig, "the reload has not taken yet; signalling the instance again");
        let _ = os::signal_process(rec.pid, rec.pid_start_ticks, sig);
    }

    /// Whether an instance's report says it holds `d`: the primary's and the secondary's names
    /// carry `d`'s fingerprints (a name without a value is absent from both). Aliases are not
    /// compared: a program may not report every name the playbook declares.
    fn reports(&self, held: &Held, d: &Desired<'_>) -> bool {
        std::iter::once(&self.slot_names.primary)
            .chain(self.slot_names.secondary.as_ref())
            .all(|n| held.names.get(n) == d.names.get(n))
    }

    fn not_reloaded(&self, rec: &Record, detail: String) -> ConsumerError {
        ConsumerError::NotReady {
            consumer: self.name.clone(),
            instance: rec.id.clone(),
            timeout: self.timings.readiness_timeout,
            detail: format!(
                "after the reload: {detail}; log: {}",
                self.layout.log_path(&rec.id).display()
            ),
        }
    }

    /// The proof of a reloaded instance, up to the readiness timeout: it answers its health
    /// check, reports what `d` holds (when it reports fingerprints), and passes `gate` (asked
    /// again while it fails without failing open: a server may take a moment to swap its
    /// workers).
    #[allow(clippy::too_many_arguments)]
    async fn prove_reload(
        &self,
        rec: &Record,
        d: &Desired<'_>,
        sig: nix::sys::signal::Signal,
        gate: &dyn Gate,
        events: &dyn EventSink,
        deadline: Instant,
    ) -> Result<(), ConsumerError> {
        let until = Instant::now()
            .checked_add(self.timings.readiness_timeout)
            .unwrap_or(deadline)
            .min(deadline);
        let mut resignal = Resignal::new(until);
        self.poll_health(rec, until)
            .await
            .map_err(|detail| self.not_reloaded(rec, detail))?;
        if let Some(path) = &self.fingerprints_path {
            let at = self.transport.at(rec.addr);
            // The last answer, kept over a check cut short by the deadline (as for readiness).
            let mut answered: Option<String> = None;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let last = match report_held(at, path, left.min(self.timings.probe_timeout)).await {
                    Ok(held) if self.reports(&held, d) => break,
                    Ok(_) => {
                        let a = format!("GET {path} still reports other fingerprints");
                        answered = Some(a.clone());
                        a
                    }
                    Err(e) => match &answered {
                        Some(a) if e.contains("timed out") => {
                            format!("{e} (the check before: {a})")
                        }
                        _ => e,
                    },
                };
                if Instant::now() >= until {
                    return Err(self.not_reloaded(rec, last));
                }
                resignal.poll(self, rec, sig);
                tokio::time::sleep(READY_POLL.min(until.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        loop {
            let started = Instant::now();
            let result = gate.prove(&rec.id, rec.addr.into()).await;
            let last_try = Instant::now() >= until;
            let (passed, detail) = match &result {
                Ok(d) => (true, d.clone()),
                Err(r) => (false, r.detail.clone()),
            };
            if passed || last_try || result.as_ref().is_err_and(|r| r.fails_open) {
                events.emit(&Event::InstanceGated {
                    consumer: self.name.clone(),
                    instance: rec.id.clone(),
                    passed,
                    detail,
                    millis: started.elapsed().as_secs_f64() * 1000.0,
                });
                return result.map(|_| ()).map_err(|r| ConsumerError::Gate {
                    consumer: self.name.clone(),
                    instance: rec.id.clone(),
                    detail: r.detail,
                    fails_open: r.fails_open,
                });
            }
            resignal.poll(self, rec, sig);
            tokio::time::sleep(READY_POLL.min(until.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Polls `rec`'s health check until it answers 200 (`Ok`) or `until` passes (`Err` with the
    /// last answer). For a running instance: nothing is stopped.
    async fn poll_health(&self, rec: &Record, until: Instant) -> Result<(), String> {
        let at = self.transport.at(rec.addr);
        let url = at.url(&self.spec.health_path);
        let client = at.client();
        let mut last = String::from("no answer yet");
        loop {
            if !os::alive(rec.pid, rec.pid_start_ticks) {
                let status = self
                    .exit_status(&rec.id, Duration::from_millis(500))
                    .await
                    .unwrap_or_else(|| "exit status unknown".into());
                return Err(format!("the process exited ({status})"));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("last health check: {last}"));
            }
            match client
                .get(&url)
                .timeout(left.min(HEALTH_REQUEST_TIMEOUT))
                .send()
                .await
            {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("GET {url} answered {}", r.status()),
                Err(e) => last = format!("GET {url} failed: {}", http_failure(&e)),
            }
            tokio::time::sleep(READY_POLL.min(until.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Starts one instance, waits until it is ready, then proves it through `gate` at its own
    /// address while it is still unpublished (counted as a restart). An instance that fails
    /// the gate is stopped and never published.
    async fn start_ready(
        &self,
        d: &Desired<'_>,
        gate: &dyn Gate,
        events: &dyn EventSink,
        deadline: Instant,
        report: &mut RolloutReport,
    ) -> Result<Record, ConsumerError> {
        if Instant::now() >= deadline {
            return Err(self.rollout_timeout());
        }
        let rec = self.spawn(d)?;
        report.restarts += 1;
        tracing::info!(consumer = %self.name, instance = %rec.id, pid = rec.pid, addr = %rec.addr,
            "started instance");
        let t = Instant::now();
        let ready = self.wait_ready(&rec, deadline).await;
        report.waited += t.elapsed();
        ready?;
        if let Err(e) = pass_gate(gate, &self.name, &rec.id, rec.addr, events).await {
            self.discard(&rec).await?;
            return Err(e);
        }
        Ok(rec)
    }

    fn replaced(&self, events: &dyn EventSink, old: Option<String>, new: String, d: &Desired<'_>) {
        events.emit(&Event::InstanceReplaced {
            consumer: self.name.clone(),
            old,
            new,
            primary: d.primary.clone(),
            secondary: d.secondary.clone(),
        });
    }

    /// After a rollout was cut off by its deadline: stop what it left half-done (instances
    /// started or unpublished but not yet stopped). Published instances keep serving.
    async fn cleanup_after_timeout(&self) {
        let _serial = self.serial.lock().await;
        // Only if no other rotor holds the fleet (it may be the reason for the timeout).
        let Ok(Some(_flock)) = self.layout.lock(Instant::now()).await else {
            return;
        };
        let mut waited = Duration::ZERO;
        if let Err(e) = self.reconcile(&mut waited).await {
            tracing::warn!(consumer = %self.name, error = %e, "cleanup after a rollout timeout failed");
        }
    }

    /// Live published records.
    fn serving(&self) -> Result<Vec<Record>, ConsumerError> {
        Ok(self
            .layout
            .load_records()
            .map_err(self.io("reading instance records"))?
            .into_iter()
            .filter(|r| r.published && os::alive(r.pid, r.pid_start_ticks))
            .collect())
    }

    /// What a process of instance `id` holds: with `delivery: file` its files (while they
    /// exist), otherwise `environment` (its environment, or its record).
    fn leftover_names(
        &self,
        id: &str,
        environment: impl FnOnce() -> BTreeMap<String, Fingerprint>,
    ) -> BTreeMap<String, Fingerprint> {
        if self.files()
            && let Some(names) = self.files_held(id)
        {
            return names;
        }
        environment()
    }

    fn record(&self, id: &str) -> Result<Record, ConsumerError> {
        let path = self.layout.record_path(id);
        let bytes = std::fs::read(&path).map_err(|e| ConsumerError::Observe {
            consumer: self.name.clone(),
            instance: id.to_string(),
            detail: format!("no record at {}: {e}", path.display()),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ConsumerError::Observe {
            consumer: self.name.clone(),
            instance: id.to_string(),
            detail: format!("unreadable record {}: {e}", path.display()),
        })
    }
}

#[async_trait]
impl Consumer for ProcessConsumer {
    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        self.role
    }

    fn pickup(&self) -> Pickup {
        if self.reload_signal().is_some() {
            Pickup::Reload
        } else {
            Pickup::Restart
        }
    }

    /// Idempotent convergence, one instance at a time, bounded by the rollout timeout:
    /// reconcile, replace every published instance that does not hold `slots` (start new, wait
    /// ready, publish, unpublish old, drain, stop old), then start or retire instances until
    /// exactly the configured number is published. Changes nothing when nothing differs.
    async fn apply(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError> {
        let limit = self.timings.rollout_timeout;
        let deadline = super::deadline_after(limit);
        let result =
            match tokio::time::timeout(limit, self.converge(slots, gate, events, deadline)).await {
                Ok(r) => r,
                Err(_elapsed) => Err(self.rollout_timeout()),
            };
        if matches!(result, Err(ConsumerError::RolloutTimeout { .. })) {
            self.cleanup_after_timeout().await;
        }
        result
    }

    async fn desired_instances(&self) -> Result<usize, ConsumerError> {
        Ok(self.spec.instances)
    }

    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError> {
        Ok(self
            .serving()?
            .into_iter()
            .map(|r| Instance {
                id: r.id,
                addr: Some(r.addr),
                primary: Some(r.primary),
                secondary: r.secondary,
                pid: Some(r.pid),
                host: None,
            })
            .collect())
    }

    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError> {
        let rec = self.record(&instance.id)?;
        let observe = |detail: String| ConsumerError::Observe {
            consumer: self.name.clone(),
            instance: instance.id.clone(),
            detail,
        };
        if let Some(path) = &self.fingerprints_path {
            let held = report_held(
                self.transport.at(rec.addr),
                path,
                self.timings.probe_timeout,
            )
            .await
            .map_err(observe)?;
            return Ok((held, HeldSource::Reported));
        }
        // With files, what the files hold now is what the instance was configured with.
        if self.files()
            && let Some(names) = self.files_held(&rec.id)
            && let Some(primary) = names.get(&self.slot_names.primary).cloned()
        {
            let secondary = self
                .slot_names
                .secondary
                .as_ref()
                .and_then(|n| names.get(n).cloned());
            let held = configured_held(self.role, names, primary, secondary);
            return Ok((held, HeldSource::Configured));
        }
        let held = configured_held(self.role, rec.names, rec.primary, rec.secondary);
        Ok((held, HeldSource::Configured))
    }

    /// Unpublishes every instance, stops them all (no drain) and removes their records.
    /// Returns how many were running.
    async fn stop(&self) -> Result<usize, ConsumerError> {
        let _serial = self.serial.lock().await;
        if !self.layout.dir.exists() {
            return Ok(0);
        }
        let deadline = super::deadline_after(self.timings.rollout_timeout);
        let Some(_flock) = self
            .layout
            .lock(deadline)
            .await
            .map_err(self.io("locking the fleet directory"))?
        else {
            return Err(self.rollout_timeout());
        };
        // A tag that cannot be read stops `down` before it changes anything.
        self.fleet_tag()?;
        let records = self
            .layout
            .load_records()
            .map_err(self.io("reading instance records"))?;
        self.layout
            .set_endpoints(Vec::new())
            .map_err(self.io("writing endpoints.json"))?;
        let mut stopped = 0;
        let (running, starting): (Vec<_>, Vec<_>) = records
            .iter()
            .partition(|r| r.state == RecordState::Running);
        for rec in running {
            if os::terminate(
                rec.pid,
                rec.pid_start_ticks,
                os::stop_signal(self.spec.stop_signal),
            )
            .await
            {
                stopped += 1;
            }
            self.forget(&rec.id)?;
        }
        stopped += self.clear_interrupted(&[], starting).await?;
        Ok(stopped)
    }

    /// The logs of stopped instances started before `before` (`Layout::prune_logs` in `disk`),
    /// under the fleet's lock; skipped when another rotor holds it.
    async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<usize, ConsumerError> {
        let _serial = self.serial.lock().await;
        if !self.layout.dir.exists() {
            return Ok(0);
        }
        let Some(_flock) = self
            .layout
            .lock(Instant::now())
            .await
            .map_err(self.io("locking the fleet directory"))?
        else {
            return Ok(0);
        };
        self.layout
            .prune_logs(&self.name, before)
            .map_err(self.io("removing the logs of stopped instances"))
    }

    /// Processes of the fleet that run but serve no one, for `rotor check`. Reads only: the
    /// tagged processes first, then the records (a record is written before its process
    /// starts, so every process seen has its record by then, unless it is unrecorded), and
    /// each finding is checked alive again. While a rotor holds the fleet's lock, its
    /// unpublished and `starting` instances are in flight, not left over: only processes
    /// without any record are named then.
    async fn leftovers(&self) -> Result<Vec<Leftover>, ConsumerError> {
        if !self.layout.dir.exists() {
            return Ok(Vec::new());
        }
        let busy = self
            .layout
            .is_locked()
            .map_err(self.io("testing the fleet's lock"))?;
        let tagged = self.tagged()?;
        let records = self
            .layout
            .load_records()
            .map_err(self.io("reading instance records"))?;
        let mut out = Vec::new();
        for r in &records {
            if r.state != RecordState::Running
                || r.published
                || busy
                || !os::alive(r.pid, r.pid_start_ticks)
            {
                continue;
            }
            out.push(Leftover {
                consumer: self.name.clone(),
                instance: Some(r.id.clone()),
                pid: r.pid,
                kind: LeftoverKind::Unpublished,
                names: self.leftover_names(&r.id, || r.names.clone()),
            });
        }
        for p in tagged {
            let rec = p
                .what
                .instance
                .as_deref()
                .and_then(|id| records.iter().find(|r| r.id == id));
            let kind = match rec {
                // A live instance's own process or helper; an unpublished one is named above.
                Some(r)
                    if r.state == RecordState::Running && os::alive(r.pid, r.pid_start_ticks) =>
                {
                    continue;
                }
                Some(r) if r.state == RecordState::Starting => {
                    if busy {
                        continue;
                    }
                    LeftoverKind::Starting
                }
                _ => LeftoverKind::Unrecorded,
            };
            if !os::alive(p.pid, p.start_ticks) {
                continue;
            }
            let names = match &p.what.instance {
                Some(id) => self.leftover_names(id, || p.what.names.clone()),
                None => p.what.names.clone(),
            };
            out.push(Leftover {
                consumer: self.name.clone(),
                instance: p.what.instance.clone(),
                pid: p.pid,
                kind,
                names,
            });
        }
        Ok(out)
    }
}

/// The environment of an instance: `inherited` minus slot names and `ROTOR_*`, then `extra_env`
/// (the playbook's), then `rotor_env` (HOST, PORT, ROTOR_*), then the slot values.
fn child_env(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    slot_names: &[&str],
    extra_env: &BTreeMap<String, String>,
    rotor_env: &[(&str, OsString)],
    values: &[(String, &SecretValue)],
) -> Vec<(OsString, OsString)> {
    let blocked = |k: &OsStr| {
        k.to_str()
            .is_some_and(|k| k.starts_with("ROTOR_") || slot_names.contains(&k))
    };
    let mut env: BTreeMap<OsString, OsString> = inherited.filter(|(k, _)| !blocked(k)).collect();
    for (k, v) in extra_env {
        env.insert(k.into(), v.into());
    }
    for (k, v) in rotor_env {
        env.insert((*k).into(), v.clone());
    }
    for (k, v) in values {
        env.insert(k.into(), v.expose().into());
    }
    env.into_iter().collect()
}
