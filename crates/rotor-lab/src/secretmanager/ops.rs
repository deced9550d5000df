//! The Secret Manager methods, each run under the state's lock.
//!
//! Owns: what each method does to the state and answers. Must never: put payload data
//! anywhere but an `:access` answer.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::filter::Filter;
use super::input::{self, SecretInput, UPDATABLE};
use super::model::{self, MAX_PAYLOAD, RpcError, Secret, Version, VersionState};
use super::{AccessRecord, State};
use crate::faults::GcpMethod;

/// A routed call.
#[derive(Debug, Clone)]
pub(super) enum Call {
    /// `parent` is `projects/p` or `projects/p/locations/l`.
    List {
        parent: String,
    },
    Create {
        parent: String,
    },
    Get {
        secret: String,
    },
    Update {
        secret: String,
    },
    Delete {
        secret: String,
    },
    AddVersion {
        secret: String,
    },
    GetIamPolicy {
        secret: String,
    },
    SetIamPolicy {
        secret: String,
    },
    TestIamPermissions {
        secret: String,
    },
    ListVersions {
        secret: String,
    },
    GetVersion {
        secret: String,
        id: String,
    },
    Access {
        secret: String,
        id: String,
    },
    Enable {
        secret: String,
        id: String,
    },
    Disable {
        secret: String,
        id: String,
    },
    Destroy {
        secret: String,
        id: String,
    },
}

/// The query parameters the methods read.
#[derive(Debug, Default)]
pub(super) struct Params {
    pub secret_id: String,
    pub update_mask: Vec<String>,
    pub etag: String,
    pub page_size: Option<String>,
    pub page_token: String,
    pub filter: String,
    /// `$alt=json;enum-encoding=int`: enums as numbers.
    pub int_enums: bool,
}

impl Call {
    pub fn method(&self) -> GcpMethod {
        match self {
            Call::List { .. } => GcpMethod::List,
            Call::Create { .. } => GcpMethod::Create,
            Call::Get { .. } => GcpMethod::Get,
            Call::Update { .. } => GcpMethod::Update,
            Call::Delete { .. } => GcpMethod::Delete,
            Call::AddVersion { .. } => GcpMethod::AddVersion,
            Call::GetIamPolicy { .. } => GcpMethod::GetIamPolicy,
            Call::SetIamPolicy { .. } => GcpMethod::SetIamPolicy,
            Call::TestIamPermissions { .. } => GcpMethod::TestIamPermissions,
            Call::ListVersions { .. } => GcpMethod::ListVersions,
            Call::GetVersion { .. } => GcpMethod::GetVersion,
            Call::Access { .. } => GcpMethod::Access,
            Call::Enable { .. } => GcpMethod::Enable,
            Call::Disable { .. } => GcpMethod::Disable,
            Call::Destroy { .. } => GcpMethod::Destroy,
        }
    }

    /// The secret the call is about (empty for a list), for fault matching.
    pub fn secret(&self, p: &Params) -> String {
        match self {
            Call::List { .. } => String::new(),
            Call::Create { parent } => format!("{parent}/secrets/{}", p.secret_id),
            Call::Get { secret }
            | Call::Update { secret }
            | Call::Delete { secret }
            | Call::AddVersion { secret }
            | Call::GetIamPolicy { secret }
            | Call::SetIamPolicy { secret }
            | Call::TestIamPermissions { secret }
            | Call::ListVersions { secret }
            | Call::GetVersion { secret, .. }
            | Call::Access { secret, .. }
            | Call::Enable { secret, .. }
            | Call::Disable { secret, .. }
            | Call::Destroy { secret, .. } => secret.clone(),
        }
    }
}

fn find<'a>(st: &'a State, secret: &str) -> Result<&'a Secret, RpcError> {
    st.secrets
        .get(secret)
        .ok_or_else(|| RpcError::secret_not_found(secret))
}

const MAX_PAGE: usize = 25_000;

/// One page of `items` and the next page token (empty on the last page).
fn page<T>(items: Vec<T>, p: &Params) -> Result<(Vec<T>, String), RpcError> {
    let size = match p.page_size.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<i64>().map_err(|_| {
            RpcError::invalid(format!(
                "Invalid value at 'page_size' (TYPE_INT32), \"{s}\""
            ))
        })?,
    };
    if size < 0 {
        return Err(RpcError::invalid("page_size must not be negative."));
    }
    let size = if size == 0 {
        MAX_PAGE
    } else {
        (size as usize).min(MAX_PAGE)
    };
    let start = if p.page_token.is_empty() {
        0
    } else {
        URL_SAFE_NO_PAD
            .decode(&p.page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("lab-offset:")?.parse::<usize>().ok())
            .filter(|&o| o <= items.len())
            .ok_or_else(|| RpcError::invalid("Invalid page token."))?
    };
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        URL_SAFE_NO_PAD.encode(format!("lab-offset:{end}"))
    } else {
        String::new()
    };
    let page = items.into_iter().skip(start).take(end - start).collect();
    Ok((page, next))
}

fn list_answer(key: &str, items: Vec<Value>, next: String, total: usize) -> Value {
    let mut out = json!({});
    if !items.is_empty() {
        out[key] = Value::Array(items);
    }
    if !next.is_empty() {
        out["nextPageToken"] = json!(next);
    }
    if total > 0 {
        out["totalSize"] = json!(total);
    }
    out
}

/// Adds an ENABLED version to `secret`; returns its name.
pub(super) fn add_version_raw(
    st: &mut State,
    secret: &str,
    data: Vec<u8>,
    crc: Option<u32>,
    now: DateTime<Utc>,
) -> Result<String, RpcError> {
    find(st, secret)?;
    if data.is_empty() {
        return Err(RpcError::invalid("Secret Payload cannot be empty."));
    }
    if data.len() > MAX_PAYLOAD {
        return Err(RpcError::invalid(format!(
            "Secret Payload cannot be larger than 64KiB; it is {} bytes.",
            data.len()
        )));
    }
    let actual = crc32c::crc32c(&data);
    if crc.is_some_and(|c| c != actual) {
        return Err(RpcError::invalid(
            "Checksum mismatch: the payload's CRC32C does not match data_crc32c.",
        ));
    }
    let etag = st.etag();
    let s = st.secrets.get_mut(secret).expect("checked above");
    let number = s.versions.len() as i64 + 1;
    s.versions.push(Version {
        number,
        create_time: now,
        destroy_time: None,
        scheduled_destroy_time: None,
        state: VersionState::Enabled,
        etag,
        data: Some(data),
        crc32c: actual,
        client_checksum: crc.is_some(),
    });
    Ok(s.version_name(number))
}

/// Runs a call.
pub(super) fn run(
    st: &mut State,
    call: &Call,
    p: &Params,
    body: &Value,
    now: DateTime<Utc>,
) -> Result<Value, RpcError> {
    match call {
        Call::List { parent } => {
            let filter = Filter::parse(&p.filter, &["name", "labels.", "annotations."])?;
            let prefix = format!("{parent}/secrets/");
            let all: Vec<&Secret> = st
                .secrets
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, s)| s)
                .filter(|s| {
                    filter.matches(&|field| match field {
                        "name" => Some(s.name.clone()),
                        f => f
                            .strip_prefix("labels.")
                            .and_then(|k| s.labels.get(k))
                            .or_else(|| {
                                f.strip_prefix("annotations.")
                                    .and_then(|k| s.annotations.get(k))
                            })
                            .cloned(),
                    })
                })
                .collect();
            let total = if p.filter.is_empty() { all.len() } else { 0 };
            let (items, next) = page(all, p)?;
            let items = items.into_iter().map(Secret::to_json).collect();
            Ok(list_answer("secrets", items, next, total))
        }
        Call::Create { parent } => {
            let id = &p.secret_id;
            if id.is_empty() {
                return Err(RpcError::invalid("Field [secret_id] is required."));
            }
            if !input::valid_secret_id(id) {
                return Err(RpcError::invalid(format!(
                    "Invalid secret_id [{id}]: secret ids must be 1 to 255 characters of \
                     letters, digits, underscores and dashes."
                )));
            }
            let name = format!("{parent}/secrets/{id}");
            if st.secrets.contains_key(&name) {
                return Err(RpcError::already_exists(format!(
                    "Secret [{name}] already exists."
                )));
            }
            let input = SecretInput::parse(body)?;
            let regional = parent.contains("/locations/");
            let mut s = Secret::new(name.clone(), now, String::new(), regional);
            input::apply_create(&mut s, &input, now)?;
            input::validate(&s, None, now)?;
            s.etag = st.etag();
            let out = s.to_json();
            st.secrets.insert(name, s);
            Ok(out)
        }
        Call::Get { secret } => Ok(find(st, secret)?.to_json()),
        Call::Update { secret } => {
            let input = SecretInput::parse(body)?;
            let ignored = st.quirks.ignore_update_fields;
            let cur = find(st, secret)?;
            input::check_etag(&input.etag, &cur.etag, "Secret", secret)?;
            if p.update_mask.is_empty() {
                return Err(RpcError::invalid("Field [update_mask] is required."));
            }
            let mut next = cur.clone();
            for path in &p.update_mask {
                let c = model::camel(path);
                if !UPDATABLE.contains(&c.as_str()) {
                    return Err(RpcError::invalid(format!(
                        "Invalid update mask path [{path}]: the field does not exist or cannot \
                         be updated. Updatable: {}.",
                        UPDATABLE.join(", ")
                    )));
                }
                if ignored && matches!(c.as_str(), "annotations" | "versionAliases") {
                    continue;
                }
                input::apply_field(&mut next, &c, &input, now)?;
            }
            input::validate(&next, Some(cur), now)?;
            next.etag = st.etag();
            let out = next.to_json();
            st.secrets.insert(secret.clone(), next);
            Ok(out)
        }
        Call::Delete { secret } => {
            let cur = find(st, secret)?;
            input::check_etag(&p.etag, &cur.etag, "Secret", secret)?;
            st.secrets.remove(secret);
            Ok(json!({}))
        }
        Call::AddVersion { secret } => {
            let f = model::fields(body, "", &["parent", "payload"])?;
            let payload = f
                .get("payload")
                .ok_or_else(|| RpcError::invalid("Field [payload] is required."))?;
            let pf = model::fields(payload, "payload", &["data", "dataCrc32c"])?;
            let data = match pf.get("data") {
                None => Vec::new(),
                Some(Value::String(s)) => model::decode_bytes(s).ok_or_else(|| {
                    RpcError::invalid(
                        "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed.",
                    )
                })?,
                Some(_) => {
                    return Err(RpcError::invalid(
                        "Invalid value at 'payload.data' (TYPE_BYTES): expected a base64 string.",
                    ));
                }
            };
            let crc = pf
                .get("dataCrc32c")
                .map(|v| {
                    model::int64(v)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            RpcError::invalid(format!(
                                "Invalid value at 'payload.data_crc32c' (TYPE_INT64), {v}: \
                                 a CRC32C is between 0 and 4294967295."
                            ))
                        })
                })
                .transpose()?;
            add_version_raw(st, secret, data, crc, now)?;
            let s = find(st, secret)?;
            Ok(s.version_json(s.versions.len() - 1, p.int_enums))
        }
        Call::GetIamPolicy { secret } => Ok(find(st, secret)?.iam_policy.clone()),
        Call::SetIamPolicy { secret } => {
            let f = model::fields(body, "", &["resource", "policy", "updateMask"])?;
            let mut policy = f.get("policy").cloned().unwrap_or_else(|| json!({}));
            if !policy.is_object() {
                return Err(RpcError::invalid(
                    "Invalid JSON payload received. Expected an object at 'policy'.",
                ));
            }
            find(st, secret)?;
            let tag = st.etag();
            policy["etag"] = json!(STANDARD.encode(tag.trim_matches('"')));
            if policy.get("version").is_none() {
                policy["version"] = json!(1);
            }
            let s = st.secrets.get_mut(secret).expect("checked above");
            s.iam_policy = policy.clone();
            Ok(policy)
        }
        Call::TestIamPermissions { secret } => {
            let f = model::fields(body, "", &["resource", "permissions"])?;
            find(st, secret)?;
            // No IAM in the lab: every permission asked about is held.
            Ok(match f.get("permissions") {
                Some(Value::Array(ps)) if !ps.is_empty() => json!({"permissions": ps}),
                _ => json!({}),
            })
        }
        Call::ListVersions { secret } => {
            let filter = Filter::parse(&p.filter, &["name", "state"])?;
            let s = find(st, secret)?;
            let all: Vec<usize> = (0..s.versions.len())
                .rev()
                .filter(|&i| {
                    let v = &s.versions[i];
                    filter.matches(&|field| match field {
                        "name" => Some(s.version_name(v.number)),
                        "state" => Some(v.state.as_str().to_string()),
                        _ => None,
                    })
                })
                .collect();
            let total = if p.filter.is_empty() { all.len() } else { 0 };
            let (items, next) = page(all, p)?;
            let items = items
                .into_iter()
                .map(|i| s.version_json(i, p.int_enums))
                .collect();
            Ok(list_answer("versions", items, next, total))
        }
        Call::GetVersion { secret, id } => {
            let s = find(st, secret)?;
            let i = s.resolve(id)?;
            Ok(s.version_json(i, p.int_enums))
        }
        Call::Access { secret, id } => access(st, secret, id),
        Call::Enable { secret, id }
        | Call::Disable { secret, id }
        | Call::Destroy { secret, id } => {
            let f = model::fields(body, "", &["name", "etag"])?;
            let given = f
                .get("etag")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let etag = st.etag();
            let s = st
                .secrets
                .get_mut(secret)
                .ok_or_else(|| RpcError::secret_not_found(secret))?;
            let i = s.resolve(id)?;
            let name = s.version_name(s.versions[i].number);
            let ttl = s.version_destroy_ttl;
            let v = &mut s.versions[i];
            input::check_etag(&given, &v.etag, "Secret Version", &name)?;
            if v.state == VersionState::Destroyed {
                return Err(RpcError::precondition(format!(
                    "Secret Version [{name}] is in DESTROYED state."
                )));
            }
            match call {
                Call::Enable { .. } => {
                    v.state = VersionState::Enabled;
                    v.scheduled_destroy_time = None;
                }
                Call::Disable { .. } => v.state = VersionState::Disabled,
                _ => match ttl {
                    Some(ttl) => {
                        v.state = VersionState::Disabled;
                        v.scheduled_destroy_time = Some(now + ttl);
                    }
                    None => {
                        v.state = VersionState::Destroyed;
                        v.data = None;
                        v.destroy_time = Some(now);
                        v.scheduled_destroy_time = None;
                    }
                },
            }
            v.etag = etag;
            Ok(s.version_json(i, p.int_enums))
        }
    }
}

/// `:access`, recorded in the access log whatever the outcome.
fn access(st: &mut State, secret: &str, id: &str) -> Result<Value, RpcError> {
    let requested = format!("{secret}/versions/{id}");
    let checksums = !st.quirks.omit_checksums;
    let outcome = match st.secrets.get(secret) {
        None => Err((
            requested.clone(),
            String::new(),
            RpcError::not_found(format!("Secret [{secret}] not found or has no versions.")),
        )),
        Some(s) => match s.resolve(id) {
            Err(e) => Err((requested.clone(), String::new(), e)),
            Ok(i) => {
                let v = &s.versions[i];
                let name = s.version_name(v.number);
                match (&v.data, v.state) {
                    (Some(data), VersionState::Enabled) => {
                        let mut payload = json!({"data": STANDARD.encode(data)});
                        if checksums {
                            payload["dataCrc32c"] = json!(v.crc32c.to_string());
                        }
                        Ok((name.clone(), json!({"name": name, "payload": payload})))
                    }
                    (_, state) => Err((
                        name.clone(),
                        state.as_str().to_string(),
                        RpcError::precondition(format!(
                            "Secret Version [{name}] is in {} state.",
                            state.as_str()
                        )),
                    )),
                }
            }
        },
    };
    match outcome {
        Ok((version, answer)) => {
            st.record_access(AccessRecord {
                version,
                requested,
                state: VersionState::Enabled.as_str().into(),
                ok: true,
                code: "OK".into(),
            });
            Ok(answer)
        }
        Err((version, state, e)) => {
            st.record_access(AccessRecord {
                version,
                requested,
                state,
                ok: false,
                code: e.status.into(),
            });
            Err(e)
        }
    }
}

/// Records an `:access` call answered by an injected fault.
pub(super) fn record_faulted_access(st: &mut State, secret: &str, id: &str, code: &str) {
    let requested = format!("{secret}/versions/{id}");
    let (version, state) = st
        .secrets
        .get(secret)
        .and_then(|s| {
            let i = s.resolve(id).ok()?;
            let v = &s.versions[i];
            Some((s.version_name(v.number), v.state.as_str().to_string()))
        })
        .unwrap_or_else(|| (requested.clone(), String::new()));
    st.record_access(AccessRecord {
        version,
        requested,
        state,
        ok: false,
        code: code.into(),
    });
}
