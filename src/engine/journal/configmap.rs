//! The journal in a ConfigMap, so a rotation started by one pod (a CronJob's Job) is resumed by
//! the next one, wherever it is scheduled.
//!
//! Owns, in the playbook's namespace, labelled `app.kubernetes.io/managed-by: rotor`,
//! `rotor.dev/secret` and `rotor.dev/environment`:
//! - `rotor-journal-<secret>-<environment>`: key `journal.json` holds the current rotation's
//!   journal (the same JSON as the file backend's `journal.json`); no key means no rotation.
//! - `rotor-journal-<secret>-<environment>-<rotation id, lowercased>`: one per finished
//!   rotation (the archive), labelled `rotor.dev/rotation: <id>` and
//!   `rotor.dev/archived: "true"`, with the same `journal.json` key. Each object holds a single
//!   journal, so none grows towards the 1 MiB limit of an object; `kubectl delete configmap -l
//!   rotor.dev/archived=true,rotor.dev/secret=<secret>` prunes the archive.
//!
//! Rules: every write is a create or a replace carrying the resourceVersion this process read
//! or wrote last. A 409 means another writer, i.e. the single-flight lock failed: rotor reports
//! it and never overwrites — except when the object already holds exactly what this write
//! carries (a write retried after a timeout that had in fact landed). Verbs needed: `get`,
//! `create`, `update` on `configmaps`.
//!
//! Must never: hold a value (the journal never has one), or create anything on `load` (`rotor
//! plan` and `rotor status` load through here and must stay read-only).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::{Journal, JournalError, JournalStore};
use crate::cluster::{Call, Cluster, ClusterError, retry};

/// The key that holds the journal.
pub const KEY: &str = "journal.json";
/// Largest journal rotor writes (a ConfigMap holds at most 1 MiB, metadata included).
pub const LIMIT: usize = 900 * 1024;

/// `rotor-journal-<secret>-<environment>`.
pub fn configmap_name(secret: &str, environment: &str) -> String {
    format!("rotor-journal-{secret}-{environment}")
}

/// `rotor-journal-<secret>-<environment>-<id>` (lowercased: object names are DNS subdomains).
pub fn archive_name(current: &str, rotation: &str) -> String {
    format!("{current}-{}", rotation.to_ascii_lowercase())
}

/// The journals of one secret and environment in ConfigMaps.
pub struct ConfigMapJournal {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    secret: String,
    environment: String,
    /// resourceVersion of the current ConfigMap as this process last read or wrote it; `None`
    /// when it did not exist.
    version: Mutex<Option<String>>,
}

impl ConfigMapJournal {
    /// The journal ConfigMap of `secret` in `environment`, in the cluster's namespace.
    pub fn new(cluster: &Cluster, secret: &str, environment: &str) -> ConfigMapJournal {
        let namespace = cluster.namespace().to_string();
        ConfigMapJournal {
            api: Api::namespaced(cluster.client(), &namespace),
            name: configmap_name(secret, environment),
            namespace,
            secret: secret.to_string(),
            environment: environment.to_string(),
            version: Mutex::new(None),
        }
    }

    /// The current journal's ConfigMap name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn call(&self, verb: &'static str, name: &str) -> Call {
        Call::new(verb, "configmaps", "", &self.namespace, name)
    }

    fn target(&self, name: &str) -> String {
        self.call("get", name).target()
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), "rotor".into()),
            ("rotor.dev/secret".into(), self.secret.clone()),
            ("rotor.dev/environment".into(), self.environment.clone()),
        ])
    }

    async fn get(&self, name: &str) -> Result<Option<ConfigMap>, ClusterError> {
        retry(&self.call("get", name), || self.api.get_opt(name)).await
    }

    /// Creates `cm`, or replaces it when it carries a resourceVersion. On a 409, succeeds only if
    /// the object already holds `text` (this write landed before a retry); returns the new
    /// resourceVersion.
    async fn write(&self, cm: &ConfigMap, text: &str) -> Result<Option<String>, JournalError> {
        let name = cm.metadata.name.clone().expect("named");
        let written = match cm.metadata.resource_version {
            Some(_) => {
                let pp = PostParams::default();
                retry(&self.call("update", &name), || {
                    self.api.replace(&name, &pp, cm)
                })
                .await
            }
            None => {
                let pp = PostParams::default();
                retry(&self.call("create", &name), || self.api.create(&pp, cm)).await
            }
        };
        match written {
            Ok(cm) => Ok(cm.metadata.resource_version),
            Err(e) if e.is_conflict() || e.is_not_found() => match self.get(&name).await? {
                Some(now) if holds(&now, text) => Ok(now.metadata.resource_version),
                _ => Err(JournalError::Conflict {
                    target: self.target(&name),
                }),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn object(&self, name: &str, text: Option<&str>, version: Option<String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels()),
                resource_version: version,
                ..ObjectMeta::default()
            },
            data: text.map(|t| BTreeMap::from([(KEY.to_string(), t.to_string())])),
            ..ConfigMap::default()
        }
    }
}

/// Whether `cm` holds exactly `text` under [`KEY`].
fn holds(cm: &ConfigMap, text: &str) -> bool {
    cm.data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .is_some_and(|t| t == text)
}

/// Serializes a journal as stored (the file backend's format), refusing oversized ones.
pub fn encode(journal: &Journal, target: &str) -> Result<String, JournalError> {
    let text = serde_json::to_string_pretty(journal).expect("journal serializes");
    if text.len() > LIMIT {
        return Err(JournalError::TooLarge {
            target: target.to_string(),
            bytes: text.len(),
            limit: LIMIT,
        });
    }
    Ok(text)
}

/// The journal a ConfigMap holds, if any.
pub fn decode(cm: &ConfigMap, target: &str) -> Result<Option<Journal>, JournalError> {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(KEY)) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            path: format!("{target}, key {KEY}"),
            detail: e.to_string(),
        })
}

#[async_trait]
impl JournalStore for ConfigMapJournal {
    async fn load(&self) -> Result<Option<Journal>, JournalError> {
        let cm = self.get(&self.name).await?;
        *self.version.lock().expect("journal mutex") = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        match cm {
            None => Ok(None),
            Some(cm) => decode(&cm, &self.target(&self.name)),
        }
    }

    async fn save(&self, journal: &mut Journal) -> Result<(), JournalError> {
        journal.updated_at = Utc::now();
        let text = encode(journal, &self.target(&self.name))?;
        let version = self.version.lock().expect("journal mutex").clone();
        let cm = self.object(&self.name, Some(&text), version);
        let written = self.write(&cm, &text).await?;
        *self.version.lock().expect("journal mutex") = written;
        Ok(())
    }

    async fn archive(&self, journal: &Journal) -> Result<(), JournalError> {
        let name = archive_name(&self.name, &journal.id);
        let text = encode(journal, &self.target(&name))?;
        let mut archived = self.object(&name, Some(&text), None);
        let labels = archived.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert("rotor.dev/rotation".into(), journal.id.clone());
        labels.insert("rotor.dev/archived".into(), "true".into());
        // Idempotent: a crash between the two writes archives again and finds it there.
        self.write(&archived, &text).await?;
        // Empty the current one (no key: no rotation in progress), guarded as every write.
        let version = self.version.lock().expect("journal mutex").clone();
        if version.is_some() {
            let empty = self.object(&self.name, None, version);
            let pp = PostParams::default();
            let written = retry(&self.call("update", &self.name), || {
                self.api.replace(&self.name, &pp, &empty)
            })
            .await
            .map_err(|e| match e {
                e if e.is_conflict() || e.is_not_found() => JournalError::Conflict {
                    target: self.target(&self.name),
                },
                e => e.into(),
            })?;
            *self.version.lock().expect("journal mutex") = written.metadata.resource_version;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}, key {KEY}", self.target(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::{JournalFile, Mode, VersionRef};
    use crate::protocol::State;
    use crate::secret::Fingerprint;

    fn journal() -> Journal {
        Journal::new(
            "r-20261122T101500Z-1a2b3c".into(),
            "auth",
            "prod",
            Mode::Scheduled,
            "auth.yaml",
            "abc",
            VersionRef {
                version: Some("1".into()),
                fingerprint: Fingerprint::of("auth", "not-a-real-value"),
            },
            State::S5,
        )
    }

    #[test]
    fn names_are_valid_object_names() {
        let current = configmap_name("auth", "prod");
        assert_eq!(current, "rotor-journal-auth-prod");
        let archived = archive_name(&current, "r-20261122T101500Z-1a2b3c");
        assert_eq!(
            archived,
            "rotor-journal-auth-prod-r-20261122t101500z-1a2b3c"
        );
        assert!(
            archived
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[tokio::test]
    async fn the_configmap_holds_the_same_json_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = JournalFile::new(dir.path());
        let mut j = journal();
        file.save(&mut j).await.unwrap();
        let on_disk = std::fs::read_to_string(file.path()).unwrap();
        let text = encode(&j, "t").unwrap();
        assert_eq!(text, on_disk);
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(KEY.to_string(), text)])),
            ..ConfigMap::default()
        };
        assert_eq!(decode(&cm, "t").unwrap(), Some(j));
        assert_eq!(decode(&ConfigMap::default(), "t").unwrap(), None);
    }

    #[test]
    fn a_damaged_journal_is_reported_with_where_it_lives() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(KEY.to_string(), "{".to_string())])),
            ..ConfigMap::default()
        };
        let e = decode(&cm, "configmaps/x in namespace y").unwrap_err();
        assert!(
            e.to_string()
                .contains("configmaps/x in namespace y, key journal.json"),
            "{e}"
        );
    }

    #[test]
    fn an_oversized_journal_is_refused() {
        let mut j = journal();
        j.reason = "x".repeat(LIMIT);
        assert!(matches!(
            encode(&j, "t"),
            Err(JournalError::TooLarge { .. })
        ));
    }
}
