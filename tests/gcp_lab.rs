//! The lab's Secret Manager against the official clients: the Python
//! `google-cloud-secret-manager` over REST (installed from PyPI under `target/pytools-gcp`)
//! and the Rust `google-cloud-secretmanager-v1`, plus `gcp` faults and the lab's statistics
//! and access log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use google_cloud_gax::error::rpc::Code;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{
    Replication, Secret, SecretPayload, UpdateSecretRequest, replication, secret_version,
};
use rotor_lab::{LabHandle, Topology, VersionState};
use serde_json::{Value, json};

const PROJECT: &str = "lab-project";

struct GcpLab {
    lab: Option<LabHandle>,
    _dir: tempfile::TempDir,
}

impl GcpLab {
    async fn start(yaml: &str) -> GcpLab {
        let topo = Topology::parse(yaml, Path::new("gcp.topology.yaml")).unwrap();
        let (dir, lab) = crate::common::scratch_lab("rotor-gcp-lab-test-", topo, |_| {}).await;
        GcpLab {
            lab: Some(lab),
            _dir: dir,
        }
    }

    fn lab(&self) -> &LabHandle {
        self.lab.as_ref().unwrap()
    }

    fn url(&self) -> String {
        self.lab().url()
    }

    async fn client(&self) -> SecretManagerService {
        client(&self.lab().secret_manager().endpoint()).await
    }

    async fn stop(mut self) {
        self.lab.take().unwrap().shutdown().await;
    }
}

async fn client(endpoint: &str) -> SecretManagerService {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backoff = google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder::new()
        .with_initial_delay(Duration::from_millis(10))
        .with_maximum_delay(Duration::from_millis(50))
        .build()
        .unwrap();
    SecretManagerService::builder()
        .with_endpoint(endpoint)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .with_backoff_policy(backoff)
        .build()
        .await
        .unwrap()
}

/// `GET <url>/lab/v1/secretmanager/<what>` (the lab's admin endpoints), as JSON.
async fn admin(h: &reqwest::Client, url: &str, what: &str) -> Value {
    h.get(format!("{url}/lab/v1/secretmanager/{what}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `google-cloud-secret-manager` from PyPI under `target/pytools-gcp` (once, under a file
/// lock; a stamp file marks a finished install).
fn python_gcp() -> PathBuf {
    crate::common::pip_install(
        "google-cloud-secret-manager",
        "pytools-gcp",
        "google/cloud/secretmanager/__init__.py",
    )
}

#[track_caller]
fn assert_failure(v: &Value, class: &str, http: u64, status: &str, message_end: &str) {
    assert_eq!(v["class"], class, "{v}");
    assert_eq!(v["http"], http, "{v}");
    assert_eq!(v["status"], status, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.ends_with(message_end),
        "{msg:?} should end with {message_end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_round_trip() {
    let pytools = tokio::task::spawn_blocking(python_gcp).await.unwrap();
    let l = GcpLab::start("{}").await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gcp/secretmanager_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(l.lab().secret_manager().endpoint())
        .arg(PROJECT)
        .env("PYTHONPATH", &pytools)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\n{stderr}"));

    let secret = format!("projects/{PROJECT}/secrets/py-secret");
    let v = |n: u32| format!("{secret}/versions/{n}");
    // create
    assert_eq!(r["created"]["name"], secret.as_str());
    let etag = r["created"]["etag"].as_str().unwrap();
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{etag}"
    );
    assert_eq!(r["created"]["labels"], json!({"owner": "rotor"}));
    assert_eq!(r["created"]["has_create_time"], true);
    assert_eq!(r["created"]["replication"], "automatic");
    assert_failure(
        &r["duplicate"],
        "Conflict",
        409,
        "ALREADY_EXISTS",
        &format!("Secret [{secret}] already exists."),
    );
    assert_failure(&r["bad_id"], "BadRequest", 400, "INVALID_ARGUMENT", "");
    // add
    assert_eq!(r["added"][0]["name"], v(1).as_str());
    assert_eq!(r["added"][0]["state"], "ENABLED");
    assert_eq!(r["added"][0]["client_checksum"], true);
    assert_eq!(r["added"][1]["name"], v(2).as_str());
    assert_eq!(r["added"][1]["client_checksum"], false);
    assert_ne!(r["added"][0]["etag"], r["added"][1]["etag"]);
    assert_failure(
        &r["bad_checksum"],
        "BadRequest",
        400,
        "INVALID_ARGUMENT",
        "",
    );
    assert!(
        r["bad_checksum"]["message"]
            .as_str()
            .unwrap()
            .contains("Checksum mismatch"),
        "{}",
        r["bad_checksum"]
    );
    // access by number, latest, alias
    let served = |k: &str, n: u32, data: &str| {
        assert_eq!(r[k]["name"], v(n).as_str(), "{k}: {}", r[k]);
        assert_eq!(r[k]["data"], data, "{k}");
        assert_eq!(r[k]["crc_ok"], true, "{k}");
    };
    served("access_1", 1, "first-value-0001");
    served("access_latest", 2, "second-value-0002");
    served("access_alias", 1, "first-value-0001");
    served("access_reenabled", 1, "first-value-0001");
    // aliases and etags
    assert_eq!(r["aliased"]["aliases"], json!({"current": 1}));
    assert_eq!(r["aliased"]["etag_changed"], true);
    assert_eq!(r["aliased"]["labels_kept"], json!({"owner": "rotor"}));
    assert_failure(
        &r["stale_etag"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        "",
    );
    assert_failure(
        &r["alias_to_missing"],
        "BadRequest",
        400,
        "INVALID_ARGUMENT",
        "",
    );
    assert_failure(
        &r["alias_latest_reserved"],
        "BadRequest",
        400,
        "INVALID_ARGUMENT",
        "",
    );
    // disable, enable, destroy
    assert_eq!(
        r["disabled"],
        json!({"state": "DISABLED", "etag_changed": true})
    );
    let disabled = format!("Secret Version [{}] is in DISABLED state.", v(1));
    assert_failure(
        &r["access_disabled"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        &disabled,
    );
    assert_failure(
        &r["access_disabled_alias"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        &disabled,
    );
    assert_failure(
        &r["disable_stale_etag"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        "",
    );
    assert_eq!(r["enabled"]["state"], "ENABLED");
    assert_eq!(
        r["destroyed"],
        json!({"state": "DESTROYED", "has_destroy_time": true})
    );
    let destroyed = format!("Secret Version [{}] is in DESTROYED state.", v(2));
    assert_failure(
        &r["access_destroyed_latest"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        &destroyed,
    );
    assert_failure(
        &r["enable_destroyed"],
        "BadRequest",
        400,
        "FAILED_PRECONDITION",
        &destroyed,
    );
    assert_failure(
        &r["get_missing_version"],
        "NotFound",
        404,
        "NOT_FOUND",
        &format!("Secret Version [{}] not found.", v(9)),
    );
    // lists (the second secret list went page by page, one secret a page)
    assert_eq!(r["versions"], json!([["2", "DESTROYED"], ["1", "ENABLED"]]));
    assert_eq!(r["enabled_versions"], json!(["1"]));
    let both = json!([format!("projects/{PROJECT}/secrets/py-other"), secret]);
    assert_eq!(r["secrets"], both);
    assert_eq!(r["paged_secrets"], both);
    assert_failure(
        &r["get_deleted"],
        "NotFound",
        404,
        "NOT_FOUND",
        &format!("Secret [{secret}] not found."),
    );

    // The lab's side: counts, access log, state.
    let sm = l.lab().secret_manager();
    let stats = sm.stats();
    assert_eq!(stats.requests["list"], 3, "{stats:?}");
    assert_eq!(stats.requests["add_version"], 3, "{stats:?}");
    assert_eq!(stats.requests["access"], 7, "{stats:?}");
    assert_eq!(stats.accesses[&v(1)], 5, "{stats:?}");
    assert_eq!(stats.accesses[&v(2)], 2, "{stats:?}");
    let log: Vec<(String, String, bool)> = sm
        .access_log()
        .into_iter()
        .map(|a| (a.version, a.state, a.ok))
        .collect();
    let rec = |n: u32, state: &str, ok: bool| (v(n), state.to_string(), ok);
    assert_eq!(
        log,
        vec![
            rec(1, "ENABLED", true),
            rec(2, "ENABLED", true),
            rec(1, "ENABLED", true),
            rec(1, "DISABLED", false),
            rec(1, "DISABLED", false),
            rec(1, "ENABLED", true),
            rec(2, "DESTROYED", false),
        ]
    );
    assert!(sm.secret(&secret).is_none());
    let other = sm
        .secret(&format!("projects/{PROJECT}/secrets/py-other"))
        .unwrap();
    assert_eq!(other.labels["env"], "a");
    let lab_stats = l.lab().stats();
    assert_eq!(
        lab_stats.requests["secretmanager"].values().sum::<u64>(),
        stats.total
    );
    assert!(
        lab_stats
            .clients
            .keys()
            .all(|c| c.starts_with("python-requests/")),
        "{lab_stats:?}"
    );
    l.stop().await;
}

fn code(e: &google_cloud_secretmanager_v1::Error) -> (Code, String) {
    let s = e
        .status()
        .unwrap_or_else(|| panic!("expected a service error, got {e:?}"));
    (s.code, s.message.clone())
}

fn aliases_request(secret: &str, etag: &str, alias: &str, version: i64) -> UpdateSecretRequest {
    let mut req = UpdateSecretRequest::new().set_secret(
        Secret::new()
            .set_name(secret)
            .set_etag(etag)
            .set_version_aliases([(alias, version)]),
    );
    // The field mask's type lives in google-cloud-wkt, which rotor does not depend on.
    req.update_mask = serde_json::from_value(json!("version_aliases")).unwrap();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_round_trip() {
    let l = GcpLab::start("{}").await;
    let c = l.client().await;
    let parent = format!("projects/{PROJECT}");
    let secret = format!("{parent}/secrets/signing-key");
    let created = c
        .create_secret()
        .set_parent(&parent)
        .set_secret_id("signing-key")
        .set_secret(
            Secret::new()
                .set_replication(Replication::new().set_automatic(replication::Automatic::new()))
                .set_annotations([("rotor.fingerprint", "abc123")]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.name, secret);
    assert!(created.etag.starts_with('"'), "{}", created.etag);
    assert!(created.create_time.is_some());
    let data = b"a-signing-key-of-some-length-0001".to_vec();
    let v1 = c
        .add_secret_version()
        .set_parent(&secret)
        .set_payload(
            SecretPayload::new()
                .set_data(data.clone())
                .set_data_crc32c(crc32c::crc32c(&data) as i64),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(v1.name, format!("{secret}/versions/1"));
    assert_eq!(v1.state, secret_version::State::Enabled);
    assert!(v1.client_specified_payload_checksum);
    let v2 = c
        .add_secret_version()
        .set_parent(&secret)
        .set_payload(SecretPayload::new().set_data(b"second-key".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.name, format!("{secret}/versions/2"));
    let wrong = c
        .add_secret_version()
        .set_parent(&secret)
        .set_payload(
            SecretPayload::new()
                .set_data(b"third".to_vec())
                .set_data_crc32c(crc32c::crc32c(b"third") as i64 ^ 1),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&wrong).0, Code::InvalidArgument, "{wrong:?}");
    assert_eq!(wrong.http_status_code(), Some(400));

    let got = c
        .access_secret_version()
        .set_name(format!("{secret}/versions/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.name, format!("{secret}/versions/1"));
    let payload = got.payload.unwrap();
    assert_eq!(payload.data.as_ref(), data.as_slice());
    assert_eq!(payload.data_crc32c, Some(crc32c::crc32c(&data) as i64));
    let latest = c
        .access_secret_version()
        .set_name(format!("{secret}/versions/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(latest.name, format!("{secret}/versions/2"));

    // Aliases with the current etag, then with a stale one.
    let etag0 = c.get_secret().set_name(&secret).send().await.unwrap().etag;
    let updated = c
        .update_secret()
        .with_request(aliases_request(&secret, &etag0, "current", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.version_aliases.get("current"), Some(&1));
    assert_ne!(updated.etag, etag0);
    assert_eq!(
        updated
            .annotations
            .get("rotor.fingerprint")
            .map(String::as_str),
        Some("abc123")
    );
    let stale = c
        .update_secret()
        .with_request(aliases_request(&secret, &etag0, "current", 2))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&stale).0, Code::FailedPrecondition, "{stale:?}");
    let by_alias = c
        .get_secret_version()
        .set_name(format!("{secret}/versions/current"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_alias.name, format!("{secret}/versions/1"));

    // Disable: access fails with FAILED_PRECONDITION and Google's words.
    let disabled = c
        .disable_secret_version()
        .set_name(format!("{secret}/versions/1"))
        .set_etag(&v1.etag)
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.state, secret_version::State::Disabled);
    let denied = c
        .access_secret_version()
        .set_name(format!("{secret}/versions/current"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&denied),
        (
            Code::FailedPrecondition,
            format!("Secret Version [{secret}/versions/1] is in DISABLED state.")
        )
    );
    let missing = c
        .access_secret_version()
        .set_name(format!("{secret}/versions/7"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&missing).0, Code::NotFound);
    let listed = c
        .list_secret_versions()
        .set_parent(&secret)
        .send()
        .await
        .unwrap();
    let states: Vec<_> = listed
        .versions
        .iter()
        .map(|v| {
            (
                v.name.rsplit('/').next().unwrap().to_string(),
                v.state.clone(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("2".to_string(), secret_version::State::Enabled),
            ("1".to_string(), secret_version::State::Disabled),
        ]
    );
    assert_eq!(listed.total_size, 2);

    // The lab's view agrees, without HTTP.
    let sm = l.lab().secret_manager();
    let snap = sm.secret(&secret).unwrap();
    assert_eq!(snap.version_aliases.get("current"), Some(&1));
    assert_eq!(snap.annotations["rotor.fingerprint"], "abc123");
    assert_eq!(snap.etag, updated.etag);
    let snap_states: Vec<_> = snap.versions.iter().map(|v| v.state).collect();
    assert_eq!(snap_states, [VersionState::Disabled, VersionState::Enabled]);
    assert_eq!(snap.versions[0].crc32c, crc32c::crc32c(&data));
    assert_eq!(
        sm.payload(&format!("{secret}/versions/current")).unwrap(),
        data
    );
    let last = sm.access_log().pop().unwrap();
    assert_eq!(
        (
            last.version.as_str(),
            last.state.as_str(),
            last.ok,
            last.code.as_str()
        ),
        (
            format!("{secret}/versions/7").as_str(),
            "",
            false,
            "NOT_FOUND"
        )
    );
    let log = sm.access_log();
    let denied_rec = &log[2];
    assert_eq!(denied_rec.version, format!("{secret}/versions/1"));
    assert_eq!(denied_rec.requested, format!("{secret}/versions/current"));
    assert_eq!(
        (
            denied_rec.state.as_str(),
            denied_rec.ok,
            denied_rec.code.as_str()
        ),
        ("DISABLED", false, "FAILED_PRECONDITION")
    );

    // Delete: a stale etag is refused, the current one deletes.
    let stale = c
        .delete_secret()
        .set_name(&secret)
        .set_etag(&etag0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&stale).0, Code::FailedPrecondition, "{stale:?}");
    c.delete_secret()
        .set_name(&secret)
        .set_etag(&updated.etag)
        .send()
        .await
        .unwrap();
    let gone = c.get_secret().set_name(&secret).send().await.unwrap_err();
    assert_eq!(
        code(&gone),
        (Code::NotFound, format!("Secret [{secret}] not found."))
    );
    assert!(sm.secret(&secret).is_none());
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_faults() {
    // A fault from the topology: the first add_version answers 500.
    let l = GcpLab::start(
        "faults:\n  - {kind: gcp, method: add_version, secret: api-key, effect: internal, count: 1}\n",
    )
    .await;
    let sm = l.lab().secret_manager();
    let secret = format!("projects/{PROJECT}/secrets/api-key");
    let h = http();
    let url = l.url();
    let r = h
        .post(format!(
            "{url}/v1/projects/{PROJECT}/secrets?secretId=api-key"
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let add = |data: &str| {
        h.post(format!("{url}/v1/{secret}:addVersion"))
            .json(&json!({"payload": {"data": base64_std(data)}}))
            .send()
    };
    let r = add("first-api-key").await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INTERNAL");
    assert!(sm.secret(&secret).unwrap().versions.is_empty());
    let r = add("first-api-key").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "ENABLED");
    assert!(l.lab().faults().list().is_empty());

    // Two accesses answer 503, the third is served; all three are in the log.
    let fault = json!({"kind": "gcp", "method": "access", "secret": "api-key",
                       "effect": "unavailable", "count": 2});
    let r = h
        .post(format!("{url}/lab/v1/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let access = || {
        h.get(format!(
            "{url}/v1/{secret}/versions/latest:access?$alt=json;enum-encoding=int"
        ))
        .send()
    };
    for _ in 0..2 {
        let r = access().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!({"code": 503, "message": "The service is currently unavailable.",
                   "status": "UNAVAILABLE"})
        );
    }
    let r = access().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["payload"]["data"], base64_std("first-api-key"));
    assert_eq!(
        body["payload"]["dataCrc32c"],
        crc32c::crc32c(b"first-api-key").to_string()
    );
    let codes: Vec<String> = sm.access_log().into_iter().map(|a| a.code).collect();
    assert_eq!(codes, ["UNAVAILABLE", "UNAVAILABLE", "OK"]);
    assert!(sm.access_log().iter().all(|a| a.state == "ENABLED"));
    assert!(l.lab().faults().list().is_empty());

    // The Rust client retries UNAVAILABLE on its own: one call, three requests.
    let c = l.client().await;
    let r = h
        .post(format!("{url}/lab/v1/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let before = sm.stats().accesses[&format!("{secret}/versions/1")];
    let got = c
        .access_secret_version()
        .set_name(format!("{secret}/versions/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.payload.unwrap().data.as_ref(), b"first-api-key");
    assert_eq!(
        sm.stats().accesses[&format!("{secret}/versions/1")],
        before + 3
    );

    // RESOURCE_EXHAUSTED is not retried: the caller sees Google's quota error.
    l.lab().faults().add(
        serde_json::from_value(
            json!({"kind": "gcp", "method": "*", "effect": "resource_exhausted",
                                      "count": 1}),
        )
        .unwrap(),
    );
    let e = c.get_secret().set_name(&secret).send().await.unwrap_err();
    let (code_, msg) = code(&e);
    assert_eq!(code_, Code::ResourceExhausted);
    assert_eq!(e.http_status_code(), Some(429));
    assert!(
        msg.starts_with("Quota exceeded for quota metric 'Read requests'"),
        "{msg}"
    );
    assert!(!e.status().unwrap().details.is_empty(), "{e:?}");

    // A fault on another secret leaves this one alone; a delay delays.
    l.lab().faults().add(
        serde_json::from_value(json!({"kind": "gcp", "method": "access", "secret": "other",
                                      "effect": "internal"}))
        .unwrap(),
    );
    l.lab().faults().add(
        serde_json::from_value(json!({"kind": "gcp", "method": "access",
                                      "secret": secret, "effect": "delay", "delay_ms": 300,
                                      "count": 1}))
        .unwrap(),
    );
    let t = Instant::now();
    let r = access().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let r = h
        .delete(format!("{url}/lab/v1/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(l.lab().faults().list().is_empty());

    // The admin endpoints.
    let stats: Value = admin(&h, &url, "stats").await;
    assert_eq!(stats["requests"]["access"], 7, "{stats}");
    assert_eq!(stats["requests"]["add_version"], 2, "{stats}");
    let log: Value = admin(&h, &url, "access-log").await;
    assert_eq!(log["accesses"].as_array().unwrap().len(), 7, "{log}");
    let secrets: Value = admin(&h, &url, "secrets").await;
    assert_eq!(secrets["secrets"][0]["name"], secret.as_str());
    assert!(!secrets.to_string().contains(&base64_std("first-api-key")));
    l.stop().await;
}

/// The lab counts calls refused for a stale etag, by method; and its quirks make it a server
/// that falls short of Google's: updates answered 200 without their annotations and aliases,
/// payloads without a CRC32C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_conflicts_are_counted_and_quirks_fall_short_of_google() {
    let l = GcpLab::start("{}").await;
    let sm = l.lab().secret_manager();
    let secret = format!("projects/{PROJECT}/secrets/quirky");
    sm.seed(&secret, &[b"one".as_slice()]).unwrap();
    let h = http();
    let url = l.url();
    let get = || async {
        let r = h.get(format!("{url}/v1/{secret}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let patch = |mask: &'static str, body: Value| {
        h.patch(format!("{url}/v1/{secret}?updateMask={mask}"))
            .json(&body)
            .send()
    };
    let e1 = get().await["etag"].as_str().unwrap().to_string();
    let r = patch(
        "annotations",
        json!({"etag": e1, "annotations": {"a": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sm.stats().etag_conflicts.is_empty());
    // The same etag again is stale: refused, and counted.
    let r = patch(
        "annotations",
        json!({"etag": e1, "annotations": {"a": "2"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "FAILED_PRECONDITION"
    );
    let v = format!("{secret}/versions/1");
    let r = h
        .post(format!("{url}/v1/{v}:disable"))
        .json(&json!({"etag": "\"stale\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let stats = sm.stats();
    assert_eq!(stats.etag_conflicts.get("update"), Some(&1), "{stats:?}");
    assert_eq!(stats.etag_conflicts.get("disable"), Some(&1), "{stats:?}");
    let admin: Value = admin(&h, &url, "stats").await;
    assert_eq!(admin["etag_conflicts"]["update"], 1, "{admin}");

    // A server that ignores annotations and aliases: 200, a new etag, nothing applied.
    sm.set_ignore_update_fields(true);
    let e2 = get().await["etag"].as_str().unwrap().to_string();
    let r = patch(
        "annotations,versionAliases",
        json!({"etag": e2, "annotations": {"b": "2"}, "versionAliases": {"x": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_ne!(body["etag"], e2.as_str());
    assert_eq!(body["annotations"], json!({"a": "1"}), "{body}");
    assert!(body.get("versionAliases").is_none(), "{body}");
    assert_eq!(
        sm.secret(&secret).unwrap().annotations.get("b"),
        None,
        "nothing applied"
    );
    sm.set_ignore_update_fields(false);
    let e3 = get().await["etag"].as_str().unwrap().to_string();
    let r = patch(
        "annotations",
        json!({"etag": e3, "annotations": {"b": "2"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["annotations"]["b"], "2");

    // A server that sends no checksums.
    let access = || async {
        let r = h.get(format!("{url}/v1/{v}:access")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    sm.set_omit_checksums(true);
    let body = access().await;
    assert_eq!(body["payload"]["data"], base64_std("one"));
    assert!(body["payload"].get("dataCrc32c").is_none(), "{body}");
    sm.set_omit_checksums(false);
    assert_eq!(
        access().await["payload"]["dataCrc32c"],
        crc32c::crc32c(b"one").to_string()
    );
    l.stop().await;
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_details() {
    let l = GcpLab::start("{}").await;
    let sm = l.lab().secret_manager();
    let secret = format!("projects/{PROJECT}/secrets/seeded");
    let names = sm
        .seed(
            &secret,
            &[b"one".as_slice(), b"two".as_slice(), b"three".as_slice()],
        )
        .unwrap();
    assert_eq!(names.last().unwrap(), &format!("{secret}/versions/3"));
    assert_eq!(sm.stats().total, 0);
    let h = http();
    let url = l.url();
    let get = |path: String| {
        let h = h.clone();
        let url = url.clone();
        async move {
            let r = h.get(format!("{url}/v1/{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // Enums: names by default, numbers with enum-encoding=int.
    let (_, v) = get(format!("{secret}/versions/1")).await;
    assert_eq!(v["state"], "ENABLED");
    assert_eq!(v["replicationStatus"], json!({"automatic": {}}));
    let (_, v) = get(format!("{secret}/versions/1?$alt=json;enum-encoding=int")).await;
    assert_eq!(v["state"], 1);
    // Paging, newest first.
    let (_, p1) = get(format!("{secret}/versions?pageSize=2")).await;
    let names_of = |p: &Value| -> Vec<String> {
        p["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names_of(&p1), ["3", "2"]);
    assert_eq!(p1["totalSize"], 3);
    let token = p1["nextPageToken"].as_str().unwrap();
    let (_, p2) = get(format!("{secret}/versions?pageSize=2&pageToken={token}")).await;
    assert_eq!(names_of(&p2), ["1"]);
    assert!(p2.get("nextPageToken").is_none());
    let (status, e) = get(format!("{secret}/versions?pageToken=bogus")).await;
    assert_eq!(
        (status, e["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    // Update masks: snake_case and camelCase; a mask field replaces the whole map.
    let patch = |mask: &str, body: Value| {
        h.patch(format!("{url}/v1/{secret}?updateMask={mask}"))
            .json(&body)
            .send()
    };
    let r = patch(
        "labels,version_aliases",
        json!({"labels": {"a": "1", "b": "2"}, "versionAliases": {"stable": "2"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let s1: Value = r.json().await.unwrap();
    assert_eq!(s1["versionAliases"], json!({"stable": "2"}));
    let r = patch("labels", json!({"labels": {"c": "3"}, "etag": s1["etag"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s2: Value = r.json().await.unwrap();
    assert_eq!(s2["labels"], json!({"c": "3"}));
    assert_eq!(s2["versionAliases"], json!({"stable": "2"}));
    assert_ne!(s2["etag"], s1["etag"]);
    // Bad annotations, an alias to a destroyed version, an unknown field, a big payload.
    let (code_of, status_of) = (
        |r: &Value| r["error"]["code"].clone(),
        |r: &Value| r["error"]["status"].clone(),
    );
    let bad = patch("annotations", json!({"annotations": {"-bad": "x"}}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        (code_of(&bad), status_of(&bad)),
        (json!(400), json!("INVALID_ARGUMENT"))
    );
    let big = "v".repeat(16 * 1024);
    let bad = patch("annotations", json!({"annotations": {"k": big}}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(status_of(&bad), "INVALID_ARGUMENT", "{bad}");
    let r = h
        .post(format!("{url}/v1/{secret}/versions/1:destroy"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let destroyed: Value = r.json().await.unwrap();
    assert_eq!(destroyed["state"], "DESTROYED");
    assert!(destroyed["destroyTime"].as_str().unwrap().ends_with('Z'));
    assert!(sm.payload(&format!("{secret}/versions/1")).is_none());
    let bad = patch("versionAliases", json!({"versionAliases": {"old": "1"}}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(status_of(&bad), "INVALID_ARGUMENT", "{bad}");
    let bad = patch("labels", json!({"colour": "red"}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        bad["error"]["message"],
        "Invalid JSON payload received. Unknown name \"colour\" at 'secret': Cannot find field."
    );
    let r = h
        .post(format!("{url}/v1/{secret}:addVersion"))
        .json(&json!({"payload": {"data": base64_std(&"x".repeat(64 * 1024 + 1))}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Rotation needs a topic and a time; `rotationPeriod` is input-only (never returned).
    let next = (chrono::Utc::now() + chrono::TimeDelta::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let bad = patch(
        "rotation",
        json!({"rotation": {"nextRotationTime": next, "rotationPeriod": "86400s"}}),
    )
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(status_of(&bad), "INVALID_ARGUMENT", "{bad}");
    let r = patch(
        "rotation,topics",
        json!({"rotation": {"nextRotationTime": next, "rotationPeriod": "86400s"},
               "topics": [{"name": "projects/p/topics/rotate"}]}),
    )
    .await
    .unwrap();
    let s3: Value = r.json().await.unwrap();
    let got: chrono::DateTime<chrono::Utc> = s3["rotation"]["nextRotationTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        got,
        next.parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        "{s3}"
    );
    assert!(s3["rotation"].get("rotationPeriod").is_none(), "{s3}");
    assert_eq!(s3["topics"], json!([{"name": "projects/p/topics/rotate"}]));
    // Delete with a stale etag is refused; with the current one it goes.
    let r = h
        .delete(format!(
            "{url}/v1/{secret}?etag={}",
            urlencode(s1["etag"].as_str().unwrap())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(sm.secret(&secret).is_some());
    let r = h
        .delete(format!(
            "{url}/v1/{secret}?etag={}",
            urlencode(s3["etag"].as_str().unwrap())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sm.secret(&secret).is_none());
    // Unknown routes and unimplemented methods answer in Google's form.
    let (status, e) = get(format!("projects/{PROJECT}/widgets")).await;
    assert_eq!(
        (status, e["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    l.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
