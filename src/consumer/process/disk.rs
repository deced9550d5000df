//! The on-disk state of one process consumer: `<state_dir>/fleet/<consumer>/`.
//!
//! ```text
//! fleet/<consumer>/instances/<id>.json   one record per instance rotor started (or is starting)
//! fleet/<consumer>/endpoints.json        {"generation": n, "endpoints": ["127.0.0.1:41234", …]}
//! fleet/<consumer>/logs/<id>.log         the instance's stdout and stderr
//! fleet/<consumer>/.lock                 flock held while a rotor changes the fleet
//! fleet/<consumer>/fleet-id              the fleet's tag (ROTOR_FLEET_ID of every instance)
//! fleet/<consumer>/secrets/<id>/         `delivery: file`: the instance's ROTOR_SECRETS_DIR
//! ```
//!
//! Every write is atomic (temp file `.tmp-*.part` in the same directory, fsync, rename, fsync
//! of the directory); directories are created 0700, files 0600. Nothing here ever holds a
//! value, except the secrets directories, which hold nothing else. A temp file outlives its
//! write only when rotor was killed during it: [`Layout::remove_stale_temps`] removes those
//! under the fleet's lock.
//!
//! A record is written *before* its process is spawned (state `starting`, no pid), then
//! rewritten with the pid once `spawn` returned (state `running`), so no instance ever runs
//! without a record naming it; the `fleet-id` tag in its environment finds it even while its
//! record has no pid yet.
//!
//! A secrets directory has the layout of a Kubernetes Secret volume, so a set of values changes
//! at once (a reader never sees a new primary beside an old secondary):
//!
//! ```text
//! secrets/<id>/..data -> ..<n>        the set the instance reads now (a symlink, swapped by rename)
//! secrets/<id>/..<n>/NAME             one file per name with a value (0600)
//! secrets/<id>/NAME -> ..data/NAME    one symlink per name with a value; none for a name
//!                                     without one
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::secret::Fingerprint;

/// Where an instance's start is: what its record can vouch for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RecordState {
    /// Recorded before the spawn: the process may or may not exist, and its pid is not known
    /// (0). Found by its tag only; a `starting` record under the fleet's lock was left by a
    /// rotor that died while starting it.
    Starting,
    /// Spawned, pid and start time recorded. (Records written before this field existed are
    /// `running`.)
    #[default]
    Running,
}

/// One instance, as rotor started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// `<consumer>-<unix-millis>-<counter>`.
    pub id: String,
    /// `starting` (no pid yet) or `running`.
    #[serde(default)]
    pub state: RecordState,
    /// Process id (also its process group id); 0 while `starting`.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` at start: tells this process from a later one that
    /// reused the pid; 0 while `starting`.
    pub pid_start_ticks: u64,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Fingerprint of the primary it was started with.
    pub primary: Fingerprint,
    /// Fingerprint of the secondary, if it got one.
    pub secondary: Option<Fingerprint>,
    /// Fingerprint per environment variable name it got (aliases included).
    pub names: BTreeMap<String, Fingerprint>,
    /// Listed in `endpoints.json` (serving).
    pub published: bool,
    /// When rotor started it.
    pub started_at: DateTime<Utc>,
}

/// The published instances, what peers and load generators read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Endpoints {
    /// Incremented on every write.
    pub generation: u64,
    /// Addresses of the serving instances, in instance id order.
    pub endpoints: Vec<SocketAddr>,
}

/// Paths of one consumer's fleet state.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// `<state_dir>/fleet/<consumer>`.
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(fleet_dir: &Path, consumer: &str) -> Layout {
        Layout {
            dir: fleet_dir.join(consumer),
        }
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.dir.join("instances")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn record_path(&self, id: &str) -> PathBuf {
        self.instances_dir().join(format!("{id}.json"))
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }

    /// Where the instances' secrets directories live.
    pub fn secrets_root(&self) -> PathBuf {
        self.dir.join("secrets")
    }

    /// Instance `id`'s secrets directory (`ROTOR_SECRETS_DIR`).
    pub fn secrets_dir(&self, id: &str) -> PathBuf {
        self.secrets_root().join(id)
    }

    /// Removes instance `id`'s secrets directory, if any.
    pub fn remove_secrets(&self, id: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.secrets_dir(id)) {
            Ok(()) => sync_dir(&self.secrets_root()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The ids that have a secrets directory.
    pub fn secrets_ids(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(self.secrets_root()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            if let Some(name) = entry?.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    pub fn endpoints_path(&self) -> PathBuf {
        self.dir.join("endpoints.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(".lock")
    }

    /// The file holding the fleet's tag.
    pub fn fleet_id_path(&self) -> PathBuf {
        self.dir.join("fleet-id")
    }

    /// The fleet's tag, if one was ever created. An unreadable or malformed file is an error
    /// naming it (its bytes are never echoed).
    pub fn fleet_id(&self) -> io::Result<Option<String>> {
        use std::io::Read as _;
        let path = self.fleet_id_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        file.take(FLEET_ID_HEX as u64 + 2)
            .read_to_string(&mut text)
            .map_err(|_| bad_fleet_id(&path))?;
        let id = text.trim_end_matches('\n');
        if !is_fleet_id(id) {
            return Err(bad_fleet_id(&path));
        }
        Ok(Some(id.to_string()))
    }

    /// The fleet's tag, created (128 random bits, as hex) the first time: written to a temp
    /// file and linked into place without replacing one a concurrent rotor created first.
    pub fn ensure_fleet_id(&self) -> io::Result<String> {
        if let Some(id) = self.fleet_id()? {
            return Ok(id);
        }
        let id = hex::encode(rand::random::<[u8; FLEET_ID_HEX / 2]>());
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".part")
            .tempfile_in(&self.dir)?;
        tmp.write_all(format!("{id}\n").as_bytes())?;
        tmp.as_file().sync_all()?;
        match tmp.persist_noclobber(self.fleet_id_path()) {
            Ok(_) => sync_dir(&self.dir)?,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.error),
        }
        self.fleet_id()?
            .ok_or_else(|| io::Error::other("the fleet-id file vanished after it was written"))
    }

    /// Removes the temp files (`.tmp-*`) in the fleet and instances directories: left by a
    /// rotor killed in the middle of an atomic write. Only under the fleet's lock (a live
    /// writer's temp file is in use). Returns how many it removed.
    pub fn remove_stale_temps(&self) -> io::Result<usize> {
        let mut removed = 0;
        for dir in [self.dir.clone(), self.instances_dir()] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut any = false;
            for entry in entries {
                let entry = entry?;
                let is_temp = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(".tmp-"));
                if is_temp && !entry.file_type()?.is_dir() {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => {
                            removed += 1;
                            any = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if any {
                sync_dir(&dir)?;
            }
        }
        Ok(removed)
    }

    /// Whether a rotor holds the fleet's lock now (a shared, non-blocking try, released at
    /// once). Creates nothing: no lock file means no holder. For readers (`check`) only.
    pub fn is_locked(&self) -> io::Result<bool> {
        let file = match File::open(self.lock_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_released_on_drop) => Ok(false),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, e)) => Err(io::Error::from(e)),
        }
    }

    /// Creates the directories (0700).
    pub fn create(&self) -> io::Result<()> {
        // `<state_dir>/fleet/<consumer>`: the state directory is checked (and marked) first.
        if let Some(state_dir) = self.dir.parent().and_then(Path::parent) {
            crate::state_dir::prepare(state_dir).map_err(io::Error::other)?;
        }
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(self.instances_dir())?;
        b.create(self.logs_dir())
    }

    /// Every record, in id order. Temp files and foreign files are ignored.
    pub fn load_records(&self) -> io::Result<Vec<Record>> {
        let entries = match fs::read_dir(self.instances_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Removed between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let rec: Record = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn write_record(&self, rec: &Record) -> io::Result<()> {
        self.write_record_then(rec, || {})
    }

    /// [`Layout::write_record`], calling `before_rename` once the temp file is written and
    /// synced, just before it is renamed into place (a test failpoint).
    pub fn write_record_then(&self, rec: &Record, before_rename: impl FnOnce()) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
        write_atomic_then(&self.record_path(&rec.id), &bytes, before_rename)
    }

    pub fn remove_record(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(id)) {
            Ok(()) => sync_dir(&self.instances_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The endpoints file; generation 0 and no endpoints when it does not exist yet.
    pub fn load_endpoints(&self) -> io::Result<Endpoints> {
        match fs::read(self.endpoints_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.endpoints_path().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Endpoints::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes `endpoints` with the next generation, unless the list is already what is on
    /// disk. Returns true when it wrote.
    pub fn set_endpoints(&self, endpoints: Vec<SocketAddr>) -> io::Result<bool> {
        let current = self.load_endpoints()?;
        if current.endpoints == endpoints {
            return Ok(false);
        }
        let next = Endpoints {
            generation: current.generation + 1,
            endpoints,
        };
        let bytes = serde_json::to_vec_pretty(&next).map_err(io::Error::other)?;
        write_atomic(&self.endpoints_path(), &bytes)?;
        Ok(true)
    }

    /// Opens (creates, 0600) the log file of instance `id` for appending.
    pub fn open_log(&self, id: &str) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path(id))
    }

    /// Takes the consumer's exclusive lock, retrying until `deadline`. Returns `Ok(None)` when
    /// another process still holds it at the deadline.
    pub async fn lock(&self, deadline: Instant) -> io::Result<Option<Flock<File>>> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(self.lock_path())?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(lock)),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    file = f;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, e)) => return Err(io::Error::from(e)),
            }
        }
    }
}

impl Layout {
    /// Removes `logs/<id>.log` of the instances of `consumer` that stopped (no record in
    /// `instances/`) and did not run since `before`: started before it (the time in their
    /// id) and their log last written before it (so neither an instance that was still
    /// serving then, nor a process still writing its log, loses it). Anything that is not
    /// `<consumer>-<millis>-<n>.log` is left alone. The caller holds the fleet's lock, so no
    /// instance is being started meanwhile. Each removal is one unlink: a kill part-way
    /// leaves fewer logs, never a half-removed one. Returns how many went.
    pub fn prune_logs(&self, consumer: &str, before: DateTime<Utc>) -> io::Result<usize> {
        let entries = match fs::read_dir(self.logs_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let before_ms = before.timestamp_millis();
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            let started_ms = id
                .strip_prefix(consumer)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.split_once('-'))
                .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|(ms, _)| ms.parse::<i64>().ok());
            let Some(started_ms) = started_ms else {
                continue;
            };
            if started_ms >= before_ms || self.record_path(id).exists() {
                continue;
            }
            let written: DateTime<Utc> = entry.metadata()?.modified()?.into();
            if written >= before {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if removed > 0 {
            sync_dir(&self.logs_dir())?;
        }
        Ok(removed)
    }
}

/// Hex digits of a fleet id (128 bits).
const FLEET_ID_HEX: usize = 32;

/// Exactly [`FLEET_ID_HEX`] lowercase hex digits.
pub(super) fn is_fleet_id(s: &str) -> bool {
    s.len() == FLEET_ID_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn bad_fleet_id(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is not a fleet id (one line of {FLEET_ID_HEX} lowercase hex digits); rotor \
             writes it and tags every instance with it: restore it, or remove it and stop \
             the fleet's processes yourself (their environment has ROTOR_FLEET_ID)",
            path.display()
        ),
    )
}

/// The symlink naming the set of values an instance reads now.
const DATA_LINK: &str = "..data";
/// Largest file read back from a secrets directory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// One instance's secrets directory (see the module's documentation for its layout).
#[derive(Debug, Clone)]
pub(super) struct SecretsDir {
    pub dir: PathBuf,
}

impl SecretsDir {
    pub fn new(dir: PathBuf) -> SecretsDir {
        SecretsDir { dir }
    }

    /// The set `..data` names now (`..<n>`), if any.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA_LINK)).ok()?;
        let name = target.to_str()?;
        is_version(name).then(|| name.to_string())
    }

    /// Writes `values` (name, bytes) as a new set and makes it the current one: the files in a
    /// fresh `..<n>` directory (each atomically, 0600), then `..data` swapped to it, then one
    /// symlink per name with a value, and none for the other `names`. Returns the set it
    /// replaced (kept, for [`SecretsDir::activate`] to restore, until [`SecretsDir::prune`]).
    pub fn write(&self, names: &[&str], values: &[(&str, &[u8])]) -> io::Result<Option<String>> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&self.dir)?;
        let previous = self.current();
        // Sets left by an interrupted write are not the current one: out of the way first.
        self.prune(previous.as_deref())?;
        let n = previous
            .as_deref()
            .and_then(|v| v[2..].parse::<u64>().ok())
            .map_or(1, |n| n.saturating_add(1));
        let version = format!("..{n}");
        let vdir = self.dir.join(&version);
        fs::DirBuilder::new().mode(0o700).create(&vdir)?;
        for (name, bytes) in values {
            write_atomic(&vdir.join(name), bytes)?;
        }
        sync_dir(&vdir)?;
        self.activate(&version, names)?;
        Ok(previous)
    }

    /// Makes set `version` the current one: `..data` swapped to it (a rename, atomic), then a
    /// symlink `NAME -> ..data/NAME` for each of `names` the set has a file for, and none for the
    /// others.
    pub fn activate(&self, version: &str, names: &[&str]) -> io::Result<()> {
        let vdir = self.dir.join(version);
        swap_symlink(Path::new(version), &self.dir.join(DATA_LINK))?;
        for name in names {
            let link = self.dir.join(name);
            if vdir.join(name).exists() {
                let target = Path::new(DATA_LINK).join(name);
                if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
                    swap_symlink(&target, &link)?;
                }
            } else {
                match fs::remove_file(&link) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes every set but `keep` (and the current one).
    pub fn prune(&self, keep: Option<&str>) -> io::Result<()> {
        let current = self.current();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_version(&name) && Some(name.as_str()) != keep && Some(&name) != current.as_ref() {
                fs::remove_dir_all(entry.path())?;
            } else if name.starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// What the instance reads now: the bytes of each of `names` that has a file (through its
    /// symlink, as the instance reads it). Bounded; a file too large to be a value is an error.
    pub fn read(&self, names: &[&str]) -> io::Result<BTreeMap<String, Vec<u8>>> {
        use std::io::Read as _;
        let mut out = BTreeMap::new();
        for name in names {
            let path = self.dir.join(name);
            // Non-blocking, and a regular file only: the instance can write to this directory,
            // and a FIFO in a value's place must not hold rotor (and the fleet's lock) forever.
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !file.metadata()?.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a regular file", path.display()),
                ));
            }
            let mut bytes = Vec::new();
            file.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > MAX_SECRET_FILE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is larger than {MAX_SECRET_FILE} bytes", path.display()),
                ));
            }
            if !bytes.is_empty() {
                out.insert(name.to_string(), bytes);
            }
        }
        Ok(out)
    }
}

/// `..<digits>`: one set of a secrets directory.
fn is_version(name: &str) -> bool {
    name.strip_prefix("..")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Points `link` at `target` atomically: a new symlink beside it, renamed over it.
fn swap_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-link-{name}"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link)
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_then(path, bytes, || {})
}

/// [`write_atomic`], calling `before_rename` between the synced temp file and the rename.
fn write_atomic_then(path: &Path, bytes: &[u8], before_rename: impl FnOnce()) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".part")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    before_rename();
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NAMES: &[&str] = &["P", "S", "ALIAS"];

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn read(d: &SecretsDir) -> BTreeMap<String, String> {
        d.read(NAMES)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Only the logs of stopped instances started before the cut go: never a recorded
    /// (running) instance's, never one still being written, never a file rotor did not name.
    #[test]
    fn pruning_removes_only_old_logs_of_stopped_instances() {
        let tmp = tempfile::tempdir().unwrap();
        let fleet = tmp.path().join("state").join("fleet");
        let layout = Layout::new(&fleet, "auth");
        layout.create().unwrap();
        let cut = Utc::now();
        let ms = cut.timestamp_millis();
        let old = |n: i64| format!("auth-{}-{n:04}", ms - 60_000 + n);
        let age = |id: &str, secs: u64| {
            let f = File::options()
                .append(true)
                .open(layout.log_path(id))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
                .unwrap();
        };
        for n in 0..4 {
            layout.open_log(&old(n)).unwrap();
            age(&old(n), 30);
        }
        // Started before the cut but still running (recorded).
        let rec = Record {
            id: old(1),
            pid: 1,
            pid_start_ticks: 0,
            addr: "127.0.0.1:1".parse().unwrap(),
            primary: crate::secret::SecretValue::new("a".repeat(32)).fingerprint("s"),
            secondary: None,
            names: BTreeMap::new(),
            published: true,
            started_at: cut,
            state: RecordState::Running,
        };
        layout.write_record(&rec).unwrap();
        // Started before the cut, not recorded, but written since (a process still logging).
        age(&old(2), 0);
        // Started after the cut.
        let new = format!("auth-{}-0001", ms + 5);
        layout.open_log(&new).unwrap();
        // Not rotor's names: another consumer's prefix, no counter, not a log.
        let foreign = [
            format!("authz-{}-0001.log", ms - 60_000),
            format!("auth-{}.log", ms - 60_000),
            "notes.txt".to_string(),
        ];
        for f in &foreign {
            fs::write(layout.logs_dir().join(f), "x").unwrap();
        }

        assert_eq!(layout.prune_logs("auth", cut).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(layout.logs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}.log", old(1)),
            format!("{}.log", old(2)),
            format!("{new}.log"),
        ];
        want.extend(foreign.iter().cloned());
        want.sort();
        assert_eq!(left, want);
        // Nothing more to do; no logs directory is no error.
        assert_eq!(layout.prune_logs("auth", cut).unwrap(), 0);
        assert_eq!(
            Layout::new(&fleet, "none").prune_logs("none", cut).unwrap(),
            0
        );
    }

    /// The instance can write to its directory: a FIFO in a value's place is refused at once,
    /// never waited on (a blocking open would hold rotor and the fleet's lock forever).
    #[test]
    fn a_fifo_in_place_of_a_value_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let d = SecretsDir::new(tmp.path().join("auth-1"));
        d.write(NAMES, &[("P", b"aaa")]).unwrap();
        let target = d.dir.join("..data").join("P");
        fs::remove_file(&target).unwrap();
        nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        let e = d.read(NAMES).unwrap_err();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_set_of_files_changes_at_once_and_the_previous_one_can_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = SecretsDir::new(tmp.path().join("secrets").join("auth-1"));
        assert_eq!(
            d.read(NAMES).unwrap(),
            BTreeMap::new(),
            "no directory, no file"
        );

        let first = d.write(NAMES, &[("P", b"aaa"), ("ALIAS", b"aaa")]).unwrap();
        assert_eq!(first, None);
        assert_eq!(read(&d), map(&[("P", "aaa"), ("ALIAS", "aaa")]));
        assert_eq!(mode(&d.dir), 0o700);
        assert_eq!(mode(&d.dir.join("..1")), 0o700);
        for n in ["P", "ALIAS"] {
            assert_eq!(mode(&d.dir.join(n)), 0o600, "{n}");
            assert_eq!(
                fs::read_link(d.dir.join(n)).unwrap(),
                Path::new("..data").join(n)
            );
        }
        assert!(
            fs::symlink_metadata(d.dir.join("S")).is_err(),
            "no value, no file"
        );

        // A secondary appears: a new set, the old one kept for a restore.
        let prev = d
            .write(NAMES, &[("P", b"aaa"), ("S", b"bbb"), ("ALIAS", b"aaa")])
            .unwrap();
        assert_eq!(prev.as_deref(), Some("..1"));
        assert_eq!(d.current().as_deref(), Some("..2"));
        assert_eq!(
            read(&d),
            map(&[("P", "aaa"), ("S", "bbb"), ("ALIAS", "aaa")])
        );
        // Restored: the secondary's file goes with it.
        d.activate("..1", NAMES).unwrap();
        assert_eq!(read(&d), map(&[("P", "aaa"), ("ALIAS", "aaa")]));
        assert!(fs::symlink_metadata(d.dir.join("S")).is_err());
        d.prune(None).unwrap();
        assert!(!d.dir.join("..2").exists() && d.dir.join("..1").exists());

        // A set left half-written by a crash is not the current one and goes at the next write.
        fs::create_dir(d.dir.join("..7")).unwrap();
        fs::write(d.dir.join("..7").join("P"), b"zzz").unwrap();
        d.write(NAMES, &[("P", b"ccc")]).unwrap();
        assert_eq!(read(&d), map(&[("P", "ccc")]));
        assert!(!d.dir.join("..7").exists());
        let entries: Vec<String> = fs::read_dir(&d.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["..data", "P"].contains(&n.as_str()) && !is_version(n))
            .collect();
        assert!(entries.is_empty(), "{entries:?}");

        // Oversized files are refused by name, never quoted.
        fs::remove_file(d.dir.join("P")).unwrap();
        fs::write(d.dir.join("P"), "v".repeat(70_000)).unwrap();
        let e = d.read(NAMES).unwrap_err().to_string();
        assert!(e.contains("larger than") && !e.contains("vvv"), "{e}");
    }
}
