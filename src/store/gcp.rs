//! The Google Cloud Secret Manager store, on the official `google-cloud-secretmanager-v1`
//! client (HTTP/JSON transport).
//!
//! Layout of the secret `projects/<project>/secrets/<name>`:
//! - versions are Secret Manager's own (numbers, states ENABLED / DISABLED / DESTROYED);
//! - the slots are the **version aliases** `rotor-primary` and `rotor-secondary`. rotor never
//!   reads or depends on `latest` (the newest version, whatever its state, is what `latest`
//!   names: following it rolls out whatever was added last);
//! - annotations (never a value): `rotor-secret` (the logical secret, checked against the
//!   playbook), `rotor-fp-<n>` (the fingerprint of version n, kept after it is destroyed: the
//!   history), `rotor-last-rotation` (RFC 3339), and `rotor-lock` (the single-flight lock,
//!   [`crate::engine::lock::gcp`]);
//! - Secret Manager's own rotation schedule (`rotation.next_rotation_time`,
//!   `rotation.rotation_period`) is read by [`Store::next_rotation`] and advanced by one period
//!   when a rotation finishes.
//!
//! Owns: the client (endpoint, credentials, no built-in retries), the retry of transient errors
//! (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, timeouts, connection failures) with jittered
//! exponential back-off under a deadline, pacing of writes (`write_interval`, never under
//! [`MIN_WRITE_INTERVAL`]), CRC32C checksums both ways, and conflict-safe writes: every alias or
//! annotation change carries the etag read just before; an etag mismatch (FAILED_PRECONDITION)
//! re-reads and re-decides, never overwrites. Version state changes carry the version's etag the
//! same way. A successful update is checked to have applied what it asked (a server that
//! ignores annotations or aliases answers 200 all the same).
//!
//! One writer per secret: every [`GcpStore`] on the same secret and endpoint in this process
//! (the store and the lock on its annotation, [`crate::engine::lock::gcp`]) shares one
//! [`Turn`] and one pacing clock, so a step's read-decide-write and a lock renewal never
//! interleave (neither is refused for the other's etag) and their writes together keep
//! `write_interval` apart.
//!
//! Must never: put a value in an annotation, a label, an error or a log line, or access a
//! version that is not enabled (the only access is [`Store::read_value`] and the fingerprint of
//! an enabled version that has no `rotor-fp-<n>` annotation yet).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model as sm;

use super::retry::{Backoff, install_crypto};
use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::playbook::{GcpCredentials, GcpStoreSpec};
use crate::secret::{Fingerprint, SecretValue};

/// Alias of the version in the primary slot.
pub const ALIAS_PRIMARY: &str = super::keys::PRIMARY;
/// Alias of the version in the secondary slot.
pub const ALIAS_SECONDARY: &str = super::keys::SECONDARY;
/// Annotation naming the logical secret.
pub const ANN_SECRET: &str = super::keys::SECRET;
/// Prefix of the per-version fingerprint annotations.
pub const ANN_FP_PREFIX: &str = super::keys::FP_PREFIX;
/// Annotation with the time the last rotation finished.
pub const ANN_LAST_ROTATION: &str = super::keys::LAST_ROTATION;
/// Google's endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Environment variable that overrides the endpoint (tests, private endpoints).
pub const ENDPOINT_ENV: &str = "ROTOR_GCP_ENDPOINT";
/// How often one write is re-decided after an etag mismatch before giving up.
const RACES: usize = 5;
/// Fingerprint annotations kept for this many versions below the newest.
const HISTORY: u64 = 100;
/// Deadline of one attempt (never longer than the retry deadline).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two state changes of one version.
const STATE_CHANGE_INTERVAL: Duration = Duration::from_secs(1);
/// A smaller `write_interval` is raised to this, never the other way (the playbook refuses one).
use crate::playbook::MIN_WRITE_INTERVAL;

/// One Secret Manager method, with the permission it needs and the least predefined role that
/// grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// secrets.get
    GetSecret,
    /// secrets.create
    CreateSecret,
    /// secrets.update (aliases, annotations, rotation)
    UpdateSecret,
    /// versions.list
    ListVersions,
    /// versions.get
    GetVersion,
    /// versions.access
    Access,
    /// versions.add
    AddVersion,
    /// versions.enable
    Enable,
    /// versions.disable
    Disable,
    /// versions.destroy
    Destroy,
}

impl Op {
    /// `secrets.get`, `versions.access`, …
    pub fn method(self) -> &'static str {
        match self {
            Op::GetSecret => "secrets.get",
            Op::CreateSecret => "secrets.create",
            Op::UpdateSecret => "secrets.update",
            Op::ListVersions => "versions.list",
            Op::GetVersion => "versions.get",
            Op::Access => "versions.access",
            Op::AddVersion => "versions.add",
            Op::Enable => "versions.enable",
            Op::Disable => "versions.disable",
            Op::Destroy => "versions.destroy",
        }
    }

    /// The IAM permission (`secretmanager.versions.access`).
    pub fn permission(self) -> String {
        format!("secretmanager.{}", self.method())
    }

    /// The smallest predefined role that grants it.
    pub fn role(self) -> &'static str {
        match self {
            Op::GetSecret | Op::ListVersions | Op::GetVersion => "roles/secretmanager.viewer",
            Op::Access => "roles/secretmanager.secretAccessor",
            Op::AddVersion => "roles/secretmanager.secretVersionAdder",
            Op::Enable | Op::Disable | Op::Destroy => "roles/secretmanager.secretVersionManager",
            Op::CreateSecret | Op::UpdateSecret => {
                "roles/secretmanager.admin (or a custom role with this permission)"
            }
        }
    }
}

/// A call that failed for good (after retries where it was transient).
#[derive(Debug)]
pub struct CallError {
    op: Op,
    resource: String,
    code: Option<Code>,
    http: Option<u16>,
    message: String,
    attempts: u32,
    elapsed: Duration,
    transient: bool,
    auth: bool,
}

impl CallError {
    fn is(&self, code: Code) -> bool {
        self.code == Some(code)
    }

    /// The status code, when the service answered with one.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The error as the operator reads it: what was refused, and what to do.
    pub fn explain(&self) -> (String, String) {
        let what = format!("{} on {}", self.op.method(), self.resource);
        let status = match (self.code, self.http) {
            (Some(c), _) => c.name().to_string(),
            (None, Some(h)) => format!("HTTP {h}"),
            (None, None) => "no answer".into(),
        };
        if self.auth || self.is(Code::Unauthenticated) {
            return (
                format!("{what} could not authenticate ({status}: {})", self.message),
                "set up Application Default Credentials: `gcloud auth application-default login`, a service-account key in GOOGLE_APPLICATION_CREDENTIALS, or workload identity on GKE (docs/gcp.md)".into(),
            );
        }
        if self.is(Code::PermissionDenied) {
            return (
                format!("{what} was refused ({status}: {})", self.message),
                format!(
                    "grant `{}` on the secret to rotor's identity, e.g. with role `{}` (docs/gcp.md lists the least-privilege set)",
                    self.op.permission(),
                    self.op.role()
                ),
            );
        }
        if self.is(Code::NotFound) {
            return (
                format!("{what}: not found ({})", self.message),
                "check `store.project` and `store.name` in the playbook; `rotor init` creates the secret".into(),
            );
        }
        if self.transient {
            return (
                format!(
                    "{what} still failed after {} attempts over {:.1}s ({status}: {})",
                    self.attempts,
                    self.elapsed.as_secs_f64(),
                    self.message
                ),
                "Secret Manager is throttling or unavailable: retry later, or raise `store.retry_deadline`; `rotor status` shows where the rotation stopped".into(),
            );
        }
        (
            format!("{what} failed ({status}: {})", self.message),
            "see Google's message above; `rotor status` shows where the rotation stopped".into(),
        )
    }
}

/// Whether an error is worth another attempt.
fn transient(e: &GaxError) -> bool {
    if let Some(s) = e.status() {
        return matches!(
            s.code,
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded
        );
    }
    matches!(e.http_status_code(), Some(429 | 502 | 503 | 504))
        || e.is_timeout()
        || e.is_connect()
        || e.is_io()
        || e.is_transient_and_before_rpc()
}

fn state_of(v: &sm::SecretVersion) -> VersionState {
    match v.state {
        sm::secret_version::State::Enabled => VersionState::Enabled,
        // A destruction delayed by the secret's `version_destroy_ttl` leaves the version
        // disabled with a scheduled time: it is as gone as rotor can make it.
        sm::secret_version::State::Disabled if v.scheduled_destroy_time.is_some() => {
            VersionState::Destroyed
        }
        sm::secret_version::State::Disabled => VersionState::Disabled,
        sm::secret_version::State::Destroyed => VersionState::Destroyed,
        // A state this client does not know: neither readable nor gone, as far as rotor goes.
        _ => VersionState::Disabled,
    }
}

fn time_of(t: Option<&google_cloud_wkt::Timestamp>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds(), u32::try_from(t.nanos()).unwrap_or(0)))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn crc(data: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(data))
}

/// The version number at the end of a version's resource name.
fn number_of(name: &str) -> Option<u64> {
    name.rsplit('/').next().and_then(|n| n.parse().ok())
}

fn fp_key(id: &str) -> String {
    format!("{ANN_FP_PREFIX}{id}")
}

/// This process's writers of one secret: every [`GcpStore`] on it (the store and the lock on
/// its annotation) shares one, found by endpoint and secret name.
struct Writer {
    /// Whose turn it is to read, decide and write (see [`Turn`]).
    turn: Arc<tokio::sync::Mutex<()>>,
    /// When the last write to the secret (any of its writers') started.
    last_write: tokio::sync::Mutex<Option<Instant>>,
}

/// The writer of `secret` at `endpoint` in this process.
fn writer_of(endpoint: &str, secret: &str) -> Arc<Writer> {
    static WRITERS: LazyLock<Mutex<HashMap<String, Arc<Writer>>>> = LazyLock::new(Mutex::default);
    WRITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(format!("{endpoint} {secret}"))
        .or_insert_with(|| {
            Arc::new(Writer {
                turn: Arc::new(tokio::sync::Mutex::new(())),
                last_write: tokio::sync::Mutex::new(None),
            })
        })
        .clone()
}

/// One writer's turn at a secret: held from the read a write is decided on to the write, so no
/// other writer of the secret in this process writes in between (and moves the etag). Given up
/// while a call backs off after a transient error, so a throttled step never holds the lock's
/// renewals back for its whole retry deadline; the call's next attempt waits for it again.
pub struct Turn {
    turn: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turn {
    async fn take(turn: &Arc<tokio::sync::Mutex<()>>) -> Turn {
        Turn {
            turn: turn.clone(),
            held: Some(turn.clone().lock_owned().await),
        }
    }

    fn pause(&mut self) {
        self.held = None;
    }

    async fn resume(&mut self) {
        if self.held.is_none() {
            self.held = Some(self.turn.clone().lock_owned().await);
        }
    }
}

/// What a successful update did not apply of what it asked, if anything: the fields in `mask`
/// (annotations and version aliases, by name only: never a value) and a new etag. A server that
/// ignores fields it does not know answers 200 all the same.
fn not_applied(sent: &sm::Secret, got: &sm::Secret, mask: &[&str]) -> Option<String> {
    /// The keys rotor sent that came back different, by name (rotor's own keys: never the
    /// server's text), at most five, then how many more; plus how many keys it added.
    fn differing<V: PartialEq>(a: &HashMap<String, V>, b: &HashMap<String, V>) -> Vec<String> {
        let mut keys: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        if keys.len() > 5 {
            let more = keys.len() - 5;
            keys.truncate(5);
            keys.push(format!("{more} more"));
        }
        let added = b.keys().filter(|k| !a.contains_key(*k)).count();
        if added > 0 {
            keys.push(format!("{added} keys rotor did not send"));
        }
        keys
    }
    let mut why = Vec::new();
    if mask.contains(&"annotations") {
        let keys = differing(&sent.annotations, &got.annotations);
        if !keys.is_empty() {
            why.push(format!(
                "the returned secret's annotations differ from those sent ({})",
                keys.join(", ")
            ));
        }
    }
    if mask.contains(&"version_aliases") {
        let keys = differing(&sent.version_aliases, &got.version_aliases);
        if !keys.is_empty() {
            why.push(format!(
                "the returned secret's version aliases differ from those sent ({})",
                keys.join(", ")
            ));
        }
    }
    if got.etag.is_empty() || (!sent.etag.is_empty() && got.etag == sent.etag) {
        why.push("the returned secret carries no new etag".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// A store in one Secret Manager secret.
pub struct GcpStore {
    spec: GcpStoreSpec,
    endpoint: String,
    logical: String,
    client: tokio::sync::OnceCell<SecretManagerService>,
    /// Shared with every other [`GcpStore`] on the same secret in this process.
    writer: Arc<Writer>,
    /// When each version last changed state.
    state_changes: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// Fingerprints of enabled versions that carried no annotation, computed once.
    computed: Mutex<HashMap<String, Fingerprint>>,
}

impl GcpStore {
    /// The store the playbook's `store:` names, for logical secret `secret`. A
    /// `write_interval` under [`MIN_WRITE_INTERVAL`] is raised to it.
    pub fn new(spec: &GcpStoreSpec, secret: &str) -> GcpStore {
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| spec.endpoint.clone())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let mut spec = spec.clone();
        spec.write_interval = spec.write_interval.max(MIN_WRITE_INTERVAL);
        let name = format!("projects/{}/secrets/{}", spec.project, spec.name);
        GcpStore {
            writer: writer_of(&endpoint, &name),
            spec,
            endpoint,
            logical: secret.to_string(),
            client: tokio::sync::OnceCell::new(),
            state_changes: tokio::sync::Mutex::new(HashMap::new()),
            computed: Mutex::new(HashMap::new()),
        }
    }

    /// `projects/<project>/secrets/<name>`.
    pub fn secret_name(&self) -> String {
        format!("projects/{}/secrets/{}", self.spec.project, self.spec.name)
    }

    fn version_name(&self, id: &str) -> String {
        format!("{}/versions/{id}", self.secret_name())
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The client, built on first use.
    async fn client(&self) -> Result<&SecretManagerService, StoreError> {
        self.client
            .get_or_try_init(|| async {
                install_crypto();
                let mut b = SecretManagerService::builder()
                    .with_endpoint(self.endpoint.clone())
                    .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT.min(self.spec.retry_deadline));
                if self.spec.credentials == GcpCredentials::Anonymous {
                    b = b.with_credentials(
                        google_cloud_auth::credentials::anonymous::Builder::new().build(),
                    );
                }
                b.build().await.map_err(|e| StoreError::Remote {
                    store: self.describe(),
                    detail: format!(
                        "cannot set up the Secret Manager client: {}",
                        crate::cluster::error_chain(&e)
                    ),
                    help: "set up Application Default Credentials (`gcloud auth application-default login`, GOOGLE_APPLICATION_CREDENTIALS, or workload identity); docs/gcp.md".into(),
                })
            })
            .await
    }

    /// Waits for this process's turn to write the secret (see [`Turn`]).
    pub async fn turn(&self) -> Turn {
        Turn::take(&self.writer.turn).await
    }

    /// Runs `f` until it succeeds, fails for good, or the retry deadline passes.
    async fn call<T, F, Fut>(&self, op: Op, resource: &str, f: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GaxError>>,
    {
        self.call_in(op, resource, None, f).await
    }

    /// [`GcpStore::call`] during `turn`, which is given up while it backs off.
    async fn call_in<T, F, Fut>(
        &self,
        op: Op,
        resource: &str,
        mut turn: Option<&mut Turn>,
        mut f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GaxError>>,
    {
        let mut backoff = Backoff::new(self.spec.retry_deadline);
        loop {
            backoff.attempts += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = transient(&e);
            if retry && let Some(wait) = backoff.next() {
                tracing::info!(
                    method = op.method(), resource, attempt = backoff.attempts, wait = ?wait,
                    "Secret Manager: transient error, retrying: {e}"
                );
                if let Some(t) = turn.as_deref_mut() {
                    t.pause();
                }
                tokio::time::sleep(wait).await;
                if let Some(t) = turn.as_deref_mut() {
                    t.resume().await;
                }
                continue;
            }
            return Err(self.call_error(op, resource, &e, retry, &backoff));
        }
    }

    fn call_error(
        &self,
        op: Op,
        resource: &str,
        e: &GaxError,
        transient: bool,
        backoff: &Backoff,
    ) -> CallError {
        CallError {
            op,
            resource: resource.to_string(),
            code: e.status().map(|s| s.code),
            http: e.http_status_code(),
            message: e
                .status()
                .map(|s| s.message.clone())
                .unwrap_or_else(|| e.to_string()),
            attempts: backoff.attempts,
            elapsed: backoff.started.elapsed(),
            transient,
            auth: e.is_authentication(),
        }
    }

    /// The error for the operator.
    pub fn fail(&self, e: &CallError) -> StoreError {
        let (detail, help) = e.explain();
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

    fn missing(&self) -> StoreError {
        StoreError::Missing {
            store: self.describe(),
        }
    }

    /// Waits until `write_interval` has passed since the previous write to the secret by any
    /// of its writers in this process (the store's steps and the lock alike).
    pub async fn pace(&self) {
        let mut last = self.writer.last_write.lock().await;
        if let Some(at) = *last {
            let next = at + self.spec.write_interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        *last = Some(Instant::now());
    }

    /// Like [`GcpStore::pace`], and at least a second after the previous state change of the
    /// same version (Google allows one per second per version).
    async fn pace_version(&self, version: &str) {
        self.pace().await;
        let mut last = self.state_changes.lock().await;
        if let Some(at) = last.get(version) {
            let next = *at + STATE_CHANGE_INTERVAL;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        last.insert(version.to_string(), Instant::now());
    }

    /// The secret, or `None` when it does not exist.
    pub async fn get_secret(&self) -> Result<Option<sm::Secret>, StoreError> {
        self.get_secret_in(None).await
    }

    /// [`GcpStore::get_secret`] during `turn`.
    async fn get_secret_in(
        &self,
        turn: Option<&mut Turn>,
    ) -> Result<Option<sm::Secret>, StoreError> {
        let client = self.client().await?;
        let name = self.secret_name();
        match self
            .call_in(Op::GetSecret, &name, turn, || {
                client.get_secret().set_name(&name).send()
            })
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is(Code::NotFound) => Ok(None),
            Err(e) => Err(self.fail(&e)),
        }
    }

    /// The secret, checked to belong to this playbook's logical secret.
    async fn load_secret(&self) -> Result<sm::Secret, StoreError> {
        self.load_secret_in(None).await
    }

    /// [`GcpStore::load_secret`] during `turn`.
    async fn load_secret_in(&self, turn: Option<&mut Turn>) -> Result<sm::Secret, StoreError> {
        let s = self
            .get_secret_in(turn)
            .await?
            .ok_or_else(|| self.missing())?;
        match s.annotations.get(ANN_SECRET) {
            Some(owner) if owner != &self.logical => Err(self.corrupt(format!(
                "it holds secret `{owner}` (annotation {ANN_SECRET}), the playbook names `{}`",
                self.logical
            ))),
            _ => Ok(s),
        }
    }

    /// Every version, oldest first.
    async fn versions(&self) -> Result<Vec<sm::SecretVersion>, StoreError> {
        let client = self.client().await?;
        let parent = self.secret_name();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .call(Op::ListVersions, &parent, || {
                    client
                        .list_secret_versions()
                        .set_parent(&parent)
                        .set_page_size(250)
                        .set_page_token(&token)
                        .send()
                })
                .await
                .map_err(|e| match e.code {
                    Some(Code::NotFound) => self.missing(),
                    _ => self.fail(&e),
                })?;
            out.extend(page.versions);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        out.sort_by_key(|v| number_of(&v.name).unwrap_or(0));
        Ok(out)
    }

    async fn get_version(&self, id: &str) -> Result<sm::SecretVersion, StoreError> {
        let client = self.client().await?;
        let name = self.version_name(id);
        self.call(Op::GetVersion, &name, || {
            client.get_secret_version().set_name(&name).send()
        })
        .await
        .map_err(|e| match e.code {
            Some(Code::NotFound) => StoreError::NoSuchVersion {
                store: self.describe(),
                version: id.to_string(),
            },
            _ => self.fail(&e),
        })
    }

    /// The value of version `id`, checksum verified. The caller knows it is enabled.
    async fn access(&self, id: &str) -> Result<SecretValue, StoreError> {
        let client = self.client().await?;
        let name = self.version_name(id);
        // A checksum mismatch is a damaged transfer: read again, twice at most.
        for _ in 0..3 {
            let resp = match self
                .call(Op::Access, &name, || {
                    client.access_secret_version().set_name(&name).send()
                })
                .await
            {
                Ok(r) => r,
                Err(e) if e.is(Code::FailedPrecondition) => {
                    let state = state_of(&self.get_version(id).await?);
                    return Err(StoreError::NotReadable {
                        store: self.describe(),
                        version: id.to_string(),
                        state,
                    });
                }
                Err(e) if e.is(Code::NotFound) => {
                    return Err(StoreError::NoSuchVersion {
                        store: self.describe(),
                        version: id.to_string(),
                    });
                }
                Err(e) => return Err(self.fail(&e)),
            };
            let payload = resp
                .payload
                .ok_or_else(|| self.corrupt(format!("version {id} came back without a payload")))?;
            let Some(sum) = payload.data_crc32c else {
                // The value is not damaged: the server sends no checksums at all (an emulator or
                // proxy that drops `data_crc32c`), and rotor uses no value it cannot verify.
                return Err(StoreError::Remote {
                    store: self.describe(),
                    detail: format!(
                        "versions.access on {name} returned the payload without a CRC32C checksum: the endpoint {} returns no checksums, so rotor cannot verify the value and does not use it",
                        self.endpoint
                    ),
                    help: format!(
                        "point {ENDPOINT_ENV} (or `store.endpoint`) at a server that returns `data_crc32c` with every payload, or at the real API ({DEFAULT_ENDPOINT}); the secret itself is not damaged"
                    ),
                });
            };
            if crc(&payload.data) != sum {
                tracing::warn!(
                    version = id,
                    "Secret Manager: payload checksum mismatch, reading again"
                );
                continue;
            }
            let text = String::from_utf8(payload.data.to_vec()).map_err(|_| {
                self.corrupt(format!(
                    "version {id} is not UTF-8 text; rotor manages text values"
                ))
            })?;
            return Ok(SecretValue::new(text));
        }
        Err(self.corrupt(format!(
            "version {id}'s payload failed its CRC32C check three times"
        )))
    }

    /// The fingerprint of version `id`: its annotation, else (enabled versions only) computed
    /// from its value once.
    async fn fingerprint(
        &self,
        secret: &sm::Secret,
        v: &sm::SecretVersion,
    ) -> Result<Option<Fingerprint>, StoreError> {
        let id = number_of(&v.name)
            .map(|n| n.to_string())
            .unwrap_or_default();
        if let Some(text) = secret.annotations.get(&fp_key(&id)) {
            return Fingerprint::parse(text).map(Some).ok_or_else(|| {
                self.corrupt(format!("annotation {} is not a fingerprint", fp_key(&id)))
            });
        }
        if state_of(v) != VersionState::Enabled {
            return Ok(None);
        }
        self.enabled_fingerprint(&id).await.map(Some)
    }

    /// Applies `decide` to a fresh read of the secret and writes the fields in `mask` guarded by
    /// its etag; an etag mismatch re-reads and re-decides. `decide` returns whether it changed
    /// anything (nothing is written otherwise).
    async fn update<F>(&self, mask: &[&str], mut decide: F) -> Result<(), StoreError>
    where
        F: FnMut(&mut sm::Secret) -> Result<bool, StoreError>,
    {
        let name = self.secret_name();
        for _ in 0..RACES {
            // From the read to the write, no other writer of the secret in this process (the
            // lock's renewals) writes in between.
            let mut turn = self.turn().await;
            let mut s = self.load_secret_in(Some(&mut turn)).await?;
            if !decide(&mut s)? {
                return Ok(());
            }
            let sent = s.etag.clone();
            self.pace().await;
            let written = self.patch_in(&s, mask, Some(&mut turn)).await?;
            drop(turn);
            match written {
                Ok(_) => return Ok(()),
                Err(e) if e.is(Code::FailedPrecondition) => {
                    // Someone wrote in between (or a retried write of ours landed): read again.
                    let now = self.load_secret().await?;
                    if now.etag == sent {
                        return Err(self.fail(&e));
                    }
                    tracing::info!(secret = %name, "Secret Manager: etag changed underneath, re-deciding");
                }
                Err(e) => return Err(self.fail(&e)),
            }
        }
        Err(StoreError::Conflict {
            store: self.describe(),
            detail: format!("the secret's etag kept changing over {RACES} attempts"),
        })
    }

    /// Writes the fields `mask` names from `secret`, guarded by the etag it carries (the one
    /// read). A mismatch comes back as the call error FAILED_PRECONDITION, for the caller to
    /// re-read and re-decide; the store's update and the lock annotation both write this way.
    /// An answer that does not carry what was written (a server that ignored the fields) is a
    /// [`StoreError`]: the write did not happen, whatever the status said.
    pub async fn patch(
        &self,
        secret: &sm::Secret,
        mask: &[&str],
    ) -> Result<Result<sm::Secret, CallError>, StoreError> {
        self.patch_in(secret, mask, None).await
    }

    /// [`GcpStore::patch`] during `turn`.
    async fn patch_in(
        &self,
        secret: &sm::Secret,
        mask: &[&str],
        turn: Option<&mut Turn>,
    ) -> Result<Result<sm::Secret, CallError>, StoreError> {
        let client = self.client().await?;
        let name = self.secret_name();
        let paths = google_cloud_wkt::FieldMask::default().set_paths(mask.iter().copied());
        let got = match self
            .call_in(Op::UpdateSecret, &name, turn, || {
                client
                    .update_secret()
                    .set_secret(secret.clone())
                    .set_update_mask(paths.clone())
                    .send()
            })
            .await
        {
            Ok(got) => got,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(why) = not_applied(secret, &got, mask) {
            return Err(StoreError::Remote {
                store: self.describe(),
                detail: format!(
                    "secrets.update on {name}: the server accepted the update but did not apply it: {why}"
                ),
                help: format!(
                    "the endpoint {} does not keep what rotor writes (an emulator or proxy that ignores annotations or version aliases?): point {ENDPOINT_ENV} (or `store.endpoint`) at a server that implements secrets.patch, or at the real API ({DEFAULT_ENDPOINT})",
                    self.endpoint
                ),
            });
        }
        Ok(Ok(got))
    }

    /// The fingerprint of enabled version `id`, computed from its value once per run.
    async fn enabled_fingerprint(&self, id: &str) -> Result<Fingerprint, StoreError> {
        if let Some(fp) = self.computed.lock().expect("fp cache").get(id) {
            return Ok(fp.clone());
        }
        let fp = self.access(id).await?.fingerprint(&self.logical);
        self.computed
            .lock()
            .expect("fp cache")
            .insert(id.to_string(), fp.clone());
        Ok(fp)
    }

    /// The version that holds `value` among those numbered above `above`, if a write whose
    /// answer was lost landed after all.
    async fn landed(&self, above: u64, value: &SecretValue) -> Result<Option<String>, StoreError> {
        for v in self.versions().await? {
            let n = number_of(&v.name).unwrap_or(0);
            if n > above
                && state_of(&v) == VersionState::Enabled
                && self.access(&n.to_string()).await?.ct_eq(value)
            {
                return Ok(Some(n.to_string()));
            }
        }
        Ok(None)
    }

    /// Adds `value` as a new version (checksummed) and returns its number; a transient failure
    /// whose write may have landed is checked before trying again, so no value is added twice.
    async fn add(&self, value: &SecretValue) -> Result<String, StoreError> {
        let client = self.client().await?;
        let parent = self.secret_name();
        let above = self
            .versions()
            .await?
            .iter()
            .filter_map(|v| number_of(&v.name))
            .max()
            .unwrap_or(0);
        let data = bytes::Bytes::copy_from_slice(value.expose().as_bytes());
        let payload = sm::SecretPayload::new()
            .set_data(data.clone())
            .set_data_crc32c(crc(&data));
        let mut backoff = Backoff::new(self.spec.retry_deadline);
        loop {
            backoff.attempts += 1;
            let turn = self.turn().await;
            self.pace().await;
            let sent = client
                .add_secret_version()
                .set_parent(&parent)
                .set_payload(payload.clone())
                .send()
                .await;
            drop(turn);
            let e = match sent {
                Ok(v) => {
                    return number_of(&v.name)
                        .map(|n| n.to_string())
                        .ok_or_else(|| self.corrupt(format!("new version named `{}`", v.name)));
                }
                Err(e) => e,
            };
            let retry = transient(&e);
            if retry && let Some(wait) = backoff.next() {
                tracing::info!(attempt = backoff.attempts, wait = ?wait, "Secret Manager: versions.add failed, checking whether it landed: {e}");
                if !e.is_transient_and_before_rpc()
                    && let Some(id) = self.landed(above, value).await?
                {
                    return Ok(id);
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            let err = self.call_error(Op::AddVersion, &parent, &e, retry, &backoff);
            return Err(self.fail(&err));
        }
    }

    /// Records version `id`'s fingerprint (and prunes the history beyond [`HISTORY`]).
    async fn annotate(&self, id: &str, fp: &Fingerprint, alias: bool) -> Result<(), StoreError> {
        let newest: u64 = id.parse().unwrap_or(0);
        let logical = self.logical.clone();
        // Only a destroyed version's fingerprint may go: the others still hold values.
        let destroyed: std::collections::HashSet<u64> = self
            .versions()
            .await?
            .iter()
            .filter(|v| state_of(v) == VersionState::Destroyed)
            .filter_map(|v| number_of(&v.name))
            .collect();
        let mask: &[&str] = if alias {
            &["annotations", "version_aliases"]
        } else {
            &["annotations"]
        };
        self.update(mask, |s| {
            let before = (s.annotations.clone(), s.version_aliases.clone());
            s.annotations.insert(ANN_SECRET.into(), logical.clone());
            s.annotations.insert(fp_key(id), fp.as_str().to_string());
            s.annotations.retain(|k, _| {
                k.strip_prefix(ANN_FP_PREFIX)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_none_or(|n| n + HISTORY > newest || !destroyed.contains(&n))
            });
            if alias {
                s.version_aliases
                    .insert(ALIAS_PRIMARY.into(), i64::try_from(newest).unwrap_or(0));
            }
            Ok((s.annotations.clone(), s.version_aliases.clone()) != before)
        })
        .await
    }

    fn info(&self, id: &str, fp: Fingerprint, v: Option<&sm::SecretVersion>) -> VersionInfo {
        VersionInfo {
            id: id.to_string(),
            fingerprint: fp,
            state: v.map_or(VersionState::Enabled, state_of),
            created_at: v.map_or_else(Utc::now, |v| time_of(v.create_time.as_ref())),
        }
    }
}

fn alias(s: &sm::Secret, name: &str) -> Option<String> {
    s.version_aliases.get(name).map(|n| n.to_string())
}

#[async_trait]
impl Store for GcpStore {
    fn describe(&self) -> String {
        format!("gcp:{}", self.secret_name())
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self
            .get_secret()
            .await?
            .is_some_and(|s| s.version_aliases.contains_key(ALIAS_PRIMARY)))
    }

    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        let client = self.client().await?;
        match self.get_secret().await? {
            Some(s) if s.version_aliases.contains_key(ALIAS_PRIMARY) => {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: format!(
                        "it already has a `{ALIAS_PRIMARY}` alias; `rotor init` only starts new stores"
                    ),
                });
            }
            Some(_) => {}
            None => {
                let parent = format!("projects/{}", self.spec.project);
                let secret = sm::Secret::new()
                    .set_replication(
                        sm::Replication::new().set_automatic(sm::replication::Automatic::default()),
                    )
                    .set_labels([("managed-by", "rotor")])
                    .set_annotations([(ANN_SECRET, self.logical.as_str())]);
                let mut turn = self.turn().await;
                self.pace().await;
                match self
                    .call_in(Op::CreateSecret, &parent, Some(&mut turn), || {
                        client
                            .create_secret()
                            .set_parent(&parent)
                            .set_secret_id(&self.spec.name)
                            .set_secret(secret.clone())
                            .send()
                    })
                    .await
                {
                    Ok(_) => {}
                    // Created by someone else (or by a retried call of ours): checked below.
                    Err(e) if e.is(Code::AlreadyExists) => {}
                    Err(e) => return Err(self.fail(&e)),
                }
            }
        }
        let existing = self.versions().await?;
        if let Some(last) = existing.last() {
            let n = number_of(&last.name).unwrap_or(0);
            return Err(StoreError::Refused {
                store: self.describe(),
                detail: format!(
                    "it already has {} version(s); rotor will not add a value beside one services may use. To adopt the value in use, point the `{ALIAS_PRIMARY}` alias at it (`gcloud secrets update {} --project {} --update-version-aliases={ALIAS_PRIMARY}={n}`, with the version your services read) and run `rotor status`",
                    existing.len(),
                    self.spec.name,
                    self.spec.project
                ),
            });
        }
        let id = self.add(value).await?;
        let fp = value.fingerprint(&self.logical);
        self.annotate(&id, &fp, true).await?;
        Ok(self.info(&id, fp, None))
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let secret = self.load_secret().await?;
        let versions = self.versions().await?;
        let mut out = Vec::with_capacity(versions.len());
        for v in &versions {
            let Some(n) = number_of(&v.name) else {
                continue;
            };
            // Versions rotor never saw (added by hand, destroyed before adoption) have no
            // fingerprint to show: they are left out of the history.
            if let Some(fp) = self.fingerprint(&secret, v).await? {
                out.push(self.info(&n.to_string(), fp, Some(v)));
            }
        }
        let primary = alias(&secret, ALIAS_PRIMARY);
        let secondary = alias(&secret, ALIAS_SECONDARY);
        for (slot, id) in [("primary", &primary), ("secondary", &secondary)] {
            if let Some(id) = id
                && !out.iter().any(|v| &v.id == id)
            {
                return Err(self.corrupt(format!(
                    "the {slot} alias names version {id}, which is not an enabled or recorded version"
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
        let secret = self.load_secret().await?;
        let value = self.access(version).await?;
        if let Some(text) = secret.annotations.get(&fp_key(version))
            && Fingerprint::parse(text).as_ref() != Some(&value.fingerprint(&self.logical))
        {
            return Err(self.corrupt(format!(
                "version {version} does not match its fingerprint {text}"
            )));
        }
        Ok(value)
    }

    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        let fp = value.fingerprint(&self.logical);
        let secret = self.load_secret().await?;
        // Added before a crash, or by a write whose answer was lost: not added twice.
        let known = secret.annotations.iter().find_map(|(k, v)| {
            let id = k.strip_prefix(ANN_FP_PREFIX)?;
            (Fingerprint::parse(v).as_ref() == Some(&fp)).then(|| id.to_string())
        });
        let id = match known {
            Some(id) => id,
            None => self.add(value).await?,
        };
        self.annotate(&id, &fp, false).await?;
        let v = self.get_version(&id).await?;
        Ok(self.info(&id, fp, Some(&v)))
    }

    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError> {
        let versions = self.versions().await?;
        for id in std::iter::once(primary).chain(secondary) {
            let v = versions
                .iter()
                .find(|v| number_of(&v.name).map(|n| n.to_string()).as_deref() == Some(id))
                .ok_or_else(|| StoreError::NoSuchVersion {
                    store: self.describe(),
                    version: id.to_string(),
                })?;
            if state_of(v) != VersionState::Enabled {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: format!(
                        "version {id} is {:?}; only an enabled version can be put in a slot",
                        state_of(v)
                    ),
                });
            }
        }
        // Every version in a slot carries its fingerprint (an adopted one gets it now, while it
        // is enabled and readable), so it stays in the history once disabled.
        let secret = self.load_secret().await?;
        let mut fps: Vec<(String, Fingerprint)> = Vec::new();
        for id in std::iter::once(primary).chain(secondary) {
            if !secret.annotations.contains_key(&fp_key(id)) {
                fps.push((fp_key(id), self.enabled_fingerprint(id).await?));
            }
        }
        let number = |id: &str| id.parse::<i64>().unwrap_or(0);
        let rotor_aliases = |s: &sm::Secret| {
            (
                s.version_aliases.get(ALIAS_PRIMARY).copied(),
                s.version_aliases.get(ALIAS_SECONDARY).copied(),
            )
        };
        let first = rotor_aliases(&secret);
        let store = self.describe();
        self.update(&["version_aliases", "annotations"], |s| {
            // Re-deciding after an etag race: if someone else moved rotor's aliases meanwhile,
            // that is theirs to explain, not ours to overwrite.
            let now = rotor_aliases(s);
            let target = (Some(number(primary)), secondary.map(number));
            if now != first && now != target {
                return Err(StoreError::Conflict {
                    store: store.clone(),
                    detail: format!(
                        "the aliases {ALIAS_PRIMARY}/{ALIAS_SECONDARY} moved from {first:?} to {now:?} while rotor was setting them to {target:?}"
                    ),
                });
            }
            let before = (s.version_aliases.clone(), s.annotations.clone());
            for (k, fp) in &fps {
                s.annotations
                    .entry(k.clone())
                    .or_insert_with(|| fp.as_str().to_string());
            }
            s.version_aliases
                .insert(ALIAS_PRIMARY.into(), number(primary));
            match secondary {
                Some(id) => {
                    s.version_aliases.insert(ALIAS_SECONDARY.into(), number(id));
                }
                None => {
                    s.version_aliases.remove(ALIAS_SECONDARY);
                }
            }
            Ok((s.version_aliases.clone(), s.annotations.clone()) != before)
        })
        .await
    }

    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError> {
        let client = self.client().await?;
        let name = self.version_name(version);
        for _ in 0..RACES {
            let v = self.get_version(version).await?;
            let current = state_of(&v);
            if current == state {
                return Ok(());
            }
            if current == VersionState::Destroyed {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: format!("version {version} is destroyed; it cannot be {state:?}"),
                });
            }
            if state != VersionState::Enabled {
                let s = self.load_secret().await?;
                // Its fingerprint goes into the history now, while it can still be read.
                if current == VersionState::Enabled && !s.annotations.contains_key(&fp_key(version))
                {
                    let fp = self.enabled_fingerprint(version).await?;
                    self.annotate(version, &fp, false).await?;
                }
                for (slot, a) in [("primary", ALIAS_PRIMARY), ("secondary", ALIAS_SECONDARY)] {
                    if alias(&s, a).as_deref() == Some(version) {
                        return Err(StoreError::Refused {
                            store: self.describe(),
                            detail: format!(
                                "version {version} is in the {slot} slot (alias {a}); it cannot be {state:?}"
                            ),
                        });
                    }
                }
            }
            let etag = v.etag.clone();
            let mut turn = self.turn().await;
            self.pace_version(version).await;
            let op = match state {
                VersionState::Enabled => Op::Enable,
                VersionState::Disabled => Op::Disable,
                VersionState::Destroyed => Op::Destroy,
            };
            let r = self
                .call_in(op, &name, Some(&mut turn), || {
                    let name = name.clone();
                    let etag = etag.clone();
                    async move {
                        match op {
                            Op::Enable => {
                                client
                                    .enable_secret_version()
                                    .set_name(name)
                                    .set_etag(etag)
                                    .send()
                                    .await
                            }
                            Op::Disable => {
                                client
                                    .disable_secret_version()
                                    .set_name(name)
                                    .set_etag(etag)
                                    .send()
                                    .await
                            }
                            _ => {
                                client
                                    .destroy_secret_version()
                                    .set_name(name)
                                    .set_etag(etag)
                                    .send()
                                    .await
                            }
                        }
                    }
                })
                .await;
            drop(turn);
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.is(Code::FailedPrecondition) => {
                    if self.get_version(version).await?.etag == etag {
                        return Err(self.fail(&e));
                    }
                }
                Err(e) => return Err(self.fail(&e)),
            }
        }
        Err(StoreError::Conflict {
            store: self.describe(),
            detail: format!("version {version}'s etag kept changing over {RACES} attempts"),
        })
    }

    async fn next_rotation(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let s = self.load_secret().await?;
        Ok(s.rotation
            .as_ref()
            .and_then(|r| r.next_rotation_time.as_ref())
            .map(|t| time_of(Some(t))))
    }

    async fn rotation_finished(&self, next_due: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let now = Utc::now();
        // Secret Manager's schedule is advanced only where the secret has one (it needs a
        // Pub/Sub topic, which is the owner's to set up). `rotation_period` is input-only: Google
        // moves a periodic schedule itself when it notifies, so rotor writes the next time only
        // when the playbook's `max_age` says when it is, and otherwise clears a one-time schedule
        // that has passed, so it does not call for a rotation again and again.
        let current = self
            .load_secret()
            .await?
            .rotation
            .as_ref()
            .and_then(|r| r.next_rotation_time.as_ref())
            .map(|t| time_of(Some(t)));
        let next = match (current, next_due) {
            (None, _) => None,
            (Some(_), Some(due)) => Some(Some(due)),
            (Some(at), None) if at <= now => Some(None),
            (Some(_), None) => None,
        };
        let mask: &[&str] = if next.is_some() {
            &["annotations", "rotation.next_rotation_time"]
        } else {
            &["annotations"]
        };
        self.update(mask, |s| {
            s.annotations
                .insert(ANN_LAST_ROTATION.into(), now.to_rfc3339());
            if let (Some(next), Some(r)) = (next, s.rotation.as_mut()) {
                r.next_rotation_time =
                    next.and_then(|t| google_cloud_wkt::Timestamp::new(t.timestamp(), 0).ok());
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
    fn permission_errors_name_the_permission_and_role() {
        let e = CallError {
            op: Op::Destroy,
            resource: "projects/p/secrets/s/versions/3".into(),
            code: Some(Code::PermissionDenied),
            http: Some(403),
            message: "Permission denied".into(),
            attempts: 1,
            elapsed: Duration::ZERO,
            transient: false,
            auth: false,
        };
        let (detail, help) = e.explain();
        assert!(
            detail.contains("versions.destroy on projects/p/secrets/s/versions/3"),
            "{detail}"
        );
        assert!(help.contains("secretmanager.versions.destroy"), "{help}");
        assert!(
            help.contains("roles/secretmanager.secretVersionManager"),
            "{help}"
        );
    }

    #[test]
    fn an_update_answered_without_what_it_asked_is_not_applied() {
        let sent = sm::Secret::new()
            .set_etag("\"e1\"")
            .set_annotations([("rotor-lock", "{}"), ("rotor-fp-1", "sha256:0123456789ab")])
            .set_version_aliases([(ALIAS_PRIMARY, 1_i64)]);
        let applied = sent.clone().set_etag("\"e2\"");
        assert_eq!(
            not_applied(&sent, &applied, &["annotations", "version_aliases"]),
            None
        );
        // Ignored: the annotations as they were, the alias missing, the etag unchanged.
        let ignored = sm::Secret::new()
            .set_etag("\"e1\"")
            .set_annotations([("rotor-fp-1", "sha256:0123456789ab")]);
        let why = not_applied(&sent, &ignored, &["annotations", "version_aliases"]).unwrap();
        assert!(
            why.contains("annotations differ from those sent (rotor-lock)"),
            "{why}"
        );
        assert!(
            why.contains("version aliases differ from those sent (rotor-primary)"),
            "{why}"
        );
        assert!(why.contains("no new etag"), "{why}");
        assert!(!why.contains("sha256"), "names only, never a value: {why}");
        // Only the fields in the mask are compared.
        let other = applied
            .clone()
            .set_version_aliases([(ALIAS_PRIMARY, 2_i64)]);
        assert_eq!(not_applied(&sent, &other, &["annotations"]), None);
    }

    #[test]
    fn the_write_interval_is_never_below_half_a_second() {
        let spec = |ms| GcpStoreSpec {
            project: "p".into(),
            name: "s".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: GcpCredentials::Anonymous,
            retry_deadline: Duration::from_secs(1),
            write_interval: Duration::from_millis(ms),
        };
        assert_eq!(
            GcpStore::new(&spec(100), "s").spec.write_interval,
            MIN_WRITE_INTERVAL
        );
        assert_eq!(
            GcpStore::new(&spec(2000), "s").spec.write_interval,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn version_numbers_come_from_resource_names() {
        assert_eq!(number_of("projects/p/secrets/s/versions/12"), Some(12));
        assert_eq!(number_of("projects/p/secrets/s/versions/latest"), None);
    }
}
