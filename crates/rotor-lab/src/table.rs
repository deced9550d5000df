//! Server-side printing: the `meta.k8s.io/v1` `Table` kubectl asks for on `kubectl get`, with
//! the usual columns per kind. Rows carry `PartialObjectMetadata`, never Secret data.
//!
//! Owns: columns and cells. Must never: include `data` of any object.

use super::objects::Ptr as _;
use serde_json::{Value, json};

use super::resources::Resource;

fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .ptr("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - ts.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.ptr(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn col(name: &str, ty: &str, priority: i32) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn pod_status(p: &Value) -> String {
    if p.ptr("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    if let Some(cs) = p.ptr("/status/containerStatuses").and_then(Value::as_array) {
        for c in cs {
            if let Some(r) = c.ptr("/state/waiting/reason").and_then(Value::as_str) {
                return r.to_string();
            }
        }
    }
    p.ptr("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
        .to_string()
}

/// `true/total` of the pod's readiness gates (whose conditions are True), or `<none>`.
fn readiness_gates(p: &Value) -> String {
    let gates = p
        .ptr("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if gates.is_empty() {
        return "<none>".into();
    }
    let conditions = p
        .ptr("/status/conditions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let met = gates
        .iter()
        .filter(|g| {
            conditions
                .iter()
                .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
        })
        .count();
    format!("{met}/{}", gates.len())
}

type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

/// The Table for `items` of `res`.
pub(crate) fn table(res: &Resource, items: &[Value], rv: u64) -> Value {
    let (cols, cells): (Vec<Value>, Cells) = match res.plural {
        "secrets" => (
            vec![
                col("Name", "string", 0),
                col("Type", "string", 0),
                col("Data", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                let n = o
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![json!(o["type"].as_str().unwrap_or("Opaque")), json!(n)]
            }),
        ),
        "configmaps" => (
            vec![
                col("Name", "string", 0),
                col("Data", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                let n = o
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![json!(n)]
            }),
        ),
        "pods" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
                col("Nominated Node", "string", 1),
                col("Readiness Gates", "string", 1),
            ],
            Box::new(|o: &Value| {
                let cs = o
                    .ptr("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let total = o
                    .ptr("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let ready = cs.iter().filter(|c| c["ready"] == true).count();
                let restarts: i64 = cs.iter().map(|c| int(c, "/restartCount")).sum();
                vec![
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(o)),
                    json!(restarts.to_string()),
                ]
            }),
        ),
        "deployments" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Up-to-date", "string", 0),
                col("Available", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![
                    json!(format!(
                        "{}/{}",
                        int(o, "/status/readyReplicas"),
                        int(o, "/spec/replicas")
                    )),
                    json!(int(o, "/status/updatedReplicas")),
                    json!(int(o, "/status/availableReplicas")),
                ]
            }),
        ),
        "statefulsets" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![json!(format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                ))]
            }),
        ),
        "daemonsets" => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![
                    json!(int(o, "/status/desiredNumberScheduled")),
                    json!(int(o, "/status/currentNumberScheduled")),
                    json!(int(o, "/status/numberReady")),
                    json!(int(o, "/status/updatedNumberScheduled")),
                    json!(int(o, "/status/numberAvailable")),
                ]
            }),
        ),
        "replicasets" => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![
                    json!(int(o, "/spec/replicas")),
                    json!(int(o, "/status/replicas")),
                    json!(int(o, "/status/readyReplicas")),
                ]
            }),
        ),
        "leases" => (
            vec![
                col("Name", "string", 0),
                col("Holder", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![json!(
                    o.ptr("/spec/holderIdentity")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )]
            }),
        ),
        "serviceaccounts" => (
            vec![
                col("Name", "string", 0),
                col("Secrets", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|o: &Value| {
                let n = o
                    .get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                vec![json!(n)]
            }),
        ),
        "namespaces" => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(|_: &Value| vec![json!("Active")]),
        ),
        _ => (
            vec![col("Name", "string", 0), col("Age", "string", 0)],
            Box::new(|_: &Value| vec![]),
        ),
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut c = vec![json!(super::objects::name_of(o))];
            c.extend(cells(o));
            // Age sits after the kind's own columns except for pods (IP and Node follow it).
            let age_at = cols
                .iter()
                .position(|c| c["name"] == "Age")
                .unwrap_or(c.len());
            c.insert(age_at.min(c.len()), json!(age(o)));
            if res.plural == "pods" {
                c.push(json!(
                    o.ptr("/status/podIP")
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                ));
                c.push(json!(
                    o.ptr("/spec/nodeName")
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                ));
                c.push(json!(
                    o.ptr("/status/nominatedNodeName")
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                ));
                c.push(json!(readiness_gates(o)));
            }
            json!({
                "cells": c,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": cols,
        "rows": rows,
    })
}
