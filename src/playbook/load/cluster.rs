//! `cluster`: the kubeconfig context, namespace, lock, journal and lease duration; and
//! Kubernetes object names ([`Cx::k8s_name`]), which stores and consumers use too.
//!
//! Must never: repeat a name [`Cx::k8s_name_shown`] is told to hide (a consumer's `secret`,
//! where a value may have been pasted).

use std::time::Duration;

use super::node::Node;
use super::text::{characters, echo};
use super::{Cx, Fields, HOUR, Result};
use crate::playbook::{ClusterSpec, JournalKind, LockKind};

/// How long a Lease lives without renewal unless `cluster.lease_duration` says otherwise.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
const CLUSTER_FIELDS: &[&str] = &["context", "namespace", "lock", "journal", "lease_duration"];

impl Cx<'_> {
    pub(super) fn cluster(&self, top: &Fields<'_>) -> Result<Option<ClusterSpec>> {
        let Some(node) = top.get("cluster") else {
            return Ok(None);
        };
        let f = self.fields(
            node,
            "cluster",
            node.pos,
            "write `cluster:` with `namespace` (and optionally `context`, `lock`, `journal`) under it",
        )?;
        self.only(&f, CLUSTER_FIELDS, "cluster")?;
        let context = match f.get("context") {
            None => None,
            Some(node) => {
                const HELP: &str = "name a context of your kubeconfig (`kubectl config get-contexts`), or leave `context` out to use the current one";
                let text = self.text(node, "cluster.context", HELP)?;
                if text.trim().is_empty() {
                    return Err(self.err(
                        node.pos,
                        "cluster.context",
                        "the context is empty",
                        HELP,
                    ));
                }
                Some(text.to_string())
            }
        };
        let namespace = match f.get("namespace") {
            None => "default".to_string(),
            Some(node) => self.k8s_name(node, "cluster.namespace", "namespace", true)?,
        };
        let lock = match f.get("lock") {
            None => LockKind::Lease,
            Some(node) => match self.choice(
                node,
                "cluster.lock",
                &["lease", "file"],
                "lock",
                "use `lease` (a coordination.k8s.io Lease, safe across machines) or `file` (one machine only)",
            )? {
                0 => LockKind::Lease,
                _ => LockKind::File,
            },
        };
        let journal = match f.get("journal") {
            None => JournalKind::File,
            Some(node) => match self.choice(
                node,
                "cluster.journal",
                &["configmap", "file"],
                "journal",
                "use `configmap` (survives a rescheduled Job) or `file` (the state directory)",
            )? {
                0 => JournalKind::ConfigMap,
                _ => JournalKind::File,
            },
        };
        let lease_duration = match f.get("lease_duration") {
            None => DEFAULT_LEASE_DURATION,
            Some(node) => {
                let d = self.duration(node, "cluster.lease_duration", HOUR)?;
                if !(Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&d) {
                    return Err(self.err(
                        node.pos,
                        "cluster.lease_duration",
                        format!("{} is out of range (3s to 1h)", humantime::format_duration(d)),
                        "set how long a Lease outlives a rotor that stopped renewing it, e.g. 30s (renewals run every third of it)",
                    ));
                }
                d
            }
        };
        Ok(Some(ClusterSpec {
            context,
            namespace,
            lock,
            journal,
            lease_duration,
        }))
    }

    /// A Kubernetes object name: a DNS label (namespaces) or subdomain (everything else).
    pub(super) fn k8s_name(
        &self,
        node: &Node,
        path: &str,
        what: &str,
        label: bool,
    ) -> Result<String> {
        self.k8s_name_shown(node, path, what, label, true)
    }

    /// [`Self::k8s_name`]; unless `shown`, an invalid name is not repeated in the error.
    pub(super) fn k8s_name_shown(
        &self,
        node: &Node,
        path: &str,
        what: &str,
        label: bool,
        shown: bool,
    ) -> Result<String> {
        let help = if label {
            format!(
                "a {what} is 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. demo"
            )
        } else {
            format!(
                "a {what} is up to 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, e.g. auth-secrets"
            )
        };
        let text = self.text(node, path, &help)?;
        let max = if label { 63 } else { 253 };
        let ok = !text.is_empty()
            && text.len() <= max
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.')
            })
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            let message = if shown {
                format!("`{}` is not a valid {what}", echo(text))
            } else {
                format!(
                    "`{}` must be a {what} (got {} that are not; not repeated in case they are a value)",
                    path.rsplit('.').next().unwrap_or(path),
                    characters(text)
                )
            };
            return Err(self.err(node.pos, path, message, help));
        }
        Ok(text.to_string())
    }
}
