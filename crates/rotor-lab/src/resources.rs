//! The resource table the lab serves: group, version, plural, kind, scope, verbs. Discovery
//! documents are generated from it.
//!
//! Owns: which resources exist and how they are named. Must never: hold objects.

use serde_json::{Value, json};

/// One API resource.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    /// Deployments, StatefulSets, DaemonSets: generation follows `spec`, `/status` exists.
    pub workload: bool,
    /// Has a `/status` subresource.
    pub status: bool,
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

macro_rules! res {
    ($g:expr, $p:expr, $s:expr, $k:expr, $ns:expr, $short:expr, $w:expr, $st:expr) => {
        Resource {
            group: $g,
            version: "v1",
            plural: $p,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short: $short,
            workload: $w,
            status: $st,
        }
    };
}

pub(crate) static RESOURCES: &[Resource] = &[
    res!(
        "",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        false,
        true
    ),
    res!("", "nodes", "node", "Node", false, &["no"], false, true),
    res!("", "secrets", "secret", "Secret", true, &[], false, false),
    res!(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        false
    ),
    res!(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        false,
        false
    ),
    res!("", "pods", "pod", "Pod", true, &["po"], false, true),
    res!(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        true,
        true
    ),
    res!(
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        true,
        true
    ),
    res!(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        true,
        true
    ),
    res!(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        false,
        true
    ),
    res!(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        false,
        false
    ),
];

/// `tokenreviews.authentication.k8s.io`: create-only and never stored (see
/// `super::serviceaccounts`), so it is not in [`RESOURCES`]; discovery lists it and RBAC
/// denials name it.
pub(crate) static TOKENREVIEWS: Resource = res!(
    "authentication.k8s.io",
    "tokenreviews",
    "tokenreview",
    "TokenReview",
    false,
    &[],
    false,
    false
);

/// The groups besides core, in discovery order.
pub(crate) const GROUPS: &[&str] = &["apps", "authentication.k8s.io", "coordination.k8s.io"];

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `secrets` or `deployments.apps`, as error messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

pub(crate) fn by_plural(group: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

pub(crate) fn get(plural: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .expect("a resource of the table")
}

/// `APIResourceList` for one group version.
pub(crate) fn resource_list(group: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short.is_empty() {
            e["shortNames"] = json!(r.short);
        }
        if r.workload || r.plural == "pods" {
            e["categories"] = json!(["all"]);
        }
        resources.push(e);
        if r.plural == "serviceaccounts" {
            // The TokenRequest subresource (`kubectl create token`), as kube-apiserver lists it.
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if group == TOKENREVIEWS.group {
        resources.push(json!({
            "name": TOKENREVIEWS.plural,
            "singularName": TOKENREVIEWS.singular,
            "namespaced": false,
            "kind": TOKENREVIEWS.kind,
            "verbs": ["create"],
        }));
    }
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

pub(crate) fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let mut v = api_group(g);
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}
