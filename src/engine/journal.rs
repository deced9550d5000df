//! The journal: one JSON document per rotation, rewritten atomically after every step.
//!
//! Owns: what a rotation has done (state, steps, version references, fingerprints), so a
//! crashed run can be resumed or rolled back, and where that record lives: the
//! [`JournalStore`] trait, [`JournalFile`] (`<state_dir>/journal.json`, the default) and
//! [`configmap::ConfigMapJournal`] (a ConfigMap, so a rescheduled Job resumes where the last
//! one stopped). Must never: contain a value. After a crash the new value is read back from the
//! store (S1 and later); before S1 a fresh one is generated.

pub mod configmap;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterError;

use crate::protocol::{Direction, State, Transition};
use crate::secret::Fingerprint;
use crate::store::local::atomic_write;

const FORMAT: u32 = 1;

/// How the rotation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Interactive, by hand.
    Operator,
    /// A scheduled job.
    Scheduled,
    /// Rekey after a leak.
    Emergency,
}

/// Where the rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A run is (or was, if it crashed) moving forward.
    Running,
    /// A run is (or was) walking inverses back.
    RollingBack,
    /// Stopped at a stable state on purpose (`--until`, a declined confirmation, retention).
    Paused,
    /// Reached S5.
    Completed,
    /// Back at the state rollback aimed for.
    RolledBack,
    /// A rollback failed or the real state contradicted the journal: needs an operator.
    Failed,
}

impl Status {
    /// True while the rotation still owns the secret (a new rotation must not start).
    pub fn is_active(self) -> bool {
        !matches!(self, Status::Completed | Status::RolledBack)
    }
}

/// A version of the store, by reference and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    /// The store's version id; `None` while T1 has not added it yet.
    pub version: Option<String>,
    /// Fingerprint of the value.
    pub fingerprint: Fingerprint,
}

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Started, not ended: a dirty step after a crash.
    Running,
    /// Ended and proven.
    Ok,
    /// Ended in failure.
    Failed,
}

/// One transition (or inverse) attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Which transition.
    pub transition: Transition,
    /// Which way.
    pub direction: Direction,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: Outcome,
    /// What happened (fingerprints only).
    pub detail: String,
}

/// One rotation's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// File format.
    pub format: u32,
    /// Rotation id (`r-20261122T101500Z-1a2b3c`).
    pub id: String,
    /// Secret name.
    pub secret: String,
    /// Environment.
    pub environment: String,
    /// How it was started.
    pub mode: Mode,
    /// Why (emergency reason, or empty).
    pub reason: String,
    /// Playbook path.
    pub playbook: String,
    /// SHA-256 of the playbook when the rotation started.
    pub playbook_checksum: String,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// Last stable state reached.
    pub state: State,
    /// Where the run is headed (S5 forward, or the rollback target).
    pub target: State,
    /// Where the rotation stands.
    pub status: Status,
    /// The old value (A).
    pub old: VersionRef,
    /// The new value (B), once generated.
    pub new: Option<VersionRef>,
    /// When each state was (last) reached.
    pub reached: BTreeMap<State, DateTime<Utc>>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// `rekey --hard-cut`: T2 and T3 only move the store and T4 rolls every consumer at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_cut: bool,
}

impl Journal {
    /// Whether the rotation is on its way back: rolling back, or failed during an inverse.
    pub fn rolling_back(&self) -> bool {
        self.status == Status::RollingBack
            || (self.status == Status::Failed
                && self
                    .steps
                    .last()
                    .is_some_and(|s| s.direction == Direction::Inverse))
    }

    /// A fresh journal at S0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        secret: &str,
        environment: &str,
        mode: Mode,
        playbook: &str,
        checksum: &str,
        old: VersionRef,
        target: State,
    ) -> Journal {
        let now = Utc::now();
        Journal {
            format: FORMAT,
            id,
            secret: secret.into(),
            environment: environment.into(),
            mode,
            reason: String::new(),
            playbook: playbook.into(),
            playbook_checksum: checksum.into(),
            started_at: now,
            updated_at: now,
            state: State::S0,
            target,
            status: Status::Running,
            old,
            new: None,
            reached: BTreeMap::from([(State::S0, now)]),
            steps: Vec::new(),
            hard_cut: false,
        }
    }

    /// The last step if it started and never ended (a crash happened during it).
    pub fn dirty_step(&self) -> Option<&Step> {
        self.steps.last().filter(|s| s.outcome == Outcome::Running)
    }

    /// Records the start of a step.
    pub fn begin(&mut self, transition: Transition, direction: Direction) {
        self.steps.push(Step {
            transition,
            direction,
            started_at: Utc::now(),
            ended_at: None,
            outcome: Outcome::Running,
            detail: String::new(),
        });
    }

    /// Records the end of the current step; on success moves `state`.
    pub fn end(&mut self, outcome: Outcome, detail: String) {
        let now = Utc::now();
        if let Some(step) = self.steps.last_mut() {
            step.ended_at = Some(now);
            step.outcome = outcome;
            step.detail = crate::redact::redact(&detail).into_owned();
            if outcome == Outcome::Ok {
                self.state = match step.direction {
                    Direction::Forward => step.transition.to(),
                    Direction::Inverse => step.transition.from(),
                };
                self.reached.insert(self.state, now);
            }
        }
    }
}

/// Where a secret's journals live: the current rotation's, and the archive of finished ones.
///
/// One run writes at a time (the single-flight lock guarantees it); a backend that can detect
/// a second writer (a resourceVersion) refuses instead of overwriting.
#[async_trait]
pub trait JournalStore: Send + Sync {
    /// The current journal, if any.
    async fn load(&self) -> Result<Option<Journal>, JournalError>;
    /// Writes the current journal atomically (and stamps `updated_at`).
    async fn save(&self, journal: &mut Journal) -> Result<(), JournalError>;
    /// Moves the current journal (a finished rotation's) to the archive; afterwards `load`
    /// returns `None`.
    async fn archive(&self, journal: &Journal) -> Result<(), JournalError>;
    /// Where the current journal lives (`/x/state/journal.json`,
    /// `configmaps/rotor-journal-auth-prod in namespace demo`).
    fn describe(&self) -> String;
    /// The ids of the archived (finished) rotations, oldest first; `None` when this backend
    /// does not list its archive (the ConfigMap archive is pruned with kubectl, see
    /// [`configmap`]). Never includes the current journal.
    async fn archived(&self) -> Result<Option<Vec<String>>, JournalError> {
        Ok(None)
    }
    /// Removes the archived journal of rotation `id` (one of [`JournalStore::archived`]);
    /// never the current journal. Removing one that is already gone succeeds.
    async fn remove_archived(&self, _id: &str) -> Result<(), JournalError> {
        Ok(())
    }
}

/// When rotation `id` (`r-20261122T101500Z-1a2b3c`) started, to the second, as its id says;
/// `None` for a name that is not a rotation id.
pub fn started_from_id(id: &str) -> Option<DateTime<Utc>> {
    let rest = id.strip_prefix("r-")?;
    let (stamp, tail) = rest.split_once('-')?;
    if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The journal store the playbook names: its cluster's ConfigMap (`cluster.journal:
/// configmap`), else the state directory. Opening reads and writes nothing.
pub fn open(
    pb: &crate::playbook::Playbook,
    cluster: Option<&crate::cluster::Cluster>,
) -> Result<Box<dyn JournalStore>, ClusterError> {
    use crate::playbook::JournalKind;
    match pb.cluster.as_ref().map(|c| c.journal) {
        Some(JournalKind::ConfigMap) => {
            let cluster = cluster.ok_or_else(|| ClusterError::Connect {
                detail: "the playbook keeps its journal in a ConfigMap, but no cluster connection was opened".into(),
            })?;
            Ok(Box::new(configmap::ConfigMapJournal::new(
                cluster,
                &pb.secret,
                pb.environment.as_str(),
            )))
        }
        Some(JournalKind::File) | None => Ok(Box::new(JournalFile::new(&pb.state_dir))),
    }
}

/// Where journals live: `<state_dir>/journal.json` for the current rotation, finished ones
/// archived under `<state_dir>/history/<id>.json`.
#[derive(Debug, Clone)]
pub struct JournalFile {
    dir: PathBuf,
}

/// Journal I/O failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Cannot read or write.
    #[error("journal {path}: {action}: {source}")]
    Io {
        /// File.
        path: String,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster refused or failed a journal call.
    #[error("journal: {0}")]
    Cluster(#[from] ClusterError),
    /// Someone else wrote the journal since this run read it.
    #[error(
        "journal {target} was changed by someone else since this run read it; rotor did not overwrite it\n  help: two runs wrote the journal of one secret, so the single-flight lock did not hold (two lock backends, or a forced takeover of a live run); stop every run of this secret, check `rotor status` and the store with `rotor check`, then `rotor resume`"
    )]
    Conflict {
        /// Where the journal lives.
        target: String,
    },
    /// The journal outgrew its storage.
    #[error(
        "journal {target} is {bytes} bytes, more than the {limit} bytes it may take\n  help: a rotation this long is stuck in a loop; inspect it with `rotor status`, then roll it back"
    )]
    TooLarge {
        /// Where the journal lives.
        target: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// This run lost its lock, so it must not write the journal any more.
    #[error(
        "journal not written: this run no longer holds the lock of this secret: {holder}\n  help: this run could not renew its claim in time (the API that keeps the lock failed or was too slow); check `rotor status`, then `rotor resume` once no other run holds the lock"
    )]
    LockLost {
        /// Who holds the lock now.
        holder: String,
    },
    /// Cannot parse.
    #[error(
        "journal {path} is unreadable: {detail}\n  help: rotor will not guess what a damaged journal meant; inspect it, then move it aside and check the store with `rotor check`"
    )]
    Corrupt {
        /// File.
        path: String,
        /// Parser message.
        detail: String,
    },
}

impl JournalFile {
    /// Journals of the secret whose state directory is `dir`.
    pub fn new(dir: &Path) -> JournalFile {
        JournalFile {
            dir: dir.to_path_buf(),
        }
    }

    /// Path of the current journal.
    pub fn path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }
}

#[async_trait]
impl JournalStore for JournalFile {
    async fn load(&self) -> Result<Option<Journal>, JournalError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    path: path.display().to_string(),
                    action: "read",
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
    }

    /// Writes the journal atomically (temp file, fsync, rename).
    async fn save(&self, journal: &mut Journal) -> Result<(), JournalError> {
        journal.updated_at = Utc::now();
        let path = self.path();
        let bytes = serde_json::to_vec_pretty(journal).expect("journal serializes");
        crate::state_dir::prepare(&self.dir)
            .map_err(std::io::Error::other)
            .and_then(|()| atomic_write(&path, &bytes, 0o600))
            .map_err(|source| JournalError::Io {
                path: path.display().to_string(),
                action: "write",
                source,
            })
    }

    /// Moves the current journal to `history/<id>.json`.
    async fn archive(&self, journal: &Journal) -> Result<(), JournalError> {
        let to = self
            .dir
            .join("history")
            .join(format!("{}.json", journal.id));
        let io = |source| JournalError::Io {
            path: to.display().to_string(),
            action: "archive",
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(to.parent().expect("has parent"))
                .map_err(io)?;
        }
        fs::rename(self.path(), &to).map_err(io)
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    /// `history/<id>.json` for every name that is a rotation id, oldest first (ids start with
    /// their start time); anything else in `history/` is not rotor's and is left out.
    async fn archived(&self) -> Result<Option<Vec<String>>, JournalError> {
        let dir = self.dir.join("history");
        let io = |source| JournalError::Io {
            path: dir.display().to_string(),
            action: "list",
            source,
        };
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
            Err(e) => return Err(io(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|id| started_from_id(id).is_some())
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(Some(ids))
    }

    /// Unlinks `history/<id>.json` (one rename-free step: a kill leaves it there or gone).
    async fn remove_archived(&self, id: &str) -> Result<(), JournalError> {
        if started_from_id(id).is_none() {
            return Ok(());
        }
        let path = self.dir.join("history").join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io {
                path: path.display().to_string(),
                action: "remove",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_id_says_when_it_started() {
        let t = started_from_id("r-20261122T101500Z-1a2b3c").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:15:00+00:00");
        for not in [
            "r-20261122T101500Z",
            "r-20261122T101500Z-",
            "r-20261122T101500Z-xyz",
            "r-2026-1a2b3c",
            "x-20261122T101500Z-1a2b3c",
            "../r-20261122T101500Z-1a2b3c",
        ] {
            assert_eq!(started_from_id(not), None, "{not}");
        }
    }

    /// The archive lists rotor's finished journals oldest first and removes one at a time;
    /// the current journal and files that are not rotor's are never listed nor removed.
    #[tokio::test]
    async fn the_file_archive_lists_and_removes_only_finished_journals() {
        let tmp = tempfile::tempdir().unwrap();
        let journals = JournalFile::new(tmp.path());
        assert_eq!(journals.archived().await.unwrap(), Some(Vec::new()));
        let history = tmp.path().join("history");
        fs::create_dir_all(&history).unwrap();
        let ids = [
            "r-20261122T101500Z-1a2b3c",
            "r-20250101T000000Z-ffffff",
            "r-20261122T101500Z-000000",
        ];
        for id in ids {
            fs::write(history.join(format!("{id}.json")), "{}").unwrap();
        }
        fs::write(history.join("notes.json"), "mine").unwrap();
        fs::write(history.join("r-20261122T101500Z-1a2b3c.json.bak"), "x").unwrap();
        fs::write(journals.path(), "{}").unwrap();
        let listed = journals.archived().await.unwrap().unwrap();
        assert_eq!(
            listed,
            [
                "r-20250101T000000Z-ffffff",
                "r-20261122T101500Z-000000",
                "r-20261122T101500Z-1a2b3c"
            ]
        );
        journals.remove_archived(&listed[0]).await.unwrap();
        journals.remove_archived(&listed[0]).await.unwrap();
        journals.remove_archived("notes").await.unwrap();
        journals.remove_archived("../journal").await.unwrap();
        assert_eq!(journals.archived().await.unwrap().unwrap(), listed[1..]);
        assert!(history.join("notes.json").exists());
        assert!(journals.path().exists());
    }
}
