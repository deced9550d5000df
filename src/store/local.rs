//! The local store: one JSON file per secret.
//!
//! Owns: the file format, its permissions (0600; refused when group or world can read it),
//! atomic writes (temp file, fsync, rename, fsync of the directory) and a sidecar `flock` that
//! serializes read-modify-write cycles between processes. Versions keep their fingerprint after
//! they are destroyed, which is the store's history. Must never: write a value anywhere but the
//! store file, or keep the value of a destroyed version.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::{Model, ModelVersion};
use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::secret::{Fingerprint, SecretValue};

const FORMAT: u32 = 1;

/// A JSON file store.
pub struct LocalStore {
    path: PathBuf,
    secret: String,
    lock_path: PathBuf,
    /// Destroyed versions whose record is kept (the newest); older ones are forgotten in the
    /// same write that destroys a version.
    keep_destroyed: usize,
}

/// A value as stored in the file; serializes as the plain string, never printed.
struct Stored(SecretValue);

impl Serialize for Stored {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Stored(SecretValue::new(String::deserialize(d)?)))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVersion {
    id: String,
    fingerprint: Fingerprint,
    state: VersionState,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Stored>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: u32,
    secret: String,
    generation: u64,
    versions: Vec<FileVersion>,
    primary: Option<String>,
    secondary: Option<String>,
}

impl StoreFile {
    fn into_model(self) -> (Model, u64) {
        let versions = self
            .versions
            .into_iter()
            .map(|v| ModelVersion {
                id: v.id,
                fingerprint: v.fingerprint,
                state: v.state,
                created_at: v.created_at,
                value: v.value.map(|s| s.0),
            })
            .collect();
        (
            Model {
                secret: self.secret,
                versions,
                primary: self.primary,
                secondary: self.secondary,
            },
            self.generation,
        )
    }

    fn from_model(m: &Model, generation: u64) -> StoreFile {
        StoreFile {
            format: FORMAT,
            secret: m.secret.clone(),
            generation,
            versions: m
                .versions
                .iter()
                .map(|v| FileVersion {
                    id: v.id.clone(),
                    fingerprint: v.fingerprint.clone(),
                    state: v.state,
                    created_at: v.created_at,
                    value: v.value.clone().map(Stored),
                })
                .collect(),
            primary: m.primary.clone(),
            secondary: m.secondary.clone(),
        }
    }
}

impl LocalStore {
    /// A store at `path` for secret `secret`, its writers serialized by a lock file at
    /// `lock_path` (in the state directory: rotor writes nothing beside the store but the store),
    /// keeping the default number of destroyed versions' records (`keep.destroyed_versions`).
    pub fn new(path: PathBuf, secret: &str, lock_path: PathBuf) -> Self {
        LocalStore {
            path,
            secret: secret.to_string(),
            lock_path,
            keep_destroyed: crate::playbook::Keep::default().destroyed_versions,
        }
    }

    /// The same store keeping the records of the newest `n` destroyed versions (the loader
    /// refuses less than 1; the version a write just destroyed always stays).
    pub fn keeping_destroyed(mut self, n: usize) -> Self {
        self.keep_destroyed = n;
        self
    }

    fn io(&self, action: &str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            action: action.to_string(),
            source,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            detail: detail.into(),
        }
    }

    fn refused(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Refused {
            store: self.describe(),
            detail: detail.into(),
        }
    }

    /// Takes the writers' lock for one read-modify-write cycle. Readers take none: every write
    /// is an atomic rename, so a reader sees the old file or the new one, never a mix.
    fn lock(&self) -> Result<File, StoreError> {
        let lock_path = &self.lock_path;
        if let Some(dir) = lock_path.parent() {
            crate::state_dir::prepare(dir).map_err(|e| self.refused(e))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(lock_path)
            .map_err(|e| self.io("open store lock", e))?;
        f.lock().map_err(|e| self.io("lock store", e))?;
        Ok(f)
    }

    fn load(&self) -> Result<(Model, u64), StoreError> {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    store: self.describe(),
                });
            }
            Err(e) => return Err(self.io("stat store", e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Permissions {
                store: self.path.display().to_string(),
                mode,
            });
        }
        let bytes = fs::read(&self.path).map_err(|e| self.io("read store", e))?;
        let file: StoreFile = serde_json::from_slice(&bytes)
            // serde's message may quote the file's text (a value): kind and position only.
            .map_err(|e| {
                self.corrupt(format!(
                    "not a rotor store file ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?;
        if file.format != FORMAT {
            return Err(self.corrupt(format!(
                "format {} is not supported (this rotor reads format {FORMAT})",
                file.format
            )));
        }
        let (model, generation) = file.into_model();
        model.check(&self.secret).map_err(|d| self.corrupt(d))?;
        Ok((model, generation))
    }

    fn save(&self, model: &Model, generation: u64) -> Result<(), StoreError> {
        let file = StoreFile::from_model(model, generation + 1);
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| self.corrupt(e.to_string()))?;
        atomic_write(&self.path, &bytes, 0o600).map_err(|e| self.io("write store", e))
    }

    /// One read-modify-write cycle under the sidecar lock; `f` says whether it changed.
    fn modify<T>(
        &self,
        f: impl FnOnce(&mut Model, &str) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.lock()?;
        let (mut model, generation) = self.load()?;
        let (out, changed) = f(&mut model, &self.describe())?;
        if changed {
            self.save(&model, generation)?;
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory with `mode`, fsync,
/// rename over `path`, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".rotor-tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.path.display())
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.path.exists())
    }

    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        let _guard = self.lock()?;
        if self.path.exists() {
            return Err(self.refused("it already exists; `rotor init` only creates new stores"));
        }
        let model = Model::new(&self.secret, value);
        self.save(&model, 0)?;
        Ok(model.versions[0].info())
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        Ok(self.load()?.0.snapshot())
    }

    async fn read_value(&self, version: &str) -> Result<SecretValue, StoreError> {
        self.load()?.0.read_value(&self.describe(), version)
    }

    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        self.modify(|m, _| Ok((m.add_version(value), true)))
    }

    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError> {
        self.modify(|m, store| Ok(((), m.set_slots(store, primary, secondary)?)))
    }

    /// Changes a version's state; destroying one also forgets the oldest destroyed versions'
    /// records beyond `keep_destroyed`, in the same atomic write (a crash leaves the file before
    /// or after both).
    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError> {
        let keep = self.keep_destroyed;
        self.modify(|m, store| {
            let changed = m.set_state(store, version, state)?;
            let pruned = state == VersionState::Destroyed && m.prune_destroyed(keep, version);
            Ok(((), changed || pruned))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Alphabet;

    fn lock_path(store: &std::path::Path) -> PathBuf {
        store.with_file_name("state").join("store.lock")
    }

    fn value() -> SecretValue {
        SecretValue::generate(Alphabet::Alphanumeric, 40).unwrap()
    }

    #[tokio::test]
    async fn lifecycle_keeps_history_and_destroys_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let store = LocalStore::new(path.clone(), "s", lock_path(&path));
        assert!(matches!(
            store.snapshot().await,
            Err(StoreError::Missing { .. })
        ));
        let a = value();
        let b = value();
        let va = store.init(&a).await.unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let vb = store.add_version(&b).await.unwrap();
        store.set_slots(&va.id, Some(&vb.id)).await.unwrap();
        assert!(store.read_value(&vb.id).await.unwrap().ct_eq(&b));
        // A version in a slot cannot be disabled.
        assert!(matches!(
            store.set_state(&va.id, VersionState::Disabled).await,
            Err(StoreError::Refused { .. })
        ));
        store.set_slots(&vb.id, None).await.unwrap();
        store
            .set_state(&va.id, VersionState::Disabled)
            .await
            .unwrap();
        assert!(matches!(
            store.read_value(&va.id).await,
            Err(StoreError::NotReadable { .. })
        ));
        store
            .set_state(&va.id, VersionState::Enabled)
            .await
            .unwrap();
        assert!(store.read_value(&va.id).await.unwrap().ct_eq(&a));
        store
            .set_state(&va.id, VersionState::Destroyed)
            .await
            .unwrap();
        // Idempotent.
        store
            .set_state(&va.id, VersionState::Destroyed)
            .await
            .unwrap();
        assert!(
            store
                .set_state(&va.id, VersionState::Enabled)
                .await
                .is_err()
        );
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.versions.len(), 2);
        assert_eq!(
            snap.version(&va.id).unwrap().fingerprint,
            a.fingerprint("s")
        );
        assert_eq!(snap.primary.as_deref(), Some(vb.id.as_str()));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(a.expose()),
            "destroyed value still in the file"
        );
        assert!(text.contains(b.expose()));
    }

    /// One rotation's worth of store writes: a new version promoted, the old one destroyed.
    async fn rotate(store: &LocalStore) -> String {
        let snap = store.snapshot().await.unwrap();
        let old = snap.primary.clone().unwrap();
        let new = store.add_version(&value()).await.unwrap().id;
        store.set_slots(&new, None).await.unwrap();
        store.set_state(&old, VersionState::Disabled).await.unwrap();
        store
            .set_state(&old, VersionState::Destroyed)
            .await
            .unwrap();
        old
    }

    fn destroyed(snap: &StoreSnapshot) -> Vec<&str> {
        snap.versions
            .iter()
            .filter(|v| v.state == VersionState::Destroyed)
            .map(|v| v.id.as_str())
            .collect()
    }

    #[tokio::test]
    async fn keeps_the_newest_destroyed_records_and_never_reuses_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let store = LocalStore::new(path.clone(), "s", lock_path(&path)).keeping_destroyed(3);
        store.init(&value()).await.unwrap();
        for _ in 0..6 {
            rotate(&store).await;
        }
        let snap = store.snapshot().await.unwrap();
        assert_eq!(destroyed(&snap), ["4", "5", "6"]);
        assert_eq!(snap.primary.as_deref(), Some("7"));
        assert_eq!(snap.versions.len(), 4);

        // A rolled-back rotation destroys its unused new version (8): the highest id, which
        // stays (the next id comes from it). The next rotation destroys 7, a lower id than
        // 8: it stays too (a resumed T5 looks it up), and the oldest goes.
        let unused = store.add_version(&value()).await.unwrap().id;
        store
            .set_state(&unused, VersionState::Disabled)
            .await
            .unwrap();
        store
            .set_state(&unused, VersionState::Destroyed)
            .await
            .unwrap();
        assert_eq!(destroyed(&store.snapshot().await.unwrap()), ["5", "6", "8"]);
        let gone = rotate(&store).await;
        assert_eq!(gone, "7");
        let snap = store.snapshot().await.unwrap();
        assert_eq!(destroyed(&snap), ["6", "7", "8"]);
        assert_eq!(
            snap.primary.as_deref(),
            Some("9"),
            "id 8 was not given again"
        );

        // With one kept, only the version just destroyed stays beside the highest id.
        let store = LocalStore::new(path.clone(), "s", lock_path(&path)).keeping_destroyed(1);
        rotate(&store).await;
        assert_eq!(destroyed(&store.snapshot().await.unwrap()), ["9"]);
        // The default keeps 100, like the gcp store.
        let store = LocalStore::new(path.clone(), "s", lock_path(&path));
        for _ in 0..3 {
            rotate(&store).await;
        }
        assert_eq!(
            destroyed(&store.snapshot().await.unwrap()),
            ["9", "10", "11", "12"]
        );
    }

    #[tokio::test]
    async fn a_corrupt_store_is_reported_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        for text in [
            r#"{"format": 1, "versions": [{"id": "1", "value": 987654321987654321}]}"#,
            r#"{"format": "s3cr3t-numeric-987654321987654321"}"#,
            r#"987654321987654321"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
            std::fs::set_permissions(&path, perms).unwrap();
            let err = LocalStore::new(path.clone(), "s", lock_path(&path))
                .snapshot()
                .await
                .unwrap_err()
                .to_string();
            assert!(!err.contains("987654321987654321"), "{err}");
            assert!(err.contains("not a rotor store file"), "{err}");
        }
    }

    #[tokio::test]
    async fn refuses_group_readable_files_and_foreign_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        LocalStore::new(path.clone(), "s", lock_path(&path))
            .init(&value())
            .await
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = LocalStore::new(path.clone(), "s", lock_path(&path))
            .snapshot()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = LocalStore::new(path.clone(), "other", lock_path(&path))
            .snapshot()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("holds another secret (1 characters)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn set_slots_is_idempotent_and_does_not_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let store = LocalStore::new(path.clone(), "s", lock_path(&path));
        let va = store.init(&value()).await.unwrap();
        let before = fs::read(&path).unwrap();
        store.set_slots(&va.id, None).await.unwrap();
        assert_eq!(before, fs::read(&path).unwrap());
    }
}
