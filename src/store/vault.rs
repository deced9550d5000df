//! The OpenBao/Vault KV v2 store, on the `vaultrs` client.
//!
//! Layout of the secret `<mount>/data/<path>` (docs/vault.md says the same for operators):
//! - every value is one KV v2 **version**, its data `{"value": "<the value>"}` ([`DATA_KEY`]);
//!   every data write carries `cas` (check-and-set) with the version read just before, so a
//!   write that raced another writer is refused by the server, never merged;
//! - the slots and the history live in the secret's **`custom_metadata`** (never a value):
//!   `rotor-secret` (the logical secret, checked against the playbook), `rotor-primary` and
//!   `rotor-secondary` (version numbers), `rotor-fp-<n>` (the fingerprint of version n, kept after
//!   it is destroyed: the history, the newest [`HISTORY`] only, within Vault's 64 keys),
//!   `rotor-last-rotation` and `rotor-next-rotation` (RFC 3339; `rotate --if-due`);
//! - a version's state is KV v2's own: a soft-deleted version is *disabled* (undelete brings it
//!   back), a destroyed one is *destroyed*;
//! - the rotation lock is a second KV v2 secret beside it, `<path>.rotor-lock`
//!   ([`crate::engine::lock::secret`]): the metadata endpoint takes no `cas`, a data write does.
//!
//! Metadata writes: OpenBao versions the metadata (`current_metadata_version`) and takes
//! `metadata_cas`; rotor sends it whenever the server reports a version, so a write that raced
//! another writer is refused and re-decided on a fresh read. HashiCorp Vault has no such
//! precondition: there the metadata is read again just before the write (re-decided if it
//! moved) and checked after it. A slot someone else moved is a [`StoreError::Conflict`], never
//! overwritten. Between two rotors the lock (written with `cas`) is what keeps them apart.
//!
//! Owns: the client (address, namespace, token from `VAULT_TOKEN` / `~/.vault-token`, or an
//! AppRole or Kubernetes login, renewed by logging in again before the token's TTL runs out),
//! retries of transient failures (connection refused or reset, 429, 500, 502, 503 and a sealed
//! server, 504) under `retry_deadline`, and the mapping of the server's errors to what an
//! operator does next (403: the capability the policy in docs/vault.md grants; sealed: unseal).
//!
//! Must never: put a value in metadata, an error or a log (the server's error text is bounded
//! and redacted, [`super::retry::quoted`]), read a version that is not enabled, or write data
//! without `cas`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde::Deserialize;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::model::rules;
use super::retry::{Backoff, install_crypto, quoted};
use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::playbook::{VaultAuth, VaultStoreSpec};
use crate::secret::{Fingerprint, SecretValue};

/// The data key that holds the value in each version.
pub const DATA_KEY: &str = "value";
/// Metadata key naming the logical secret.
pub const META_SECRET: &str = super::keys::SECRET;
/// Metadata key with the version number in the primary slot.
pub const META_PRIMARY: &str = super::keys::PRIMARY;
/// Metadata key with the version number in the secondary slot.
pub const META_SECONDARY: &str = super::keys::SECONDARY;
/// Prefix of the per-version fingerprint keys.
pub const META_FP_PREFIX: &str = super::keys::FP_PREFIX;
/// Metadata key with the time the last rotation finished.
pub const META_LAST_ROTATION: &str = super::keys::LAST_ROTATION;
/// Metadata key with the time the next rotation is due (the playbook's `max_age`).
pub const META_NEXT_ROTATION: &str = super::keys::NEXT_ROTATION;
/// The lock lives in the KV v2 secret `<path><LOCK_SUFFIX>`.
pub use crate::playbook::VAULT_LOCK_SUFFIX as LOCK_SUFFIX;
/// Fingerprint keys are kept for this many versions below the newest (Vault allows 64 keys).
pub const HISTORY: u64 = 40;
/// Where the vault CLI keeps its token when `VAULT_TOKEN` is unset.
const TOKEN_FILE: &str = ".vault-token";
/// Largest token, role id, secret id or service-account token file rotor reads.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;
/// Deadline of one HTTP attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a metadata write is re-decided after the metadata moved underneath.
const RACES: usize = 5;

/// One kind of call, with the path and capability the policy must grant for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET `<mount>/metadata/<path>`
    ReadMetadata,
    /// POST `<mount>/metadata/<path>`
    WriteMetadata,
    /// GET `<mount>/data/<path>?version=n`
    ReadData,
    /// POST `<mount>/data/<path>` with `cas`
    WriteData,
    /// POST `<mount>/delete/<path>`
    Delete,
    /// POST `<mount>/undelete/<path>`
    Undelete,
    /// PUT `<mount>/destroy/<path>`
    Destroy,
    /// POST `auth/<mount>/login`
    Login,
}

impl Op {
    /// The API path segment (`metadata`, `data`, …).
    fn segment(self) -> &'static str {
        match self {
            Op::ReadMetadata | Op::WriteMetadata => "metadata",
            Op::ReadData | Op::WriteData => "data",
            Op::Delete => "delete",
            Op::Undelete => "undelete",
            Op::Destroy => "destroy",
            Op::Login => "login",
        }
    }

    /// The policy capability it needs.
    fn capability(self) -> &'static str {
        match self {
            Op::ReadMetadata | Op::ReadData => "read",
            Op::WriteMetadata | Op::WriteData => "create and update",
            Op::Delete | Op::Undelete | Op::Destroy | Op::Login => "update",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Op::ReadMetadata => "reading the metadata",
            Op::WriteMetadata => "writing the metadata",
            Op::ReadData => "reading a version",
            Op::WriteData => "writing a version",
            Op::Delete => "soft-deleting a version",
            Op::Undelete => "undeleting a version",
            Op::Destroy => "destroying a version",
            Op::Login => "logging in",
        }
    }
}

/// How a call failed, classified.
#[derive(Debug)]
pub enum Failure {
    /// The server refused a `cas` write: someone else wrote a version first.
    Cas,
    /// 404.
    NotFound,
    /// The server is sealed.
    Sealed,
    /// 403.
    Denied(String),
    /// Anything else, with a bounded, redacted description.
    Other {
        /// HTTP status, when the server answered.
        status: Option<u16>,
        /// What it said, bounded and redacted.
        message: String,
        /// Whether retrying could help.
        transient: bool,
    },
}

fn classify(e: &ClientError) -> Failure {
    match e {
        ClientError::APIError { code, errors } => {
            let text = errors.join("; ");
            let lower = text.to_ascii_lowercase();
            match *code {
                400 if lower.contains("check-and-set") => Failure::Cas,
                // A KV mount that was just enabled (or upgraded from v1) says it "will resume
                // service shortly".
                400 if lower.contains("upgrading from non-versioned to versioned") => {
                    Failure::Other {
                        status: Some(400),
                        message: quoted(&text),
                        transient: true,
                    }
                }
                404 => Failure::NotFound,
                503 if lower.contains("sealed") => Failure::Sealed,
                403 => Failure::Denied(quoted(&text)),
                c => Failure::Other {
                    status: Some(c),
                    message: quoted(&text),
                    transient: matches!(c, 429 | 500 | 502 | 503 | 504),
                },
            }
        }
        ClientError::RestClientError { source } => {
            // rustify's errors carry no body worth quoting (a body may be a value); the chain
            // names the cause (connection refused, timed out).
            let chain = quoted(&crate::cluster::error_chain(source));
            let status = match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => Some(*code),
                _ => None,
            };
            match status {
                Some(404) => Failure::NotFound,
                Some(403) => Failure::Denied(chain),
                Some(c) => Failure::Other {
                    status: Some(c),
                    message: chain,
                    transient: matches!(c, 429 | 500 | 502 | 503 | 504),
                },
                None => Failure::Other {
                    status: None,
                    message: chain,
                    transient: true,
                },
            }
        }
        other => Failure::Other {
            status: None,
            message: quoted(&other.to_string()),
            transient: false,
        },
    }
}

/// A token and when to log in again (`None`: never, a static token).
struct Session {
    client: Arc<VaultClient>,
    relogin_at: Option<Instant>,
}

/// A store in one KV v2 secret.
pub struct VaultStore {
    spec: VaultStoreSpec,
    logical: String,
    address: String,
    namespace: Option<String>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Fingerprints of enabled versions that carried no key yet, computed once.
    computed: Mutex<HashMap<u64, Fingerprint>>,
}

/// One version as the metadata lists it.
#[derive(Debug, Clone)]
pub struct MetaVersion {
    /// When it was written.
    pub created: DateTime<Utc>,
    /// Its state.
    pub state: VersionState,
}

/// The secret's metadata, as rotor reads it.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The newest version number (0 before the first write).
    pub current_version: u64,
    /// The metadata's own version (`current_metadata_version`), where the server has one
    /// (OpenBao): metadata writes then carry it as `metadata_cas`.
    pub metadata_version: Option<u64>,
    /// `custom_metadata`.
    pub custom: BTreeMap<String, String>,
    /// Every version the server still lists.
    pub versions: BTreeMap<u64, MetaVersion>,
}

impl Meta {
    fn slot(&self, key: &str) -> Option<u64> {
        self.custom.get(key).and_then(|v| v.parse().ok())
    }

    fn fp(&self, n: u64) -> Option<Fingerprint> {
        self.custom
            .get(&fp_key(n))
            .and_then(|t| Fingerprint::parse(t))
    }

    fn state(&self, n: u64) -> Option<VersionState> {
        self.versions.get(&n).map(|v| v.state)
    }
}

fn fp_key(n: u64) -> String {
    format!("{META_FP_PREFIX}{n}")
}

fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Deserialize)]
struct Data {
    value: Option<String>,
}

/// GET `<mount>/metadata/<path>`, with OpenBao's `current_metadata_version` (vaultrs's
/// response type has no field for it).
struct ReadMetadata<'a> {
    mount: &'a str,
    path: &'a str,
}

/// What rotor reads of a metadata response.
#[derive(Deserialize)]
struct MetadataResponse {
    current_version: u64,
    #[serde(default)]
    current_metadata_version: Option<u64>,
    #[serde(default)]
    custom_metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    versions: HashMap<String, VersionResponse>,
}

#[derive(Deserialize)]
struct VersionResponse {
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl Endpoint for ReadMetadata<'_> {
    type Response = MetadataResponse;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/metadata/{}", self.mount, self.path)
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::GET
    }
}

/// POST `<mount>/metadata/<path>` with `custom_metadata` only (the other settings are left as
/// they are) and, where the server versions its metadata, `metadata_cas` (OpenBao).
struct WriteMetadata<'a> {
    mount: &'a str,
    path: &'a str,
    custom: &'a HashMap<String, String>,
    metadata_cas: Option<u64>,
}

impl Endpoint for WriteMetadata<'_> {
    type Response = ();
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/metadata/{}", self.mount, self.path)
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::POST
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        let mut body = serde_json::json!({ "custom_metadata": self.custom });
        if let Some(cas) = self.metadata_cas {
            body["metadata_cas"] = cas.into();
        }
        Ok(Some(
            serde_json::to_vec(&body).expect("a map of strings serializes"),
        ))
    }
}

/// Reads a small credential file (token, role id, secret id), trimmed.
fn credential_file(path: &Path) -> std::io::Result<SecretValue> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(MAX_CREDENTIAL_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CREDENTIAL_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CREDENTIAL_FILE} bytes"
        )));
    }
    let trimmed = text.trim().to_string();
    zeroize::Zeroize::zeroize(&mut text);
    Ok(credential(SecretValue::new(trimmed)))
}

/// A credential (token, secret id, service account token), remembered for redaction so a
/// server or proxy that echoes it back cannot carry it into rotor's output.
fn credential(v: SecretValue) -> SecretValue {
    crate::redact::remember(CREDENTIAL, &v);
    v
}

/// The name credentials are fingerprinted under when redacted.
const CREDENTIAL: &str = "vault-credential";

impl VaultStore {
    /// The store the playbook's `store:` names, for logical secret `secret`.
    pub fn new(spec: &VaultStoreSpec, secret: &str) -> VaultStore {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let address = spec
            .address
            .clone()
            .or_else(|| env("VAULT_ADDR"))
            .unwrap_or_else(|| "https://127.0.0.1:8200".into());
        let namespace = spec.namespace.clone().or_else(|| env("VAULT_NAMESPACE"));
        VaultStore {
            spec: spec.clone(),
            logical: secret.to_string(),
            address: address.trim().trim_end_matches('/').to_string(),
            namespace,
            session: tokio::sync::Mutex::new(None),
            computed: Mutex::new(HashMap::new()),
        }
    }

    /// The server address in use.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The spec this store was opened with.
    pub fn spec(&self) -> &VaultStoreSpec {
        &self.spec
    }

    /// `<mount>/<segment>/<path>`.
    fn api_path(&self, op: Op, path: &str) -> String {
        match op {
            Op::Login => format!("auth/{}/login", self.login_mount()),
            _ => format!("{}/{}/{path}", self.spec.mount, op.segment()),
        }
    }

    fn login_mount(&self) -> &str {
        match &self.spec.auth {
            VaultAuth::Token => "token",
            VaultAuth::AppRole { mount, .. } | VaultAuth::Kubernetes { mount, .. } => mount,
        }
    }

    fn remote(&self, detail: String, help: String) -> StoreError {
        StoreError::Remote {
            store: self.describe(),
            detail,
            help,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            detail: detail.into(),
        }
    }

    /// The error for the operator.
    fn fail(&self, op: Op, path: &str, f: Failure, attempts: u32, elapsed: Duration) -> StoreError {
        let at = self.api_path(op, path);
        match f {
            Failure::Cas => StoreError::Conflict {
                store: self.describe(),
                detail: format!(
                    "the server refused {} of {at}: check-and-set did not match the current version (another writer added a version)",
                    op.what()
                ),
            },
            Failure::NotFound => self.remote(
                format!("{} of {at}: not found", op.what()),
                "check `store.mount` and `store.path`; `rotor init` creates the secret".into(),
            ),
            Failure::Sealed => self.remote(
                format!(
                    "{} of {at}: the server at {} is sealed (still after {attempts} attempts over {:.1}s)",
                    op.what(),
                    self.address,
                    elapsed.as_secs_f64()
                ),
                "unseal it (`bao operator unseal` / `vault operator unseal` with the unseal keys), then `rotor resume`; rotor changed nothing it did not finish".into(),
            ),
            Failure::Denied(msg) if op == Op::Login => self.remote(
                format!("{} at {at} was refused ({msg})", op.what()),
                "check the role and its credentials in `store.auth` (docs/vault.md)".into(),
            ),
            Failure::Denied(msg) => self.remote(
                format!("{} of {at} was refused: permission denied ({msg})", op.what()),
                format!(
                    "grant the token's policy `{}` on `{at}` (docs/vault.md gives the least-privilege policy), or check that VAULT_TOKEN / store.auth gives the right token",
                    op.capability()
                ),
            ),
            Failure::Other {
                status,
                message,
                transient,
            } => {
                let status = status.map_or_else(|| "no answer".into(), |s| format!("HTTP {s}"));
                if transient {
                    self.remote(
                        format!(
                            "{} of {at} still failed after {attempts} attempts over {:.1}s ({status}: {message})",
                            op.what(),
                            elapsed.as_secs_f64()
                        ),
                        format!(
                            "check that the server at {} is up and reachable (VAULT_ADDR or store.address); `rotor status` shows where the rotation stopped and `rotor resume` continues it",
                            self.address
                        ),
                    )
                } else {
                    self.remote(
                        format!("{} of {at} failed ({status}: {message})", op.what()),
                        "see the server's message above; `rotor status` shows where the rotation stopped".into(),
                    )
                }
            }
        }
    }

    fn settings(&self, token: &str) -> Result<vaultrs::client::VaultClientSettings, StoreError> {
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&self.address)
            .token(token)
            .timeout(Some(ATTEMPT_TIMEOUT.min(self.spec.retry_deadline)));
        if let Some(ns) = &self.namespace {
            b.set_namespace(ns.clone());
        }
        b.build().map_err(|e| {
            self.remote(
                format!("cannot set up the client: {}", quoted(&e.to_string())),
                "check VAULT_ADDR / store.address, VAULT_CACERT and VAULT_CAPATH".into(),
            )
        })
    }

    fn client_of(
        &self,
        settings: vaultrs::client::VaultClientSettings,
    ) -> Result<VaultClient, StoreError> {
        VaultClient::new(settings).map_err(|e| {
            self.remote(
                format!(
                    "cannot set up the client: {}",
                    quoted(&crate::cluster::error_chain(&e))
                ),
                "check VAULT_ADDR / store.address, VAULT_CACERT and VAULT_CAPATH".into(),
            )
        })
    }

    /// The client with a token that is still good.
    async fn client(&self) -> Result<Arc<VaultClient>, StoreError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref()
            && s.relogin_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(s.client.clone());
        }
        if !(self.address.starts_with("https://") || self.address.starts_with("http://"))
            || url_parse_fails(&self.address)
        {
            return Err(self.remote(
                format!(
                    "the server address `{}` is not an http(s) URL",
                    quoted(&self.address)
                ),
                "set VAULT_ADDR (or `store.address`), e.g. `https://vault.example.com:8200`".into(),
            ));
        }
        install_crypto();
        let new = match &self.spec.auth {
            VaultAuth::Token => {
                let token = match std::env::var("VAULT_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                {
                    Some(t) => credential(SecretValue::new(t.trim().to_string())),
                    None => {
                        // Without HOME, never fall back to the working directory.
                        let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
                            return Err(self.remote(
                                "no token: VAULT_TOKEN and HOME are both unset".into(),
                                "set VAULT_TOKEN, or use `store.auth` with `method: approle` or `kubernetes`".into(),
                            ));
                        };
                        let file = Path::new(&home).join(TOKEN_FILE);
                        credential_file(&file).map_err(|e| {
                            self.remote(
                                format!("no token: VAULT_TOKEN is unset and {} cannot be read ({e})", file.display()),
                                "set VAULT_TOKEN (or log in with `bao login` / `vault login`), or use `store.auth` with `method: approle` or `kubernetes`".into(),
                            )
                        })?
                    }
                };
                Session {
                    client: Arc::new(self.client_of(self.settings(token.expose())?)?),
                    relogin_at: None,
                }
            }
            VaultAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let read = |p: &Path, what: &str| {
                    credential_file(p).map_err(|e| {
                        self.remote(
                            format!("cannot read the AppRole {what} from {}: {e}", p.display()),
                            "check `store.auth` in the playbook; the file must hold the id only"
                                .into(),
                        )
                    })
                };
                let role_id = read(role_id_file, "role id")?;
                let secret_id = read(secret_id_file, "secret id")?;
                let client = self.client_of(self.settings("")?)?;
                let info = self
                    .call(Op::Login, "", || {
                        vaultrs::auth::approle::login(
                            &client,
                            mount,
                            role_id.expose(),
                            secret_id.expose(),
                        )
                    })
                    .await?;
                Self::logged_in(client, info)
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                let jwt = credential_file(token_file).map_err(|e| {
                    self.remote(
                        format!(
                            "cannot read the service-account token {}: {e}",
                            token_file.display()
                        ),
                        "run rotor in a pod with a service-account token mounted, or set `store.auth.token_file`".into(),
                    )
                })?;
                let client = self.client_of(self.settings("")?)?;
                let info = self
                    .call(Op::Login, "", || {
                        vaultrs::auth::kubernetes::login(&client, mount, role, jwt.expose())
                    })
                    .await?;
                Self::logged_in(client, info)
            }
        };
        let client = new.client.clone();
        *session = Some(new);
        Ok(client)
    }

    fn logged_in(mut client: VaultClient, info: vaultrs::api::AuthInfo) -> Session {
        let token = credential(SecretValue::new(info.client_token));
        client.set_token(token.expose());
        // Log in again after two thirds of the token's TTL (0: no TTL; a TTL beyond what this
        // clock can add: no relogin either, the token outlives the process).
        let relogin_at = (info.lease_duration > 0)
            .then(|| {
                Instant::now().checked_add(Duration::from_secs(
                    info.lease_duration.saturating_mul(2) / 3,
                ))
            })
            .flatten();
        Session {
            client: Arc::new(client),
            relogin_at,
        }
    }

    /// Runs `f` until it succeeds, fails for good, or the retry deadline passes.
    async fn call<T, F, Fut>(&self, op: Op, path: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.call_raw(op, path, &mut f)
            .await
            .map_err(|(failure, attempts, elapsed)| self.fail(op, path, failure, attempts, elapsed))
    }

    /// [`VaultStore::call`], with the failure unexplained (callers that handle 404 or a `cas`
    /// refusal themselves).
    async fn call_raw<T, F, Fut>(
        &self,
        op: Op,
        path: &str,
        f: &mut F,
    ) -> Result<T, (Failure, u32, Duration)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = Backoff::new(self.spec.retry_deadline);
        loop {
            backoff.attempts += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let failure = classify(&e);
            // A sealed server is retried too: a standby during a failover, or a restart an
            // operator is unsealing. After the deadline it is named as sealed.
            let retry = matches!(
                failure,
                Failure::Sealed
                    | Failure::Other {
                        transient: true,
                        ..
                    }
            );
            if retry && let Some(wait) = backoff.next() {
                tracing::info!(
                    path = %self.api_path(op, path), attempt = backoff.attempts, wait = ?wait,
                    "vault: transient error, retrying"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err((failure, backoff.attempts, backoff.started.elapsed()));
        }
    }

    /// The metadata of `path` (the secret's or the lock's), or `None` when it does not exist.
    pub async fn read_meta(&self, path: &str) -> Result<Option<Meta>, StoreError> {
        let client = self.client().await?;
        let mount = self.spec.mount.as_str();
        let r = self
            .call_raw(Op::ReadMetadata, path, &mut || {
                let client = client.clone();
                async move {
                    vaultrs::api::exec_with_result(client.as_ref(), ReadMetadata { mount, path })
                        .await
                }
            })
            .await;
        let m = match r {
            Ok(m) => m,
            Err((Failure::NotFound, ..)) => return Ok(None),
            Err((f, a, e)) => return Err(self.fail(Op::ReadMetadata, path, f, a, e)),
        };
        let mut versions = BTreeMap::new();
        for (n, v) in &m.versions {
            let Ok(n) = n.parse::<u64>() else { continue };
            // Any deletion time counts: one already past (soft deleted), or one ahead, which
            // the server will reach on its own (`delete_version_after`) slot or not. Comparing
            // it with this machine's clock would read a deleted version as enabled whenever the
            // clock is behind the server's, and a rollback would skip its undelete.
            let deleted = time(&v.deletion_time).is_some();
            let state = if v.destroyed {
                VersionState::Destroyed
            } else if deleted {
                VersionState::Disabled
            } else {
                VersionState::Enabled
            };
            versions.insert(
                n,
                MetaVersion {
                    created: time(&v.created_time).unwrap_or(DateTime::UNIX_EPOCH),
                    state,
                },
            );
        }
        Ok(Some(Meta {
            current_version: m.current_version,
            metadata_version: m.current_metadata_version,
            custom: m.custom_metadata.unwrap_or_default().into_iter().collect(),
            versions,
        }))
    }

    /// The secret's metadata, checked to belong to this playbook's logical secret.
    async fn load(&self) -> Result<Meta, StoreError> {
        let m = self
            .read_meta(&self.spec.path)
            .await?
            .ok_or_else(|| StoreError::Missing {
                store: self.describe(),
            })?;
        match m.custom.get(META_SECRET) {
            Some(owner) if owner != &self.logical => Err(self.corrupt(format!(
                "it holds secret `{}` (custom_metadata {META_SECRET}), the playbook names `{}`",
                quoted(owner),
                self.logical
            ))),
            _ => Ok(m),
        }
    }

    /// The data of version `n` of `path` (JSON), or `None` when it is deleted or destroyed.
    pub async fn read_data(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<(serde_json::Value, u64)>, StoreError> {
        let client = self.client().await?;
        let mount = self.spec.mount.as_str();
        let r = self
            .call_raw(Op::ReadData, path, &mut || {
                let client = client.clone();
                async move {
                    let endpoint = ReadSecretRequest::builder()
                        .mount(mount)
                        .path(path)
                        .version(version)
                        .build()
                        .expect("all fields set");
                    vaultrs::api::exec_with_result(client.as_ref(), endpoint).await
                }
            })
            .await;
        match r {
            Ok(resp) => Ok(Some((resp.data, resp.metadata.version))),
            Err((Failure::NotFound, ..)) => Ok(None),
            Err((f, a, e)) => Err(self.fail(Op::ReadData, path, f, a, e)),
        }
    }

    /// Writes `data` to `path` guarded by `cas` (0: only if it has no version yet). `Ok(None)`
    /// when the server refused the `cas`: someone else wrote first. Returns the new version.
    pub async fn write_data(
        &self,
        path: &str,
        data: &serde_json::Value,
        cas: u64,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let mount = self.spec.mount.as_str();
        let cas32 = u32::try_from(cas).map_err(|_| {
            self.corrupt(format!("version {cas} is beyond what a cas write can name"))
        })?;
        let r = self
            .call_raw(Op::WriteData, path, &mut || {
                vaultrs::kv2::set_with_options(
                    client.as_ref(),
                    mount,
                    path,
                    data,
                    SetSecretRequestOptions { cas: cas32 },
                )
            })
            .await;
        match r {
            Ok(m) => Ok(Some(m.version)),
            Err((Failure::Cas, ..)) => Ok(None),
            Err((f, a, e)) => Err(self.fail(Op::WriteData, path, f, a, e)),
        }
    }

    /// Writes version `cas + 1` holding `value`, guarded by `cas` (the version the caller read
    /// as the newest): refused with [`StoreError::Conflict`] when another writer added a
    /// version since, and nothing is written. [`Store::add_version`] reads `cas` just before.
    pub async fn write_version(&self, value: &SecretValue, cas: u64) -> Result<u64, StoreError> {
        // The value lives in this JSON only for the write (serde_json's String is not zeroized;
        // vaultrs takes a `Serialize`).
        let data = serde_json::json!({ DATA_KEY: value.expose() });
        match self.write_data(&self.spec.path, &data, cas).await? {
            Some(n) => Ok(n),
            None => Err(StoreError::Conflict {
                store: self.describe(),
                detail: format!(
                    "the server refused the write with cas={cas}: another writer added a version after version {cas}; nothing was written"
                ),
            }),
        }
    }

    /// Replaces the secret's `custom_metadata` with what `decide` makes of it, decided on a
    /// fresh read. Where the server versions its metadata (OpenBao) the write carries
    /// `metadata_cas`: a write that raced another writer is refused by the server and
    /// re-decided (up to [`RACES`] times). Where it does not (Vault), the metadata is read
    /// again just before the write and the write is re-decided if it moved, and the result is
    /// checked after: that narrows the window, the lock keeps other rotors out. `decide`
    /// returns whether anything changes.
    async fn update_custom<F>(&self, mut decide: F) -> Result<(), StoreError>
    where
        F: FnMut(&Meta, &mut BTreeMap<String, String>) -> Result<bool, StoreError>,
    {
        for _ in 0..RACES {
            let meta = self.load().await?;
            let mut next = meta.custom.clone();
            if !decide(&meta, &mut next)? {
                return Ok(());
            }
            if meta.metadata_version.is_none() {
                let again = self.load().await?;
                if again.custom != meta.custom {
                    continue;
                }
            }
            if !self.write_custom(&next, meta.metadata_version).await? {
                // Someone else wrote the metadata in between: read again, decide again.
                continue;
            }
            let after = self.load().await?;
            if after.custom != next {
                return Err(StoreError::Conflict {
                    store: self.describe(),
                    detail: "the custom_metadata read back differs from what rotor wrote (another writer changed it at the same moment, or the server ignored it)".into(),
                });
            }
            return Ok(());
        }
        Err(StoreError::Conflict {
            store: self.describe(),
            detail: format!("the custom_metadata kept changing over {RACES} attempts"),
        })
    }

    /// Replaces the secret's `custom_metadata` with `custom`, guarded by `metadata_cas` (the
    /// metadata version read, where the server has one). `Ok(false)` when the server refused
    /// the guard: someone else wrote the metadata since, and nothing was written.
    pub async fn write_custom(
        &self,
        custom: &BTreeMap<String, String>,
        metadata_cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let mount = self.spec.mount.as_str();
        let path = self.spec.path.as_str();
        let map: HashMap<String, String> = custom.clone().into_iter().collect();
        let r = self
            .call_raw(Op::WriteMetadata, path, &mut || {
                let client = client.clone();
                let map = &map;
                async move {
                    vaultrs::api::exec_with_empty(
                        client.as_ref(),
                        WriteMetadata {
                            mount,
                            path,
                            custom: map,
                            metadata_cas,
                        },
                    )
                    .await
                }
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err((Failure::Cas, ..)) => Ok(false),
            Err((f, a, e)) => Err(self.fail(Op::WriteMetadata, path, f, a, e)),
        }
    }

    /// The fingerprint of enabled version `n` that has no key yet (read once, then cached).
    async fn enabled_fingerprint(&self, n: u64) -> Result<Fingerprint, StoreError> {
        if let Some(fp) = self.computed.lock().expect("cache").get(&n) {
            return Ok(fp.clone());
        }
        let fp = self.read_version(n).await?.fingerprint(&self.logical);
        self.computed.lock().expect("cache").insert(n, fp.clone());
        Ok(fp)
    }

    /// The value of version `n`, which the caller knows is enabled.
    async fn read_version(&self, n: u64) -> Result<SecretValue, StoreError> {
        let Some((data, _)) = self.read_data(&self.spec.path, Some(n)).await? else {
            return Err(StoreError::NotReadable {
                store: self.describe(),
                version: n.to_string(),
                state: VersionState::Disabled,
            });
        };
        let keys = data.as_object().map_or(0, serde_json::Map::len);
        match serde_json::from_value::<Data>(data) {
            Ok(Data { value: Some(v) }) => Ok(SecretValue::new(v)),
            _ => Err(self.corrupt(format!(
                "version {n} has no string `{DATA_KEY}` (it has {keys} key(s)); rotor keeps each value under `{DATA_KEY}`"
            ))),
        }
    }

    /// `custom` with the fingerprint of version `n`, and the history trimmed to the newest
    /// [`HISTORY`] versions (slot versions always kept).
    fn with_fp(custom: &mut BTreeMap<String, String>, n: u64, fp: &Fingerprint) -> bool {
        let key = fp_key(n);
        let changed = custom.get(&key).map(String::as_str) != Some(fp.as_str());
        custom.insert(key, fp.as_str().to_string());
        let newest = custom
            .keys()
            .filter_map(|k| k.strip_prefix(META_FP_PREFIX)?.parse::<u64>().ok())
            .max()
            .unwrap_or(n);
        let slots: Vec<u64> = [META_PRIMARY, META_SECONDARY]
            .iter()
            .filter_map(|k| custom.get(*k)?.parse().ok())
            .collect();
        let old: Vec<String> = custom
            .keys()
            .filter(|k| {
                k.strip_prefix(META_FP_PREFIX)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|v| v.saturating_add(HISTORY) < newest && !slots.contains(&v))
            })
            .cloned()
            .collect();
        let trimmed = !old.is_empty();
        for k in old {
            custom.remove(&k);
        }
        changed || trimmed
    }

    fn info(&self, n: u64, fp: Fingerprint, meta: &Meta) -> VersionInfo {
        let v = meta.versions.get(&n);
        VersionInfo {
            id: n.to_string(),
            fingerprint: fp,
            state: v.map_or(VersionState::Destroyed, |v| v.state),
            created_at: v.map_or(DateTime::UNIX_EPOCH, |v| v.created),
        }
    }

    fn number(&self, id: &str) -> Result<u64, StoreError> {
        id.parse().map_err(|_| StoreError::NoSuchVersion {
            store: self.describe(),
            version: id.to_string(),
        })
    }

    /// Soft-deletes, undeletes or destroys version `n` of the secret.
    async fn change(&self, n: u64, state: VersionState) -> Result<(), StoreError> {
        let client = self.client().await?;
        let mount = self.spec.mount.as_str();
        let path = self.spec.path.as_str();
        match state {
            VersionState::Enabled => {
                self.call(Op::Undelete, path, || {
                    vaultrs::kv2::undelete_versions(client.as_ref(), mount, path, vec![n])
                })
                .await
            }
            VersionState::Disabled => {
                self.call(Op::Delete, path, || {
                    vaultrs::kv2::delete_versions(client.as_ref(), mount, path, vec![n])
                })
                .await
            }
            VersionState::Destroyed => {
                self.call(Op::Destroy, path, || {
                    vaultrs::kv2::destroy_versions(client.as_ref(), mount, path, vec![n])
                })
                .await
            }
        }
    }
}

/// Whether `address` is no URL at all (vaultrs's settings builder panics on one).
fn url_parse_fails(address: &str) -> bool {
    reqwest::Url::parse(address).is_err()
}

#[async_trait]
impl Store for VaultStore {
    fn describe(&self) -> String {
        format!("vault:{}/{}", self.spec.mount, self.spec.path)
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self
            .read_meta(&self.spec.path)
            .await?
            .is_some_and(|m| m.custom.contains_key(META_PRIMARY)))
    }

    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        if let Some(m) = self.read_meta(&self.spec.path).await? {
            if m.custom.contains_key(META_PRIMARY) {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: format!(
                        "its custom_metadata already has `{META_PRIMARY}`; `rotor init` only starts new stores"
                    ),
                });
            }
            if m.current_version > 0 {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: format!(
                        "it already has {} version(s); rotor will not add a value beside one services may use. To adopt the value in use, point the primary slot at it (`bao kv metadata patch -mount={} -custom-metadata={META_PRIMARY}={} -custom-metadata={META_SECRET}={} {}`, with the version your services read, whose data keeps the value under `{DATA_KEY}`) and run `rotor status`",
                        m.versions.len(),
                        self.spec.mount,
                        m.current_version,
                        self.logical,
                        self.spec.path
                    ),
                });
            }
        }
        let n = self.write_version(value, 0).await?;
        let fp = value.fingerprint(&self.logical);
        let logical = self.logical.clone();
        let store = self.describe();
        self.update_custom(|_, c| {
            if let Some(owner) = c.get(META_SECRET)
                && owner != &logical
            {
                return Err(StoreError::Corrupt {
                    store: store.clone(),
                    detail: format!("it holds another secret than `{logical}`"),
                });
            }
            c.insert(META_SECRET.into(), logical.clone());
            c.insert(META_PRIMARY.into(), n.to_string());
            c.remove(META_SECONDARY);
            Self::with_fp(c, n, &fp);
            Ok(true)
        })
        .await?;
        let meta = self.load().await?;
        Ok(self.info(n, fp, &meta))
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let meta = self.load().await?;
        let mut numbers: Vec<u64> = meta.versions.keys().copied().collect();
        // Versions the server no longer lists (beyond `max_versions`) stay in the history.
        numbers.extend(meta.custom.keys().filter_map(|k| {
            k.strip_prefix(META_FP_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
        }));
        numbers.sort_unstable();
        numbers.dedup();
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            let fp = match (meta.fp(n), meta.state(n)) {
                (Some(fp), _) => fp,
                (None, Some(VersionState::Enabled)) => self.enabled_fingerprint(n).await?,
                // Never seen by rotor and no longer readable: not in the history.
                (None, _) => continue,
            };
            out.push(self.info(n, fp, &meta));
        }
        let primary = meta.custom.get(META_PRIMARY).cloned();
        let secondary = meta.custom.get(META_SECONDARY).cloned();
        for (slot, id) in [("primary", &primary), ("secondary", &secondary)] {
            if let Some(id) = id
                && !out.iter().any(|v| &v.id == id)
            {
                return Err(self.corrupt(format!(
                    "the {slot} slot (custom_metadata) names version `{}`, which is not a version the server lists",
                    quoted(id)
                )));
            }
        }
        Ok(StoreSnapshot {
            versions: out,
            primary,
            secondary,
        })
    }

    async fn read_value(&self, version: &str) -> Result<SecretValue, StoreError> {
        let n = self.number(version)?;
        let meta = self.load().await?;
        match meta.state(n) {
            None => {
                return Err(StoreError::NoSuchVersion {
                    store: self.describe(),
                    version: version.into(),
                });
            }
            Some(VersionState::Enabled) => {}
            Some(state) => {
                return Err(StoreError::NotReadable {
                    store: self.describe(),
                    version: version.into(),
                    state,
                });
            }
        }
        let value = self.read_version(n).await?;
        if let Some(fp) = meta.fp(n)
            && fp != value.fingerprint(&self.logical)
        {
            return Err(self.corrupt(format!("version {n} does not match its fingerprint {fp}")));
        }
        Ok(value)
    }

    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        let fp = value.fingerprint(&self.logical);
        let meta = self.load().await?;
        // Added before a crash, or by a write whose answer was lost: not added twice.
        let mut known = meta
            .versions
            .iter()
            .rev()
            .find(|(n, v)| v.state == VersionState::Enabled && meta.fp(**n).as_ref() == Some(&fp))
            .map(|(n, _)| *n);
        if known.is_none()
            && meta.current_version > 0
            && meta.fp(meta.current_version).is_none()
            && meta.state(meta.current_version) == Some(VersionState::Enabled)
            && self.enabled_fingerprint(meta.current_version).await? == fp
        {
            known = Some(meta.current_version);
        }
        let n = match known {
            Some(n) => n,
            None => self.write_version(value, meta.current_version).await?,
        };
        self.update_custom(|_, c| Ok(Self::with_fp(c, n, &fp)))
            .await?;
        let meta = self.load().await?;
        Ok(self.info(n, fp, &meta))
    }

    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError> {
        rules::distinct_slots(&self.describe(), primary, secondary)?;
        let meta = self.load().await?;
        let mut fps = Vec::new();
        for id in std::iter::once(primary).chain(secondary) {
            let n = self.number(id)?;
            rules::slot_target(&self.describe(), id, meta.state(n))?;
            // Every version in a slot carries its fingerprint (an adopted one gets it now,
            // while it is readable), so it stays in the history once deleted.
            if meta.fp(n).is_none() {
                fps.push((n, self.enabled_fingerprint(n).await?));
            }
        }
        let first = (
            meta.custom.get(META_PRIMARY).cloned(),
            meta.custom.get(META_SECONDARY).cloned(),
        );
        let target = (Some(primary.to_string()), secondary.map(str::to_string));
        let store = self.describe();
        self.update_custom(|_, c| {
            // Re-deciding after a race: slots someone else moved are theirs to explain.
            let now = (c.get(META_PRIMARY).cloned(), c.get(META_SECONDARY).cloned());
            if now != first && now != target {
                return Err(StoreError::Conflict {
                    store: store.clone(),
                    detail: format!(
                        "the slots {META_PRIMARY}/{META_SECONDARY} moved from {first:?} to {now:?} while rotor was setting them to {target:?}"
                    ),
                });
            }
            let before = c.clone();
            c.insert(META_PRIMARY.into(), primary.to_string());
            match secondary {
                Some(s) => {
                    c.insert(META_SECONDARY.into(), s.to_string());
                }
                None => {
                    c.remove(META_SECONDARY);
                }
            }
            for (n, fp) in &fps {
                Self::with_fp(c, *n, fp);
            }
            Ok(*c != before)
        })
        .await
    }

    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError> {
        let n = self.number(version)?;
        let meta = self.load().await?;
        let in_slot = [("primary", META_PRIMARY), ("secondary", META_SECONDARY)]
            .into_iter()
            .find(|(_, key)| meta.slot(key) == Some(n))
            .map(|(slot, _)| slot);
        let current = meta.state(n);
        if !rules::state_change(&self.describe(), version, current, in_slot, state)? {
            return Ok(());
        }
        if state != VersionState::Enabled {
            // Its fingerprint goes into the history now, while it can still be read.
            if current == Some(VersionState::Enabled) && meta.fp(n).is_none() {
                let fp = self.enabled_fingerprint(n).await?;
                self.update_custom(|_, c| Ok(Self::with_fp(c, n, &fp)))
                    .await?;
            }
        }
        self.change(n, state).await
    }

    async fn next_rotation(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let meta = self.load().await?;
        Ok(meta.custom.get(META_NEXT_ROTATION).and_then(|t| time(t)))
    }

    async fn rotation_finished(&self, next_due: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let now = Utc::now();
        self.update_custom(|_, c| {
            c.insert(META_LAST_ROTATION.into(), now.to_rfc3339());
            match next_due {
                Some(t) => {
                    c.insert(META_NEXT_ROTATION.into(), t.to_rfc3339());
                }
                None => {
                    c.remove(META_NEXT_ROTATION);
                }
            }
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_and_the_slots() {
        let mut c = BTreeMap::new();
        c.insert(META_PRIMARY.to_string(), "3".to_string());
        let fp = SecretValue::new("history-test-value-0123456789".into()).fingerprint("s");
        for n in 1..=50 {
            VaultStore::with_fp(&mut c, n, &fp);
        }
        let kept: Vec<u64> = c
            .keys()
            .filter_map(|k| k.strip_prefix(META_FP_PREFIX)?.parse().ok())
            .collect();
        assert!(kept.contains(&3), "the primary's fingerprint stays");
        assert!(kept.contains(&50) && kept.contains(&10));
        assert!(!kept.contains(&9) && !kept.contains(&1), "{kept:?}");
        assert!(c.len() <= 64, "within Vault's custom_metadata limit");
    }

    #[test]
    fn errors_are_classified_without_quoting_values() {
        let v = SecretValue::new("classify-test-value-0123456789".into());
        crate::redact::remember("s", &v);
        let cas = ClientError::APIError {
            code: 400,
            errors: vec!["check-and-set parameter did not match the current version".into()],
        };
        assert!(matches!(classify(&cas), Failure::Cas));
        let sealed = ClientError::APIError {
            code: 503,
            errors: vec!["Vault is sealed".into()],
        };
        assert!(matches!(classify(&sealed), Failure::Sealed));
        let denied = ClientError::APIError {
            code: 403,
            errors: vec![format!("permission denied {}", v.expose())],
        };
        match classify(&denied) {
            Failure::Denied(m) => assert!(!m.contains(v.expose()), "{m}"),
            other => panic!("{other:?}"),
        }
        let upgrading = ClientError::APIError {
            code: 400,
            errors: vec!["Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief period and will resume service shortly.".into()],
        };
        assert!(matches!(
            classify(&upgrading),
            Failure::Other {
                transient: true,
                ..
            }
        ));
        let busy = ClientError::APIError {
            code: 502,
            errors: vec![],
        };
        assert!(matches!(
            classify(&busy),
            Failure::Other {
                transient: true,
                ..
            }
        ));
    }
}
