//! Local file store (stub, being written).
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::secret::SecretValue;

/// A JSON file store.
pub struct LocalStore {
    path: PathBuf,
    secret: String,
}

impl LocalStore {
    /// A store at `path` for secret `secret`.
    pub fn new(path: PathBuf, secret: &str) -> Self {
        LocalStore { path, secret: secret.to_string() }
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local:{} ({})", self.path.display(), self.secret)
    }
    async fn exists(&self) -> Result<bool, StoreError> {
        todo!()
    }
    async fn init(&self, _value: &SecretValue) -> Result<VersionInfo, StoreError> {
        todo!()
    }
    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        todo!()
    }
    async fn read_value(&self, _version: &str) -> Result<SecretValue, StoreError> {
        todo!()
    }
    async fn add_version(&self, _value: &SecretValue) -> Result<VersionInfo, StoreError> {
        todo!()
    }
    async fn set_slots(&self, _p: &str, _s: Option<&str>) -> Result<(), StoreError> {
        todo!()
    }
    async fn set_state(&self, _v: &str, _s: VersionState) -> Result<(), StoreError> {
        todo!()
    }
}
