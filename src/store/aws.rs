//! The AWS Secrets Manager store, on the official SDK (`aws-sdk-secretsmanager` with
//! `aws-config`).
//!
//! Layout of the secret `<name>` (docs/aws.md says the same for operators):
//! - every value is one Secrets Manager **version** (`SecretString`); rotor names versions by
//!   their `VersionId`;
//! - the slots are **staging labels**, each on at most one version (Secrets Manager's rule):
//!   `AWSCURRENT` is the primary (what every reader of the secret gets by default),
//!   `ROTOR_SECONDARY` the secondary. A version rotor adds carries `AWSPENDING` until it becomes
//!   current (T1 is `PutSecretValue` with `AWSPENDING` and a `ClientRequestToken` derived from
//!   the rotation's id and the value's fingerprint, so a retried request is not a second
//!   version). Moving `AWSCURRENT` makes Secrets Manager move `AWSPREVIOUS` to the version it
//!   left, and a version that leaves the slots keeps (or gets) `AWSPREVIOUS`;
//! - a version's state is its labels: `ROTOR_DISABLED` marks the disabled one (so at most one
//!   is disabled at a time), a version without any label is destroyed (Secrets Manager calls it
//!   deprecated and deletes it once the secret holds about 100 versions; there is no API that
//!   deletes one version), any other labelled version is enabled. Secrets Manager has no
//!   unreadable version: a disabled or destroyed value can still be read by whoever names its
//!   `VersionId`; rotor never reads or publishes it;
//! - every label move names the version the label is on now (`RemoveFromVersionId`), which the
//!   server refuses when the label has moved meanwhile: a compare-and-swap, so a slot someone
//!   else moves while rotor sets the slots is a [`StoreError::Conflict`], never overwritten;
//! - bookkeeping is in the secret's **tags** (never a value): `rotor-secret` (the logical secret,
//!   checked against the playbook), `rotor-fp-<VersionId>` (fingerprints, the newest
//!   [`HISTORY`] kept), `rotor-last-rotation` and `rotor-next-rotation`. Tags take no
//!   precondition; the rotation lock is what keeps two rotors from writing them together;
//! - the rotation lock is a second secret beside it, `<name>.rotor-lock`
//!   ([`crate::engine::lock::secret`]).
//!
//! Owns: the client (credential chain, region and `AWS_ENDPOINT_URL` as AWS's own tools read
//! them, TLS through rustls with ring), retries of transient failures (throttling, 5xx, a
//! connection that failed or timed out) under `retry_deadline`, and the mapping of the
//! service's errors to what an operator does next.
//!
//! Must never: put a value in a tag, a label, an error or a log (the service's error text is
//! bounded and redacted, [`super::retry::quoted`]), read a version that is not enabled, or move
//! a label without naming where it is.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::model::rules;
use super::retry::{Backoff, install_crypto, quoted};
use super::{Store, StoreError, StoreSnapshot, VersionInfo, VersionState};
use crate::playbook::AwsStoreSpec;
use crate::secret::{Fingerprint, SecretValue};

/// The primary slot: what every reader of the secret gets by default.
pub const CURRENT: &str = "AWSCURRENT";
/// The new value between T1 and T3.
pub const PENDING: &str = "AWSPENDING";
/// The value before the current one (moved by Secrets Manager with `AWSCURRENT`).
pub const PREVIOUS: &str = "AWSPREVIOUS";
/// The secondary slot.
pub const SECONDARY: &str = "ROTOR_SECONDARY";
/// The disabled version.
pub const DISABLED: &str = "ROTOR_DISABLED";
/// Tag naming the logical secret.
pub const TAG_SECRET: &str = super::keys::SECRET;
/// Prefix of the fingerprint tags.
pub const TAG_FP: &str = super::keys::FP_PREFIX;
/// Tag with the last rotation's end (RFC 3339).
pub const TAG_LAST_ROTATION: &str = super::keys::LAST_ROTATION;
/// Tag with the next due rotation (RFC 3339), from the playbook's `max_age`.
pub const TAG_NEXT_ROTATION: &str = super::keys::NEXT_ROTATION;
/// Fingerprint tags kept (Secrets Manager allows 50 tags; the rest is the owner's).
pub const HISTORY: usize = 20;
/// Most versions read from one listing (Secrets Manager keeps about 100).
const MAX_VERSIONS: usize = 500;
/// Most pages read from one listing (a server that answers empty pages with a next token
/// forever must not hold rotor forever).
const MAX_PAGES: usize = MAX_VERSIONS / 100 + 5;
/// Longest value Secrets Manager takes in `SecretString`.
const MAX_VALUE: usize = 65_536;
/// Connect timeout, and one attempt's timeout (bounded by the retry deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// One failed call, as rotor understands it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The service's error code (`ResourceNotFoundException`), if it answered.
    pub code: Option<String>,
    /// The service's message, bounded and redacted; or what went wrong on the way.
    pub message: String,
    /// HTTP status, if it answered.
    pub status: Option<u16>,
    /// Worth retrying.
    pub transient: bool,
}

impl Failure {
    fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: &SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>,
) -> Failure {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().map(shown_code);
            let transient = status >= 500
                || status == 429
                || matches!(
                    code.as_deref(),
                    Some(
                        "ThrottlingException"
                            | "Throttling"
                            | "ThrottledException"
                            | "RequestThrottledException"
                            | "TooManyRequestsException"
                            | "RequestLimitExceeded"
                            | "RequestTimeout"
                            | "RequestTimeoutException"
                            | "PriorRequestNotComplete"
                            | "TransactionInProgressException"
                            | "InternalServiceError"
                            | "InternalFailure"
                            | "ServiceUnavailable"
                    )
                );
            Failure {
                message: quoted(s.err().message().unwrap_or("no message")),
                code,
                status: Some(status),
                transient,
            }
        }
        SdkError::DispatchFailure(d) => Failure {
            code: None,
            message: quoted(&format!("{}", DisplayErrorContext(e))),
            status: None,
            // A connection refused, reset or closed mid-answer, a timeout: worth another try
            // (every call rotor makes is idempotent: a request token, or a guarded move that a
            // retry after a lost answer finds done). Credentials that cannot be loaded are not.
            transient: d.is_io()
                || d.is_timeout()
                || matches!(
                    d.as_other(),
                    Some(
                        aws_config::retry::ErrorKind::TransientError
                            | aws_config::retry::ErrorKind::ThrottlingError
                            | aws_config::retry::ErrorKind::ServerError
                    )
                ),
        },
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Failure {
            code: None,
            message: quoted(&format!("{}", DisplayErrorContext(e))),
            status: None,
            transient: true,
        },
        _ => Failure {
            code: None,
            message: quoted(&format!("{}", DisplayErrorContext(e))),
            status: None,
            transient: false,
        },
    }
}

/// A service's error code as rotor may quote and match it: the server's text (its `__type` or
/// `x-amzn-errortype`) is untrusted like its message, so a code that does not look like one
/// (at most 64 letters, digits, `.` and `_`, AWS's are names like `ResourceNotFoundException`)
/// is shown by its length only, and one that does is redacted all the same.
fn shown_code(code: &str) -> String {
    let plausible = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if plausible {
        crate::redact::redact(code).into_owned()
    } else {
        format!("<an error code of {} characters>", code.chars().count())
    }
}

/// One version as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ver {
    /// `VersionId`.
    pub id: String,
    /// Its staging labels.
    pub labels: Vec<String>,
    /// When it was added.
    pub created: DateTime<Utc>,
}

impl Ver {
    fn has(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }

    /// Its state, from its labels.
    pub fn state(&self) -> VersionState {
        if self.labels.is_empty() {
            VersionState::Destroyed
        } else if self.has(DISABLED) {
            VersionState::Disabled
        } else {
            VersionState::Enabled
        }
    }
}

/// The secret as read: its versions (oldest first), tags and AWS's own rotation schedule.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every version listed, oldest first.
    pub versions: Vec<Ver>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// `NextRotationDate` when AWS's own rotation is enabled.
    pub aws_next_rotation: Option<DateTime<Utc>>,
}

impl Loaded {
    fn version(&self, id: &str) -> Option<&Ver> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The version carrying `label`.
    pub fn holder(&self, label: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|v| v.has(label))
            .map(|v| v.id.as_str())
    }

    fn tagged_fp(&self, id: &str) -> Option<Fingerprint> {
        self.tags
            .get(&format!("{TAG_FP}{id}"))
            .and_then(|t| Fingerprint::parse(t))
    }

    fn slot_of(&self, id: &str) -> Option<&'static str> {
        let v = self.version(id)?;
        if v.has(CURRENT) {
            Some("primary")
        } else if v.has(SECONDARY) {
            Some("secondary")
        } else {
            None
        }
    }

    /// The fingerprint tags to remove so that at most [`HISTORY`] remain (`keep_room`: room
    /// for that many more): tags of versions no longer listed first, then those of destroyed
    /// versions, oldest first. Tags of labelled versions are kept.
    pub fn history_to_trim(&self, keep_room: usize) -> Vec<String> {
        let fp_keys: Vec<&String> = self.tags.keys().filter(|k| k.starts_with(TAG_FP)).collect();
        let limit = HISTORY.saturating_sub(keep_room);
        let mut drop: Vec<String> = Vec::new();
        let listed = |k: &str| {
            self.version(&k[TAG_FP.len()..])
                .map(|v| (v.state() == VersionState::Destroyed, v.created))
        };
        // Not listed (deleted by AWS, or a tag written before a crash): nothing to remember.
        for k in &fp_keys {
            if listed(k).is_none() {
                drop.push((*k).clone());
            }
        }
        let mut destroyed: Vec<(DateTime<Utc>, &String)> = fp_keys
            .iter()
            .filter_map(|k| match listed(k) {
                Some((true, created)) => Some((created, *k)),
                _ => None,
            })
            .collect();
        destroyed.sort();
        let mut left = fp_keys.len() - drop.len();
        for (_, k) in destroyed {
            if left <= limit {
                break;
            }
            drop.push(k.clone());
            left -= 1;
        }
        drop
    }
}

/// One label move: `label` onto `to` (or off every version), from `from` (where it is now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The staging label.
    pub label: &'static str,
    /// The version it goes to; `None`: removed.
    pub to: Option<String>,
    /// The version it is on now.
    pub from: Option<String>,
}

/// The label moves that put `primary` in the primary slot and `secondary` in the secondary
/// one: `AWSPREVIOUS` onto a version about to lose its only label, then the secondary (so a
/// reader in between still finds both values), then `AWSCURRENT`, then `AWSPENDING` off the
/// new current version.
pub fn slot_moves(l: &Loaded, primary: &str, secondary: Option<&str>) -> Vec<Move> {
    let mut moves = Vec::new();
    let sec_now = l.holder(SECONDARY).map(str::to_string);
    let cur_now = l.holder(CURRENT).map(str::to_string);
    // A version leaving the secondary slot that carries no other label would read as destroyed
    // from its last label's removal until it gets AWSPREVIOUS (a crash in between would leave
    // it so, and the re-run, finding the slots right, would not look at it again): it gets
    // AWSPREVIOUS first. Only when AWSCURRENT stays: a move of AWSCURRENT takes AWSPREVIOUS
    // to the version it leaves (set_slots gives it back afterwards).
    if cur_now.as_deref() == Some(primary)
        && let Some(leaving) = sec_now.as_deref()
        && leaving != primary
        && Some(leaving) != secondary
        && l.version(leaving)
            .is_some_and(|v| v.labels.iter().all(|x| x == SECONDARY))
    {
        moves.push(Move {
            label: PREVIOUS,
            to: Some(leaving.to_string()),
            from: l.holder(PREVIOUS).map(str::to_string),
        });
    }
    if sec_now.as_deref() != secondary {
        moves.push(Move {
            label: SECONDARY,
            to: secondary.map(str::to_string),
            from: sec_now,
        });
    }
    if cur_now.as_deref() != Some(primary) {
        moves.push(Move {
            label: CURRENT,
            to: Some(primary.to_string()),
            from: cur_now,
        });
    }
    if l.version(primary).is_some_and(|v| v.has(PENDING)) {
        moves.push(Move {
            label: PENDING,
            to: None,
            from: Some(primary.to_string()),
        });
    }
    moves
}

/// The `ClientRequestToken` (and so the `VersionId`) of the value with fingerprint `fp` added
/// for `key` (a rotation's id): the same request retried is the same version, another value is
/// another version. Shaped as a UUID, as AWS's own tools make them.
pub fn request_token(secret: &str, key: &str, fp: &Fingerprint) -> String {
    let mut h = Sha256::new();
    h.update(b"rotor/aws-token/v1\0");
    h.update(secret.as_bytes());
    h.update(b"\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(fp.as_str().as_bytes());
    let x = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn time(d: &aws_sdk_secretsmanager::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(d.secs(), d.subsec_nanos())
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A store in one Secrets Manager secret.
pub struct AwsStore {
    spec: AwsStoreSpec,
    logical: String,
    /// Credentials given by the embedder instead of AWS's chain.
    credentials: Option<aws_sdk_secretsmanager::config::Credentials>,
    client: tokio::sync::OnceCell<Client>,
    /// Fingerprints of versions that carried no tag, computed once (a version's value never
    /// changes).
    computed: Mutex<HashMap<String, Fingerprint>>,
}

impl AwsStore {
    /// The store the playbook's `store:` names, for logical secret `secret`.
    pub fn new(spec: &AwsStoreSpec, secret: &str) -> AwsStore {
        AwsStore {
            spec: spec.clone(),
            logical: secret.to_string(),
            credentials: None,
            client: tokio::sync::OnceCell::new(),
            computed: Mutex::new(HashMap::new()),
        }
    }

    /// The same store, signing with these static credentials instead of AWS's chain (for an
    /// embedder that holds its own; the tests use it to reach their server without touching
    /// the process's environment).
    pub fn with_credentials(
        mut self,
        access_key_id: &str,
        secret_access_key: &SecretValue,
    ) -> AwsStore {
        crate::redact::remember(CREDENTIAL, secret_access_key);
        self.credentials = Some(aws_sdk_secretsmanager::config::Credentials::new(
            access_key_id,
            secret_access_key.expose(),
            None,
            None,
            "rotor-embedder",
        ));
        self
    }

    /// The spec this store was opened with.
    pub fn spec(&self) -> &AwsStoreSpec {
        &self.spec
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

    /// The client: credentials, region and endpoint as AWS's own tools find them, overridden
    /// by the playbook's `region`, `profile` and `endpoint_url`.
    async fn client(&self) -> Result<&Client, StoreError> {
        self.client
            .get_or_try_init(|| async {
                install_crypto();
                if let Ok(k) = std::env::var("AWS_SECRET_ACCESS_KEY") {
                    crate::redact::remember(CREDENTIAL, &SecretValue::new(k));
                }
                if let Ok(k) = std::env::var("AWS_SESSION_TOKEN") {
                    crate::redact::remember(CREDENTIAL, &SecretValue::new(k));
                }
                use aws_smithy_http_client::tls;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT.min(self.spec.retry_deadline))
                    .build();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    // rotor retries itself, under `retry_deadline`.
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(timeouts);
                if let Some(r) = &self.spec.region {
                    loader = loader.region(aws_config::Region::new(r.clone()));
                }
                if let Some(p) = &self.spec.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(e) = &self.spec.endpoint_url {
                    loader = loader.endpoint_url(e);
                }
                if let Some(c) = &self.credentials {
                    loader = loader.credentials_provider(c.clone());
                }
                let conf = loader.load().await;
                // An empty AWS_REGION is no region, as for the AWS CLI.
                if conf.region().is_none_or(|r| r.as_ref().trim().is_empty()) {
                    return Err(self.remote(
                        "no region: the playbook gives no `region` and none is configured".into(),
                        "set `region:` in the store (e.g. `region: eu-west-1`), or AWS_REGION, or a region in the AWS profile".into(),
                    ));
                }
                Ok(Client::new(&conf))
            })
            .await
    }

    /// Runs `f` until it succeeds, fails for good, or the retry deadline passes; the failure
    /// unexplained (callers handle the codes they expect, then [`AwsStore::fail`]).
    async fn call<T, E, F, Fut>(&self, what: &str, mut f: F) -> Result<T, (Failure, String)>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<
            Output = Result<T, SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>>,
        >,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let client = match self.client().await {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err((
                    Failure {
                        code: None,
                        message: e.to_string(),
                        status: None,
                        transient: false,
                    },
                    what.to_string(),
                ));
            }
        };
        let mut backoff = Backoff::new(self.spec.retry_deadline);
        loop {
            backoff.attempts += 1;
            let e = match f(client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let failure = classify(&e);
            if failure.transient
                && let Some(wait) = backoff.next()
            {
                tracing::info!(secret = %self.spec.name, call = what, attempt = backoff.attempts,
                    wait = ?wait, "aws: transient error, retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            let mut failure = failure;
            if failure.transient {
                failure.message = format!(
                    "{} (still after {} attempts over {:.1}s)",
                    failure.message,
                    backoff.attempts,
                    backoff.started.elapsed().as_secs_f64()
                );
            }
            return Err((failure, what.to_string()));
        }
    }

    /// The error for the operator.
    fn fail(&self, (f, what): (Failure, String)) -> StoreError {
        let code = f.code.clone().unwrap_or_else(|| {
            f.status
                .map_or_else(|| "no answer".into(), |s| format!("HTTP {s}"))
        });
        let detail = format!("{what} failed ({code}: {})", f.message);
        let help = match f.code.as_deref() {
            Some("AccessDeniedException" | "AccessDenied" | "UnrecognizedClientException") => {
                format!(
                    "grant the caller `secretsmanager:{}` on this secret (docs/aws.md gives the least-privilege IAM policy), or check which credentials rotor found (`aws sts get-caller-identity`)",
                    what.split_whitespace().next().unwrap_or(what.as_str())
                )
            }
            Some("ResourceNotFoundException") => {
                "check `store.name` and `store.region`; `rotor init` creates the secret".into()
            }
            Some("InvalidRequestException") => {
                "if the secret is scheduled for deletion, restore it (`aws secretsmanager restore-secret --secret-id NAME`); `rotor status` shows where the rotation stopped".into()
            }
            _ if f.transient => {
                "check that Secrets Manager is reachable (region, AWS_ENDPOINT_URL, network); `rotor status` shows where the rotation stopped and `rotor resume` continues it".into()
            }
            _ if f.code.is_none() => {
                "check the credentials and the endpoint rotor uses (AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, `store.region`)".into()
            }
            _ => "see the service's message above; `rotor status` shows where the rotation stopped"
                .into(),
        };
        self.remote(detail, help)
    }

    /// `DescribeSecret` of `name` (`what` names it in errors); `None` when it does not exist. A
    /// secret scheduled for deletion is an error saying how to restore it, `or_else` the other
    /// way out.
    async fn describe_secret(
        &self,
        name: &str,
        what: &str,
        or_else: &str,
    ) -> Result<Option<DescribeSecretOutput>, StoreError> {
        let d = match self
            .call("DescribeSecret", |c| {
                c.describe_secret().secret_id(name).send()
            })
            .await
        {
            Ok(d) => d,
            Err((f, _)) if f.is("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        if d.deleted_date().is_some() {
            return Err(self.remote(
                format!("{what} is scheduled for deletion"),
                format!(
                    "restore it (`aws secretsmanager restore-secret --secret-id {name}`), {or_else}"
                ),
            ));
        }
        Ok(Some(d))
    }

    /// The tags of a described secret.
    fn tags_of(d: &DescribeSecretOutput) -> BTreeMap<String, String> {
        d.tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect()
    }

    /// The secret as it is now; `None` when it does not exist.
    async fn try_load(&self, name: &str) -> Result<Option<Loaded>, StoreError> {
        let Some(d) = self
            .describe_secret(
                name,
                &format!("secret {name}"),
                "or choose another `store.name`",
            )
            .await?
        else {
            return Ok(None);
        };
        let tags = Self::tags_of(&d);
        let aws_next_rotation = if d.rotation_enabled() == Some(true) {
            d.next_rotation_date().and_then(time)
        } else {
            None
        };
        let mut versions = Vec::new();
        let mut token: Option<String> = None;
        for pages in 1.. {
            let page = self
                .call("ListSecretVersionIds", |c| {
                    c.list_secret_version_ids()
                        .secret_id(name)
                        .include_deprecated(true)
                        .max_results(100)
                        .set_next_token(token.clone())
                        .send()
                })
                .await
                .map_err(|e| self.fail(e))?;
            for v in page.versions() {
                let Some(id) = v.version_id() else { continue };
                versions.push(Ver {
                    id: id.to_string(),
                    labels: v.version_stages().to_vec(),
                    created: v.created_date().and_then(time).unwrap_or_default(),
                });
            }
            // An empty token is no token (some servers send `""` on the last page).
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() || versions.len() >= MAX_VERSIONS {
                break;
            }
            if pages >= MAX_PAGES {
                return Err(self.remote(
                    format!(
                        "ListSecretVersionIds of {name} did not end after {pages} pages ({} versions)",
                        versions.len()
                    ),
                    "check that `store.endpoint_url` (or AWS_ENDPOINT_URL) is Secrets Manager; it keeps about 100 versions per secret".into(),
                ));
            }
        }
        // Oldest first; the listing's order breaks ties (two versions in one second).
        versions.sort_by_key(|v| v.created);
        Ok(Some(Loaded {
            versions,
            tags,
            aws_next_rotation,
        }))
    }

    /// The store's secret, checked to be this playbook's.
    async fn load(&self) -> Result<Loaded, StoreError> {
        let Some(l) = self.try_load(&self.spec.name).await? else {
            return Err(StoreError::Missing {
                store: self.describe(),
            });
        };
        match l.tags.get(TAG_SECRET) {
            Some(s) if *s == self.logical => {}
            Some(s) => {
                return Err(self.corrupt(format!(
                    "its tag {TAG_SECRET} names another secret ({} characters) than the one the playbook names, `{}`",
                    s.chars().count(),
                    self.logical
                )));
            }
            None => {
                return Err(self.remote(
                    format!("secret {} has no tag {TAG_SECRET}: rotor did not create it", self.spec.name),
                    format!("to let rotor rotate it, tag it (`aws secretsmanager tag-resource --secret-id {} --tags Key={TAG_SECRET},Value={}`); rotor then adopts its current version", self.spec.name, self.logical),
                ));
            }
        }
        if l.holder(CURRENT).is_none() {
            return Err(self.corrupt("no version carries AWSCURRENT"));
        }
        Ok(l)
    }

    /// Reads version `id`'s value (whatever rotor thinks of its state).
    async fn get_value(&self, id: &str) -> Result<SecretValue, StoreError> {
        self.get_text(&self.spec.name, id).await
    }

    /// Reads version `id` of secret `name`.
    async fn get_text(&self, name: &str, id: &str) -> Result<SecretValue, StoreError> {
        let out = self
            .call("GetSecretValue", |c| {
                c.get_secret_value().secret_id(name).version_id(id).send()
            })
            .await
            .map_err(|e| self.fail(e))?;
        match out.secret_string() {
            Some(s) if s.len() <= MAX_VALUE => Ok(SecretValue::new(s.to_string())),
            Some(_) => Err(self.corrupt(format!("version {id} holds more than {MAX_VALUE} bytes"))),
            None => Err(self.corrupt(format!(
                "version {id} holds a binary value (SecretBinary); rotor keeps text values"
            ))),
        }
    }

    /// Version `v`'s fingerprint: its tag, or computed from its value once.
    async fn fingerprint(&self, l: &Loaded, v: &Ver) -> Result<Option<Fingerprint>, StoreError> {
        if let Some(fp) = l.tagged_fp(&v.id) {
            return Ok(Some(fp));
        }
        if let Some(fp) = self.computed.lock().expect("fp cache").get(&v.id) {
            return Ok(Some(fp.clone()));
        }
        // A destroyed version whose tag was trimmed is out of the history.
        if v.state() == VersionState::Destroyed {
            return Ok(None);
        }
        let fp = self.get_value(&v.id).await?.fingerprint(&self.logical);
        self.computed
            .lock()
            .expect("fp cache")
            .insert(v.id.clone(), fp.clone());
        Ok(Some(fp))
    }

    /// Applies one label move, guarded by where the label is now. A refusal is re-read: the
    /// label already where it should be (a retried request) is success, anywhere else is a
    /// conflict.
    pub async fn move_label(&self, m: &Move) -> Result<(), StoreError> {
        let r = self
            .call("UpdateSecretVersionStage", |c| {
                c.update_secret_version_stage()
                    .secret_id(&self.spec.name)
                    .version_stage(m.label)
                    .set_move_to_version_id(m.to.clone())
                    .set_remove_from_version_id(m.from.clone())
                    .send()
            })
            .await;
        let f = match r {
            Ok(_) => return Ok(()),
            Err(e) if e.0.is("InvalidParameterException") || e.0.is("InvalidRequestException") => e,
            Err(e) => return Err(self.fail(e)),
        };
        let now = self.load().await?;
        if now.holder(m.label) == m.to.as_deref() {
            return Ok(());
        }
        if now.holder(m.label) != m.from.as_deref() {
            return Err(StoreError::Conflict {
                store: self.describe(),
                detail: format!(
                    "the label {} moved while rotor was moving it (it expected it on {})",
                    m.label,
                    m.from.as_deref().unwrap_or("no version")
                ),
            });
        }
        Err(self.fail(f))
    }

    /// Writes `tags`, after removing `drop`.
    async fn retag(
        &self,
        drop: Vec<String>,
        tags: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        if !drop.is_empty() {
            self.call("UntagResource", |c| {
                c.untag_resource()
                    .secret_id(&self.spec.name)
                    .set_tag_keys(Some(drop.clone()))
                    .send()
            })
            .await
            .map_err(|e| self.fail(e))?;
        }
        if !tags.is_empty() {
            let tags: Vec<Tag> = tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            self.call("TagResource", |c| {
                c.tag_resource()
                    .secret_id(&self.spec.name)
                    .set_tags(Some(tags.clone()))
                    .send()
            })
            .await
            .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Puts a version holding `value` (token derived from `key`), `AWSPENDING` on it.
    async fn put(&self, value: &SecretValue, key: &str) -> Result<VersionInfo, StoreError> {
        check_len(self, value)?;
        let l = self.load().await?;
        let fp = value.fingerprint(&self.logical);
        let token = request_token(&self.logical, key, &fp);
        // The fingerprint is recorded before the version exists, so a crash in between leaves
        // a tag (trimmed later), never a version rotor cannot name.
        self.retag(
            l.history_to_trim(1),
            vec![(format!("{TAG_FP}{token}"), fp.as_str().to_string())],
        )
        .await?;
        let r = self
            .call("PutSecretValue", |c| {
                c.put_secret_value()
                    .secret_id(&self.spec.name)
                    .client_request_token(&token)
                    .secret_string(value.expose())
                    .version_stages(PENDING)
                    .send()
            })
            .await;
        let id = match r {
            Ok(out) => out.version_id().unwrap_or(&token).to_string(),
            Err((f, _)) if f.is("ResourceExistsException") => {
                return Err(StoreError::Conflict {
                    store: self.describe(),
                    detail: format!(
                        "version {token} exists with another value (request token reused)"
                    ),
                });
            }
            Err(e) => return Err(self.fail(e)),
        };
        let created = self
            .load()
            .await?
            .version(&id)
            .map_or_else(Utc::now, |v| v.created);
        Ok(VersionInfo {
            id,
            fingerprint: fp,
            state: VersionState::Enabled,
            created_at: created,
        })
    }

    /// The lock secret's name.
    fn lock_name(&self) -> String {
        format!("{}{}", self.spec.name, crate::playbook::AWS_LOCK_SUFFIX)
    }

    /// `aws:<region>/<name>.rotor-lock`.
    pub fn lock_describe(&self) -> String {
        format!(
            "aws:{}/{}",
            self.spec.region.as_deref().unwrap_or("(default region)"),
            self.lock_name()
        )
    }

    /// The lock secret as it is now; `None` when there is none.
    pub async fn lock_state(&self) -> Result<Option<LockState>, StoreError> {
        let name = self.lock_name();
        let Some((current, free, tags)) = self.describe_lock(&name).await? else {
            return Ok(None);
        };
        let text = if free.as_deref() == Some(current.as_str()) {
            None
        } else {
            match self.get_text(&name, &current).await {
                Ok(v) => Some(v.expose().to_string()),
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            }
        };
        Ok(Some(LockState {
            current,
            text,
            free,
            tags,
        }))
    }

    /// The version of `name` carrying `AWSCURRENT`, the one carrying `ROTOR_LOCK_FREE` and the
    /// tags; `None` when `name` does not exist.
    async fn describe_lock(&self, name: &str) -> Result<Option<DescribedLock>, StoreError> {
        let Some(d) = self
            .describe_secret(
                name,
                &format!("the lock secret {name}"),
                &format!("or delete it for good (`aws secretsmanager delete-secret --secret-id {name} --force-delete-without-recovery`) when no rotor runs"),
            )
            .await?
        else {
            return Ok(None);
        };
        let holder = |label: &str| {
            d.version_ids_to_stages().and_then(|m| {
                m.iter()
                    .find(|(_, labels)| labels.iter().any(|l| l == label))
                    .map(|(id, _)| id.clone())
            })
        };
        let tags = Self::tags_of(&d);
        match holder(CURRENT) {
            Some(id) => Ok(Some((id, holder(LOCK_FREE), tags))),
            // A lock secret created beforehand without a value (docs/aws.md lets an operator
            // create both secrets) has no version at all: say how to give it one.
            None => Err(self.remote(
                format!("the lock secret {name} has no AWSCURRENT version (it was created without a value)"),
                format!("give it a free lock as its first value (`aws secretsmanager put-secret-value --secret-id {name} --secret-string '{{\"holder\":\"\"}}'`)"),
            )),
        }
    }

    /// The version of `name` carrying `AWSCURRENT`; `None` when `name` does not exist.
    async fn current_of(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.describe_lock(name).await?.map(|(c, _, _)| c))
    }

    /// Moves the lock secret's `AWSCURRENT` from `from` to `to`, guarded by `from`: `false`
    /// when it was not on `from` any more (someone wrote in between).
    pub async fn lock_move(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let name = self.lock_name();
        let r = self
            .call("UpdateSecretVersionStage", |c| {
                c.update_secret_version_stage()
                    .secret_id(&name)
                    .version_stage(CURRENT)
                    .move_to_version_id(to)
                    .remove_from_version_id(from)
                    .send()
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err((f, what))
                if f.is("InvalidParameterException") || f.is("InvalidRequestException") =>
            {
                match self.current_of(&name).await? {
                    Some(now) if now == to => Ok(true),
                    Some(now) if now != from => Ok(false),
                    _ => Err(self.fail((f, what))),
                }
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The lock secret's free version (`{"holder":""}`, labelled `ROTOR_LOCK_FREE` for good so
    /// Secrets Manager never counts it deprecated): the one there is, or a new one.
    pub async fn lock_free(&self) -> Result<String, StoreError> {
        let name = self.lock_name();
        if let Some((_, Some(free), _)) = self.describe_lock(&name).await? {
            return Ok(free);
        }
        let token = random_token();
        Ok(self
            .call("PutSecretValue", |c| {
                c.put_secret_value()
                    .secret_id(&name)
                    .client_request_token(&token)
                    .secret_string("{\"holder\":\"\"}")
                    .version_stages(LOCK_FREE)
                    .send()
            })
            .await
            .map_err(|e| self.fail(e))?
            .version_id()
            .unwrap_or(&token)
            .to_string())
    }

    /// Sets tags on the lock secret (a renewal: no new version).
    pub async fn lock_tag(&self, tags: Vec<(String, String)>) -> Result<(), StoreError> {
        let name = self.lock_name();
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        self.call("TagResource", |c| {
            c.tag_resource()
                .secret_id(&name)
                .set_tags(Some(tags.clone()))
                .send()
        })
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Writes the lock secret's next version holding `text`, guarded by `prev` (the version
    /// read; `None`: creates the secret). `Ok(None)`: someone wrote in between.
    pub async fn lock_write(
        &self,
        prev: Option<&str>,
        text: &str,
    ) -> Result<Option<String>, StoreError> {
        let name = self.lock_name();
        let token = random_token();
        let Some(prev) = prev else {
            let r = self
                .call("CreateSecret", |c| {
                    c.create_secret()
                        .name(&name)
                        .client_request_token(&token)
                        .secret_string(text)
                        .description(format!(
                            "rotor's rotation lock for {} (who holds it; never a value)",
                            self.spec.name
                        ))
                        .send()
                })
                .await;
            return match r {
                Ok(out) => Ok(Some(out.version_id().unwrap_or(&token).to_string())),
                Err((f, _)) if f.is("ResourceExistsException") => Ok(None),
                Err(e) => Err(self.fail(e)),
            };
        };
        let id = self
            .call("PutSecretValue", |c| {
                c.put_secret_value()
                    .secret_id(&name)
                    .client_request_token(&token)
                    .secret_string(text)
                    .version_stages(LOCK_NEXT)
                    .send()
            })
            .await
            .map_err(|e| self.fail(e))?
            .version_id()
            .unwrap_or(&token)
            .to_string();
        Ok(self.lock_move(prev, &id).await?.then_some(id))
    }

    /// The store's current state of `id` and the slot it is in.
    fn state_of<'l>(l: &'l Loaded, id: &str) -> (Option<VersionState>, Option<&'l str>) {
        (l.version(id).map(Ver::state), l.slot_of(id))
    }
}

/// The label on a lock version being written, until it becomes `AWSCURRENT`.
const LOCK_NEXT: &str = "ROTOR_LOCK_NEXT";
/// The label that keeps the lock secret's free version for good.
const LOCK_FREE: &str = "ROTOR_LOCK_FREE";

/// The lock secret's current version, its free one and its tags.
type DescribedLock = (String, Option<String>, BTreeMap<String, String>);

/// The lock secret as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// The version carrying `AWSCURRENT`: the claim in force.
    pub current: String,
    /// Its content (`None`: the free version, or unreadable).
    pub text: Option<String>,
    /// The version carrying `ROTOR_LOCK_FREE`, once there is one.
    pub free: Option<String>,
    /// The lock secret's tags (a claim's renewals).
    pub tags: BTreeMap<String, String>,
}

/// A fresh `ClientRequestToken` (a random UUID-shaped string).
fn random_token() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Refuses a value Secrets Manager would not take.
fn check_len(store: &AwsStore, value: &SecretValue) -> Result<(), StoreError> {
    if value.expose().len() > MAX_VALUE {
        return Err(StoreError::Refused {
            store: store.describe(),
            detail: format!("the value is longer than Secrets Manager's {MAX_VALUE} bytes"),
        });
    }
    Ok(())
}

/// The name credentials are fingerprinted under when redacted.
const CREDENTIAL: &str = "aws-credential";

#[async_trait]
impl Store for AwsStore {
    fn describe(&self) -> String {
        let region = self.spec.region.as_deref().unwrap_or("(default region)");
        format!("aws:{region}/{}", self.spec.name)
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        Ok(self.try_load(&self.spec.name).await?.is_some())
    }

    async fn init(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        check_len(self, value)?;
        let fp = value.fingerprint(&self.logical);
        let token = request_token(&self.logical, "init", &fp);
        let tags = [
            (TAG_SECRET.to_string(), self.logical.clone()),
            (format!("{TAG_FP}{token}"), fp.as_str().to_string()),
        ]
        .map(|(k, v)| Tag::builder().key(k).value(v).build());
        let r = self
            .call("CreateSecret", |c| {
                c.create_secret()
                    .name(&self.spec.name)
                    .client_request_token(&token)
                    .secret_string(value.expose())
                    .description(format!(
                        "{} (rotated by rotor: slots are staging labels, see docs/aws.md)",
                        self.logical
                    ))
                    .set_tags(Some(tags.to_vec()))
                    .send()
            })
            .await;
        match r {
            Ok(_) => {}
            Err((f, _)) if f.is("ResourceExistsException") => {
                return Err(StoreError::Refused {
                    store: self.describe(),
                    detail: "the secret exists already; `rotor init` creates a new one only".into(),
                });
            }
            Err(e) => return Err(self.fail(e)),
        }
        let l = self.load().await?;
        let v = l
            .holder(CURRENT)
            .and_then(|id| l.version(id))
            .ok_or_else(|| self.corrupt("the new secret has no AWSCURRENT version"))?;
        Ok(VersionInfo {
            id: v.id.clone(),
            fingerprint: fp,
            state: VersionState::Enabled,
            created_at: v.created,
        })
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let l = self.load().await?;
        let mut versions = Vec::new();
        for v in &l.versions {
            if let Some(fingerprint) = self.fingerprint(&l, v).await? {
                versions.push(VersionInfo {
                    id: v.id.clone(),
                    fingerprint,
                    state: v.state(),
                    created_at: v.created,
                });
            }
        }
        Ok(StoreSnapshot {
            versions,
            primary: l.holder(CURRENT).map(str::to_string),
            secondary: l.holder(SECONDARY).map(str::to_string),
        })
    }

    async fn read_value(&self, version: &str) -> Result<SecretValue, StoreError> {
        let l = self.load().await?;
        let Some(v) = l.version(version) else {
            return Err(StoreError::NoSuchVersion {
                store: self.describe(),
                version: version.into(),
            });
        };
        if v.state() != VersionState::Enabled {
            return Err(StoreError::NotReadable {
                store: self.describe(),
                version: version.into(),
                state: v.state(),
            });
        }
        let value = self.get_value(version).await?;
        crate::redact::remember(&self.logical, &value);
        if let Some(fp) = l.tagged_fp(version)
            && fp != value.fingerprint(&self.logical)
        {
            return Err(self.corrupt(format!(
                "version {version} does not match its fingerprint {fp} (tag {TAG_FP}{version})"
            )));
        }
        Ok(value)
    }

    async fn add_version(&self, value: &SecretValue) -> Result<VersionInfo, StoreError> {
        self.put(value, "add").await
    }

    async fn add_version_for(
        &self,
        value: &SecretValue,
        rotation: &str,
    ) -> Result<VersionInfo, StoreError> {
        self.put(value, rotation).await
    }

    async fn set_slots(&self, primary: &str, secondary: Option<&str>) -> Result<(), StoreError> {
        rules::distinct_slots(&self.describe(), primary, secondary)?;
        let l = self.load().await?;
        for id in std::iter::once(primary).chain(secondary) {
            rules::slot_target(&self.describe(), id, l.version(id).map(Ver::state))?;
        }
        let leaving: Vec<String> = [l.holder(CURRENT), l.holder(SECONDARY)]
            .into_iter()
            .flatten()
            .filter(|id| *id != primary && Some(*id) != secondary)
            .map(str::to_string)
            .collect();
        let moves = slot_moves(&l, primary, secondary);
        if moves.is_empty() {
            return Ok(());
        }
        for m in &moves {
            self.move_label(m).await?;
        }
        // A version that left the slots is the previous value, not a destroyed one: it keeps
        // AWSPREVIOUS (Secrets Manager moves it there with AWSCURRENT) or gets it.
        let l = self.load().await?;
        for id in leaving {
            if l.version(&id).is_some_and(|v| v.labels.is_empty()) {
                self.move_label(&Move {
                    label: PREVIOUS,
                    to: Some(id),
                    from: l.holder(PREVIOUS).map(str::to_string),
                })
                .await?;
                break;
            }
        }
        Ok(())
    }

    async fn set_state(&self, version: &str, state: VersionState) -> Result<(), StoreError> {
        let l = self.load().await?;
        let (current, in_slot) = Self::state_of(&l, version);
        if !rules::state_change(&self.describe(), version, current, in_slot, state)? {
            return Ok(());
        }
        let v = l.version(version).expect("state_change found it");
        match state {
            VersionState::Disabled => {
                if let Some(other) = l.holder(DISABLED) {
                    return Err(StoreError::Refused {
                        store: self.describe(),
                        detail: format!(
                            "version {other} is disabled already, and Secrets Manager marks one version with a label ({DISABLED}): destroy or enable it first"
                        ),
                    });
                }
                // A version rotor did not add (an adopted secret's first value) has no
                // fingerprint tag: record it while the version is still enabled, so no later
                // run reads a disabled value to learn it, and the history keeps it once
                // destroyed.
                if l.tagged_fp(version).is_none()
                    && let Some(fp) = self.fingerprint(&l, v).await?
                {
                    self.retag(
                        l.history_to_trim(1),
                        vec![(format!("{TAG_FP}{version}"), fp.as_str().to_string())],
                    )
                    .await?;
                }
                self.move_label(&Move {
                    label: DISABLED,
                    to: Some(version.to_string()),
                    from: None,
                })
                .await
            }
            VersionState::Enabled => {
                if v.labels.iter().all(|l| l == DISABLED) {
                    return Err(StoreError::Refused {
                        store: self.describe(),
                        detail: format!(
                            "version {version} carries no label but {DISABLED}: enabling it would leave it without any, which Secrets Manager treats as deprecated"
                        ),
                    });
                }
                self.move_label(&Move {
                    label: DISABLED,
                    to: None,
                    from: Some(version.to_string()),
                })
                .await
            }
            VersionState::Destroyed => {
                // Every label off it, ROTOR_DISABLED last: a crash in between leaves it
                // disabled, and the re-run finishes.
                let mut labels: Vec<String> = v.labels.clone();
                labels.sort_by_key(|l| l == DISABLED);
                for label in labels {
                    let r = self
                        .call("UpdateSecretVersionStage", |c| {
                            c.update_secret_version_stage()
                                .secret_id(&self.spec.name)
                                .version_stage(&label)
                                .remove_from_version_id(version)
                                .send()
                        })
                        .await;
                    if let Err(e) = r {
                        let now = self.load().await?;
                        if now.version(version).is_some_and(|v| !v.has(&label)) {
                            continue;
                        }
                        return Err(self.fail(e));
                    }
                }
                Ok(())
            }
        }
    }

    async fn next_rotation(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let l = self.load().await?;
        let ours = l.tags.get(TAG_NEXT_ROTATION).and_then(|t| parse_time(t));
        Ok(match (ours, l.aws_next_rotation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn rotation_finished(&self, next_due: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        let mut tags = vec![(TAG_LAST_ROTATION.to_string(), Utc::now().to_rfc3339())];
        let mut drop = Vec::new();
        match next_due {
            Some(t) => tags.push((TAG_NEXT_ROTATION.to_string(), t.to_rfc3339())),
            None => drop.push(TAG_NEXT_ROTATION.to_string()),
        }
        self.retag(drop, tags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn ver(id: &str, labels: &[&str], at: &str) -> Ver {
        Ver {
            id: id.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            created: t(at),
        }
    }

    #[test]
    fn states_come_from_labels() {
        assert_eq!(
            ver("a", &[CURRENT], "2026-01-01T00:00:00Z").state(),
            VersionState::Enabled
        );
        assert_eq!(
            ver("a", &[PREVIOUS, DISABLED], "2026-01-01T00:00:00Z").state(),
            VersionState::Disabled
        );
        assert_eq!(
            ver("a", &[], "2026-01-01T00:00:00Z").state(),
            VersionState::Destroyed
        );
    }

    #[test]
    fn slot_moves_name_where_each_label_is_and_move_the_secondary_first() {
        // S1 -> S3 (T3): B becomes current, A secondary.
        let l = Loaded {
            versions: vec![
                ver("a", &[CURRENT], "2026-01-01T00:00:00Z"),
                ver("b", &[PENDING, SECONDARY], "2026-01-02T00:00:00Z"),
            ],
            ..Default::default()
        };
        let m = slot_moves(&l, "b", Some("a"));
        assert_eq!(
            m,
            vec![
                Move {
                    label: SECONDARY,
                    to: Some("a".into()),
                    from: Some("b".into())
                },
                Move {
                    label: CURRENT,
                    to: Some("b".into()),
                    from: Some("a".into())
                },
                Move {
                    label: PENDING,
                    to: None,
                    from: Some("b".into())
                },
            ]
        );
        // Already there: nothing to do.
        assert!(slot_moves(&l, "a", Some("b")).is_empty());
        // T4: the secondary slot emptied.
        let m = slot_moves(&l, "a", None);
        assert_eq!(
            m,
            vec![Move {
                label: SECONDARY,
                to: None,
                from: Some("b".into())
            }]
        );
    }

    #[test]
    fn a_version_leaving_the_secondary_slot_with_no_other_label_gets_awsprevious_first() {
        // T4 where A lost AWSPREVIOUS (another writer moved it): A must never be label-less,
        // not even between two calls.
        let l = Loaded {
            versions: vec![
                ver("x", &[PREVIOUS], "2026-01-01T00:00:00Z"),
                ver("a", &[SECONDARY], "2026-01-02T00:00:00Z"),
                ver("b", &[CURRENT], "2026-01-03T00:00:00Z"),
            ],
            ..Default::default()
        };
        assert_eq!(
            slot_moves(&l, "b", None),
            vec![
                Move {
                    label: PREVIOUS,
                    to: Some("a".into()),
                    from: Some("x".into())
                },
                Move {
                    label: SECONDARY,
                    to: None,
                    from: Some("a".into())
                },
            ]
        );
        // The usual T4 (A kept AWSPREVIOUS from T3): nothing more than the secondary.
        let l = Loaded {
            versions: vec![
                ver("a", &[PREVIOUS, SECONDARY], "2026-01-02T00:00:00Z"),
                ver("b", &[CURRENT], "2026-01-03T00:00:00Z"),
            ],
            ..Default::default()
        };
        assert_eq!(
            slot_moves(&l, "b", None),
            vec![Move {
                label: SECONDARY,
                to: None,
                from: Some("a".into())
            }]
        );
        // T1's inverse: B keeps AWSPENDING, so it needs nothing either.
        let l = Loaded {
            versions: vec![
                ver("a", &[CURRENT], "2026-01-02T00:00:00Z"),
                ver("b", &[PENDING, SECONDARY], "2026-01-03T00:00:00Z"),
            ],
            ..Default::default()
        };
        assert_eq!(slot_moves(&l, "a", None).len(), 1);
    }

    #[test]
    fn error_codes_are_shown_only_when_they_look_like_codes_and_redacted_even_then() {
        assert_eq!(
            shown_code("ResourceNotFoundException"),
            "ResourceNotFoundException"
        );
        assert_eq!(shown_code("aws.Throttling"), "aws.Throttling");
        let long = format!("{}{}", "x".repeat(100), " value");
        assert_eq!(shown_code(&long), "<an error code of 106 characters>");
        let v = SecretValue::new("CodeShapedValue0123456789abcdefXYZ".into());
        crate::redact::remember("s", &v);
        let shown = shown_code(v.expose());
        assert!(!shown.contains(v.expose()), "{shown}");
    }

    /// A Secrets Manager endpoint on loopback whose answer to each call (by its
    /// `X-Amz-Target`, e.g. `secretsmanager.DescribeSecret`) is `answer`'s: status and JSON
    /// body.
    async fn fake_endpoint(answer: fn(&str) -> (u16, String)) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let (status, body) = answer(&target);
            axum::response::Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .body(axum::body::Body::from(body))
                .unwrap()
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn store_at(endpoint: &str) -> AwsStore {
        let mut spec = AwsStoreSpec::new("s");
        spec.region = Some("eu-west-1".into());
        spec.endpoint_url = Some(endpoint.into());
        spec.retry_deadline = Duration::from_secs(2);
        AwsStore::new(&spec, "s").with_credentials(
            "testing",
            &SecretValue::new("testing-secret-access-key-0123".into()),
        )
    }

    const ECHOED: &str = "echoed-value-in-an-error-type-0123456789";

    #[tokio::test]
    async fn an_error_code_that_echoes_a_value_never_reaches_the_error() {
        crate::redact::remember("s", &SecretValue::new(ECHOED.into()));
        let endpoint = fake_endpoint(|_| {
            let code = format!("{ECHOED}{}", "y".repeat(5000));
            (
                400,
                serde_json::json!({"__type": code, "message": "no"}).to_string(),
            )
        })
        .await;
        let err = store_at(&endpoint)
            .snapshot()
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains(ECHOED), "{err}");
        assert!(err.chars().count() < 1000, "{err}");
        // A code shaped like one that is a value rotor knows: redacted.
        let endpoint = fake_endpoint(|_| {
            let code = ECHOED.replace('-', "");
            (
                400,
                serde_json::json!({"__type": code, "message": "no"}).to_string(),
            )
        })
        .await;
        crate::redact::remember("s", &SecretValue::new(ECHOED.replace('-', "")));
        let err = store_at(&endpoint)
            .snapshot()
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&ECHOED.replace('-', "")), "{err}");
    }

    #[tokio::test]
    async fn a_listing_that_never_ends_is_an_error_not_a_hang() {
        let endpoint = fake_endpoint(|target| match target {
            "secretsmanager.DescribeSecret" => (
                200,
                serde_json::json!({
                    "Name": "s",
                    "Tags": [{"Key": TAG_SECRET, "Value": "s"}],
                })
                .to_string(),
            ),
            _ => (
                200,
                serde_json::json!({"Versions": [], "NextToken": "more"}).to_string(),
            ),
        })
        .await;
        let r = tokio::time::timeout(Duration::from_secs(30), store_at(&endpoint).snapshot())
            .await
            .expect("the listing ends");
        let err = r.unwrap_err().to_string();
        assert!(err.contains("did not end after"), "{err}");
    }

    #[tokio::test]
    async fn the_retryable_codes_aws_lists_are_retried() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REFUSED: AtomicUsize = AtomicUsize::new(0);
        let endpoint = fake_endpoint(|target| match target {
            "secretsmanager.DescribeSecret" if REFUSED.fetch_add(1, Ordering::SeqCst) < 2 => (
                400,
                serde_json::json!({"__type": "PriorRequestNotComplete", "message": "wait"})
                    .to_string(),
            ),
            "secretsmanager.DescribeSecret" => (
                200,
                serde_json::json!({"Name": "s", "Tags": [{"Key": TAG_SECRET, "Value": "s"}]})
                    .to_string(),
            ),
            "secretsmanager.ListSecretVersionIds" => (
                200,
                serde_json::json!({"Versions": [
                    {"VersionId": "v1", "VersionStages": [CURRENT], "CreatedDate": 1.7e9}
                ]})
                .to_string(),
            ),
            _ => (
                200,
                serde_json::json!({"Name": "s", "VersionId": "v1",
                    "SecretString": "the-current-value-0123456789abcdef"})
                .to_string(),
            ),
        })
        .await;
        let snap = store_at(&endpoint).snapshot().await.unwrap();
        assert_eq!(snap.primary.as_deref(), Some("v1"));
        assert_eq!(REFUSED.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn tokens_are_stable_per_rotation_and_value_and_shaped_like_uuids() {
        let a = SecretValue::new("a-value-of-some-length-0123456789".into()).fingerprint("s");
        let b = SecretValue::new("b-value-of-some-length-0123456789".into()).fingerprint("s");
        let t1 = request_token("s", "r-1", &a);
        assert_eq!(t1, request_token("s", "r-1", &a));
        assert_ne!(t1, request_token("s", "r-2", &a));
        assert_ne!(t1, request_token("s", "r-1", &b));
        assert_eq!(t1.len(), 36);
        assert_eq!(t1.matches('-').count(), 4);
    }

    #[test]
    fn the_history_keeps_labelled_versions_and_the_newest_destroyed() {
        let mut versions = vec![ver("cur", &[CURRENT], "2026-02-01T00:00:00Z")];
        let mut tags = BTreeMap::new();
        tags.insert(format!("{TAG_FP}cur"), "sha256:000000000000".to_string());
        tags.insert(format!("{TAG_FP}gone"), "sha256:000000000001".to_string());
        for i in 0..25 {
            let id = format!("old{i:02}");
            versions.push(ver(&id, &[], &format!("2026-01-{:02}T00:00:00Z", i + 1)));
            tags.insert(format!("{TAG_FP}{id}"), "sha256:000000000002".to_string());
        }
        let l = Loaded {
            versions,
            tags,
            aws_next_rotation: None,
        };
        let drop = l.history_to_trim(1);
        // 27 tags, room for one more within 20: 8 go; the unlisted one first, then the
        // oldest destroyed; the current one's never.
        assert_eq!(drop.len(), 8, "{drop:?}");
        assert_eq!(drop[0], format!("{TAG_FP}gone"));
        assert_eq!(drop[1], format!("{TAG_FP}old00"));
        assert!(!drop.contains(&format!("{TAG_FP}cur")));
        assert!(!drop.contains(&format!("{TAG_FP}old24")));
    }
}
