//! Single-flight lock: one rotation per secret at a time.
//!
//! Owns: the [`RotationLock`] / [`LockGuard`] traits (so a Kubernetes Lease or a store-side
//! annotation can replace the file lock) and [`FileLock`], an `flock` on `<state_dir>/lock`
//! with the holder's identity, stage and start time beside it in `<state_dir>/lock.json`. The
//! kernel releases an `flock` when its holder dies, so a crashed run never leaves a stale lock
//! behind; the holder file then only tells the next run who was there. [`lease::LeaseLock`] is
//! the cluster backend (a `coordination.k8s.io/v1` Lease).
//!
//! Must never: hand the lock to a second run while the first may still be running (a lease is
//! only taken over after it expired *and* the operator passed `--force`), or write anything
//! but who holds the lock (no values, no journal content).
//!
//! # Contract of a guard
//! - [`LockGuard::set_stage`] is cheap and never blocks: backends that write remotely do so
//!   from a background task.
//! - [`LockGuard::release`] must be called at the end of every run; `Drop` is only a
//!   best-effort fallback (the file lock unlocks, a lease stops renewing and lapses).
//! - [`LockGuard::handover`] turns `Some` when an emergency rekey asked (through
//!   [`RotationLock::request_handover`]) for the rotation; the engine stops at its next stable
//!   state and releases the lock, and the rekey takes it. The request is written beside the
//!   holder (a file lock's `handover.json`, the remote record's holder JSON), never over it.
//! - [`LockGuard::lost`] turns `Some` when a backend learns that another run took the lock
//!   over (only possible for leases, after this run failed to renew it for a whole lease
//!   duration and an operator forced a takeover). From then on the guard never writes the
//!   lock again, and the engine stops before its next journal write or step.

pub mod aws;
pub mod gcp;
pub mod lease;
pub mod remote;
pub mod secret;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterError;

use crate::store::local::atomic_write;

/// Who holds the lock, doing what, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `user@host pid 1234`.
    pub identity: String,
    /// The command (`rotate`, `resume`, `rollback`).
    pub command: String,
    /// Rotation id, once known.
    pub rotation: Option<String>,
    /// Current stage (`T2 widen forward`, `S3 promoted`).
    pub stage: String,
    /// When it took the lock.
    pub since: DateTime<Utc>,
    /// When the lock lapses if not renewed (renewed at every stage change).
    pub expires: DateTime<Utc>,
    /// An emergency rekey asked this holder to stop at its next stable state and give the
    /// lock up, so the rekey can take the rotation over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// An emergency rekey's request that the run holding the lock hand its rotation over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The rekey's identity (`user@host pid 1234`).
    pub by: String,
    /// The rekey's reason (and incident).
    pub reason: String,
    /// When it asked.
    pub at: DateTime<Utc>,
    /// The claim it is addressed to: the holder's identity…
    pub to: String,
    /// …and the time that holder took the lock.
    pub to_since: DateTime<Utc>,
    /// When the rekey stops waiting: a request past it is void (a rekey that gave up or died).
    pub until: DateTime<Utc>,
}

impl Handover {
    /// Whether the rekey is still waiting for this request to be taken up.
    pub fn stands(&self) -> bool {
        Utc::now() < self.until
    }

    /// Whether this request is addressed to `holder`'s claim and still stands.
    pub fn is_for(&self, holder: &Holder) -> bool {
        self.to == holder.identity && self.to_since == holder.since && self.stands()
    }
}

/// Longest text of a holder's field read from a lock record.
const MAX_HOLDER_TEXT: usize = 256;

/// Text from a lock record as rotor shows it: control characters replaced, at most
/// [`MAX_HOLDER_TEXT`] characters, values rotor knows redacted.
fn bounded(text: &str) -> String {
    let redacted = crate::redact::redact(text);
    let mut out: String = redacted
        .chars()
        .take(MAX_HOLDER_TEXT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if redacted.chars().count() > MAX_HOLDER_TEXT {
        out.push('…');
    }
    out
}

impl Holder {
    /// The holder as read from a record anyone could have written (a lock file, an annotation,
    /// a Lease, a lock secret): every text field bounded and cleaned, so it can be shown. A
    /// holder rotor wrote is unchanged.
    pub fn untrusted(mut self) -> Holder {
        self.identity = bounded(&self.identity);
        self.command = bounded(&self.command);
        self.stage = bounded(&self.stage);
        self.rotation = self.rotation.as_deref().map(bounded);
        if let Some(h) = &mut self.handover {
            h.by = bounded(&h.by);
            h.reason = bounded(&h.reason);
            h.to = bounded(&h.to);
        }
        self
    }

    /// Whether `self` and `other` describe the same acquisition (same identity, same start).
    pub fn same_claim(&self, other: &Holder) -> bool {
        self.identity == other.identity && self.since == other.since
    }
}

impl Holder {
    /// This process as a holder.
    pub fn me(command: &str) -> Holder {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".into());
        let user = std::env::var("USER").unwrap_or_else(|_| nix::unistd::getuid().to_string());
        let now = Utc::now();
        Holder {
            identity: format!("{user}@{host} pid {}", std::process::id()),
            command: command.into(),
            rotation: None,
            stage: "starting".into(),
            since: now,
            expires: now + chrono::Duration::minutes(10),
            handover: None,
        }
    }
}

/// Whether the run a holder names is still there, as far as this machine can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Liveness {
    /// Its process runs on this machine.
    Running,
    /// Its process is stopped (state T: Ctrl-Z, SIGSTOP): it holds the lock and does nothing.
    Stopped(i32),
    /// It is gone: its process no longer runs (or its pid is now another process), or its
    /// lease expired. Why, in words.
    Gone(String),
    /// It runs elsewhere (another host or pod) and its lease has not expired.
    Elsewhere,
}

impl Holder {
    /// `(host, pid)` from `user@host pid N`.
    fn host_pid(&self) -> Option<(&str, i32)> {
        let (who, pid) = self.identity.rsplit_once(" pid ")?;
        let host = who.rsplit_once('@').map_or(who, |(_, h)| h);
        Some((host, pid.trim().parse().ok()?))
    }

    /// Whether the run it names is still there: on this machine its process is looked up (and
    /// must have started before it took the lock, or its pid now names another process);
    /// elsewhere, its lease's expiry decides.
    pub fn liveness(&self) -> Liveness {
        let here = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        match self.host_pid() {
            Some((host, pid)) if Some(host) == here.as_deref() && pid > 0 => {
                match process_state(pid) {
                    None => Liveness::Gone(format!("process {pid} no longer runs")),
                    Some((_, started)) if started > self.since + chrono::Duration::seconds(2) => {
                        Liveness::Gone(format!(
                            "process {pid} no longer runs (that pid is now another process)"
                        ))
                    }
                    Some(('T' | 't', _)) => Liveness::Stopped(pid),
                    Some(('Z' | 'X', _)) => Liveness::Gone(format!("process {pid} has exited")),
                    Some(_) => Liveness::Running,
                }
            }
            _ if self.expires < Utc::now() => Liveness::Gone(format!(
                "its lease expired at {}",
                self.expires.format("%Y-%m-%d %H:%M:%S UTC")
            )),
            _ => Liveness::Elsewhere,
        }
    }

    /// What to do about this holder, for an error or `status` (empty when it simply runs).
    pub fn hint(&self) -> String {
        match self.liveness() {
            Liveness::Stopped(pid) => format!(
                "; that process is STOPPED (Ctrl-Z or SIGSTOP) and does nothing while it holds the lock: let it continue with `kill -CONT {pid}` (or `fg` in its shell), or end it with `kill {pid}` and then run `rotor resume` or `rotor rollback`"
            ),
            Liveness::Gone(why) => format!(
                "; it is gone ({why}): `rotor resume` continues its rotation, `rotor rollback` undoes it"
            ),
            Liveness::Running | Liveness::Elsewhere => String::new(),
        }
    }
}

/// What to do next about the rotation `j`, given who holds the lock (`None` when no rotation is
/// in progress).
pub fn next_command(
    j: Option<&crate::engine::journal::Journal>,
    holder: Option<&Holder>,
    playbook: &str,
) -> Option<String> {
    let j = j.filter(|j| j.status.is_active())?;
    let live = holder.map(Holder::liveness);
    Some(match live {
        Some(Liveness::Running | Liveness::Elsewhere) => format!(
            "a run is driving rotation {} ({}); wait for it, or follow it with `rotor status {playbook}`",
            j.id,
            holder.map_or("", |h| h.identity.as_str())
        ),
        Some(Liveness::Stopped(pid)) => format!(
            "the run holding the lock is stopped: `kill -CONT {pid}` lets it continue; or end it (`kill {pid}`), then `rotor resume {playbook}` or `rotor rollback {playbook}`"
        ),
        Some(Liveness::Gone(_)) | None => {
            let during = j
                .dirty_step()
                .map(|st| format!(", during {} {}", st.transition, st.direction))
                .unwrap_or_default();
            let how = if j.rolling_back() {
                format!("`rotor resume {playbook}` continues its rollback")
            } else {
                format!(
                    "`rotor resume {playbook}` continues it, `rotor rollback {playbook}` undoes it"
                )
            };
            format!(
                "no run is driving rotation {} ({:?} at {}{during}): {how}",
                j.id, j.status, j.state
            )
        }
    })
}

/// The state letter and start time of process `pid` on this machine (Linux `/proc`), or `None`
/// when there is no such process.
fn process_state(pid: i32) -> Option<(char, DateTime<Utc>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses; the last `)` ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 (starttime, clock ticks since boot) is the 20th after the state.
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as u64;
    let btime: i64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let secs = i64::try_from(ticks / hz).ok()?;
    let started = DateTime::from_timestamp(btime.checked_add(secs)?, 0)?;
    Some((state, started))
}

/// Lock failures.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("another rotation of this secret is running: {} ({}) holds the lock since {}, at stage {}{}{}\n  help: wait for it to finish, or check it with `rotor status`",
        .0.identity, .0.command, .0.since.format("%Y-%m-%d %H:%M:%S UTC"), .0.stage,
        .0.rotation.as_ref().map(|r| format!(", rotation {r}")).unwrap_or_default(),
        .0.hint())]
    Held(Box<Holder>),
    /// Someone holds it but did not say who (holder file missing or unreadable).
    #[error(
        "another process holds the lock {path} (holder unknown)\n  help: wait for it to finish; `fuser {path}` shows the process"
    )]
    HeldUnknown {
        /// Lock file.
        path: String,
    },
    /// A lease whose holder stopped renewing it (`expires` says when it lapsed); taking it over
    /// needs `--force`.
    #[error("the lock of this secret is still assigned to {} ({}, since {}, last at stage {}{}), but its lease expired at {}\n  help: that run stopped renewing it: make sure it is really gone (its pod or process), then rerun with `--force` to take the lock over; `rotor resume` continues the rotation from its journal",
        .0.identity, .0.command, .0.since.format("%Y-%m-%d %H:%M:%S UTC"), .0.stage,
        .0.rotation.as_ref().map(|r| format!(", rotation {r}")).unwrap_or_default(),
        .0.expires.format("%Y-%m-%d %H:%M:%S UTC"))]
    Expired(Box<Holder>),
    /// This run lost its lock: another run took it over, or its own claim lapsed unrenewed.
    #[error("this run no longer holds the lock of this secret: {} ({}){}; this run stopped without writing anything more\n  help: this run could not renew its claim in time (the API that keeps the lock failed or was too slow); check `rotor status`, then `rotor resume` once no other run holds the lock",
        .0.identity, .0.command,
        .0.rotation.as_ref().map(|r| format!(" (rotation {r})")).unwrap_or_default())]
    Lost(Box<Holder>),
    /// The cluster refused or failed a lock call.
    #[error("lock: {0}")]
    Cluster(Box<ClusterError>),
    /// The store that keeps the lock refused or failed a call.
    #[error("lock: {0}")]
    Store(Box<crate::store::StoreError>),
    /// I/O failure.
    #[error("lock {path}: {source}")]
    Io {
        /// Lock file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ClusterError> for LockError {
    fn from(e: ClusterError) -> Self {
        LockError::Cluster(Box::new(e))
    }
}

/// A held lock. Call [`LockGuard::release`] at the end of the run; dropping it is only a
/// best-effort fallback.
#[async_trait]
pub trait LockGuard: Send + Sync {
    /// Records the current stage (and renews the expiry). Cheap and non-blocking; a no-op once
    /// the lock is [lost](LockGuard::lost).
    fn set_stage(&self, rotation: Option<&str>, stage: &str);

    /// The run that took this lock over, once this guard learned it lost the lock; or, for a
    /// remote lock whose claim went unrenewed for a whole duration, a holder that says so.
    fn lost(&self) -> Option<Holder> {
        None
    }

    /// An emergency rekey's request to hand the rotation over, once this guard saw one. The
    /// engine then stops at its next stable state and releases the lock.
    fn handover(&self) -> Option<Handover> {
        None
    }

    /// Gives the lock back so the next run need not wait for it to expire. Never touches a
    /// lock that was lost to another run.
    async fn release(self: Box<Self>) -> Result<(), LockError>;
}

/// A single-flight lock backend.
#[async_trait]
pub trait RotationLock: Send + Sync {
    /// Takes the lock or says who holds it. `force` allows taking over a lock whose holder
    /// stopped renewing it (an expired lease); it never takes a live lock.
    async fn acquire(&self, holder: Holder, force: bool) -> Result<Box<dyn LockGuard>, LockError>;
    /// Who holds it now, if anyone.
    async fn holder(&self) -> Result<Option<Holder>, LockError>;
    /// Asks `seen`, the run holding the lock, to hand its rotation over (see
    /// [`LockGuard::handover`]). `Ok(false)` when `seen` no longer holds it (ask again after
    /// reading the new holder). Never takes the lock and never changes its expiry.
    async fn request_handover(&self, seen: &Holder, req: &Handover) -> Result<bool, LockError>;
    /// Takes back a request this run made (a rekey that stops waiting), if it still stands.
    async fn withdraw_handover(&self, req: &Handover) -> Result<(), LockError>;
    /// Where the lock lives (`/x/state/lock`, `leases/rotor-auth-prod in namespace demo`).
    fn describe(&self) -> String;

    /// A holder record left by a run that ended without releasing it, while the lock itself is
    /// free (a file lock's `lock.json` after a kill: the kernel freed the lock, not the file).
    /// Reads only; the next run replaces it.
    async fn stale(&self) -> Result<Option<Holder>, LockError> {
        Ok(None)
    }
}

/// The lock the playbook names: for a Secret Manager store an annotation on the secret, else its
/// cluster's Lease (`cluster.lock: lease`), else the file lock in its state directory. `events` hears about takeovers and lost leases.
pub fn open(
    pb: &crate::playbook::Playbook,
    cluster: Option<&crate::cluster::Cluster>,
    events: Option<std::sync::Arc<dyn crate::events::EventSink>>,
) -> Result<Box<dyn RotationLock>, ClusterError> {
    use crate::playbook::{LockKind, StoreSpec};
    if let StoreSpec::Gcp(spec) = &pb.store {
        let duration = pb
            .cluster
            .as_ref()
            .map_or(remote::DEFAULT_DURATION, |c| c.lease_duration);
        // A renewal that keeps failing must give up well before the claim lapses.
        let mut spec = spec.clone();
        spec.retry_deadline = spec.retry_deadline.min(duration / 3);
        let store = std::sync::Arc::new(crate::store::gcp::GcpStore::new(&spec, &pb.secret));
        let lock = gcp::GcpLock::new(store).with_duration(duration);
        return Ok(Box::new(match events {
            Some(e) => lock.with_events(e),
            None => lock,
        }));
    }
    if let StoreSpec::Vault(spec) = &pb.store {
        let duration = spec.lock_duration;
        // A renewal that keeps failing must give up well before the claim lapses.
        let mut spec = spec.clone();
        spec.retry_deadline = spec.retry_deadline.min(duration / 3);
        let store = std::sync::Arc::new(crate::store::vault::VaultStore::new(&spec, &pb.secret));
        let lock = secret::VaultLock::new(store).with_duration(duration);
        return Ok(Box::new(match events {
            Some(e) => lock.with_events(e),
            None => lock,
        }));
    }
    if let StoreSpec::Aws(spec) = &pb.store {
        let duration = spec.lock_duration;
        // A renewal that keeps failing must give up well before the claim lapses.
        let mut spec = spec.clone();
        spec.retry_deadline = spec.retry_deadline.min(duration / 3);
        let store = std::sync::Arc::new(crate::store::aws::AwsStore::new(&spec, &pb.secret));
        let lock = aws::AwsLock::new(store).with_duration(duration);
        return Ok(Box::new(match events {
            Some(e) => lock.with_events(e),
            None => lock,
        }));
    }
    match pb.cluster.as_ref() {
        Some(spec) if spec.lock == LockKind::Lease => {
            let cluster = cluster.ok_or_else(|| ClusterError::Connect {
                detail:
                    "the playbook keeps its lock in a Lease, but no cluster connection was opened"
                        .into(),
            })?;
            let lock = lease::LeaseLock::new(cluster, &pb.secret, pb.environment.as_str())
                .with_duration(spec.lease_duration);
            Ok(Box::new(match events {
                Some(e) => lock.with_events(e),
                None => lock,
            }))
        }
        _ => Ok(Box::new(FileLock::new(&pb.state_dir))),
    }
}

/// `flock` on `<dir>/lock` plus `<dir>/lock.json`.
pub struct FileLock {
    dir: PathBuf,
}

impl FileLock {
    /// The lock of the secret whose state directory is `dir`.
    pub fn new(dir: &Path) -> FileLock {
        FileLock {
            dir: dir.to_path_buf(),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn holder_path(&self) -> PathBuf {
        self.dir.join("lock.json")
    }

    fn handover_path(&self) -> PathBuf {
        self.dir.join("handover.json")
    }

    fn io(&self, source: std::io::Error) -> LockError {
        LockError::Io {
            path: self.lock_path().display().to_string(),
            source,
        }
    }

    fn open(&self) -> Result<File, LockError> {
        crate::state_dir::prepare(&self.dir).map_err(|e| self.io(std::io::Error::other(e)))?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| self.io(e))
    }

    /// The holder file, with a handover request addressed to this holder.
    fn read_holder(&self) -> Option<Holder> {
        let bytes = fs::read(self.holder_path()).ok()?;
        let mut h: Holder = serde_json::from_slice::<Holder>(&bytes).ok()?.untrusted();
        h.handover = fs::read(self.handover_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Handover>(&b).ok())
            .filter(|req| req.is_for(&h));
        Some(h)
    }

    fn held_error(&self) -> LockError {
        match self.read_holder() {
            Some(h) => LockError::Held(Box::new(h)),
            None => LockError::HeldUnknown {
                path: self.lock_path().display().to_string(),
            },
        }
    }
}

struct FileGuard {
    file: File,
    holder_path: PathBuf,
    handover_path: PathBuf,
    holder: Mutex<Holder>,
}

impl FileGuard {
    fn write(&self, h: &Holder) {
        let bytes = serde_json::to_vec_pretty(h).expect("holder serializes");
        // Best effort: the flock is the lock; the file only informs.
        let _ = atomic_write(&self.holder_path, &bytes, 0o600);
    }
}

#[async_trait]
impl LockGuard for FileGuard {
    fn set_stage(&self, rotation: Option<&str>, stage: &str) {
        let mut h = self.holder.lock().expect("holder mutex");
        if let Some(r) = rotation {
            h.rotation = Some(r.to_string());
        }
        h.stage = stage.to_string();
        h.expires = Utc::now() + chrono::Duration::minutes(10);
        self.write(&h);
    }

    fn handover(&self) -> Option<Handover> {
        let bytes = fs::read(&self.handover_path).ok()?;
        let req: Handover = serde_json::from_slice(&bytes).ok()?;
        // Only a standing request addressed to this acquisition counts.
        let holder = self.holder.lock().expect("holder mutex");
        req.is_for(&holder).then_some(req)
    }

    async fn release(self: Box<Self>) -> Result<(), LockError> {
        // Drop removes the holder file and unlocks.
        drop(self);
        Ok(())
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.holder_path);
        let _ = self.file.unlock();
    }
}

#[async_trait]
impl RotationLock for FileLock {
    /// `force` changes nothing: the kernel frees an `flock` when its holder dies, so a file
    /// lock that is held is always live.
    async fn acquire(&self, holder: Holder, _force: bool) -> Result<Box<dyn LockGuard>, LockError> {
        let file = self.open()?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(self.held_error()),
            Err(fs::TryLockError::Error(e)) => return Err(self.io(e)),
        }
        // A request addressed to an earlier holder is void.
        let _ = fs::remove_file(self.handover_path());
        let mut holder = holder;
        holder.since = Utc::now();
        let guard = FileGuard {
            file,
            holder_path: self.holder_path(),
            handover_path: self.handover_path(),
            holder: Mutex::new(holder.clone()),
        };
        guard.write(&holder);
        Ok(Box::new(guard))
    }

    async fn withdraw_handover(&self, req: &Handover) -> Result<(), LockError> {
        let path = self.handover_path();
        let mine = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Handover>(&b).ok())
            .is_some_and(|r| &r == req);
        if mine {
            fs::remove_file(&path).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    async fn request_handover(&self, seen: &Holder, req: &Handover) -> Result<bool, LockError> {
        match self.holder().await? {
            Some(h) if h.same_claim(seen) => {
                let bytes = serde_json::to_vec_pretty(req).expect("handover serializes");
                atomic_write(&self.handover_path(), &bytes, 0o600).map_err(|e| self.io(e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn holder(&self) -> Result<Option<Holder>, LockError> {
        // Reads only: no lock file means nobody ever held it here, so it is free.
        let file = match OpenOptions::new().read(true).open(self.lock_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(None)
            }
            Err(fs::TryLockError::WouldBlock) => match self.held_error() {
                LockError::Held(h) => Ok(Some(*h)),
                _ => Ok(Some(Holder {
                    identity: "unknown".into(),
                    command: "unknown".into(),
                    rotation: None,
                    stage: "unknown".into(),
                    since: Utc::now(),
                    expires: Utc::now(),
                    handover: None,
                })),
            },
            Err(fs::TryLockError::Error(e)) => Err(self.io(e)),
        }
    }

    fn describe(&self) -> String {
        self.lock_path().display().to_string()
    }

    async fn stale(&self) -> Result<Option<Holder>, LockError> {
        if self.holder().await?.is_some() {
            return Ok(None);
        }
        Ok(self.read_holder())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_acquire_names_the_holder_and_stage() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::new(dir.path());
        let g = lock.acquire(Holder::me("rotate"), false).await.unwrap();
        g.set_stage(Some("r-1"), "T2 widen forward");
        // flock is per open file description, so a second open in the same process conflicts.
        let err = lock
            .acquire(Holder::me("rotate"), true)
            .await
            .err()
            .expect("must be refused, even with force");
        let msg = err.to_string();
        assert!(msg.contains("T2 widen forward"), "{msg}");
        assert!(msg.contains("rotation r-1"), "{msg}");
        assert_eq!(
            lock.holder().await.unwrap().unwrap().stage,
            "T2 widen forward"
        );
        g.release().await.unwrap();
        assert!(lock.holder().await.unwrap().is_none());
        assert!(!dir.path().join("lock.json").exists());
        let g = lock.acquire(Holder::me("resume"), false).await.unwrap();
        // Dropping without release still frees the lock (fallback).
        drop(g);
        assert!(lock.holder().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_handover_request_reaches_the_holder_and_dies_with_its_claim() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::new(dir.path());
        let g = lock.acquire(Holder::me("rotate"), false).await.unwrap();
        g.set_stage(Some("r-1"), "grace");
        let seen = lock.holder().await.unwrap().unwrap();
        let req = Handover {
            by: "oncall@laptop pid 9".into(),
            reason: "leak".into(),
            at: Utc::now(),
            to: seen.identity.clone(),
            to_since: seen.since,
            until: Utc::now() + chrono::Duration::minutes(10),
        };
        // Addressed to an earlier acquisition: not delivered.
        let mut stale = seen.clone();
        stale.since -= chrono::Duration::seconds(5);
        assert!(!lock.request_handover(&stale, &req).await.unwrap());
        assert!(g.handover().is_none());
        assert!(lock.request_handover(&seen, &req).await.unwrap());
        assert_eq!(g.handover().unwrap().by, "oncall@laptop pid 9");
        let shown = lock.holder().await.unwrap().unwrap();
        assert_eq!(
            shown.handover.as_ref().map(|r| r.reason.as_str()),
            Some("leak")
        );
        let status = crate::output::render_status(None, Some(&shown), None, "pb.yaml");
        assert!(
            status.contains("handover: asked by oncall@laptop pid 9"),
            "{status}"
        );
        // Withdrawn, it no longer stands; a request past its deadline is void.
        lock.withdraw_handover(&req).await.unwrap();
        assert!(g.handover().is_none());
        let mut old = req.clone();
        old.until = Utc::now() - chrono::Duration::seconds(1);
        assert!(lock.request_handover(&seen, &old).await.unwrap());
        assert!(g.handover().is_none(), "an expired request is void");
        g.release().await.unwrap();
        // The next holder starts with no request.
        let g = lock.acquire(Holder::me("rekey"), false).await.unwrap();
        assert!(g.handover().is_none());
        assert!(lock.holder().await.unwrap().unwrap().handover.is_none());
        g.release().await.unwrap();
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    fn holder(identity: String, since: DateTime<Utc>, expires: DateTime<Utc>) -> Holder {
        Holder {
            identity,
            command: "rotate".into(),
            rotation: None,
            stage: "T2 widen forward".into(),
            since,
            expires,
            handover: None,
        }
    }

    fn here(pid: u32) -> String {
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        format!("me@{host} pid {pid}")
    }

    /// A holder on this machine is judged by its process: running, stopped (state T), gone,
    /// or a pid that now names a process started after the lock was taken; elsewhere, by its
    /// lease.
    #[test]
    fn a_holder_is_running_stopped_or_gone() {
        let now = Utc::now();
        let later = now + chrono::Duration::minutes(10);
        let me = holder(here(std::process::id()), now, later);
        assert_eq!(me.liveness(), Liveness::Running);
        assert!(me.hint().is_empty());

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let h = holder(here(pid), now, later);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        // The kernel stops it asynchronously: poll for state T (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while h.liveness() != Liveness::Stopped(pid as i32) {
            assert!(std::time::Instant::now() < deadline, "{:?}", h.liveness());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            h.hint().contains(&format!("kill -CONT {pid}")),
            "{}",
            h.hint()
        );
        // A pid that now names a process started after the lock was taken is not the holder.
        let reused = holder(here(pid), now - chrono::Duration::hours(1), later);
        assert!(matches!(reused.liveness(), Liveness::Gone(w) if w.contains("another process")));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(h.liveness(), Liveness::Gone(w) if w.contains("no longer runs")));
        assert!(h.hint().contains("rotor resume"), "{}", h.hint());

        let remote = holder("ci@elsewhere pid 7".into(), now, later);
        assert_eq!(remote.liveness(), Liveness::Elsewhere);
        let lapsed = holder(
            "ci@elsewhere pid 7".into(),
            now,
            now - chrono::Duration::seconds(1),
        );
        assert!(matches!(lapsed.liveness(), Liveness::Gone(w) if w.contains("lease expired")));
    }
}
