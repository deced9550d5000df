//! The HTTP API: discovery, CRUD, patch, watch and the `/status` subresources of the resource
//! table, speaking the Kubernetes wire protocol (JSON only, no authentication: any bearer
//! token is accepted and ignored), plus the lab's admin endpoints `/lab/v1/faults` and
//! `/lab/v1/stats`. `/v1/...` goes to the Secret Manager (`super::secretmanager`);
//! TokenRequest, TokenReview and the OIDC discovery documents to `super::serviceaccounts`.
//!
//! Owns: URL parsing, verbs, preconditions, defaulting and validation of written objects, fault
//! injection at the request boundary, statistics. Must never: log request or object bodies
//! (Secrets pass through here).

use super::objects::Ptr as _;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::faults::{ApiEffect, Fault, Faults, Injected, RequestInfo, StatsInner};
use super::objects::{Store, meta_mut, name_of, rv_of};
use super::patch::{self, PatchKind};
use super::resources::{self, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::table;

/// What the handlers share.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub faults: Faults,
    pub stats: StatsInner,
    pub addr: SocketAddr,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// `<lab dir>/logs`, for `pods/log`.
    pub logs_dir: std::path::PathBuf,
    /// The Secret Manager API under `/v1/`.
    pub secret_manager: super::secretmanager::SecretManagerLab,
    /// Signs and checks service-account tokens (TokenRequest, TokenReview).
    pub tokens: super::serviceaccounts::Issuer,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/lab/v1/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/lab/v1/stats", get(stats))
        .route(
            "/lab/v1/secretmanager/stats",
            get(super::secretmanager::admin_stats),
        )
        .route(
            "/lab/v1/secretmanager/access-log",
            get(super::secretmanager::admin_access_log),
        )
        .route(
            "/lab/v1/secretmanager/secrets",
            get(super::secretmanager::admin_secrets),
        )
        .route("/v1/{*path}", any(super::secretmanager::handle))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/openid/v1/jwks", get(jwks))
        .fallback(handle)
        .with_state(shared)
}

async fn list_faults(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"faults": s.faults.list()})).into_response()
}

async fn add_fault(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) => {
            tracing::info!(fault = ?f, "lab: fault added");
            s.faults.add(f);
            (
                StatusCode::CREATED,
                axum::Json(json!({"faults": s.faults.list()})),
            )
                .into_response()
        }
        Err(e) => ApiError::bad_request(format!("invalid fault: {e}")).into_response(),
    }
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> Response {
    s.faults.clear();
    axum::Json(json!({"faults": []})).into_response()
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.stats.snapshot()).into_response()
}

async fn openid_configuration(State(s): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &s.tokens.openid_configuration())
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        serde_json::to_vec(&s.tokens.jwks()).unwrap_or_default(),
    )
        .into_response()
}

/// The two create-only endpoints of service-account tokens (never stored).
enum TokenApi {
    /// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
    Request { ns: String, name: String },
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    Review,
}

fn token_route(path: &str) -> Option<TokenApi> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "serviceaccounts",
            name,
            "token",
        ] => Some(TokenApi::Request {
            ns: ns.to_string(),
            name: name.to_string(),
        }),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => Some(TokenApi::Review),
        _ => None,
    }
}

/// TokenRequest and TokenReview: counted, open to `api` and `forbid` faults like any request
/// (`create` on `serviceaccounts/token` or `tokenreviews`), answered by
/// `super::serviceaccounts`. No request is authenticated: the bearer is not looked at.
async fn token_api(
    s: &Shared,
    api: TokenApi,
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    client: &str,
) -> Response {
    let (res, sub, ns, name): (&'static Resource, Option<&str>, Option<&str>, &str) = match &api {
        TokenApi::Request { ns, name } => (
            resources::get("serviceaccounts"),
            Some("token"),
            Some(ns.as_str()),
            name.as_str(),
        ),
        TokenApi::Review => (&resources::TOKENREVIEWS, None, None, ""),
    };
    let resource = match sub {
        Some(sub) => format!("{}/{sub}", res.plural),
        None => res.plural.to_string(),
    };
    s.stats.begin(&resource, "create", client);
    let _g = InFlight(&s.stats);
    if method != Method::POST {
        return ApiError::method_not_allowed().into_response();
    }
    let info = RequestInfo {
        verb: "create",
        resource: &resource,
        namespace: ns,
        name,
    };
    match s.faults.check(&info) {
        Some(Injected::Forbid { user }) => {
            tracing::info!(resource, name, "lab: injected 403");
            return ApiError::forbidden(res, sub, "create", ns, name, &user).into_response();
        }
        Some(Injected::Api { effect, hang_ms }) => {
            tracing::info!(resource, name, ?effect, "lab: injected fault");
            match effect {
                ApiEffect::Conflict => return ApiError::conflict(res, name).into_response(),
                ApiEffect::Internal => {
                    return ApiError::internal("injected fault").into_response();
                }
                ApiEffect::Timeout => {
                    tokio::time::sleep(Duration::from_millis(hang_ms)).await;
                    return ApiError::timeout().into_response();
                }
                ApiEffect::Delay => tokio::time::sleep(Duration::from_millis(hang_ms)).await,
            }
        }
        None => {}
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let answer = match api {
        TokenApi::Request { ref ns, ref name } => {
            super::serviceaccounts::token_request(&s.store, &s.tokens, ns, name, ct, body, dry_run)
        }
        TokenApi::Review => super::serviceaccounts::token_review(&s.store, &s.tokens, ct, body),
    };
    match answer {
        Ok(v) => {
            tracing::debug!(resource, name, "lab: token call answered");
            json_response(StatusCode::CREATED, &v)
        }
        Err(e) => e.into_response(),
    }
}

/// A resource URL, parsed.
struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Json(Value),
    Text(&'static str),
    Resource(Target),
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["version"] => {
            return Route::Json(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-rotor-lab",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                "platform": "linux/amd64"
            }));
        }
        ["healthz"] | ["readyz"] | ["livez"] => return Route::Text("ok"),
        ["api"] => {
            return Route::Json(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]
            }));
        }
        ["apis"] => return Route::Json(resources::group_list()),
        ["api", "v1"] => return Route::Json(resources::resource_list("")),
        ["apis", g] if resources::GROUPS.contains(g) => {
            return Route::Json(resources::api_group(g));
        }
        ["apis", g, "v1"] if resources::GROUPS.contains(g) => {
            return Route::Json(resources::resource_list(g));
        }
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return Route::NotFound,
    };
    let owned = |s: &str| Some(s.to_string());
    let namespaced = |plural: &str| resources::by_plural(group, plural).filter(|r| r.namespaced);
    let t = match rest {
        ["namespaces", ns, plural] if namespaced(plural).is_some() => Target {
            res: namespaced(plural).expect("checked"),
            ns: owned(ns),
            name: None,
            sub: None,
        },
        ["namespaces", ns, plural, name] if namespaced(plural).is_some() => Target {
            res: namespaced(plural).expect("checked"),
            ns: owned(ns),
            name: owned(name),
            sub: None,
        },
        ["namespaces", ns, plural, name, sub] if namespaced(plural).is_some() => Target {
            res: namespaced(plural).expect("checked"),
            ns: owned(ns),
            name: owned(name),
            sub: owned(sub),
        },
        [plural] => match resources::by_plural(group, plural) {
            Some(res) => Target {
                res,
                ns: None,
                name: None,
                sub: None,
            },
            None => return Route::NotFound,
        },
        [plural, name] => match resources::by_plural(group, plural).filter(|r| !r.namespaced) {
            Some(res) => Target {
                res,
                ns: None,
                name: owned(name),
                sub: None,
            },
            None => return Route::NotFound,
        },
        [plural, name, sub] => {
            match resources::by_plural(group, plural).filter(|r| !r.namespaced) {
                Some(res) => Target {
                    res,
                    ns: None,
                    name: owned(name),
                    sub: owned(sub),
                },
                None => return Route::NotFound,
            }
        }
        _ => return Route::NotFound,
    };
    if let Some(sub) = &t.sub
        && !(sub == "status" && t.res.status)
        && !(sub == "log" && t.res.plural == "pods")
        && !(sub == "scale"
            && matches!(t.res.plural, "deployments" | "statefulsets" | "replicasets"))
    {
        return Route::NotFound;
    }
    Route::Resource(t)
}

struct InFlight<'a>(&'a StatsInner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The client a request says it is, for the statistics: the first word of its User-Agent.
pub(crate) fn client_of(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split(' ').next().unwrap_or(ua).to_string())
        .unwrap_or_else(|| "unknown".into())
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = client_of(&headers);
    if let Some(api) = token_route(uri.path()) {
        return token_api(&s, api, &method, &q, &headers, &body, &client).await;
    }
    let t = match route(uri.path()) {
        Route::Json(mut v) => {
            s.stats.begin("discovery", "get", &client);
            let _g = InFlight(&s.stats);
            if v["kind"] == "APIVersions" {
                v["serverAddressByClientCIDRs"][0]["serverAddress"] = json!(s.addr.to_string());
            }
            return json_response(StatusCode::OK, &v);
        }
        Route::Text(t) => return t.into_response(),
        Route::NotFound => {
            s.stats.begin("unknown", "get", &client);
            let _g = InFlight(&s.stats);
            return ApiError::page_not_found().into_response();
        }
        Route::Resource(t) => t,
    };
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return ApiError::method_not_allowed().into_response(),
    };
    let resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", t.res.plural),
        None => t.res.plural.to_string(),
    };
    s.stats.begin(&resource, verb, &client);
    let _g = InFlight(&s.stats);
    let info = RequestInfo {
        verb,
        resource: &resource,
        namespace: t.ns.as_deref(),
        name: t.name.as_deref().unwrap_or(""),
    };
    match s.faults.check(&info) {
        Some(Injected::Forbid { user }) => {
            tracing::info!(verb, resource, name = info.name, "lab: injected 403");
            return ApiError::forbidden(
                t.res,
                t.sub.as_deref(),
                verb,
                t.ns.as_deref(),
                info.name,
                &user,
            )
            .into_response();
        }
        Some(Injected::Api { effect, hang_ms }) => {
            tracing::info!(
                verb,
                resource,
                name = info.name,
                ?effect,
                "lab: injected fault"
            );
            match effect {
                ApiEffect::Conflict => {
                    return ApiError::conflict(t.res, info.name).into_response();
                }
                ApiEffect::Internal => {
                    return ApiError::internal("injected fault").into_response();
                }
                ApiEffect::Timeout => {
                    tokio::time::sleep(Duration::from_millis(hang_ms)).await;
                    return ApiError::timeout().into_response();
                }
                ApiEffect::Delay => tokio::time::sleep(Duration::from_millis(hang_ms)).await,
            }
        }
        None => {}
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if matches!(verb, "create" | "update") && !ct.starts_with("application/json") {
        return ApiError::unsupported_media(ct).into_response();
    }
    if t.sub.as_deref() == Some("log") {
        return pod_log(&s, &t, verb);
    }
    if t.sub.as_deref() == Some("scale") {
        return match scale(&s, &t, verb, ct, &body) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => e.into_response(),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let result = match verb {
        "get" => do_get(&s, &t).map(|(c, v)| {
            if accept.contains("as=Table") {
                let rv = s.store.rv();
                (c, table::table(t.res, std::slice::from_ref(&v), rv))
            } else {
                (c, v)
            }
        }),
        "list" => do_list(&s, &t, &q, accept.contains("as=Table")),
        "watch" => return do_watch(&s, &t, &q),
        "create" => do_create(&s, &t, &body, dry_run).map(|v| (StatusCode::CREATED, v)),
        "update" => do_update(&s, &t, &body, dry_run),
        "patch" => do_patch(&s, &t, ct, &body, dry_run),
        "delete" => do_delete(&s, &t, &body, &q, dry_run),
        _ => do_delete_collection(&s, &t, &q, dry_run),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => e.into_response(),
    }
}

fn scale_of(obj: &Value) -> Value {
    let sel = obj
        .ptr("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj.ptr("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.ptr("/status/replicas").cloned().unwrap_or(json!(0)), "selector": sel},
    })
}

/// The `scale` subresource (`kubectl scale`).
fn scale(s: &Shared, t: &Target, verb: &str, ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let ns = ns_key(t).to_string();
    if verb == "get" {
        let cur = s
            .store
            .get(t.res, &ns, &name)
            .ok_or_else(|| ApiError::not_found(t.res, &name))?;
        return Ok(scale_of(&cur));
    }
    let kind = match verb {
        "update" => None,
        "patch" => Some(PatchKind::from_content_type(ct)?),
        _ => return Err(ApiError::method_not_allowed()),
    };
    let v = s.store.update(t.res, &ns, &name, |cur| {
        let sc = scale_of(cur);
        let new = match kind {
            None => parse_body(body)?,
            Some(k) => patch::apply(k, &sc, body)?,
        };
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(cur)
        {
            return Err(ApiError::conflict(t.res, &name));
        }
        let mut out = cur.clone();
        out["spec"]["replicas"] = new.ptr("/spec/replicas").cloned().unwrap_or(json!(1));
        Ok(out)
    })?;
    Ok(scale_of(&v))
}

/// `GET pods/NAME/log`: the pod's log file (stdout and stderr of every run).
fn pod_log(s: &Shared, t: &Target, verb: &str) -> Response {
    let name = t.name.as_deref().unwrap_or("");
    let ns = ns_key(t);
    if verb != "get" {
        return ApiError::method_not_allowed().into_response();
    }
    if s.store.get(t.res, ns, name).is_none() {
        return ApiError::not_found(t.res, name).into_response();
    }
    let text = std::fs::read(s.logs_dir.join(ns).join(format!("{name}.log"))).unwrap_or_default();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

type Answer = Result<(StatusCode, Value), ApiError>;

fn ns_key(t: &Target) -> &str {
    if t.res.namespaced {
        t.ns.as_deref().unwrap_or("")
    } else {
        ""
    }
}

fn do_get(s: &Shared, t: &Target) -> Answer {
    let name = t.name.as_deref().unwrap_or("");
    s.store
        .get(t.res, ns_key(t), name)
        .map(|v| (StatusCode::OK, v))
        .ok_or_else(|| ApiError::not_found(t.res, name))
}

fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let f = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((l, f))
}

fn do_list(s: &Shared, t: &Target, q: &HashMap<String, String>, as_table: bool) -> Answer {
    let (l, f) = selectors(q)?;
    let (items, rv) = s
        .store
        .list_where(t.res, t.ns.as_deref(), l.required_pair(), |o| {
            l.matches_obj(o) && f.matches(o)
        });
    if as_table {
        return Ok((StatusCode::OK, table::table(t.res, &items, rv)));
    }
    Ok((
        StatusCode::OK,
        json!({
            "kind": t.res.list_kind(),
            "apiVersion": t.res.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn do_watch(s: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response {
    let (l, f) = match selectors(q) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let res = t.res;
    let ns = t.ns.clone();
    let want = move |o: &Value| {
        (!res.namespaced
            || ns
                .as_deref()
                .is_none_or(|n| super::objects::namespace_of(o) == n))
            && l.matches_obj(o)
            && f.matches(o)
    };
    let initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0" && !initial);
    let mut first: Vec<Bytes> = Vec::new();
    let (rx, mut after) = match from {
        None => {
            let (items, rv, rx) = s.store.snapshot_and_subscribe(res, t.ns.as_deref());
            for o in items.iter().filter(|o| want(o)) {
                first.push(event_line("ADDED", o));
            }
            if initial {
                // The streaming list's end marker (WatchList, kubectl >= 1.35).
                let bookmark = json!({
                    "kind": res.kind, "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}},
                });
                first.push(event_line("BOOKMARK", &bookmark));
            }
            (rx, rv)
        }
        Some(v) => {
            let Ok(rv) = v.parse::<u64>() else {
                return ApiError::bad_request(format!("invalid resource version {v:?}"))
                    .into_response();
            };
            match s.store.subscribe(Some(rv)) {
                Ok((past, rx)) => {
                    let mut last = rv;
                    for e in past.iter().filter(|e| e.resource == res && want(&e.object)) {
                        first.push(event_line(e.kind, &e.object));
                        last = e.rv;
                    }
                    if let Some(e) = past.last() {
                        last = last.max(e.rv);
                    }
                    (rx, last)
                }
                Err(too_old) => {
                    let status = ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        too_old.oldest
                    ))
                    .status();
                    let body = event_line("ERROR", &status);
                    return (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                        .into_response();
                }
            }
        }
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, mut out) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        let mut rx = rx;
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= after || e.resource != res || !want(&e.object) {
                            continue;
                        }
                        after = e.rv;
                        if tx.send(event_line(e.kind, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shutdown.changed() => return,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        out.poll_recv(cx).map(|o| o.map(Ok::<Bytes, Infallible>))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    Ok(v)
}

/// Defaulting and validation applied to every write of the main resource.
fn normalize(res: &'static Resource, obj: &mut Value) -> Result<(), ApiError> {
    let name = name_of(obj).to_string();
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    if res.plural == "secrets" {
        if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
            && let Some(sd) = sd.as_object()
        {
            if !obj.get("data").is_some_and(Value::is_object) {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                obj["data"][k] =
                    json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
            }
        }
        if let Some(d) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in d {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "illegal base64 data in Secret {name:?} at key {k:?}"
                    )));
                }
            }
        }
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
    }
    if res.workload {
        super::controller::default_workload(res, obj);
        let sel = LabelSelector::from_spec(obj.ptr("/spec/selector"));
        if obj.ptr("/spec/selector").is_none() {
            return Err(ApiError::invalid(
                res,
                &name,
                "spec.selector: Required value".into(),
            ));
        }
        if !sel.matches_obj(obj.ptr("/spec/template").unwrap_or(&Value::Null)) {
            return Err(ApiError::invalid(
                res,
                &name,
                "spec.template.metadata.labels: Invalid value: `selector` does not match \
                 template `labels`"
                    .into(),
            ));
        }
        if obj
            .ptr("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(ApiError::invalid(
                res,
                &name,
                "spec.template.spec.containers: Required value".into(),
            ));
        }
    }
    if res.status && obj.get("status").is_none() {
        obj["status"] = json!({});
    }
    Ok(())
}

fn check_name(res: &'static Resource, obj: &Value) -> Result<(), ApiError> {
    let name = name_of(obj);
    if name.is_empty() {
        return Err(ApiError::invalid(
            res,
            "",
            "metadata.name: Required value: name or generateName is required".into(),
        ));
    }
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        return Err(ApiError::invalid(
            res,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must \
                 consist of lower case alphanumeric characters, '-' or '.', and must start and \
                 end with an alphanumeric character"
            ),
        ));
    }
    Ok(())
}

/// Creates `obj` in the store on behalf of the API (also used for the topology's objects).
pub(crate) fn create_object(
    store: &Store,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    {
        let m = meta_mut(&mut obj);
        if res.namespaced {
            let url_ns = ns.unwrap_or("default");
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace \
                         sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(url_ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name && let Some(g) = m.get("generateName").and_then(Value::as_str) {
            let n = format!("{g}{}", super::controller::random_suffix());
            m.insert("name".into(), json!(n));
        }
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            m.remove(k);
        }
    }
    check_name(res, &obj)?;
    normalize(res, &mut obj)?;
    if dry_run {
        return Ok(obj);
    }
    let created = store.create(res, obj)?;
    tracing::debug!(kind = res.kind, name = name_of(&created), "lab: created");
    if res.plural == "namespaces" {
        // The ServiceAccount controller's `default` account, in every new namespace.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": name_of(&created)}});
        let _ = store.create(resources::get("serviceaccounts"), sa);
    }
    Ok(created)
}

fn do_create(s: &Shared, t: &Target, body: &[u8], dry_run: bool) -> Result<Value, ApiError> {
    let obj = parse_body(body)?;
    if let (Some(av), Some(k)) = (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) && resources::by_kind(av, k) != Some(t.res)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            t.res.api_version()
        )));
    }
    create_object(&s.store, t.res, t.ns.as_deref(), obj, dry_run)
}

/// Combines a written object with the current one: a main-resource write keeps the current
/// status, a `/status` write keeps everything but the status.
fn merge_write(
    t: &Target,
    current: &Value,
    mut written: Value,
    name: &str,
) -> Result<Value, ApiError> {
    if let Some(rv) = rv_of(&written)
        && Some(rv) != rv_of(current)
    {
        return Err(ApiError::conflict(t.res, name));
    }
    if t.sub.is_some() {
        let mut out = current.clone();
        out["status"] = written.get("status").cloned().unwrap_or(json!({}));
        return Ok(out);
    }
    if t.res.status
        && let Some(st) = current.get("status")
    {
        written["status"] = st.clone();
    }
    normalize(t.res, &mut written)?;
    Ok(written)
}

fn do_update(s: &Shared, t: &Target, body: &[u8], dry_run: bool) -> Answer {
    let obj = parse_body(body)?;
    let name = t.name.clone().unwrap_or_default();
    if name_of(&obj) != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&obj)
        )));
    }
    let ns = ns_key(t).to_string();
    if dry_run {
        let cur = s
            .store
            .get(t.res, &ns, &name)
            .ok_or_else(|| ApiError::not_found(t.res, &name))?;
        return merge_write(t, &cur, obj, &name).map(|v| (StatusCode::OK, v));
    }
    let v = s
        .store
        .update(t.res, &ns, &name, |cur| merge_write(t, cur, obj, &name))?;
    Ok((StatusCode::OK, v))
}

fn do_patch(s: &Shared, t: &Target, ct: &str, body: &[u8], dry_run: bool) -> Answer {
    let kind = PatchKind::from_content_type(ct)?;
    let name = t.name.clone().unwrap_or_default();
    let ns = ns_key(t).to_string();
    if s.store.get(t.res, &ns, &name).is_none() {
        if kind == PatchKind::Apply && t.sub.is_none() {
            let mut obj = patch::apply(kind, &json!({}), body)?;
            meta_mut(&mut obj).insert("name".into(), json!(name));
            return create_object(&s.store, t.res, t.ns.as_deref(), obj, dry_run)
                .map(|v| (StatusCode::CREATED, v));
        }
        return Err(ApiError::not_found(t.res, &name));
    }
    let run = |cur: &Value| {
        let patched = patch::apply(kind, cur, body)?;
        merge_write(t, cur, patched, &name)
    };
    if dry_run {
        let cur = s
            .store
            .get(t.res, &ns, &name)
            .ok_or_else(|| ApiError::not_found(t.res, &name))?;
        return run(&cur).map(|v| (StatusCode::OK, v));
    }
    let v = s.store.update(t.res, &ns, &name, run)?;
    Ok((StatusCode::OK, v))
}

fn delete_one(
    s: &Shared,
    res: &'static Resource,
    ns: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Value, ApiError> {
    if res.plural == "pods" {
        let cur = s
            .store
            .get(res, ns, name)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let grace = grace.unwrap_or_else(|| {
            cur.ptr("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        return s.store.mark_deleting(res, ns, name, grace);
    }
    let v = s.store.remove(res, ns, name)?;
    if res.plural == "namespaces" {
        for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let (items, _) = s.store.list(r, Some(name));
            for o in items {
                let _ = s.store.remove(r, name, name_of(&o));
            }
        }
    }
    Ok(v)
}

fn do_delete(
    s: &Shared,
    t: &Target,
    body: &[u8],
    q: &HashMap<String, String>,
    dry_run: bool,
) -> Answer {
    let name = t.name.clone().unwrap_or_default();
    let ns = ns_key(t).to_string();
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).unwrap_or(json!({}))
    };
    let cur = s
        .store
        .get(t.res, &ns, &name)
        .ok_or_else(|| ApiError::not_found(t.res, &name))?;
    if let Some(want) = opts
        .ptr("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && Some(want) != rv_of(&cur)
    {
        let mut e = ApiError::conflict(t.res, &name);
        e.message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the ResourceVersion in the \
             precondition ({want}) does not match the ResourceVersion in record ({}). The object \
             might have been modified",
            t.res.qualified(),
            rv_of(&cur).unwrap_or("")
        );
        return Err(e);
    }
    if let Some(want) = opts.ptr("/preconditions/uid").and_then(Value::as_str)
        && Some(want) != cur.ptr("/metadata/uid").and_then(Value::as_str)
    {
        let mut e = ApiError::conflict(t.res, &name);
        e.message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in \
             precondition: {want}, UID in object meta: {}",
            t.res.qualified(),
            cur.ptr("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
        return Err(e);
    }
    if dry_run {
        return Ok((StatusCode::OK, cur));
    }
    let grace = opts
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let v = delete_one(s, t.res, &ns, &name, grace)?;
    Ok((StatusCode::OK, v))
}

fn do_delete_collection(
    s: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    dry_run: bool,
) -> Answer {
    let (l, f) = selectors(q)?;
    let (items, rv) = s.store.list(t.res, t.ns.as_deref());
    let mut out = Vec::new();
    for o in items
        .into_iter()
        .filter(|o| l.matches_obj(o) && f.matches(o))
    {
        if !dry_run {
            let ns = super::objects::namespace_of(&o).to_string();
            if let Ok(v) = delete_one(s, t.res, &ns, name_of(&o), None) {
                out.push(v);
            }
        } else {
            out.push(o);
        }
    }
    Ok((
        StatusCode::OK,
        json!({"kind": t.res.list_kind(), "apiVersion": t.res.api_version(),
               "metadata": {"resourceVersion": rv.to_string()}, "items": out}),
    ))
}
