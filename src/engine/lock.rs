//! Single-flight lock: one rotation per secret at a time.
//!
//! Owns: the [`RotationLock`] trait (so a Kubernetes Lease or a store-side annotation can
//! replace the file lock) and [`FileLock`], an `flock` on `<state_dir>/lock` with the holder's
//! identity, stage and start time beside it in `<state_dir>/lock.json`. The kernel releases an
//! `flock` when its holder dies, so a crashed run never leaves a stale lock behind; the holder
//! file then only tells the next run who was there.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
        }
    }
}

/// Lock failures.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("another rotation of this secret is running: {} ({}) holds the lock since {}, at stage {}{}\n  help: wait for it to finish, or check it with `rotor status`",
        .0.identity, .0.command, .0.since.format("%Y-%m-%d %H:%M:%S UTC"), .0.stage,
        .0.rotation.as_ref().map(|r| format!(", rotation {r}")).unwrap_or_default())]
    Held(Holder),
    /// Someone holds it but did not say who (holder file missing or unreadable).
    #[error(
        "another process holds the lock {path} (holder unknown)\n  help: wait for it to finish; `fuser {path}` shows the process"
    )]
    HeldUnknown {
        /// Lock file.
        path: String,
    },
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

/// A held lock; released when dropped.
pub trait LockGuard: Send + Sync {
    /// Records the current stage (and renews the expiry).
    fn set_stage(&self, rotation: Option<&str>, stage: &str);
}

/// A single-flight lock backend.
pub trait RotationLock: Send + Sync {
    /// Takes the lock or says who holds it.
    fn acquire(&self, holder: Holder) -> Result<Box<dyn LockGuard>, LockError>;
    /// Who holds it now, if anyone.
    fn holder(&self) -> Result<Option<Holder>, LockError>;
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

    fn io(&self, source: std::io::Error) -> LockError {
        LockError::Io {
            path: self.lock_path().display().to_string(),
            source,
        }
    }

    fn open(&self) -> Result<File, LockError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(|e| self.io(e))
    }

    fn read_holder(&self) -> Option<Holder> {
        let bytes = fs::read(self.holder_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn held_error(&self) -> LockError {
        match self.read_holder() {
            Some(h) => LockError::Held(h),
            None => LockError::HeldUnknown {
                path: self.lock_path().display().to_string(),
            },
        }
    }
}

struct FileGuard {
    file: File,
    holder_path: PathBuf,
    holder: Mutex<Holder>,
}

impl FileGuard {
    fn write(&self, h: &Holder) {
        let bytes = serde_json::to_vec_pretty(h).expect("holder serializes");
        // Best effort: the flock is the lock; the file only informs.
        let _ = atomic_write(&self.holder_path, &bytes, 0o600);
    }
}

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
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.holder_path);
        let _ = self.file.unlock();
    }
}

impl RotationLock for FileLock {
    fn acquire(&self, holder: Holder) -> Result<Box<dyn LockGuard>, LockError> {
        let file = self.open()?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(self.held_error()),
            Err(fs::TryLockError::Error(e)) => return Err(self.io(e)),
        }
        let guard = FileGuard {
            file,
            holder_path: self.holder_path(),
            holder: Mutex::new(holder.clone()),
        };
        guard.write(&holder);
        Ok(Box::new(guard))
    }

    fn holder(&self) -> Result<Option<Holder>, LockError> {
        let file = self.open()?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(None)
            }
            Err(fs::TryLockError::WouldBlock) => match self.held_error() {
                LockError::Held(h) => Ok(Some(h)),
                _ => Ok(Some(Holder {
                    identity: "unknown".into(),
                    command: "unknown".into(),
                    rotation: None,
                    stage: "unknown".into(),
                    since: Utc::now(),
                    expires: Utc::now(),
                })),
            },
            Err(fs::TryLockError::Error(e)) => Err(self.io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder_and_stage() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::new(dir.path());
        let g = lock.acquire(Holder::me("rotate")).unwrap();
        g.set_stage(Some("r-1"), "T2 widen forward");
        // flock is per open file description, so a second open in the same process conflicts.
        let err = lock
            .acquire(Holder::me("rotate"))
            .err()
            .expect("must be refused");
        let msg = err.to_string();
        assert!(msg.contains("T2 widen forward"), "{msg}");
        assert!(msg.contains("rotation r-1"), "{msg}");
        assert_eq!(lock.holder().unwrap().unwrap().stage, "T2 widen forward");
        drop(g);
        assert!(lock.holder().unwrap().is_none());
        lock.acquire(Holder::me("resume")).unwrap();
    }
}
