//! Patches: JSON merge patch (RFC 7386), a faithful-enough strategic merge patch (maps merge;
//! lists of containers, env, volumes, ports, … merge by their key; `$patch: delete|replace`
//! honoured, other `$` directives dropped), and JSON patch (RFC 6902, `test` included).
//!
//! Owns: turning (current object, patch body, content type) into the patched object. Must
//! never: decide preconditions or touch the store.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch flavours of the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<PatchKind, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            _ => Err(ApiError::unsupported_media(ct)),
        }
    }
}

/// Applies `body` to `current`.
pub(crate) fn apply(kind: PatchKind, current: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match kind {
        PatchKind::Merge => {
            let p: Value = parse_json(body)?;
            json_patch::merge(&mut doc, &p);
        }
        PatchKind::Strategic => {
            let p: Value = parse_json(body)?;
            strategic_merge(&mut doc, &p, "");
        }
        PatchKind::Apply => {
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            let p: Value = serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            strategic_merge(&mut doc, &p, "");
        }
        PatchKind::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|_| ApiError::patch_rejected())?;
        }
    }
    Ok(doc)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{e}")))
}

/// The merge key of a list field, by field name (the subset of the Kubernetes schema the lab
/// needs).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Strategic merge of `patch` into `doc`; `field` is the name of the field `doc` sits under.
pub(crate) fn strategic_merge(doc: &mut Value, patch: &Value, field: &str) {
    let Some(p) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = patch.clone();
        strip_directives(&mut clean);
        *doc = clean;
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let _ = field;
    let d = doc.as_object_mut().expect("object");
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            d.remove(k);
            continue;
        }
        match (d.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => strategic_merge(dv, pv, k),
            (Some(Value::Array(da)), Value::Array(pa)) if merge_key(k).is_some() => {
                merge_list(da, pa, merge_key(k).unwrap_or("name"));
            }
            (_, _) => {
                let mut v = pv.clone();
                strip_directives(&mut v);
                d.insert(k.clone(), v);
            }
        }
    }
}

fn merge_list(doc: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let Some(kv) = item.get(key) else {
            let mut v = item.clone();
            strip_directives(&mut v);
            doc.push(v);
            continue;
        };
        let pos = doc.iter().position(|d| d.get(key) == Some(kv));
        let directive = item.get("$patch").and_then(Value::as_str);
        match (pos, directive) {
            (Some(i), Some("delete")) => {
                doc.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => strategic_merge(&mut doc[i], item, ""),
            (None, _) => {
                let mut v = item.clone();
                strip_directives(&mut v);
                doc.push(v);
            }
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_and_env_by_name() {
        let mut doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "b", "image": "y"}
        ]}}}});
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"r": "1"}}, "spec": {"containers": [
            {"name": "a", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}, {"name": "A", "$patch": "delete"}]}
        ]}}}});
        strategic_merge(&mut doc, &patch, "");
        let c = &doc["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["image"], "x");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(doc["spec"]["template"]["metadata"]["annotations"]["r"], "1");
    }

    #[test]
    fn json_patch_test_failure_is_422() {
        let doc = json!({"metadata": {"resourceVersion": "5"}});
        let body = br#"[{"op":"test","path":"/metadata/resourceVersion","value":"4"}]"#;
        let e = apply(PatchKind::Json, &doc, body).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.reason, "Invalid");
    }
}
