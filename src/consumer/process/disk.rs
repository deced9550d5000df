//! The on-disk state of one process consumer: `<state_dir>/fleet/<consumer>/`.
//!
//! ```text
//! fleet/<consumer>/instances/<id>.json   one record per instance rotor started
//! fleet/<consumer>/endpoints.json        {"generation": n, "endpoints": ["127.0.0.1:41234", …]}
//! fleet/<consumer>/logs/<id>.log         the instance's stdout and stderr
//! fleet/<consumer>/.lock                 flock held while a rotor changes the fleet
//! ```
//!
//! Every write is atomic (temp file in the same directory, fsync, rename, fsync of the
//! directory); directories are created 0700, files 0600. Nothing here ever holds a value.

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

/// One instance, as rotor started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// `<consumer>-<unix-millis>-<counter>`.
    pub id: String,
    /// Process id (also its process group id).
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` at start: tells this process from a later one that
    /// reused the pid.
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

    pub fn endpoints_path(&self) -> PathBuf {
        self.dir.join("endpoints.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(".lock")
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
        let bytes = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
        write_atomic(&self.record_path(&rec.id), &bytes)
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

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".part")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
