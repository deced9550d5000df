//! `store`: its kind, the fields each kind takes, and a `gcp` store's project, secret id,
//! endpoint, credentials and pacing.
//!
//! Owns: the [`StoreSpec`] a playbook names. Loading never reaches the store itself.

use std::path::Path;
use std::time::Duration;

use super::text::{echo, list};
use super::{Cx, Fields, HOUR, MINUTE, Result};
use crate::playbook::{GcpCredentials, GcpStoreSpec, MIN_WRITE_INTERVAL, StoreSpec};

const STORE_FIELDS: &[&str] = &[
    "kind",
    "path",
    "namespace",
    "name",
    "project",
    "endpoint",
    "credentials",
    "retry_deadline",
    "write_interval",
];
/// Each store kind with the fields it takes.
const STORE_KINDS: &[(&str, &[&str])] = &[
    ("local", &["kind", "path"]),
    ("kubernetes", &["kind", "namespace", "name"]),
    (
        "gcp",
        &[
            "kind",
            "project",
            "name",
            "endpoint",
            "credentials",
            "retry_deadline",
            "write_interval",
        ],
    ),
];

impl Cx<'_> {
    pub(super) fn store(
        &self,
        top: &Fields<'_>,
        base_dir: &Path,
        namespace: &str,
    ) -> Result<StoreSpec> {
        let node = self.require(
            top,
            "store",
            "add a store, e.g. `store: {kind: local, path: store.json}`",
        )?;
        let f = self.fields(
            node,
            "store",
            node.pos,
            "write `store:` with `kind` (and what that kind takes) under it",
        )?;
        self.only(&f, STORE_FIELDS, "store")?;
        const KIND_HELP: &str =
            "use `local` (a file), `kubernetes` (a Secret) or `gcp` (Google Cloud Secret Manager)";
        let kind = self.require(&f, "kind", KIND_HELP)?;
        let text = self.text(kind, "store.kind", KIND_HELP)?;
        let Some((_, takes)) = STORE_KINDS.iter().find(|(k, _)| *k == text) else {
            return Err(self.err(
                kind.pos,
                "store.kind",
                format!("unknown store kind `{}`", echo(text)),
                KIND_HELP,
            ));
        };
        for (field, key, _) in &f.entries {
            if !takes.contains(field) {
                return Err(self.err(
                    key.pos,
                    f.sub(field),
                    format!("a {text} store has no `{field}`"),
                    format!("remove `{field}`; a {text} store takes {}", list(takes)),
                ));
            }
        }
        match text {
            "kubernetes" => {
                const NAME_HELP: &str =
                    "name the Secret that holds the values, e.g. `name: service-secret-store`";
                let node = self.require(&f, "name", NAME_HELP)?;
                let name = self.k8s_name(node, "store.name", "Secret name", false)?;
                let namespace = match f.get("namespace") {
                    None => namespace.to_string(),
                    Some(node) => self.k8s_name(node, "store.namespace", "namespace", true)?,
                };
                Ok(StoreSpec::Kubernetes { namespace, name })
            }
            "gcp" => self.gcp_store(&f).map(StoreSpec::Gcp),
            _ => {
                const PATH_HELP: &str = "give the store file, relative to the playbook's directory or absolute, e.g. store.json";
                let node = self.require(&f, "path", PATH_HELP)?;
                let path = self.text(node, "store.path", PATH_HELP)?;
                if path.trim().is_empty() {
                    return Err(self.err(node.pos, "store.path", "the path is empty", PATH_HELP));
                }
                Ok(StoreSpec::Local {
                    path: base_dir.join(path),
                })
            }
        }
    }

    fn gcp_store(&self, f: &Fields<'_>) -> Result<GcpStoreSpec> {
        const PROJECT_HELP: &str = "give the Google Cloud project id (6 to 30 lowercase letters, digits or hyphens, starting with a letter), e.g. `project: my-project`";
        let node = self.require(f, "project", PROJECT_HELP)?;
        let project = self.text(node, "store.project", PROJECT_HELP)?;
        let valid_project = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && !project.ends_with('-')
            && project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_project {
            return Err(self.err(
                node.pos,
                "store.project",
                format!("`{}` is not a project id", echo(project)),
                PROJECT_HELP,
            ));
        }
        const NAME_HELP: &str = "name the Secret Manager secret (letters, digits, `-` and `_`, at most 255), e.g. `name: service-secret`";
        let node = self.require(f, "name", NAME_HELP)?;
        let name = self.text(node, "store.name", NAME_HELP)?;
        if name.is_empty()
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err(
                node.pos,
                "store.name",
                format!("`{}` is not a secret id", echo(name)),
                NAME_HELP,
            ));
        }
        let endpoint = match f.get("endpoint") {
            None => None,
            Some(node) => {
                const HELP: &str = "give a URL, e.g. `https://secretmanager.googleapis.com` or a private endpoint; leave it out for Google's";
                let text = self.text(node, "store.endpoint", HELP)?.trim();
                if !(text.starts_with("https://") || text.starts_with("http://"))
                    || text.len() <= "https://".len()
                {
                    return Err(self.err(
                        node.pos,
                        "store.endpoint",
                        format!("`{}` is not an http(s) URL", echo(text)),
                        HELP,
                    ));
                }
                Some(text.trim_end_matches('/').to_string())
            }
        };
        let credentials = match f.get("credentials") {
            None => GcpCredentials::Default,
            Some(node) => match self.choice(
                node,
                "store.credentials",
                &["default", "anonymous"],
                "credentials",
                "use `default` (Application Default Credentials) or `anonymous` (emulators and the lab only)",
            )? {
                0 => GcpCredentials::Default,
                _ => GcpCredentials::Anonymous,
            },
        };
        let mut spec = GcpStoreSpec {
            project: project.to_string(),
            name: name.to_string(),
            endpoint,
            credentials,
            retry_deadline: Duration::from_secs(60),
            write_interval: Duration::from_millis(500),
        };
        if let Some(node) = f.get("retry_deadline") {
            spec.retry_deadline = self.duration(node, "store.retry_deadline", HOUR)?;
            if spec.retry_deadline < Duration::from_secs(1) {
                return Err(self.err(
                    node.pos,
                    "store.retry_deadline",
                    "the retry deadline is shorter than 1s",
                    "give at least 1s (the default is 60s)",
                ));
            }
        }
        if let Some(node) = f.get("write_interval") {
            spec.write_interval = self.duration(node, "store.write_interval", MINUTE)?;
            if spec.write_interval < MIN_WRITE_INTERVAL {
                return Err(self.err(
                    node.pos,
                    "store.write_interval",
                    "the write interval is shorter than 500ms",
                    "give at least 500ms (the default): Google allows 2 writes per second per secret",
                ));
            }
        }
        Ok(spec)
    }
}
