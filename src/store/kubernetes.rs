//! The Kubernetes Secret store: the values' home is one Secret.
//!
//! Layout of the Secret (type Opaque, label `app.kubernetes.io/managed-by: rotor`):
//! - data `primary` and `secondary`: the values in the slots (so a workload can mount the store
//!   Secret directly); `secondary` is absent when the slot is empty;
//! - data `version-<id>`: the value of every version that is enabled or disabled, so the
//!   previous value stays in the store until T5 destroys it;
//! - annotations `rotor.dev/secret` (the logical secret, checked against the playbook),
//!   `rotor.dev/versions` (JSON: id, fingerprint, state, created_at of every version ever
//!   added, destroyed ones included: the history), `rotor.dev/primary`, `rotor.dev/secondary`
//!   (version ids).
//!
//! Owns: mapping the shared [`Model`] to and from that Secret, and conflict-safe writes: every
//! write is a replace carrying the resourceVersion that was read; a 409 re-reads and re-decides
//! (never overwrites a concurrent change). Must never: put a value in an annotation, a label,
//! an error or a log line.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::model::{Model, ModelVersion};
use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::cluster::{Call, Cluster, ClusterError, retry};
use crate::secret::SecretValue;

/// Annotation naming the logical secret.
pub const ANN_SECRET: &str = "rotor.dev/secret";
/// Annotation with every version's metadata (JSON).
pub const ANN_VERSIONS: &str = "rotor.dev/versions";
/// Annotation with the primary version id.
pub const ANN_PRIMARY: &str = "rotor.dev/primary";
/// Annotation with the secondary version id.
pub const ANN_SECONDARY: &str = "rotor.dev/secondary";
/// Label on every object rotor manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rotor");
/// How often one write is re-decided after losing a race before giving up.
const CONFLICT_RETRIES: usize = 5;

/// A store in one Kubernetes Secret.
pub struct KubernetesStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    secret: String,
}

impl KubernetesStore {
    /// The store `namespace/name` for logical secret `secret`.
    pub fn new(cluster: &Cluster, namespace: &str, name: &str, secret: &str) -> KubernetesStore {
        KubernetesStore {
            api: Api::namespaced(cluster.client(), namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            secret: secret.to_string(),
        }
    }

    fn call(&self, verb: &'static str) -> Call {
        Call::new(verb, "secrets", "", &self.namespace, &self.name)
    }

    fn cluster_error(&self, source: ClusterError) -> StoreError {
        StoreError::Cluster {
            store: self.describe(),
            source: Box::new(source),
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            detail: detail.into(),
        }
    }

    /// The Secret, or `None` when it does not exist.
    async fn get(&self) -> Result<Option<Secret>, StoreError> {
        let call = self.call("get");
        match retry(&call, || self.api.get(&self.name)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.cluster_error(e)),
        }
    }

    /// The Secret and the model it holds.
    async fn load(&self) -> Result<(Secret, Model), StoreError> {
        let secret = self.get().await?.ok_or_else(|| StoreError::Missing {
            store: self.describe(),
        })?;
        let model = self.decode(&secret)?;
        Ok((secret, model))
    }

    fn decode(&self, s: &Secret) -> Result<Model, StoreError> {
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let Some(logical) = ann.get(ANN_SECRET) else {
            return Err(self.corrupt(format!(
                "it has no `{ANN_SECRET}` annotation, so it is not a rotor store (rotor does not adopt Secrets it did not create)"
            )));
        };
        let infos: Vec<VersionInfo> = match ann.get(ANN_VERSIONS) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| self.corrupt(format!("annotation `{ANN_VERSIONS}`: {e}")))?,
            None => {
                return Err(self.corrupt(format!("annotation `{ANN_VERSIONS}` is missing")));
            }
        };
        let data = s.data.clone().unwrap_or_default();
        let text = |key: &str| -> Result<Option<SecretValue>, StoreError> {
            match data.get(key) {
                None => Ok(None),
                Some(ByteString(bytes)) => String::from_utf8(bytes.clone())
                    .map(|v| Some(SecretValue::new(v)))
                    .map_err(|_| self.corrupt(format!("data key `{key}` is not UTF-8"))),
            }
        };
        let mut versions = Vec::with_capacity(infos.len());
        for info in infos {
            let value = text(&version_key(&info.id))?;
            versions.push(ModelVersion {
                id: info.id,
                fingerprint: info.fingerprint,
                state: info.state,
                created_at: info.created_at,
                value,
            });
        }
        let model = Model {
            secret: logical.clone(),
            versions,
            primary: ann.get(ANN_PRIMARY).cloned(),
            secondary: ann.get(ANN_SECONDARY).cloned(),
        };
        model.check(&self.secret).map_err(|d| self.corrupt(d))?;
        // The slot keys mirror the versions; a difference means someone edited the Secret.
        for (key, id) in [("primary", &model.primary), ("secondary", &model.secondary)] {
            let held = text(key)?;
            let expected = id.as_ref().and_then(|id| model.version(id));
            let consistent = match (held, expected.and_then(|v| v.value.as_ref())) {
                (None, None) => true,
                (Some(h), Some(v)) => h.ct_eq(v),
                _ => false,
            };
            if !consistent {
                return Err(self.corrupt(format!(
                    "data key `{key}` does not hold the value of the version in the {key} slot; the Secret was edited outside rotor"
                )));
            }
        }
        Ok(model)
    }

    /// `base` with the model written into data and annotations (other keys, labels and
    /// annotations are kept).
    fn encode(&self, model: &Model, base: Option<Secret>) -> Secret {
        let mut s = base.unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Default::default()
        });
        let labels = s.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let ann = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert(ANN_SECRET.into(), model.secret.clone());
        let infos: Vec<VersionInfo> = model.versions.iter().map(ModelVersion::info).collect();
        ann.insert(
            ANN_VERSIONS.into(),
            serde_json::to_string(&infos).expect("version metadata serializes"),
        );
        for (key, id) in [
            (ANN_PRIMARY, &model.primary),
            (ANN_SECONDARY, &model.secondary),
        ] {
            match id {
                Some(id) => ann.insert(key.into(), id.clone()),
                None => ann.remove(key),
            };
        }
        let data = s.data.get_or_insert_with(BTreeMap::new);
        data.retain(|k, _| !k.starts_with("version-") && k != "primary" && k != "secondary");
        s.string_data = None;
        let bytes = |v: &SecretValue| ByteString(v.expose().as_bytes().to_vec());
        for v in &model.versions {
            if let Some(value) = &v.value {
                data.insert(version_key(&v.id), bytes(value));
            }
        }
        for (key, id) in [("primary", &model.primary), ("secondary", &model.secondary)] {
            if let Some(value) = id
                .as_ref()
                .and_then(|id| model.version(id))
                .and_then(|v| v.value.as_ref())
            {
                data.insert(key.into(), bytes(value));
            }
        }
        s
    }

    /// One read-modify-write cycle guarded by the resourceVersion that was read. A lost race
    /// re-reads and calls `f` again on the fresh content.
    async fn modify<T>(
        &self,
        mut f: impl FnMut(&mut Model, &str) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            let (secret, mut model) = self.load().await?;
            let (out, changed) = f(&mut model, &self.describe())?;
            if !changed {
                return Ok(out);
            }
            let next = self.encode(&model, Some(secret));
            let call = self.call("update");
            let pp = PostParams::default();
            match retry(&call, || self.api.replace(&self.name, &pp, &next)).await {
                Ok(_) => return Ok(out),
                Err(e) if e.is_conflict() && attempt + 1 < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(store = %self.describe(), attempt, "store Secret changed underneath; re-reading");
                }
                Err(ClusterError::Conflict { message, .. }) => {
                    return Err(StoreError::Conflict {
                        store: self.describe(),
                        detail: message,
                    });
                }
                Err(e) => return Err(self.cluster_error(e)),
            }
        }
    }
}

fn version_key(id: &str) -> String {
    format!("version-{id}")
}

#[async_trait]
impl Store for KubernetesStore {
    fn describe(&self) -> String {
        format!(
            "kubernetes:secrets/{} in namespace {}",
            self.name, self.namespace
        )
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.get().await?.is_some())
    }

    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        if self.get().await?.is_some() {
            return Err(StoreError::Refused {
                store: self.describe(),
                detail: "it already exists; `rotor init` only creates new stores".into(),
            });
        }
        let model = Model::new(&self.secret, value);
        let secret = self.encode(&model, None);
        let call = Call::collection("create", "secrets", "", &self.namespace);
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(model.versions[0].info()),
            Err(e) => match call.error(e) {
                ClusterError::Conflict { .. } => Err(StoreError::Refused {
                    store: self.describe(),
                    detail: "it was created by someone else a moment ago".into(),
                }),
                other => Err(self.cluster_error(other)),
            },
        }
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        Ok(self.load().await?.1.snapshot())
    }

    async fn read_value(&self, version: &str) -> Result<SecretValue, StoreError> {
        self.load().await?.1.read_value(&self.describe(), version)
    }

    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        let fp = value.fingerprint(&self.secret);
        // A write that landed but whose answer was lost comes back as a conflict; the version
        // is then already there and is not added twice.
        self.modify(
            |m, _| match m.versions.iter().find(|v| v.fingerprint == fp) {
                Some(v) => Ok((v.info(), false)),
                None => Ok((m.add_version(value), true)),
            },
        )
        .await
    }

    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError> {
        self.modify(|m, store| Ok(((), m.set_slots(store, primary, secondary)?)))
            .await
    }

    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError> {
        self.modify(|m, store| Ok(((), m.set_state(store, version, state)?)))
            .await
    }
}
