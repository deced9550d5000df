//! Writes to a secret: the request body's fields, update masks, and the rules a secret must
//! pass after a create or an update.
//!
//! Owns: validation and its messages. Must never: see payloads (versions are added in `ops`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::model::{
    Rotation, RpcError, Secret, VersionState, fields, int64, parse_dur, parse_ts, string_map,
};

/// The largest total size of a secret's annotation keys and values.
const MAX_ANNOTATIONS: usize = 16 * 1024;
const MAX_ALIASES: usize = 50;
const MAX_LABELS: usize = 64;

/// The writable fields of a Secret request body, parsed (not yet validated against the
/// secret's state).
#[derive(Debug, Default)]
pub(super) struct SecretInput {
    pub fields: BTreeMap<String, Value>,
    pub etag: String,
}

const SECRET_FIELDS: &[&str] = &[
    "name",
    "replication",
    "createTime",
    "labels",
    "topics",
    "expireTime",
    "ttl",
    "etag",
    "rotation",
    "versionAliases",
    "annotations",
    "versionDestroyTtl",
    "customerManagedEncryption",
    "tags",
    "secretType",
    "policyMember",
];

impl SecretInput {
    pub fn parse(body: &Value) -> Result<SecretInput, RpcError> {
        let fields = fields(body, "secret", SECRET_FIELDS)?;
        let etag = match fields.get("etag") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(RpcError::invalid(format!(
                    "Invalid value at 'secret.etag' (TYPE_STRING), {other}"
                )));
            }
            None => String::new(),
        };
        Ok(SecretInput { fields, etag })
    }
}

fn valid_label_key(k: &str) -> bool {
    let mut cs = k.chars();
    let first_ok = cs.next().is_some_and(|c| {
        c.is_lowercase() || (c.is_alphabetic() && !c.is_uppercase() && !c.is_ascii())
    });
    first_ok && k.chars().count() <= 63 && k.chars().skip(1).all(label_char)
}

fn label_char(c: char) -> bool {
    c == '_' || c == '-' || c.is_numeric() || (c.is_alphabetic() && !c.is_uppercase())
}

fn valid_annotation_key(k: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !k.is_empty()
        && k.len() <= 63
        && k.starts_with(alnum)
        && k.ends_with(alnum)
        && k.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 63
        && a.starts_with(|c: char| c.is_ascii_alphabetic())
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn valid_topic(t: &str) -> bool {
    let segs: Vec<&str> = t.split('/').collect();
    matches!(segs.as_slice(), ["projects", p, "topics", n] if !p.is_empty() && !n.is_empty())
}

/// Secret ids: `[a-zA-Z0-9_-]{1,255}`.
pub(super) fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_rotation(v: &Value) -> Result<Rotation, RpcError> {
    let f = fields(
        v,
        "secret.rotation",
        &[
            "nextRotationTime",
            "rotationPeriod",
            "managedRotationStatus",
        ],
    )?;
    Ok(Rotation {
        next: f
            .get("nextRotationTime")
            .map(|t| parse_ts("secret.rotation.next_rotation_time", t))
            .transpose()?,
        period: f
            .get("rotationPeriod")
            .map(|d| parse_dur("secret.rotation.rotation_period", d))
            .transpose()?,
    })
}

fn parse_replication(v: &Value) -> Result<Value, RpcError> {
    let f = fields(v, "secret.replication", &["automatic", "userManaged"])?;
    match (f.get("automatic"), f.get("userManaged")) {
        (Some(a), None) => {
            fields(
                a,
                "secret.replication.automatic",
                &["customerManagedEncryption"],
            )?;
            Ok(json!({"automatic": a}))
        }
        (None, Some(u)) => {
            let uf = fields(u, "secret.replication.user_managed", &["replicas"])?;
            let replicas = uf.get("replicas").and_then(Value::as_array).cloned();
            let replicas = replicas.unwrap_or_default();
            if replicas.is_empty() {
                return Err(RpcError::invalid(
                    "Field [replication.user_managed.replicas] is required.",
                ));
            }
            for r in &replicas {
                let rf = fields(
                    r,
                    "secret.replication.user_managed.replicas",
                    &["location", "customerManagedEncryption"],
                )?;
                if rf
                    .get("location")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(RpcError::invalid(
                        "Field [replication.user_managed.replicas.location] is required.",
                    ));
                }
            }
            Ok(json!({"userManaged": {"replicas": replicas}}))
        }
        (Some(_), Some(_)) => Err(RpcError::invalid(
            "Replication policy must set exactly one of [automatic, user_managed].",
        )),
        (None, None) => Err(RpcError::invalid(
            "Field [replication.replication] is required.",
        )),
    }
}

/// Writes one top-level field (or `rotation.*` sub-field) of `input` onto `s`; an absent
/// field clears it. `path` is camelCase.
pub(super) fn apply_field(
    s: &mut Secret,
    path: &str,
    input: &SecretInput,
    now: DateTime<Utc>,
) -> Result<(), RpcError> {
    let f = &input.fields;
    match path {
        "labels" => {
            s.labels = f
                .get("labels")
                .map(|v| string_map("secret.labels", v))
                .transpose()?
                .unwrap_or_default();
        }
        "annotations" => {
            s.annotations = f
                .get("annotations")
                .map(|v| string_map("secret.annotations", v))
                .transpose()?
                .unwrap_or_default();
        }
        "tags" => {
            s.tags = f
                .get("tags")
                .map(|v| string_map("secret.tags", v))
                .transpose()?
                .unwrap_or_default();
        }
        "versionAliases" => {
            let mut out = BTreeMap::new();
            if let Some(v) = f.get("versionAliases") {
                let obj = v.as_object().ok_or_else(|| {
                    RpcError::invalid(
                        "Invalid JSON payload received. Expected an object at 'secret.version_aliases'.",
                    )
                })?;
                for (k, n) in obj {
                    let n = int64(n).ok_or_else(|| {
                        RpcError::invalid(format!(
                            "Invalid value at 'secret.version_aliases[{k}]' (TYPE_INT64), {n}"
                        ))
                    })?;
                    out.insert(k.clone(), n);
                }
            }
            s.aliases = out;
        }
        "topics" => {
            let mut out = Vec::new();
            if let Some(v) = f.get("topics") {
                let arr = v.as_array().ok_or_else(|| {
                    RpcError::invalid(
                        "Invalid JSON payload received. Expected a list at 'secret.topics'.",
                    )
                })?;
                for t in arr {
                    let tf = fields(t, "secret.topics", &["name"])?;
                    out.push(
                        tf.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
            s.topics = out;
        }
        "rotation" => {
            s.rotation = f.get("rotation").map(parse_rotation).transpose()?;
        }
        "rotation.nextRotationTime" | "rotation.rotationPeriod" => {
            let given = f
                .get("rotation")
                .map(parse_rotation)
                .transpose()?
                .unwrap_or(Rotation {
                    next: None,
                    period: None,
                });
            let r = s.rotation.get_or_insert(Rotation {
                next: None,
                period: None,
            });
            if path == "rotation.nextRotationTime" {
                r.next = given.next;
            } else {
                r.period = given.period;
            }
            if r.next.is_none() && r.period.is_none() {
                s.rotation = None;
            }
        }
        "expireTime" => {
            s.expire_time = f
                .get("expireTime")
                .map(|t| parse_ts("secret.expire_time", t))
                .transpose()?;
        }
        "ttl" => {
            let ttl = f
                .get("ttl")
                .map(|d| parse_dur("secret.ttl", d))
                .transpose()?;
            s.expire_time = ttl.map(|d| now + d);
        }
        "versionDestroyTtl" => {
            s.version_destroy_ttl = f
                .get("versionDestroyTtl")
                .map(|d| parse_dur("secret.version_destroy_ttl", d))
                .transpose()?;
        }
        "customerManagedEncryption" => {
            s.cmek = f.get("customerManagedEncryption").cloned();
        }
        "replication" => {
            s.replication = f.get("replication").map(parse_replication).transpose()?;
        }
        other => {
            return Err(RpcError::invalid(format!(
                "Invalid update mask path [{other}]: the field does not exist or cannot be updated."
            )));
        }
    }
    Ok(())
}

/// The update-mask paths that `UpdateSecret` accepts (camelCase).
pub(super) const UPDATABLE: &[&str] = &[
    "labels",
    "annotations",
    "versionAliases",
    "topics",
    "rotation",
    "rotation.nextRotationTime",
    "rotation.rotationPeriod",
    "expireTime",
    "ttl",
    "versionDestroyTtl",
    "customerManagedEncryption",
];

/// Fills a new secret from a create body.
pub(super) fn apply_create(
    s: &mut Secret,
    input: &SecretInput,
    now: DateTime<Utc>,
) -> Result<(), RpcError> {
    let f = &input.fields;
    if f.contains_key("expireTime") && f.contains_key("ttl") {
        return Err(RpcError::invalid(
            "Only one of [expire_time, ttl] may be set.",
        ));
    }
    for path in [
        "labels",
        "annotations",
        "tags",
        "versionAliases",
        "topics",
        "rotation",
        "expireTime",
        "versionDestroyTtl",
        "customerManagedEncryption",
    ] {
        if f.contains_key(path) {
            apply_field(s, path, input, now)?;
        }
    }
    if f.contains_key("ttl") {
        apply_field(s, "ttl", input, now)?;
    }
    if f.contains_key("replication") {
        if s.replication.is_none() {
            return Err(RpcError::invalid(
                "Regional secrets do not take a replication policy.",
            ));
        }
        apply_field(s, "replication", input, now)?;
    }
    Ok(())
}

/// Checks a secret's fields after a create or an update. `before` is the secret as it was
/// (for checks that only apply to changed values).
pub(super) fn validate(
    s: &Secret,
    before: Option<&Secret>,
    now: DateTime<Utc>,
) -> Result<(), RpcError> {
    if s.labels.len() > MAX_LABELS {
        return Err(RpcError::invalid(format!(
            "A secret may have at most {MAX_LABELS} labels."
        )));
    }
    for (k, v) in &s.labels {
        if !valid_label_key(k) {
            return Err(RpcError::invalid(format!(
                "Invalid label key [{k}]: keys must be 1 to 63 characters of lowercase letters, \
                 digits, underscores and dashes, starting with a lowercase letter."
            )));
        }
        if v.chars().count() > 63 || !v.chars().all(label_char) {
            return Err(RpcError::invalid(format!(
                "Invalid value for label [{k}]: values must be at most 63 characters of \
                 lowercase letters, digits, underscores and dashes."
            )));
        }
    }
    let mut size = 0;
    for (k, v) in &s.annotations {
        if !valid_annotation_key(k) {
            return Err(RpcError::invalid(format!(
                "Invalid annotation key [{k}]: keys must be 1 to 63 characters, begin and end \
                 with [a-z0-9A-Z], and may have dashes, underscores, dots and alphanumerics in \
                 between."
            )));
        }
        size += k.len() + v.len();
    }
    if size > MAX_ANNOTATIONS {
        return Err(RpcError::invalid(format!(
            "The total size of annotation keys and values must be at most 16KiB; it is {size} \
             bytes."
        )));
    }
    if s.aliases.len() > MAX_ALIASES {
        return Err(RpcError::invalid(format!(
            "A secret may have at most {MAX_ALIASES} version aliases."
        )));
    }
    for (alias, n) in &s.aliases {
        if alias == "latest" || alias == "NEW" {
            return Err(RpcError::invalid(format!(
                "Version alias [{alias}] is reserved."
            )));
        }
        if !valid_alias(alias) {
            return Err(RpcError::invalid(format!(
                "Invalid version alias [{alias}]: aliases must be at most 63 characters of \
                 letters, digits, dashes and underscores, starting with a letter."
            )));
        }
        let target = usize::try_from(*n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| s.versions.get(i));
        match target {
            None => {
                return Err(RpcError::invalid(format!(
                    "Version alias [{alias}] refers to Secret Version [{}] which does not exist.",
                    s.version_name(*n)
                )));
            }
            Some(v) if v.state == VersionState::Destroyed => {
                // Only a newly set or moved alias must not point at a destroyed version.
                let unchanged = before.is_some_and(|b| b.aliases.get(alias) == Some(n));
                if !unchanged {
                    return Err(RpcError::invalid(format!(
                        "Version alias [{alias}] refers to Secret Version [{}] which is in \
                         DESTROYED state.",
                        s.version_name(*n)
                    )));
                }
            }
            Some(_) => {}
        }
    }
    for t in &s.topics {
        if !valid_topic(t) {
            return Err(RpcError::invalid(format!(
                "Invalid topic name [{t}]: expected projects/*/topics/*."
            )));
        }
    }
    if let Some(r) = &s.rotation {
        if s.topics.is_empty() {
            return Err(RpcError::invalid(
                "A secret with a rotation schedule must have at least one topic.",
            ));
        }
        if r.period.is_some() && r.next.is_none() {
            return Err(RpcError::invalid(
                "Rotation [next_rotation_time] must be set if [rotation_period] is set.",
            ));
        }
        if let Some(p) = &r.period
            && (p.as_secs() < 3600 || p.as_secs() > 3_153_600_000 || p.subsec_nanos() != 0)
        {
            return Err(RpcError::invalid(
                "Rotation [rotation_period] must be whole seconds, at least 3600s (1h) and at \
                 most 3153600000s (100 years).",
            ));
        }
        let old_next = before
            .and_then(|b| b.rotation.as_ref())
            .and_then(|r| r.next);
        if let Some(next) = r.next
            && Some(next) != old_next
            && (next < now + chrono::TimeDelta::seconds(300)
                || next > now + chrono::TimeDelta::seconds(3_153_600_000))
        {
            return Err(RpcError::invalid(
                "Rotation [next_rotation_time] must be at least 300s (5 min) and at most \
                 3153600000s (100 years) in the future.",
            ));
        }
    }
    let old_expire = before.and_then(|b| b.expire_time);
    if let Some(t) = s.expire_time
        && Some(t) != old_expire
        && t <= now
    {
        return Err(RpcError::invalid(
            "The secret's expiration must be in the future.",
        ));
    }
    Ok(())
}

/// Checks a request's etag against the resource's: empty matches anything.
pub(super) fn check_etag(
    given: &str,
    current: &str,
    kind: &str,
    name: &str,
) -> Result<(), RpcError> {
    if given.is_empty() || given == current {
        Ok(())
    } else {
        Err(RpcError::etag_mismatch(kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_secret_id("db-password_2"));
        assert!(!valid_secret_id("a/b"));
        assert!(!valid_secret_id(&"x".repeat(256)));
        assert!(valid_alias("Current-1"));
        assert!(!valid_alias("1st"));
        assert!(!valid_annotation_key("rotor.dev/x"));
        assert!(valid_annotation_key("rotor.fingerprint"));
        assert!(!valid_annotation_key("-x"));
        assert!(valid_label_key("env"));
        assert!(!valid_label_key("Env"));
        assert_eq!(
            super::super::model::camel("rotation.next_rotation_time"),
            "rotation.nextRotationTime"
        );
    }
}
