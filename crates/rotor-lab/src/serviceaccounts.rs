//! Service-account tokens, as kube-apiserver issues and checks them:
//!
//! - TokenRequest, `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (what
//!   `kubectl create token` calls): a JWT signed ES256 with a key the lab generates at start,
//!   carrying the projected-token claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`,
//!   `kubernetes.io: {namespace, serviceaccount: {name, uid}, pod|secret}`).
//! - TokenReview, `POST /apis/authentication.k8s.io/v1/tokenreviews`: the service-account
//!   authenticator's checks (issuer, signature, expiry with go-jose's minute of leeway,
//!   audiences, the ServiceAccount and any bound object still being there with the same uid).
//! - `/.well-known/openid-configuration` and `/openid/v1/jwks`: the public key.
//!
//! Both POSTs take JSON or the protobuf kubectl sends (`application/vnd.kubernetes.protobuf`,
//! decoded here field by field) and answer JSON.
//!
//! Owns: the signing key, the claims, validation and its wording. Must never: log or store a
//! token (a TokenReview answer echoes `spec.token` to its caller, as kube-apiserver's does).

use std::time::{Duration, SystemTime};

use base64::Engine;
use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use sha2::Digest;

use super::error::ApiError;
use super::objects::{Ptr as _, Store, new_uid};
use super::resources;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `authentication.k8s.io/v1`.
const AUTH_V1: &str = "authentication.k8s.io/v1";

/// TokenRequest's default lifetime (`SetDefaults_TokenRequestSpec`).
pub(crate) const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime the API accepts.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// go-jose's default leeway on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: i64 = 60;
/// A token bound to a deleted object stays valid this long after its deletionTimestamp.
const DELETED_GRACE_SECONDS: i64 = 60;

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, then the
/// uncompressed point as a BIT STRING).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The lab's service-account token issuer: its `iss`, its signing key, the key's id.
pub(crate) struct Issuer {
    issuer: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    spki: Vec<u8>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// A fresh P-256 key; `issuer` is the `iss` of every token.
    pub fn new(issuer: String) -> Result<Issuer, String> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        // kube-apiserver's key id: the unpadded base64url SHA-256 of the DER public key.
        let kid = B64URL.encode(sha2::Sha256::digest(&spki));
        Ok(Issuer {
            issuer,
            key,
            rng,
            kid,
            spki,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key as PEM (SubjectPublicKeyInfo), as Vault's `pem_keys` takes it.
    pub fn public_key_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.spki);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// `GET /openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65]),
        }]})
    }

    /// `GET /.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| ApiError::internal(format!("cannot sign the token: {e}")))?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// The claims of a token this issuer signed, or why not. `Err(None)`: not a token of this
    /// issuer at all (kube-apiserver's authenticator passes on it).
    fn verify(&self, token: &str) -> Result<Value, Option<String>> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(None);
        };
        let json_of = |p: &str| -> Option<Value> {
            let bytes = B64URL.decode(p.trim_end_matches('=')).ok()?;
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(Value::is_object)
        };
        let (Some(header), Some(claims)) = (json_of(h), json_of(c)) else {
            return Err(None);
        };
        if claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(None);
        }
        let crypto = || Some("go-jose/go-jose: error in cryptographic primitive".to_string());
        if header["alg"] != "ES256" {
            return Err(crypto());
        }
        let sig = B64URL.decode(s).map_err(|_| crypto())?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| crypto())?;
        Ok(claims)
    }
}

/// An object a token is bound to (`spec.boundObjectRef`).
#[derive(Debug, Clone)]
struct BoundRef {
    kind: String,
    name: String,
    uid: String,
}

/// What a TokenRequest asks for, defaulted.
#[derive(Debug, Clone)]
pub(crate) struct TokenSpec {
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    bound: Option<BoundRef>,
}

impl TokenSpec {
    pub fn new(audiences: Vec<String>, expiration_seconds: i64) -> TokenSpec {
        TokenSpec {
            audiences,
            expiration_seconds,
            bound: None,
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn uid_of(v: &Value) -> &str {
    v.ptr("/metadata/uid").and_then(Value::as_str).unwrap_or("")
}

/// Mints a token for ServiceAccount `ns/name`, issued at `issued_at`: its text and expiry.
pub(crate) fn mint(
    store: &Store,
    issuer: &Issuer,
    ns: &str,
    name: &str,
    spec: &TokenSpec,
    issued_at: SystemTime,
) -> Result<(String, DateTime<Utc>), ApiError> {
    let sa_res = resources::get("serviceaccounts");
    let sa = store
        .get(sa_res, ns, name)
        .ok_or_else(|| ApiError::not_found(sa_res, name))?;
    let mut k8s = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": uid_of(&sa)},
    });
    if let Some(b) = &spec.bound {
        let (plural, claim) = match b.kind.as_str() {
            "Pod" => ("pods", "pod"),
            "Secret" => ("secrets", "secret"),
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type /v1, Kind={other}"
                )));
            }
        };
        let res = resources::get(plural);
        let obj = store
            .get(res, ns, &b.name)
            .ok_or_else(|| ApiError::not_found(res, &b.name))?;
        if plural == "pods" {
            let runs_as = obj
                .ptr("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if runs_as != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {name:?} to pod running with different \
                     serviceaccount name."
                )));
            }
        }
        if !b.uid.is_empty() && b.uid != uid_of(&obj) {
            let mut e = ApiError::conflict(res, &b.name);
            e.message = format!(
                "Operation cannot be fulfilled on {} {:?}: the UID in the bound object \
                 reference ({}) does not match the UID in record. The object might have been \
                 deleted and then recreated",
                b.kind, b.name, b.uid
            );
            return Err(e);
        }
        k8s[claim] = json!({"name": b.name, "uid": uid_of(&obj)});
    }
    let iat = unix(issued_at);
    let exp = iat.saturating_add(spec.expiration_seconds);
    let claims = json!({
        "aud": spec.audiences,
        "exp": exp,
        "iat": iat,
        "iss": issuer.issuer,
        "jti": new_uid(),
        "kubernetes.io": k8s,
        "nbf": iat,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let token = issuer.sign(&claims)?;
    let expires = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    Ok((token, expires))
}

fn is_protobuf(content_type: &str) -> bool {
    content_type.starts_with("application/vnd.kubernetes.protobuf")
}

/// The request body as JSON, whichever of JSON or protobuf it came in.
fn body_json(content_type: &str, body: &[u8], want_kind: &str) -> Result<Value, ApiError> {
    let v = if is_protobuf(content_type) {
        pb::decode(body, want_kind)
            .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))?
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        }
        v
    } else {
        return Err(ApiError::unsupported_media(content_type));
    };
    if let Some(kind) = v.get("kind").and_then(Value::as_str)
        && kind != want_kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({want_kind})"
        )));
    }
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
        && av != AUTH_V1
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version \
             ({AUTH_V1})"
        )));
    }
    Ok(v)
}

/// `POST .../serviceaccounts/{name}/token`: the TokenRequest answered (201).
pub(crate) fn token_request(
    store: &Store,
    issuer: &Issuer,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Value, ApiError> {
    let req = body_json(content_type, body, "TokenRequest")?;
    let expiration_seconds = match req.ptr("/spec/expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds: expected an integer"))?,
    };
    let invalid = |detail: String| ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("TokenRequest.authentication.k8s.io {name:?} is invalid: {detail}"),
        details: Some(json!({"name": name, "group": "authentication.k8s.io",
                             "kind": "TokenRequest",
                             "causes": [{"reason": "FieldValueInvalid", "message": detail,
                                         "field": "spec.expirationSeconds"}]})),
    };
    if expiration_seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a \
             duration less than 10 minutes"
        )));
    }
    if expiration_seconds > i64::from(u32::MAX) {
        return Err(invalid(format!(
            "spec.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a \
             duration larger than 2^32 seconds"
        )));
    }
    let mut audiences: Vec<String> = req
        .ptr("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        // The API server's own audiences (`--api-audiences`, by default the issuer).
        audiences.push(issuer.issuer.clone());
    }
    let bound = match req.ptr("/spec/boundObjectRef") {
        Some(r) if r.is_object() => {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let api_version = s("apiVersion");
            if !api_version.is_empty() && api_version != "v1" {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {api_version}, Kind={}",
                    s("kind")
                )));
            }
            Some(BoundRef {
                kind: s("kind"),
                name: s("name"),
                uid: s("uid"),
            })
        }
        _ => None,
    };
    let spec = TokenSpec {
        audiences: audiences.clone(),
        expiration_seconds,
        bound: bound.clone(),
    };
    let (token, expires) = mint(store, issuer, ns, name, &spec, SystemTime::now())?;
    let bound_json = bound.map_or(
        Value::Null,
        |b| json!({"kind": b.kind, "apiVersion": "v1", "name": b.name, "uid": b.uid}),
    );
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": AUTH_V1,
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {"audiences": audiences, "expirationSeconds": expiration_seconds,
                 "boundObjectRef": bound_json},
        "status": {
            // A dry run answers without a token, as kube-apiserver does.
            "token": if dry_run { String::new() } else { token },
            "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    }))
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: the TokenReview answered (201).
pub(crate) fn token_review(
    store: &Store,
    issuer: &Issuer,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut req = body_json(content_type, body, "TokenReview")?;
    let token = req
        .ptr("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let requested: Vec<String> = req
        .ptr("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let status = match review(store, issuer, &token, &requested, SystemTime::now()) {
        Ok((user, audiences)) => {
            json!({"authenticated": true, "user": user, "audiences": audiences})
        }
        // `authenticated: false` is omitted and `user` is empty, as in Go's encoding of it.
        Err(e) => json!({"user": {}, "error": e}),
    };
    req["kind"] = json!("TokenReview");
    req["apiVersion"] = json!(AUTH_V1);
    if !req.get("metadata").is_some_and(Value::is_object) {
        req["metadata"] = json!({});
    }
    req["metadata"]["creationTimestamp"] = Value::Null;
    req["status"] = status;
    Ok(req)
}

/// kube-apiserver's service-account authenticator on `token` for `requested` audiences (the
/// API server's own when empty): the user and the audiences, or the error text.
pub(crate) fn review(
    store: &Store,
    issuer: &Issuer,
    token: &str,
    requested: &[String],
    now: SystemTime,
) -> Result<(Value, Vec<String>), String> {
    let invalid = |e: &str| format!("[invalid bearer token, {e}]");
    let claims = match issuer.verify(token) {
        Ok(c) => c,
        Err(None) => return Err("invalid bearer token".into()),
        Err(Some(e)) => return Err(invalid(&e)),
    };
    let now = unix(now);
    let num = |k: &str| claims.get(k).and_then(Value::as_i64);
    if num("exp").is_some_and(|exp| now - LEEWAY_SECONDS > exp) {
        return Err(invalid("service account token has expired"));
    }
    if num("nbf").is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
        return Err(invalid("service account token is not valid yet"));
    }
    if num("iat").is_some_and(|iat| now + LEEWAY_SECONDS < iat) {
        return Err(invalid("service account token is issued in the future"));
    }
    let token_auds: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let implicit = vec![issuer.issuer.clone()];
    let token_auds = if token_auds.is_empty() {
        implicit.clone()
    } else {
        token_auds
    };
    let wanted: &[String] = if requested.is_empty() {
        &implicit
    } else {
        requested
    };
    let audiences: Vec<String> = wanted
        .iter()
        .filter(|a| token_auds.contains(a))
        .cloned()
        .collect();
    if audiences.is_empty() {
        return Err(invalid(&format!(
            "token audiences {token_auds:?} is invalid for the target audiences {wanted:?}"
        )));
    }
    let k8s = &claims["kubernetes.io"];
    let ns = k8s["namespace"].as_str().unwrap_or("");
    let sa_name = k8s.ptr("/serviceaccount/name").and_then(Value::as_str);
    let sa_uid = k8s.ptr("/serviceaccount/uid").and_then(Value::as_str);
    let (Some(sa_name), Some(sa_uid)) = (sa_name, sa_uid) else {
        return Err(invalid("service account token claims are incomplete"));
    };
    let sa = store
        .get(resources::get("serviceaccounts"), ns, sa_name)
        .ok_or_else(|| invalid(&format!("serviceaccount {sa_name:?} not found")))?;
    if uid_of(&sa) != sa_uid {
        return Err(invalid(&format!(
            "service account UID ({}) does not match claim ({sa_uid})",
            uid_of(&sa)
        )));
    }
    let mut extra = serde_json::Map::new();
    for (claim, plural, singular) in [("pod", "pods", "pod"), ("secret", "secrets", "secret")] {
        let Some(r) = k8s.get(claim).filter(|r| r.is_object()) else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or("");
        let uid = r["uid"].as_str().unwrap_or("");
        let obj = store
            .get(resources::get(plural), ns, name)
            .ok_or_else(|| invalid(&format!("{singular} {name:?} not found")))?;
        if uid_of(&obj) != uid {
            return Err(invalid(&format!(
                "{singular} UID ({}) does not match claim ({uid})",
                uid_of(&obj)
            )));
        }
        let deleted = obj
            .ptr("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        if deleted.is_some_and(|d| d.timestamp() < now - DELETED_GRACE_SECONDS) {
            return Err(invalid("service account token has been invalidated"));
        }
        if claim == "pod" {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                json!([name]),
            );
            extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
        }
    }
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    let user = json!({
        "username": format!("system:serviceaccount:{ns}:{sa_name}"),
        "uid": sa_uid,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"),
                   "system:authenticated"],
        "extra": extra,
    });
    Ok((user, audiences))
}

/// How long a token lives, for the library API.
pub(crate) fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Just enough of Kubernetes' protobuf encoding (`k8s\0` + `runtime.Unknown`) to read a
/// TokenRequest or a TokenReview, as kubectl and client-go send them.
mod pb {
    use serde_json::{Value, json};

    enum Wire<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Other,
    }

    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&c, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }

    fn fields(mut b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let w = match key & 7 {
                0 => Wire::Varint(varint(&mut b)?),
                1 => {
                    take(&mut b, 8)?;
                    Wire::Other
                }
                2 => {
                    let n = usize::try_from(varint(&mut b)?).map_err(|e| e.to_string())?;
                    Wire::Bytes(take(&mut b, n)?)
                }
                5 => {
                    take(&mut b, 4)?;
                    Wire::Other
                }
                t => return Err(format!("unsupported protobuf wire type {t}")),
            };
            out.push((key >> 3, w));
        }
        Ok(out)
    }

    fn text(b: &[u8]) -> Result<String, String> {
        String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
    }

    /// The strings of a message by field number (repeated fields in order).
    fn strings(b: &[u8], num: u64) -> Result<Vec<String>, String> {
        fields(b)?
            .into_iter()
            .filter_map(|(n, w)| match w {
                Wire::Bytes(s) if n == num => Some(text(s)),
                _ => None,
            })
            .collect()
    }

    fn message(b: &[u8], num: u64) -> Result<Option<&[u8]>, String> {
        Ok(fields(b)?.into_iter().find_map(|(n, w)| match w {
            Wire::Bytes(s) if n == num => Some(s),
            _ => None,
        }))
    }

    fn first(b: &[u8], num: u64) -> Result<String, String> {
        Ok(strings(b, num)?.into_iter().next().unwrap_or_default())
    }

    /// The body as the JSON object it encodes (`apiVersion`, `kind`, `metadata.name` and
    /// `.namespace`, and the spec fields these two kinds have).
    pub(super) fn decode(body: &[u8], want_kind: &str) -> Result<Value, String> {
        let env = body
            .strip_prefix(b"k8s\0")
            .ok_or("not a Kubernetes protobuf message (no k8s\\0 prefix)")?;
        let type_meta = message(env, 1)?.unwrap_or_default();
        let api_version = first(type_meta, 1)?;
        let kind = first(type_meta, 2)?;
        if kind != want_kind {
            return Err(format!("expected a {want_kind}, got {kind:?}"));
        }
        let raw = message(env, 2)?.unwrap_or_default();
        let meta = message(raw, 1)?.unwrap_or_default();
        let mut v = json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": first(meta, 1)?, "namespace": first(meta, 3)?},
        });
        let spec = message(raw, 2)?.unwrap_or_default();
        if kind == "TokenRequest" {
            // TokenRequestSpec: audiences = 1, boundObjectRef = 3, expirationSeconds = 4.
            v["spec"] = json!({"audiences": strings(spec, 1)?});
            for (n, w) in fields(spec)? {
                if let (4, Wire::Varint(x)) = (n, &w) {
                    // int64 on the wire: two's complement in a varint.
                    v["spec"]["expirationSeconds"] = json!(*x as i64);
                }
            }
            if let Some(r) = message(spec, 3)? {
                // BoundObjectReference: kind = 1, apiVersion = 2, name = 3, uid = 4.
                v["spec"]["boundObjectRef"] = json!({
                    "kind": first(r, 1)?, "apiVersion": first(r, 2)?,
                    "name": first(r, 3)?, "uid": first(r, 4)?,
                });
            }
        } else {
            // TokenReviewSpec: token = 1, audiences = 2.
            v["spec"] = json!({"token": first(spec, 1)?, "audiences": strings(spec, 2)?});
        }
        Ok(v)
    }

    #[cfg(test)]
    mod tests {
        /// What kubectl 1.32 sends for `kubectl create token rotor --audience=vault
        /// --duration=10m` (captured).
        const KUBECTL_TOKEN_REQUEST: &[u8] = b"k8s\x00\n(\n\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x12$\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\n\n\x05vault \xd8\x04\x1a\x04\n\x00\x12\x00\x1a\x00\"\x00";

        /// kubectl 1.37.1: `kubectl create token rotor --audience=vault --bound-object-kind=Pod
        /// --bound-object-name=p1 --bound-object-uid=u-1 --duration=20m` (captured).
        const KUBECTL_BOUND_TOKEN_REQUEST: &[u8] = b"k8s\x00\n(\n\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x128\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x1e\n\x05vault\x1a\x12\n\x03Pod\x12\x02v1\x1a\x02p1\"\x03u-1 \xb0\t\x1a\x04\n\x00\x12\x00\x1a\x00\"\x00";

        #[test]
        fn decodes_a_bound_object_reference() {
            let v = super::decode(KUBECTL_BOUND_TOKEN_REQUEST, "TokenRequest").unwrap();
            assert_eq!(v["spec"]["expirationSeconds"], 1200);
            assert_eq!(
                v["spec"]["boundObjectRef"],
                serde_json::json!({"kind": "Pod", "apiVersion": "v1", "name": "p1", "uid": "u-1"})
            );
        }

        #[test]
        fn decodes_what_kubectl_sends() {
            let v = super::decode(KUBECTL_TOKEN_REQUEST, "TokenRequest").unwrap();
            assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
            assert_eq!(v["spec"]["audiences"], serde_json::json!(["vault"]));
            assert_eq!(v["spec"]["expirationSeconds"], 600);
            assert!(v["spec"].get("boundObjectRef").is_none());
            assert!(super::decode(KUBECTL_TOKEN_REQUEST, "TokenReview").is_err());
            assert!(super::decode(b"{}", "TokenRequest").is_err());
            assert!(super::decode(&KUBECTL_TOKEN_REQUEST[..30], "TokenRequest").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(ns: &str, sa: &str) -> Store {
        let store = Store::new();
        store
            .create(
                resources::get("namespaces"),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .unwrap();
        store
            .create(
                resources::get("serviceaccounts"),
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": sa, "namespace": ns}}),
            )
            .unwrap();
        store
    }

    #[test]
    fn a_minted_token_reviews_as_its_service_account_until_it_expires() {
        let store = store_with("demo", "rotor");
        let iss = Issuer::new("http://127.0.0.1:1".into()).unwrap();
        let spec = TokenSpec::new(vec!["vault".into()], 600);
        let now = SystemTime::now();
        let (tok, _) = mint(&store, &iss, "demo", "rotor", &spec, now).unwrap();
        let (user, auds) = review(&store, &iss, &tok, &["vault".into()], now).unwrap();
        assert_eq!(user["username"], "system:serviceaccount:demo:rotor");
        assert_eq!(auds, ["vault"]);
        // The API server's own audience is not in this token.
        let e = review(&store, &iss, &tok, &[], now).unwrap_err();
        assert!(e.contains("is invalid for the target audiences"), "{e}");
        // Expired, past the minute of leeway.
        let later = now + Duration::from_secs(600 + 61);
        let e = review(&store, &iss, &tok, &["vault".into()], later).unwrap_err();
        assert_eq!(
            e,
            "[invalid bearer token, service account token has expired]"
        );
        // Another key: the signature does not verify.
        let other = Issuer::new("http://127.0.0.1:1".into()).unwrap();
        let e = review(&store, &other, &tok, &["vault".into()], now).unwrap_err();
        assert!(e.contains("cryptographic primitive"), "{e}");
        // A deleted ServiceAccount takes its tokens with it.
        store
            .remove(resources::get("serviceaccounts"), "demo", "rotor")
            .unwrap();
        let e = review(&store, &iss, &tok, &["vault".into()], now).unwrap_err();
        assert!(e.contains("serviceaccount \"rotor\" not found"), "{e}");
    }

    #[test]
    fn a_token_bound_to_a_secret_lives_as_long_as_the_secret() {
        let store = store_with("demo", "rotor");
        let secrets = resources::get("secrets");
        let secret = store
            .create(
                secrets,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "s", "namespace": "demo"}}),
            )
            .unwrap();
        let iss = Issuer::new("http://127.0.0.1:1".into()).unwrap();
        let body = json!({"spec": {"boundObjectRef": {"kind": "Secret", "apiVersion": "v1",
                                                      "name": "s"}}});
        let answer = token_request(
            &store,
            &iss,
            "demo",
            "rotor",
            "application/json",
            body.to_string().as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(answer["spec"]["expirationSeconds"], 3600);
        assert_eq!(answer["spec"]["audiences"], json!(["http://127.0.0.1:1"]));
        let tok = answer["status"]["token"].as_str().unwrap();
        let now = SystemTime::now();
        let (user, _) = review(&store, &iss, tok, &[], now).unwrap();
        assert_eq!(
            user["uid"],
            uid_of(
                &store
                    .get(resources::get("serviceaccounts"), "demo", "rotor")
                    .unwrap()
            )
        );
        // Another uid than the Secret's: a conflict; another kind: refused.
        let wrong =
            json!({"spec": {"boundObjectRef": {"kind": "Secret", "name": "s", "uid": "x"}}});
        let e = token_request(
            &store,
            &iss,
            "demo",
            "rotor",
            "",
            wrong.to_string().as_bytes(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        let node = json!({"spec": {"boundObjectRef": {"kind": "Node", "name": "n"}}});
        let e = token_request(
            &store,
            &iss,
            "demo",
            "rotor",
            "",
            node.to_string().as_bytes(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let short = json!({"spec": {"expirationSeconds": 60}});
        let e = token_request(
            &store,
            &iss,
            "demo",
            "rotor",
            "",
            short.to_string().as_bytes(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(secret["metadata"]["name"], "s");
        store.remove(secrets, "demo", "s").unwrap();
        let e = review(&store, &iss, tok, &[], now).unwrap_err();
        assert_eq!(e, "[invalid bearer token, secret \"s\" not found]");
    }

    #[test]
    fn the_public_key_is_a_p256_spki() {
        let iss = Issuer::new("https://issuer.example".into()).unwrap();
        let pem = iss.public_key_pem();
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
        );
        assert_eq!(iss.jwks()["keys"][0]["kid"].as_str().unwrap().len(), 43);
    }
}
