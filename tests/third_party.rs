//! Rotations against validators rotor did not write: stock nginx (the `X-Service-Secret` header
//! through a `map`) and stock HAProxy 2.6 (HS256 bearer JWTs through `jwt_verify`), both from
//! Debian's packages unpacked under `target/` ([`deb_install`]) and started by the wrappers in
//! `tests/fixtures/validators/`. rotor's demo service signs and relays to them under load.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Env, deb_bin, deb_install, deb_library_path};

/// The unpacked servers.
pub(crate) struct Servers {
    pub(crate) nginx: PathBuf,
    pub(crate) haproxy: PathBuf,
    /// `LD_LIBRARY_PATH` for the libraries HAProxy needs beside the machine's (Lua, OpenTracing).
    pub(crate) haproxy_libs: String,
}

/// Stock nginx from Debian, unpacked under `target/` on first use.
pub(crate) fn nginx() -> PathBuf {
    deb_bin(
        &deb_install(&["nginx"], "debs-nginx", "usr/sbin/nginx"),
        "nginx",
    )
}

pub(crate) fn servers() -> Servers {
    let haproxy = deb_install(
        &[
            "haproxy",
            "liblua5.3-0",
            "libopentracing-c-wrapper0",
            "libopentracing1",
        ],
        "debs-haproxy",
        "usr/sbin/haproxy",
    );
    Servers {
        nginx: nginx(),
        haproxy: deb_bin(&haproxy, "haproxy"),
        haproxy_libs: deb_library_path(&haproxy),
    }
}

/// A YAML (JSON) string.
pub(crate) fn quoted(s: impl std::fmt::Display) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A validator wrapper of `tests/fixtures/validators`, as a YAML string.
pub(crate) fn wrapper(name: &str) -> String {
    quoted(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/validators")
            .join(name)
            .display(),
    )
}

/// A signer (rotor's demo service, 2 instances) relaying to an nginx and an HAProxy validator
/// (2 instances each); `nginx_fault` goes to nginx's `VALIDATOR_FAULT`.
fn fleet_yaml(s: &Servers, nginx_fault: Option<&str>) -> String {
    let fault = nginx_fault
        .map(|f| format!("\n      VALIDATOR_FAULT: {}", quoted(f)))
        .unwrap_or_default();
    crate::common::fleet_head("30s")
        + &format!(
            r#"  - name: signer
    role: signer
    kind: process
    instances: 2
    command: ["{{rotor}}", "demo-service", "--name", "signer", "--secret-name", "service-secret",
              "--primary-env", "SERVICE_SECRET", "--peer", "nginx=header", "--peer", "haproxy=jwt"]
    slots:
      primary: SERVICE_SECRET
    fingerprints_path: /fingerprints
    roundtrips:
      - to: nginx
        path: "/relay/nginx?target={{target}}"
      - to: haproxy
        path: "/relay/haproxy?target={{target}}"
  - name: nginx
    role: validator
    kind: process
    instances: 2
    command: [{nginx_wrapper}]
    stop_signal: SIGQUIT     # nginx's graceful shutdown
    env:
      NGINX_BIN: {nginx}{fault}
    slots:
      primary: SERVICE_SECRET
      secondary: SERVICE_SECRET_PREVIOUS
    probes:
      - type: header
        path: /api/ping
        header: X-Service-Secret
  - name: haproxy
    role: validator
    kind: process
    instances: 2
    command: [{haproxy_wrapper}, "--primary-env", "JWT_SECRET_KEY",
              "--secondary-env", "JWT_SECRET_KEY_PREVIOUS"]
    stop_signal: SIGUSR1     # HAProxy's soft stop
    env:
      HAPROXY_BIN: {haproxy}
      LD_LIBRARY_PATH: {libs}
    slots:
      primary: JWT_SECRET_KEY
      secondary: JWT_SECRET_KEY_PREVIOUS
    probes:
      - type: jwt
        path: /api/ping
"#,
            nginx_wrapper = wrapper("nginx-validator"),
            haproxy_wrapper = wrapper("haproxy-validator"),
            nginx = quoted(s.nginx.display()),
            haproxy = quoted(s.haproxy.display()),
            libs = quoted(&s.haproxy_libs),
        )
}

/// The value in the store's primary slot (kept in memory only, never printed).
pub(crate) fn primary_value(env: &Env) -> String {
    let store = env.store();
    let id = store["primary"].as_str().unwrap().to_string();
    crate::common::version(&store, &id)["value"]
        .as_str()
        .expect("the primary has a value")
        .to_string()
}

fn endpoints(env: &Env, consumer: &str) -> Vec<String> {
    env.endpoints(consumer)
}

/// A compact JWT whose header names `alg`, HMAC-SHA256-signed with `key`, expiring in a minute
/// (built here, not with rotor's signer).
fn hs256_token(key: &str, alg: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"alg": alg, "typ": "JWT"}).to_string();
    let now = rotor::jwt::now_unix();
    let claims = serde_json::json!({"sub": "third-party-test", "iat": now, "exp": now + 60});
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// The status `GET http://<addr><path>` answers with `header` (if any).
pub(crate) async fn status(addr: &str, path: &str, header: Option<(&str, String)>) -> u16 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client.get(format!("http://{addr}{path}"));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
        .status()
        .as_u16()
}

/// Asserts every published nginx instance answers `expect` to `value` in `X-Service-Secret`,
/// and every HAProxy instance `expect` to a bearer HS256 JWT signed with it. `which` names the
/// value in messages (never the value itself).
async fn assert_answers(env: &Env, value: &str, which: &str, expect: u16) {
    let nginx = endpoints(env, "nginx");
    let haproxy = endpoints(env, "haproxy");
    assert_eq!((nginx.len(), haproxy.len()), (2, 2), "published instances");
    for addr in &nginx {
        let got = status(
            addr,
            "/api/ping",
            Some(("X-Service-Secret", value.to_string())),
        )
        .await;
        assert_eq!(got, expect, "nginx at {addr}, {which} value in the header");
    }
    let bearer = format!("Bearer {}", hs256_token(value, "HS256"));
    for addr in &haproxy {
        let got = status(addr, "/api/ping", Some(("Authorization", bearer.clone()))).await;
        assert_eq!(
            got, expect,
            "haproxy at {addr}, JWT signed with the {which} value"
        );
    }
}

/// What a [`Watch`] saw of one process consumer's fleet directory.
#[derive(Debug, Default)]
struct Seen {
    /// Polls that read `endpoints.json`.
    reads: u64,
    /// Instances that held a secondary (ids), published or not.
    two_values: BTreeSet<String>,
    /// Of those, the ones `endpoints.json` listed.
    two_values_published: BTreeSet<String>,
}

/// Polls `<state_dir>/fleet/<consumer>/` (endpoints.json and the instance records) every 2 ms.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl Watch {
    fn start(env: &Env, consumer: &str) -> Watch {
        let dir = env.pb.state_dir.join("fleet").join(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    look(&dir, &mut seen);
                    if last {
                        return seen;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Watch { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One poll: the endpoints first, then the records (a listed instance keeps its record until
/// well after it is unlisted).
fn look(dir: &Path, seen: &mut Seen) {
    let read_json = |p: &Path| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let Some(listed) = read_json(&dir.join("endpoints.json")) else {
        return;
    };
    seen.reads += 1;
    let listed: BTreeSet<&str> = listed["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    let Ok(records) = std::fs::read_dir(dir.join("instances")) else {
        return;
    };
    for rec in records.flatten().filter_map(|e| read_json(&e.path())) {
        if rec["secondary"].is_null() {
            continue;
        }
        let id = rec["id"].as_str().unwrap_or("?").to_string();
        if rec["addr"].as_str().is_some_and(|a| listed.contains(a)) {
            seen.two_values_published.insert(id.clone());
        }
        seen.two_values.insert(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_haproxy_validators_rotate_with_no_failed_request() {
    let s = servers();
    let env = Env::with(|_| fleet_yaml(&s, None));
    env.up().await;
    let old = primary_value(&env);
    assert_answers(&env, &old, "current", 200).await;
    let (_, r) = env.rotate_under_load(50).await;
    // Validators roll at T2 (widen) and T4 (narrow), the signer at T3: 2 instances each time.
    assert_eq!(r["restarts"]["nginx"], 4, "{r}");
    assert_eq!(r["restarts"]["haproxy"], 4, "{r}");
    assert_eq!(r["restarts"]["signer"], 2, "{r}");
    env.rotor(&["check"]).await.assert_code(0);

    let new = primary_value(&env);
    assert!(new != old, "the primary did not change");
    assert_answers(&env, &old, "old", 403).await;
    assert_answers(&env, &new, "new", 200).await;
    // What else the validators refuse: no credentials, another value, and (HAProxy) a token
    // signed with the primary whose header names another algorithm.
    let stranger = "x".repeat(48);
    assert_answers(&env, &stranger, "unknown", 403).await;
    for addr in endpoints(&env, "nginx")
        .iter()
        .chain(&endpoints(&env, "haproxy"))
    {
        assert_eq!(status(addr, "/healthz", None).await, 200, "{addr}");
        assert_eq!(status(addr, "/api/ping", None).await, 403, "{addr}");
    }
    for addr in &endpoints(&env, "haproxy") {
        let forged = format!("Bearer {}", hs256_token(&new, "HS384"));
        let got = status(addr, "/api/ping", Some(("Authorization", forged))).await;
        assert_eq!(
            got, 403,
            "haproxy at {addr} took a token whose alg is HS384"
        );
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_validator_whose_new_instances_reject_everything_is_rolled_back_with_no_failed_request()
 {
    let s = servers();
    let env = Env::with(|_| fleet_yaml(&s, Some("two-keys")));
    env.up().await;
    let a = env.store_primary();
    let old = primary_value(&env);
    let nginx_before = endpoints(&env, "nginx");
    let watch = Watch::start(&env, "nginx");
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    let seen = watch.stop();
    out.assert_code(3);
    assert!(out.stderr.contains("nginx"), "{}", out.stderr);
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S0"), Some("rolled_back"))
    );
    assert_eq!(env.store_primary(), a);
    // The fault was exercised: rotor started an nginx instance holding both values.
    assert!(seen.reads > 0 && !seen.two_values.is_empty(), "{seen:?}");
    env.assert_no_failures(&report);
    assert!(
        seen.two_values_published.is_empty(),
        "nginx instances holding two values (so rejecting every value) were published: {seen:?}"
    );
    assert_eq!(endpoints(&env, "nginx"), nginx_before);
    assert_answers(&env, &old, "original", 200).await;
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_that_fails_open_is_never_published() {
    let s = servers();
    let env = Env::with(|_| fleet_yaml(&s, Some("open")));
    env.rotor(&["init"]).await.assert_code(0);
    // Every nginx instance accepts anything: the canary (a value rotor never issued) gets in.
    let up = env.rotor(&["up"]).await;
    up.assert_code(11);
    assert!(
        up.stderr.contains("nginx") && up.stderr.contains("fails open"),
        "{}",
        up.stderr
    );
    let file = rotor::demo::load::endpoints_file(&env.pb, "nginx");
    assert!(!file.exists() || endpoints(&env, "nginx").is_empty());
    // Nothing to rotate from: the pre-flight finds no nginx instance serving.
    env.rotor(&["rotate", "--yes"]).await.assert_code(5);
    assert!(env.store()["secondary"].is_null());
    env.finish().await;
}
