//! The demo fleet's HTTP service: a real consumer process that validates and signs with the
//! shared secret.
//!
//! Owns: reading the slots from the environment variables it is told about, or, when
//! `ROTOR_SECRETS_DIR` is set, from the files of that directory named like them (re-read on
//! SIGHUP and whenever they change, Kubernetes' `..data` symlink layout included), accepting a
//! value in a header or as the key of a bearer HS256 JWT (`/api/ping`), reporting
//! the fingerprints it holds (`/fingerprints`), calling a peer with what it sends
//! (`/relay/{peer}`), and a graceful shutdown on SIGTERM/SIGINT. Must never: print, log or
//! answer with a value or a token; only fingerprints.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::{Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use rotor_secret::jwt;
use rotor_secret::secret::{Fingerprint, SecretValue};

/// Lifetime of the tokens a relay mints.
const RELAY_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Deadline of one call to a peer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shutdown waits for in-flight requests before giving up on them.
const DRAIN_CAP: Duration = Duration::from_secs(10);
/// How often the files of `ROTOR_SECRETS_DIR` are checked for a change.
const FILES_POLL: Duration = Duration::from_millis(200);
/// Largest value file read (a value is at most 4096 characters).
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// The symlink Kubernetes swaps to update a Secret volume at once.
const DATA_LINK: &str = "..data";

/// Arguments of the demo service (`rotor demo-service …`, `rotor-demo-service …`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Consumer name, used in log lines and reported by /fingerprints.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    pub name: String,
    /// Secret name the fingerprints are computed for.
    #[arg(long, value_name = "NAME", default_value = "service-secret")]
    pub secret_name: String,
    /// Environment variable holding the primary value (required, non-empty); with
    /// `ROTOR_SECRETS_DIR`, the name of its file there.
    #[arg(long, value_name = "NAME", default_value = "SERVICE_SECRET")]
    pub primary_env: String,
    /// Environment variable holding the secondary value (optional); with `ROTOR_SECRETS_DIR`,
    /// the name of its file there.
    #[arg(long, value_name = "NAME", default_value = "SERVICE_SECRET_PREVIOUS")]
    pub secondary_env: String,
    /// Another variable that must hold the same value as the primary (repeatable); reported
    /// by /fingerprints so drift between names shows.
    #[arg(long = "alias-env", value_name = "NAME")]
    pub alias_env: Vec<String>,
    /// Header that carries the value, in /api/ping and in header-mode relays.
    #[arg(long, value_name = "NAME", default_value = "X-Service-Secret")]
    pub header: String,
    /// A peer this instance can call through /relay/NAME, as NAME=header or NAME=jwt
    /// (repeatable). Its instances are read from $ROTOR_FLEET_DIR/NAME/endpoints.json.
    #[arg(long = "peer", value_name = "NAME=MODE", value_parser = parse_peer)]
    pub peer: Vec<Peer>,
    /// For tests and rehearsals: a file read on every `/api/ping`; while it holds a fault
    /// (`reject-all`, `accept-all`, `two-keys`: rejects everything while it holds a secondary,
    /// `two-keys-open`: accepts anything while it holds a secondary, `leak`: every relay fails
    /// with an error page quoting the instance's own primary) the instance misbehaves
    /// that way. `{instance}` in the path stands for `$ROTOR_INSTANCE` (repeatable).
    #[arg(long = "fault-file", value_name = "PATH", hide = true)]
    pub fault_file: Vec<String>,
}

/// A misbehaviour a rehearsal asks for (see `--fault-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Rejects every value.
    RejectAll,
    /// Accepts every value (fails open).
    AcceptAll,
    /// Rejects every value while it holds two (a broken two-key branch).
    TwoKeys,
    /// Accepts every value while it holds two.
    TwoKeysOpen,
    /// Every relay fails with an error page (and a header) that quote this instance's own
    /// primary: a peer that leaks the value it holds.
    Leak,
}

impl Fault {
    fn parse(text: &str) -> Option<Fault> {
        Some(match text.trim() {
            "reject-all" => Fault::RejectAll,
            "accept-all" => Fault::AcceptAll,
            "two-keys" => Fault::TwoKeys,
            "two-keys-open" => Fault::TwoKeysOpen,
            "leak" => Fault::Leak,
            _ => return None,
        })
    }
}

/// How this instance presents its primary to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// The value in the `--header` header.
    Header,
    /// `Authorization: Bearer <HS256 JWT signed with the value>`.
    Jwt,
}

/// A `--peer NAME=MODE` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer consumer's name (its directory under `$ROTOR_FLEET_DIR`).
    pub name: String,
    /// How to call it.
    pub mode: PeerMode,
}

fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=MODE (MODE header or jwt), got `{s}`"))?;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(format!(
            "peer name `{name}` must be non-empty letters, digits, `-` or `_`"
        ));
    }
    let mode = match mode {
        "header" => PeerMode::Header,
        "jwt" => PeerMode::Jwt,
        other => return Err(format!("peer mode `{other}` is not header or jwt")),
    };
    Ok(Peer {
        name: name.to_string(),
        mode,
    })
}

/// One value and the variable it came from.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The environment variable name.
    pub env: String,
    /// The value.
    pub value: SecretValue,
}

/// Everything a service instance serves from. Built from the environment by
/// [`AppState::from_env`], or from explicit values in tests.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Consumer name.
    pub name: String,
    /// Secret name for fingerprints.
    pub secret_name: String,
    /// Header carrying the value.
    pub header: HeaderName,
    /// What it sends, and accepts.
    pub primary: Slot,
    /// What it also accepts.
    pub secondary: Option<Slot>,
    /// Other names it reads (reported only).
    pub aliases: Vec<Slot>,
    /// Peers callable through `/relay/{peer}`.
    pub peers: BTreeMap<String, PeerMode>,
    /// `$ROTOR_FLEET_DIR`, where peers' `endpoints.json` live.
    pub fleet_dir: Option<PathBuf>,
    /// `--fault-file` paths, `{instance}` resolved.
    pub fault_files: Vec<PathBuf>,
    /// Where the values come from when they are files (`ROTOR_SECRETS_DIR`); `None`: the
    /// environment, read once.
    pub files: Option<SecretFiles>,
}

/// The values as files: one per name, in `dir` (`ROTOR_SECRETS_DIR`), named like the environment
/// variable the service would read otherwise. A name whose file is absent (or empty) has no
/// value, like an unset variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFiles {
    /// The directory.
    pub dir: PathBuf,
    /// The primary's file name.
    pub primary: String,
    /// The secondary's file name.
    pub secondary: String,
    /// The aliases' file names.
    pub aliases: Vec<String>,
}

/// The values read from a [`SecretFiles`].
#[derive(Debug, Clone)]
pub struct Values {
    /// What it sends, and accepts.
    pub primary: Slot,
    /// What it also accepts.
    pub secondary: Option<Slot>,
    /// Other names it reads.
    pub aliases: Vec<Slot>,
}

/// What a poll compares: the `..data` link's target and, per name, the file's identity
/// (device, inode, size, modification time), `None` when it is absent.
type FilesStamp = (Option<PathBuf>, Vec<Option<(u64, u64, u64, i64, i64)>>);

impl SecretFiles {
    /// Every name, primary first.
    fn names(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.primary)
            .chain(std::iter::once(&self.secondary))
            .chain(self.aliases.iter())
    }

    /// Refuses a name that is not a plain file name (a path, `.`, `..`, a dot file).
    fn check_names(&self) -> anyhow::Result<()> {
        for name in self.names() {
            if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0')
            {
                bail!("`{name}` cannot name a file in ROTOR_SECRETS_DIR");
            }
        }
        Ok(())
    }

    /// One file's value: `None` when the file is absent or empty. Reports the file by path,
    /// never its content. One trailing newline is not part of the value.
    fn read_one(&self, name: &str) -> anyhow::Result<Option<Slot>> {
        use std::io::Read as _;
        let path = self.dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            bail!(
                "{} is larger than {MAX_FILE_BYTES} bytes; it cannot hold a value",
                path.display()
            );
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                drop(e.into_bytes());
                bail!("{} is not valid UTF-8", path.display());
            }
        };
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(Slot {
            env: name.to_string(),
            value: SecretValue::new(text),
        }))
    }

    /// The target of the `..data` link, when the directory has Kubernetes' layout.
    fn data_link(&self) -> Option<PathBuf> {
        std::fs::read_link(self.dir.join(DATA_LINK)).ok()
    }

    /// Reads every file. With Kubernetes' layout (each name a symlink into `..data/`, swapped
    /// at once), a read that straddles a swap is read again, so the values are one set.
    pub fn read(&self) -> anyhow::Result<Values> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.data_link();
            let values = self.read_set();
            if before == self.data_link() || attempts >= 5 {
                return values;
            }
        }
    }

    fn read_set(&self) -> anyhow::Result<Values> {
        let Some(primary) = self.read_one(&self.primary)? else {
            bail!(
                "{} (the primary value) is missing or empty",
                self.dir.join(&self.primary).display()
            );
        };
        let secondary = self.read_one(&self.secondary)?;
        let mut aliases = Vec::new();
        for name in &self.aliases {
            if let Some(slot) = self.read_one(name)? {
                aliases.push(slot);
            }
        }
        Ok(Values {
            primary,
            secondary,
            aliases,
        })
    }

    /// What a poll compares with the last one.
    fn stamp(&self) -> FilesStamp {
        use std::os::unix::fs::MetadataExt as _;
        let files = self
            .names()
            .map(|n| {
                let m = std::fs::metadata(self.dir.join(n)).ok()?;
                Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
            })
            .collect();
        (self.data_link(), files)
    }
}

impl AppState {
    /// Reads the slots named by `args` (and `ROTOR_FLEET_DIR`) from this process's environment.
    pub fn from_env(args: &ServiceArgs) -> anyhow::Result<AppState> {
        AppState::from_lookup(args, |name| std::env::var_os(name))
    }

    /// Like [`AppState::from_env`] with `lookup` standing in for the environment.
    pub fn from_lookup(
        args: &ServiceArgs,
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> anyhow::Result<AppState> {
        // The value moves from the OsString into the SecretValue without a copy.
        let read = |name: &str| -> anyhow::Result<Option<Slot>> {
            match lookup(name) {
                None => Ok(None),
                Some(raw) => match raw.into_string() {
                    Ok(s) if s.is_empty() => Ok(None),
                    Ok(s) => Ok(Some(Slot {
                        env: name.to_string(),
                        value: SecretValue::new(s),
                    })),
                    Err(raw) => {
                        drop(raw);
                        bail!("environment variable {name} is not valid UTF-8")
                    }
                },
            }
        };
        let files = lookup("ROTOR_SECRETS_DIR")
            .filter(|d| !d.is_empty())
            .map(|dir| SecretFiles {
                dir: PathBuf::from(dir),
                primary: args.primary_env.clone(),
                secondary: args.secondary_env.clone(),
                aliases: args.alias_env.clone(),
            });
        let (primary, secondary, aliases) = match &files {
            Some(files) => {
                files.check_names()?;
                let v = files.read().map_err(|e| e.context("refusing to start"))?;
                (v.primary, v.secondary, v.aliases)
            }
            None => {
                let Some(primary) = read(&args.primary_env)? else {
                    bail!(
                        "environment variable {} (the primary value) is missing or empty; refusing to start",
                        args.primary_env
                    );
                };
                let secondary = read(&args.secondary_env)?;
                let mut aliases = Vec::new();
                for name in &args.alias_env {
                    if let Some(slot) = read(name)? {
                        aliases.push(slot);
                    }
                }
                (primary, secondary, aliases)
            }
        };
        let header = HeaderName::from_bytes(args.header.as_bytes())
            .with_context(|| format!("--header `{}` is not a valid header name", args.header))?;
        let fleet_dir = lookup("ROTOR_FLEET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let instance = lookup("ROTOR_INSTANCE")
            .and_then(|i| i.into_string().ok())
            .unwrap_or_default();
        let fault_files = args
            .fault_file
            .iter()
            .map(|f| PathBuf::from(f.replace("{instance}", &instance)))
            .collect();
        Ok(AppState {
            name: args.name.clone(),
            secret_name: args.secret_name.clone(),
            header,
            primary,
            secondary,
            aliases,
            peers: args.peer.iter().map(|p| (p.name.clone(), p.mode)).collect(),
            fleet_dir,
            fault_files,
            files,
        })
    }

    /// The fingerprints it holds, as one log line.
    fn holds_line(&self) -> String {
        let mut line = format!("primary={}", self.fingerprint(&self.primary.value));
        line.push_str(" secondary=");
        match &self.secondary {
            Some(s) => line.push_str(self.fingerprint(&s.value).as_str()),
            None => line.push('-'),
        }
        for alias in &self.aliases {
            line.push_str(&format!(
                " {}={}",
                alias.env,
                self.fingerprint(&alias.value)
            ));
            if !alias.value.ct_eq(&self.primary.value) {
                line.push_str(" (differs from the primary!)");
            }
        }
        line
    }

    fn fingerprint(&self, v: &SecretValue) -> Fingerprint {
        v.fingerprint(&self.secret_name)
    }

    /// The fault a `--fault-file` asks for now, if any.
    fn fault(&self) -> Option<Fault> {
        let fault = self
            .fault_files
            .iter()
            .find_map(|f| Fault::parse(&std::fs::read_to_string(f).ok()?))?;
        match fault {
            Fault::TwoKeys | Fault::TwoKeysOpen if self.secondary.is_none() => None,
            Fault::TwoKeys => Some(Fault::RejectAll),
            Fault::TwoKeysOpen => Some(Fault::AcceptAll),
            f => Some(f),
        }
    }

    /// The values `/api/ping` accepts: primary, then secondary.
    fn accepted(&self) -> impl Iterator<Item = &SecretValue> {
        std::iter::once(&self.primary.value).chain(self.secondary.iter().map(|s| &s.value))
    }

    /// What `/fingerprints` answers.
    pub fn report(&self) -> FingerprintReport {
        let mut names = BTreeMap::new();
        for slot in std::iter::once(&self.primary)
            .chain(self.secondary.iter())
            .chain(self.aliases.iter())
        {
            names.insert(slot.env.clone(), self.fingerprint(&slot.value));
        }
        FingerprintReport {
            consumer: self.name.clone(),
            names,
            accepts: self.accepted().map(|v| self.fingerprint(v)).collect(),
            sends: self.fingerprint(&self.primary.value),
        }
    }

    /// The startup line (fingerprints only).
    fn startup_line(&self, addr: SocketAddr) -> String {
        let mut line = format!(
            "demo-service {} listening on {addr} {}",
            self.name,
            self.holds_line()
        );
        if let Some(files) = &self.files {
            line.push_str(&format!(" files={}", files.dir.display()));
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> = self
                .peers
                .iter()
                .map(|(n, m)| format!("{n}={}", if *m == PeerMode::Jwt { "jwt" } else { "header" }))
                .collect();
            line.push_str(&format!(" peers={}", peers.join(",")));
        }
        line
    }
}

/// The body of `GET /fingerprints`; deserializes into `rotor::consumer::Held`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintReport {
    /// Consumer name.
    pub consumer: String,
    /// Fingerprint per environment variable name that is set.
    pub names: BTreeMap<String, Fingerprint>,
    /// What `/api/ping` accepts.
    pub accepts: Vec<Fingerprint>,
    /// What relays send.
    pub sends: Fingerprint,
}

struct Shared {
    /// What it serves from now (replaced whole by a reload).
    state: std::sync::RwLock<Arc<AppState>>,
    client: reqwest::Client,
    next: AtomicUsize,
}

impl Shared {
    fn state(&self) -> Arc<AppState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Re-reads the values of a service whose values are files (see [`router_with_reload`]).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Re-reads the files and serves from what they hold now. A file that cannot be read
    /// (missing primary, unreadable, oversized) leaves the values it held in place; the error
    /// names the file, never its content. Without files, does nothing.
    pub fn reload(&self, why: &str) -> anyhow::Result<()> {
        let current = self.shared.state();
        let Some(files) = &current.files else {
            return Ok(());
        };
        let result = files.read();
        let values = match result {
            Ok(v) => v,
            Err(e) => {
                log(&format!(
                    "demo-service {}: {why}: keeping the values it holds: {e:#}",
                    current.name
                ));
                return Err(e);
            }
        };
        let next = AppState {
            primary: values.primary,
            secondary: values.secondary,
            aliases: values.aliases,
            ..(*current).clone()
        };
        log(&format!(
            "demo-service {}: {why}: values re-read: {}",
            next.name,
            next.holds_line()
        ));
        *self
            .shared
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// Polls the files every [`FILES_POLL`] and re-reads them when one changed (a rewrite, a
    /// removal, Kubernetes swapping its `..data` link). Runs until the service ends.
    async fn watch(self) {
        let Some(files) = self.shared.state().files.clone() else {
            return;
        };
        let mut last = files.stamp();
        loop {
            tokio::time::sleep(FILES_POLL).await;
            let now = files.stamp();
            if now != last {
                last = now;
                let _ = self.reload("the files changed");
            }
        }
    }
}

/// The service's routes over `state`.
pub fn router(state: AppState) -> anyhow::Result<Router> {
    router_with_reload(state).map(|(router, _)| router)
}

/// The service's routes over `state`, and what re-reads its values. When the values are files,
/// a task watching them starts too (inside a tokio runtime).
pub fn router_with_reload(state: AppState) -> anyhow::Result<(Router, Reloader)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(PEER_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let watch = state.files.is_some();
    let shared = Arc::new(Shared {
        state: std::sync::RwLock::new(Arc::new(state)),
        client,
        next: AtomicUsize::new(0),
    });
    let reloader = Reloader {
        shared: shared.clone(),
    };
    if watch && let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(reloader.clone().watch());
    }
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/ping", get(ping))
        .route("/fingerprints", get(fingerprints))
        .route("/relay/{peer}", get(relay))
        .with_state(shared);
    Ok((router, reloader))
}

async fn healthz() -> &'static str {
    "ok"
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"ok": false, "error": error}))).into_response()
}

async fn ping(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let state = s.state();
    match state.fault() {
        Some(Fault::RejectAll) => return refuse(StatusCode::FORBIDDEN, "value not accepted"),
        Some(Fault::AcceptAll) => {
            return (StatusCode::OK, Json(json!({"ok": true, "via": "fault"}))).into_response();
        }
        _ => {}
    }
    if let Some(presented) = headers.get(&state.header) {
        let Ok(presented) = presented.to_str() else {
            return refuse(StatusCode::FORBIDDEN, "value not accepted");
        };
        let presented = SecretValue::new(presented.to_string());
        // Compare with every accepted value (no short circuit), each in constant time.
        let mut ok = false;
        for v in state.accepted() {
            ok |= v.ct_eq(&presented);
        }
        return if ok {
            (StatusCode::OK, Json(json!({"ok": true, "via": "header"}))).into_response()
        } else {
            refuse(StatusCode::FORBIDDEN, "value not accepted")
        };
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = bearer else {
        return refuse(StatusCode::UNAUTHORIZED, "no credentials");
    };
    let now = jwt::now_unix();
    let mut ok = false;
    for v in state.accepted() {
        ok |= jwt::verify_hs256(token, v, now).is_ok();
    }
    if ok {
        (StatusCode::OK, Json(json!({"ok": true, "via": "jwt"}))).into_response()
    } else {
        refuse(StatusCode::UNAUTHORIZED, "token not accepted")
    }
}

async fn fingerprints(State(s): State<Arc<Shared>>) -> Json<FingerprintReport> {
    Json(s.state().report())
}

#[derive(Deserialize)]
struct RelayQuery {
    target: Option<String>,
}

#[derive(Deserialize)]
struct EndpointsFile {
    endpoints: Vec<String>,
}

async fn read_endpoints(path: &FsPath) -> Result<Vec<SocketAddr>, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: EndpointsFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    Ok(file
        .endpoints
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect())
}

fn bad_gateway(
    peer: &str,
    target: Option<SocketAddr>,
    status: Option<u16>,
    error: &str,
) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({
            "ok": false,
            "peer": peer,
            "target": target.map(|t| t.to_string()),
            "peer_status": status,
            "error": error,
        })),
    )
        .into_response()
}

/// Describes a transport failure (the source chain names the socket problem, never a header).
fn transport_detail(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {PEER_TIMEOUT:?}");
    }
    let mut detail = if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        detail.push_str(": ");
        detail.push_str(&err.to_string());
        source = err.source();
    }
    detail
}

async fn relay(
    State(s): State<Arc<Shared>>,
    Path(peer): Path<String>,
    Query(q): Query<RelayQuery>,
) -> Response {
    let state = s.state();
    if state.fault() == Some(Fault::Leak) {
        let key = state.primary.value.expose();
        let mut r = (
            StatusCode::BAD_GATEWAY,
            format!("upstream refused; debug: key={key}"),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(key) {
            r.headers_mut().insert("x-debug-key", v);
        }
        return r;
    }
    let Some(mode) = state.peers.get(&peer).copied() else {
        return refuse(StatusCode::NOT_FOUND, "unknown peer");
    };
    let target: SocketAddr = match q.target {
        Some(t) => match t.parse() {
            Ok(a) => a,
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "target must be IP:PORT"),
        },
        None => {
            let Some(dir) = &state.fleet_dir else {
                return bad_gateway(&peer, None, None, "no target given and no ROTOR_FLEET_DIR");
            };
            let path = dir.join(&peer).join("endpoints.json");
            let endpoints = match read_endpoints(&path).await {
                Ok(e) if !e.is_empty() => e,
                Ok(_) => {
                    let msg = format!("{} lists no endpoints", path.display());
                    return bad_gateway(&peer, None, None, &msg);
                }
                Err(e) => return bad_gateway(&peer, None, None, &e),
            };
            endpoints[s.next.fetch_add(1, Ordering::Relaxed) % endpoints.len()]
        }
    };

    let (name, mut value) = match mode {
        PeerMode::Header => match HeaderValue::from_str(state.primary.value.expose()) {
            Ok(v) => (state.header.clone(), v),
            Err(_) => {
                return bad_gateway(
                    &peer,
                    Some(target),
                    None,
                    "the value is not a valid header value",
                );
            }
        },
        PeerMode::Jwt => {
            let token = jwt::sign_hs256(
                &state.primary.value,
                &jwt::claims_for(&state.name, RELAY_TOKEN_TTL),
            );
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(v) => (AUTHORIZATION, v),
                Err(_) => {
                    return bad_gateway(
                        &peer,
                        Some(target),
                        None,
                        "the token is not a valid header value",
                    );
                }
            }
        }
    };
    value.set_sensitive(true);
    let result = s
        .client
        .get(format!("http://{target}/api/ping"))
        .header(name, value)
        .send()
        .await;
    match result {
        Ok(resp) if resp.status() == StatusCode::OK => (
            StatusCode::OK,
            Json(json!({"ok": true, "peer": peer, "target": target.to_string()})),
        )
            .into_response(),
        Ok(resp) => {
            let status = resp.status().as_u16();
            log(&format!(
                "demo-service {}: relay to {peer} at {target}: peer answered {status}",
                state.name
            ));
            bad_gateway(
                &peer,
                Some(target),
                Some(status),
                &format!("peer answered {status}"),
            )
        }
        Err(e) => {
            let detail = transport_detail(&e);
            log(&format!(
                "demo-service {}: relay to {peer} at {target}: {detail}",
                state.name
            ));
            bad_gateway(&peer, Some(target), None, &detail)
        }
    }
}

/// The only place this module prints: one line to stderr (fingerprints, never values).
#[allow(clippy::print_stderr)]
fn log(line: &str) {
    eprintln!("{line}");
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits (up to
/// a cap) for in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut server => return r.context("serving"),
        () = &mut shutdown => {}
    }
    let _ = tx.send(());
    match tokio::time::timeout(DRAIN_CAP, server).await {
        Ok(r) => r.context("serving"),
        Err(_) => {
            log(&format!(
                "demo-service: in-flight requests still running after {DRAIN_CAP:?}; exiting"
            ));
            Ok(())
        }
    }
}

/// Runs the service: reads the environment, binds `$HOST:$PORT`, serves until SIGTERM/SIGINT.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let state = AppState::from_env(&args)?;
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_string());
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("PORT `{p}` is not a port number"))?,
        Err(_) => 0,
    };
    // Handlers first, so a SIGTERM right after readiness is already graceful.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let name = state.name.clone();
    log(&state.startup_line(addr));
    let files = state.files.is_some();
    let (app, reloader) = router_with_reload(state)?;
    if files {
        // SIGHUP re-reads the files now (the watcher would within FILES_POLL).
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                let _ = reloader.reload("SIGHUP");
            }
        });
    }
    let shutdown = async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        log(&format!(
            "demo-service {name}: {which}: finishing in-flight requests"
        ));
    };
    serve(listener, app, shutdown).await
}

/// Builds a runtime and runs the service; prints the error and exits non-zero on failure.
pub fn main_blocking(args: ServiceArgs) -> ExitCode {
    let name = args.name.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!(
                "demo-service {name}: cannot start the async runtime: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("demo-service {name}: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Building blocks for tests of the service: this crate's own, and rotor's tests of the
/// contract between its probes and the service. Not part of the service.
#[doc(hidden)]
pub mod testing {
    use std::net::SocketAddr;

    use axum::http::HeaderName;
    use rotor_secret::secret::{Alphabet, SecretValue};

    use super::{AppState, PeerMode, Slot, router};

    pub fn random() -> SecretValue {
        SecretValue::generate(Alphabet::Base64url, 48).unwrap()
    }

    pub fn slot(env: &str, v: &SecretValue) -> Slot {
        Slot {
            env: env.into(),
            value: v.clone(),
        }
    }

    pub fn state(
        name: &str,
        primary: &SecretValue,
        secondary: Option<&SecretValue>,
        peers: &[(&str, PeerMode)],
    ) -> AppState {
        AppState {
            name: name.into(),
            secret_name: "service-secret".into(),
            header: HeaderName::from_static("x-service-secret"),
            primary: slot("SERVICE_SECRET", primary),
            secondary: secondary.map(|v| slot("SERVICE_SECRET_PREVIOUS", v)),
            aliases: vec![],
            peers: peers.iter().map(|(n, m)| (n.to_string(), *m)).collect(),
            fleet_dir: None,
            fault_files: vec![],
            files: None,
        }
    }

    pub async fn spawn(state: AppState) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }
}

#[cfg(test)]
mod tests;
