//! The topology file: the lab's nodes, drain period, image map, faults and the Kubernetes
//! manifests created at start.
//!
//! ```yaml
//! namespace: demo            # the kubeconfig context's namespace (default: first Namespace)
//! nodes:                     # default: lab-node-1, lab-node-2
//!   - name: lab-node-1
//!   - name: lab-node-2
//!     slow: 2s               # pods on this node start 2s late
//! drain: 300ms               # between leaving the endpoints and SIGTERM
//! secret_sync_delay: 1s      # a running pod's Secret volume shows a change this much later
//! secret_sync_jitter: 0s     # plus up to this much more, a fixed share per pod
//! images:                    # image -> argv prefix; `inprocess` = in-process responder
//!   my-image: ["/usr/local/bin/my-service", "--flag"]
//! faults: [ {kind: crash_loop, workload: auth} ]
//! objects:                   # ordinary manifests: Namespace, Secret, ConfigMap, Deployment,
//!   - apiVersion: v1         # StatefulSet, DaemonSet, Lease, Pod
//!     kind: Namespace
//!     metadata: {name: demo}
//! ```
//!
//! Owns: parsing and validating the file with file:line:column errors. Must never: start
//! anything.

use super::objects::Ptr as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::error::LabError;
use super::faults::Fault;
use super::resources;

/// The longest `secret_sync_delay` or `secret_sync_jitter` a topology may give.
pub const MAX_SECRET_SYNC: Duration = Duration::from_secs(3600);

/// The image that runs as an in-process responder instead of a process.
pub const INPROCESS_IMAGE: &str = "lab/inprocess-responder";

/// One lab node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node name (`spec.nodeName` of its pods).
    pub name: String,
    /// Pods on this node start this much later.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub slow: Option<Duration>,
}

/// How an image is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// An argv prefix: the executable and leading arguments.
    Command(Vec<String>),
    /// An in-process responder (no process).
    InProcess,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawImage {
    One(String),
    Many(Vec<String>),
}

/// A parsed topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub nodes: Vec<NodeSpec>,
    pub drain: Option<Duration>,
    /// How long after a Secret change a running pod's Secret volume shows it (the kubelet's
    /// sync delay); `None` is [`DEFAULT_SECRET_SYNC_DELAY`](crate::DEFAULT_SECRET_SYNC_DELAY).
    pub secret_sync_delay: Option<Duration>,
    /// Up to this much more per pod (a fixed share of it, from the pod's uid).
    pub secret_sync_jitter: Option<Duration>,
    pub namespace: Option<String>,
    pub images: BTreeMap<String, ImageSpec>,
    pub faults: Vec<Fault>,
    pub objects: Vec<Value>,
}

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            nodes: default_nodes(),
            drain: None,
            secret_sync_delay: None,
            secret_sync_jitter: None,
            namespace: None,
            images: BTreeMap::new(),
            faults: Vec::new(),
            objects: Vec::new(),
        }
    }
}

fn default_nodes() -> Vec<NodeSpec> {
    ["lab-node-1", "lab-node-2"]
        .iter()
        .map(|n| NodeSpec {
            name: n.to_string(),
            slow: None,
        })
        .collect()
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. 300ms or 2s"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    nodes: Option<Vec<NodeSpec>>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    drain: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    secret_sync_delay: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    secret_sync_jitter: Option<Duration>,
    #[serde(default)]
    images: BTreeMap<String, RawImage>,
    #[serde(default)]
    faults: Vec<Fault>,
    #[serde(default)]
    objects: Vec<Spanned<Value>>,
}

impl Topology {
    /// Reads and parses a topology file.
    pub fn load(path: &Path) -> Result<Topology, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::ReadTopology {
            path: path.to_path_buf(),
            source,
        })?;
        Topology::parse(&text, path)
    }

    /// Parses topology YAML; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Topology, LabError> {
        let err = |line: u64, column: u64, message: String, help: &str| LabError::Topology {
            path: PathBuf::from(path),
            line,
            column,
            message,
            help: help.to_string(),
        };
        let raw: Raw = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let full = e.to_string();
            let suffix = format!(" at line {line}, column {column}");
            let msg = full
                .strip_suffix(&suffix)
                .unwrap_or(&full)
                .trim()
                .to_string();
            err(
                line,
                column,
                format!("invalid topology: {msg}"),
                "the top level takes namespace, nodes, drain, secret_sync_delay, \
                 secret_sync_jitter, images, faults and objects; see docs/lab.md",
            )
        })?;
        let nodes = raw.nodes.unwrap_or_else(default_nodes);
        if nodes.is_empty() {
            return Err(err(
                1,
                1,
                "`nodes` is empty".into(),
                "declare at least one node",
            ));
        }
        for (field, d) in [
            ("secret_sync_delay", raw.secret_sync_delay),
            ("secret_sync_jitter", raw.secret_sync_jitter),
        ] {
            if d.is_some_and(|d| d > MAX_SECRET_SYNC) {
                let line = text
                    .lines()
                    .position(|l| l.starts_with(field))
                    .map_or(1, |i| i as u64 + 1);
                return Err(err(
                    line,
                    1,
                    format!("`{field}` is longer than an hour"),
                    "the kubelet refreshes Secret volumes within about a minute; write e.g. 1s \
                     or 90s",
                ));
            }
        }
        let mut objects = Vec::new();
        for o in raw.objects {
            let (line, column) = (o.referenced.line(), o.referenced.column());
            let v = o.value;
            let av = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
            if resources::by_kind(av, kind).is_none() {
                return Err(err(
                    line,
                    column,
                    format!("unsupported object apiVersion {av:?} kind {kind:?}"),
                    "the lab serves v1 Namespace, Secret, ConfigMap, Pod; apps/v1 Deployment, \
                     StatefulSet, DaemonSet; coordination.k8s.io/v1 Lease",
                ));
            }
            if v.ptr("/metadata/name").and_then(Value::as_str).is_none() {
                return Err(err(
                    line,
                    column,
                    format!("the {kind} has no metadata.name"),
                    "give every object a metadata.name",
                ));
            }
            objects.push(v);
        }
        let namespace = raw.namespace.or_else(|| {
            objects
                .iter()
                .find(|o| o["kind"] == "Namespace")
                .and_then(|o| o.ptr("/metadata/name"))
                .and_then(Value::as_str)
                .map(String::from)
        });
        let images = raw
            .images
            .into_iter()
            .map(|(k, v)| {
                let spec = match v {
                    RawImage::One(s) if s == "inprocess" => ImageSpec::InProcess,
                    RawImage::One(s) => ImageSpec::Command(vec![s]),
                    RawImage::Many(v) => ImageSpec::Command(v),
                };
                (k, spec)
            })
            .collect();
        Ok(Topology {
            nodes,
            drain: raw.drain,
            secret_sync_delay: raw.secret_sync_delay,
            secret_sync_jitter: raw.secret_sync_jitter,
            namespace,
            images,
            faults: raw.faults,
            objects,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_locates_errors() {
        let t = Topology::parse(
            "nodes:\n  - name: a\n    slow: 1s\ndrain: 200ms\nimages:\n  x: inprocess\nobjects:\n  - apiVersion: v1\n    kind: Namespace\n    metadata: {name: demo}\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(t.nodes[0].slow, Some(Duration::from_secs(1)));
        assert_eq!(t.drain, Some(Duration::from_millis(200)));
        assert_eq!(t.namespace.as_deref(), Some("demo"));
        assert_eq!(t.images["x"], ImageSpec::InProcess);
        assert_eq!(t.secret_sync_delay, None);

        let t = Topology::parse(
            "secret_sync_delay: 90s\nsecret_sync_jitter: 500ms\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(t.secret_sync_delay, Some(Duration::from_secs(90)));
        assert_eq!(t.secret_sync_jitter, Some(Duration::from_millis(500)));
        let e = Topology::parse("drain: 1s\nsecret_sync_delay: 2h\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.yaml:2:1") && e.contains("longer than an hour"),
            "{e}"
        );

        let e = Topology::parse("drain: soon\n", Path::new("t.yaml")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.yaml:1:"), "{s}");
        assert!(s.contains("invalid duration"), "{s}");

        let e = Topology::parse(
            "objects:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: x}\n",
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.yaml:2:"), "{e}");
        assert!(e.contains("kind \"Service\""), "{e}");

        let e = Topology::parse("nodez: []\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml:1:1") && e.contains("nodez"), "{e}");
    }
}
