//! rotor with a Google Cloud Secret Manager store end to end on the lab, which serves the
//! Secret Manager API v1 beside the Kubernetes API: `playbooks/gcp-k8s.yaml` (the value's home
//! is the secret `projects/rotor-lab/secrets/service-secret`, slots are its version aliases, the
//! lock is its `rotor-lock` annotation; consumers are the demo's three Deployments) rotated by
//! the real `rotor` binary under load, with rollbacks, races and 429/503 storms.

use std::time::Duration;

use rotor_lab::{Fault, GcpEffect, GcpMethod, SecretSnapshot, VersionState};

use crate::kubernetes::{K8sEnv, stages, test_yaml};

const SECRET: &str = "projects/rotor-lab/secrets/service-secret";
const PLAYBOOK: &str = include_str!("../playbooks/gcp-k8s.yaml");

async fn gcp_env(edit: impl FnOnce(String) -> String) -> K8sEnv {
    K8sEnv::from_yaml("gcp-k8s.yaml", test_yaml(PLAYBOOK, edit)).await
}

fn secret(env: &K8sEnv) -> SecretSnapshot {
    env.lab()
        .secret_manager()
        .secret(SECRET)
        .expect("the secret exists")
}

fn alias(s: &SecretSnapshot, name: &str) -> Option<i64> {
    s.version_aliases.get(name).copied()
}

fn state(s: &SecretSnapshot, n: i64) -> VersionState {
    s.versions.iter().find(|v| v.number == n).unwrap().state
}

/// A Secret Manager fault on every secret.
fn fault(
    method: GcpMethod,
    effect: GcpEffect,
    count: Option<u64>,
    probability: Option<f64>,
) -> Fault {
    Fault::Gcp {
        method,
        secret: None,
        effect,
        delay_ms: None,
        count,
        probability,
    }
}

/// The fingerprint rotor recorded for the version in the primary alias.
fn primary_fp(env: &K8sEnv) -> String {
    let s = secret(env);
    let n = alias(&s, "rotor-primary").expect("a primary alias");
    s.annotations[&format!("rotor-fp-{n}")].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_full_rotation_under_load_has_no_failed_request() {
    let env = gcp_env(|y| y).await;
    env.up().await;
    let s = secret(&env);
    assert_eq!(alias(&s, "rotor-primary"), Some(1));
    assert_eq!(alias(&s, "rotor-secondary"), None);
    assert_eq!(s.annotations["rotor-secret"], "service-secret");
    assert!(s.annotations["rotor-fp-1"].starts_with("sha256:"));
    let a = primary_fp(&env);
    env.rotor(&["check"]).await.assert_code(0);
    let load = env.load();
    let log = env.lab().secret_manager().access_log();
    let updates = env.lab().secret_manager().stats().requests["update"];
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    // One writer per secret: the lock's claim, stage updates and renewals take turns with the
    // steps' own writes, so none of them is ever refused for the other's etag.
    let stats = env.lab().secret_manager().stats();
    assert!(
        stats.requests["update"] >= updates + 8,
        "the lock and the steps wrote the secret: {stats:?}"
    );
    assert!(
        stats.etag_conflicts.is_empty(),
        "rotor raced its own writes: {:?}",
        stats.etag_conflicts
    );
    assert_eq!(
        stages(&out),
        [
            "T1.forward",
            "T2.forward",
            "T3.forward",
            "T4.forward",
            "T5.forward"
        ]
    );
    let s = secret(&env);
    assert_eq!(alias(&s, "rotor-primary"), Some(2), "{s:?}");
    assert_eq!(alias(&s, "rotor-secondary"), None, "{s:?}");
    assert_eq!(state(&s, 1), VersionState::Destroyed);
    assert_eq!(state(&s, 2), VersionState::Enabled);
    let b = primary_fp(&env);
    assert_ne!(a, b);
    // History: the destroyed version's fingerprint stays; the lock was given back.
    assert_eq!(s.annotations["rotor-fp-1"], a);
    assert!(!s.annotations.contains_key("rotor-lock"), "{s:?}");
    assert!(s.annotations.contains_key("rotor-last-rotation"));
    // Every Deployment runs the new value alone.
    for d in ["auth", "backend", "analytics"] {
        assert_eq!(env.template_annotation(d).await.unwrap(), b, "{d}");
    }
    // Version 1 was read while enabled only; nothing was read once it was disabled.
    let accesses = &env.lab().secret_manager().access_log()[log.len()..];
    assert!(!accesses.is_empty(), "rotor never accessed a version");
    for r in accesses {
        assert_eq!(r.state, "ENABLED", "{r:?}");
        assert!(r.ok, "{r:?}");
    }
    env.rotor(&["check"]).await.assert_code(0);
    assert_eq!(env.journal().await["state"], "S5");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_rollback_from_each_stage_returns_to_s0_under_load() {
    let env = gcp_env(|y| y).await;
    env.up().await;
    let a = primary_fp(&env);
    let load = env.load();
    for until in ["S1", "S2", "S3", "S4"] {
        env.rotor(&["rotate", "--yes", "--until", until])
            .await
            .assert_code(0);
        let j = env.journal().await;
        assert_eq!(j["state"], until);
        let b_version: i64 = j["new"]["version"].as_str().unwrap().parse().unwrap();
        let s = secret(&env);
        match until {
            "S1" | "S2" => {
                assert_eq!(alias(&s, "rotor-primary"), Some(1));
                assert_eq!(alias(&s, "rotor-secondary"), Some(b_version));
            }
            "S3" => {
                assert_eq!(alias(&s, "rotor-primary"), Some(b_version));
                assert_eq!(alias(&s, "rotor-secondary"), Some(1));
            }
            _ => {
                assert_eq!(alias(&s, "rotor-primary"), Some(b_version));
                assert_eq!(alias(&s, "rotor-secondary"), None);
                assert_eq!(state(&s, 1), VersionState::Disabled);
            }
        }
        env.rotor(&["rollback"]).await.assert_code(0);
        let j = env.journal().await;
        assert_eq!(j["state"], "S0", "after rollback from {until}");
        assert_eq!(j["status"], "rolled_back");
        let s = secret(&env);
        assert_eq!(
            alias(&s, "rotor-primary"),
            Some(1),
            "after rollback from {until}"
        );
        assert_eq!(
            alias(&s, "rotor-secondary"),
            None,
            "after rollback from {until}"
        );
        assert_eq!(state(&s, 1), VersionState::Enabled);
        assert_eq!(
            state(&s, b_version),
            VersionState::Destroyed,
            "B is destroyed by T1's inverse"
        );
        assert_eq!(primary_fp(&env), a);
        for d in ["auth", "backend", "analytics"] {
            assert_eq!(
                env.template_annotation(d).await.unwrap(),
                a,
                "{d} after {until}"
            );
        }
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_two_rotors_race_one_holds_the_annotation_lock_the_other_names_it() {
    let env = gcp_env(|y| y).await;
    env.up().await;
    // The holder's `stage` field, not the whole JSON: its times and rotation id contain "T2"
    // from 20:00 to 23:59 UTC, when the claim is still at S0.
    env.two_rotors_race(async || {
        lock_stage(&secret(&env)).is_some_and(|stage| stage.starts_with("T2"))
    })
    .await;
    env.finish().await;
}

/// The stage the `rotor-lock` annotation records, if the secret carries one.
fn lock_stage(s: &SecretSnapshot) -> Option<String> {
    let h: serde_json::Value = serde_json::from_str(s.annotations.get("rotor-lock")?).ok()?;
    h["stage"].as_str().map(String::from)
}

/// A server that answers 200 to an update but ignores its annotations and aliases (as some
/// emulators and proxies do) is named, not trusted: the lock claim fails saying so instead of
/// rotor "holding" a lock that does not exist, and so does `init`'s alias. A server that sends
/// payloads without their CRC32C is named too, not taken for a corrupt secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_a_server_that_drops_fields_or_checksums_is_named_not_trusted() {
    use rotor::store::Store as _;
    let env = gcp_env(|y| y).await;
    env.up().await;
    let sm = env.lab().secret_manager();
    let before = secret(&env);
    sm.set_ignore_update_fields(true);
    let out = env.rotor(&["rotate", "--yes"]).await;
    assert_ne!(out.code(), Some(0), "{out:#?}");
    for needle in [
        "the server accepted the update but did not apply it",
        "rotor-lock",
        "ROTOR_GCP_ENDPOINT",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    let after = secret(&env);
    assert!(!after.annotations.contains_key("rotor-lock"), "{after:?}");
    assert_eq!(
        after.versions.len(),
        before.versions.len(),
        "nothing was rotated under a lock that does not exist"
    );
    // `init`: the secret is created and its first version added, but the alias never lands.
    let mut spec = match &env.playbook().store {
        rotor::playbook::StoreSpec::Gcp(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    spec.endpoint = Some(env.lab().url());
    spec.name = "fresh-secret".into();
    let fresh = rotor::store::gcp::GcpStore::new(&spec, "fresh-secret");
    let err = fresh
        .init(&rotor::secret::SecretValue::new("a-first-value".into()))
        .await
        .expect_err("the alias was not applied")
        .to_string();
    assert!(
        err.contains("the server accepted the update but did not apply it")
            && err.contains("rotor-primary"),
        "{err}"
    );
    sm.set_ignore_update_fields(false);
    // No checksums: the endpoint is named, the secret is not called corrupt.
    sm.set_omit_checksums(true);
    let out = env.rotor(&["check"]).await;
    assert_ne!(out.code(), Some(0), "{out:#?}");
    for needle in ["returns no checksums", "ROTOR_GCP_ENDPOINT", "real API"] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("corrupt"), "{}", out.stderr);
    assert!(!out.stderr.contains("backup"), "{}", out.stderr);
    sm.set_omit_checksums(false);
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    env.finish().await;
}

/// Two lock claims written from the same etag: exactly one lands, the other is refused by the
/// etag and re-decides into "held".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_lock_claims_from_one_etag_let_exactly_one_win_and_carry_a_handover_request() {
    use rotor::engine::lock::gcp::GcpLock;
    use rotor::engine::lock::{Holder, LockError, RotationLock};
    use rotor::store::Store as _;
    let env = gcp_env(|y| y).await;
    env.up().await;
    let spec = match &env.playbook().store {
        rotor::playbook::StoreSpec::Gcp(s) => {
            let mut s = s.clone();
            s.endpoint = Some(env.lab().url());
            s
        }
        other => panic!("{other:?}"),
    };
    let store = || std::sync::Arc::new(rotor::store::gcp::GcpStore::new(&spec, "service-secret"));
    assert!(store().exists().await.unwrap());
    // Two claims built from one read (one etag): exactly one write lands.
    {
        use rotor::engine::lock::remote::{Backend as _, Write};
        let lock = GcpLock::new(store());
        let b = lock.backend();
        let read = b.get().await.unwrap().expect("the secret exists");
        let now = chrono::Utc::now();
        let mut x = Holder::me("rotate");
        x.identity = "x@host pid 7".into();
        let mut y = Holder::me("rotate");
        y.identity = "y@host pid 8".into();
        let cx = b.claim(Some(&read), &x, now, Duration::from_secs(30));
        let cy = b.claim(Some(&read), &y, now, Duration::from_secs(30));
        let won = b.put(&cx, false).await.ok().expect("the first claim lands");
        assert!(
            matches!(b.put(&cy, false).await, Err(Write::Raced)),
            "the stale etag is refused"
        );
        assert_eq!(b.holder_of(&won).unwrap().identity, "x@host pid 7");
        b.put(&b.released(&won, now), false)
            .await
            .ok()
            .expect("released");
    }
    let (a, b) = (GcpLock::new(store()), GcpLock::new(store()));
    let mut ha = Holder::me("rotate");
    ha.identity = "a@host pid 1".into();
    let mut hb = Holder::me("rotate");
    hb.identity = "b@host pid 2".into();
    let (ra, rb) = tokio::join!(a.acquire(ha, false), b.acquire(hb, false));
    let (won, lost) = match (ra, rb) {
        (Ok(g), Err(e)) | (Err(e), Ok(g)) => (g, e),
        (Ok(_), Ok(_)) => panic!("both rotors took the lock"),
        (Err(x), Err(y)) => panic!("nobody took the lock: {x} / {y}"),
    };
    let LockError::Held(h) = lost else {
        panic!("the loser should name the holder: {lost}")
    };
    assert!(h.identity.ends_with("pid 1") || h.identity.ends_with("pid 2"));
    assert!(lost_text_names(&LockError::Held(h)));
    won.release().await.unwrap();
    assert!(!secret(&env).annotations.contains_key("rotor-lock"));
    // An emergency rekey's handover request reaches the holder through the annotation, with
    // the etag read just before, and never takes the claim.
    let holder_lock = GcpLock::new(store()).with_duration(Duration::from_secs(3));
    let mut hr = Holder::me("rotate");
    hr.identity = "r@host pid 3".into();
    let g = holder_lock.acquire(hr, false).await.unwrap();
    let rekey = GcpLock::new(store());
    let seen = rekey.holder().await.unwrap().expect("held");
    let req = rotor::engine::lock::Handover {
        by: "k@host pid 4".into(),
        reason: "leak".into(),
        at: chrono::Utc::now(),
        to: seen.identity.clone(),
        to_since: seen.since,
        until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    assert!(rekey.request_handover(&seen, &req).await.unwrap());
    assert!(secret(&env).annotations["rotor-lock"].contains("k@host pid 4"));
    crate::common::wait_for(
        "the holder sees the request",
        Duration::from_secs(10),
        async || g.handover().is_some(),
    )
    .await;
    assert_eq!(
        rekey.holder().await.unwrap().unwrap().identity,
        "r@host pid 3"
    );
    g.release().await.unwrap();
    let mut hk = Holder::me("rekey");
    hk.identity = "k@host pid 4".into();
    let g = rekey.acquire(hk, false).await.unwrap();
    assert!(rekey.holder().await.unwrap().unwrap().handover.is_none());
    g.release().await.unwrap();
    // No rotation ran (one value only), so there is nothing for the leak check to look for.
}

fn lost_text_names(e: &rotor::engine::lock::LockError) -> bool {
    let t = e.to_string();
    t.contains("another rotation of this secret is running") && t.contains("@host pid")
}

/// 429 and 503 on a third of every Secret Manager call: rotor retries with back-off and
/// completes, with no failed request; every retried call is in the lab's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_429_and_503_storms_are_retried_and_the_rotation_completes() {
    // The lock's calls retry for a third of its lease only (a renewal must give up before the
    // claim lapses): with the tests' 4s lease, 1.3s, and at 40% of calls failing six failures
    // in a row within it came up in about one run in twenty. A 15s lease gives them 5s.
    let env = gcp_env(|y| {
        assert!(y.contains("lease_duration: 4s"));
        y.replace("lease_duration: 4s", "lease_duration: 15s")
    })
    .await;
    env.up().await;
    let before = env.lab().secret_manager().stats().total;
    for effect in [GcpEffect::ResourceExhausted, GcpEffect::Unavailable] {
        env.lab()
            .faults()
            .add(fault(GcpMethod::Any, effect, None, Some(0.2)));
    }
    // The first versions.add lands but its answer is lost: rotor must find it, not add again.
    env.lab().faults().add(fault(
        GcpMethod::AddVersion,
        GcpEffect::LostAnswer,
        Some(1),
        None,
    ));
    let load = env.load();
    let out = env.rotor(&["rotate", "--yes"]).await;
    let report = load.stop().await;
    let lost_answer_spent = !env.lab().faults().list().iter().any(|f| {
        matches!(
            f,
            Fault::Gcp {
                effect: GcpEffect::LostAnswer,
                ..
            }
        )
    });
    env.lab().faults().clear();
    out.assert_code(0);
    assert!(
        lost_answer_spent,
        "the add whose answer was lost never happened"
    );
    env.assert_no_failures(&report);
    let stats = env.lab().secret_manager().stats();
    assert!(stats.total > before, "{stats:?}");
    let s = secret(&env);
    assert_eq!(alias(&s, "rotor-primary"), Some(2));
    assert_eq!(state(&s, 1), VersionState::Destroyed);
    assert_eq!(
        s.versions.len(),
        2,
        "a retried add must not add the value twice: {s:?}"
    );
    env.finish().await;
}

/// A storm that outlasts the retry deadline: the step fails naming the method and what to do,
/// the rotation rolls back to S0 by itself, and the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_storm_beyond_the_deadline_fails_the_step_and_rolls_back() {
    let env = gcp_env(|y| y.replace("retry_deadline: 60s", "retry_deadline: 2s")).await;
    env.up().await;
    let a = primary_fp(&env);
    // Every versions.add is throttled: T1 cannot publish B.
    env.lab().faults().add(fault(
        GcpMethod::AddVersion,
        GcpEffect::ResourceExhausted,
        None,
        None,
    ));
    let load = env.load();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    for needle in [
        "versions.add",
        "RESOURCE_EXHAUSTED",
        "retry_deadline",
        "rolled back to S0",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    let tried = env.lab().secret_manager().stats().requests["add_version"];
    assert!(tried >= 3, "retried with back-off: {tried} attempts");
    let s = secret(&env);
    assert_eq!(s.versions.len(), 1, "{s:?}");
    assert_eq!(alias(&s, "rotor-primary"), Some(1));
    assert_eq!(alias(&s, "rotor-secondary"), None);
    assert!(!s.annotations.contains_key("rotor-lock"), "{s:?}");
    assert_eq!(primary_fp(&env), a);
    env.lab().faults().clear();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert_ne!(primary_fp(&env), a);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

/// An exec consumer standing in for Cloud Run: its `apply` command gets version references,
/// never values, and the "platform" (tests/fixtures/gcp/fake_cloudrun.py) resolves them through
/// the Secret Manager API itself, as Cloud Run's `--update-secrets` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_exec_consumer_points_a_service_at_versions_never_values() {
    let (dir, lab) =
        crate::common::scratch_lab("rotor-gcp-exec-", Default::default(), |_| {}).await;
    let fault = dir.path().join("fault");
    let mut fake = crate::cloudrun::FakeRun::new(&dir.path().join("run"));
    // A plain-HTTP front end here (tests/cloudrun.rs has the HTTPS fleet).
    let target = fake.service(
        "api",
        &[
            crate::common::rotor_exe(),
            "demo-service",
            "--name",
            "api",
            "--fault-file",
            fault.to_str().unwrap(),
        ],
        None,
    );
    let yaml = format!(
        r#"secret: service-secret
environment: development
store:
  kind: gcp
  project: rotor-lab
  name: service-secret
  credentials: anonymous
timings: {{grace: 0s, retention: 0s, rollout_timeout: 30s}}
consumers:
  - name: api
    role: validator
    kind: exec
    apply: [gcloud, run, services, update, api, "--update-secrets={{secret_refs}}", "--remove-secrets={{unset_names}}", "--tag=v{{primary_version}}"]
    targets: ["{target}"]
    slots: {{primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}}
    probes: [{{type: header, path: /api/ping, header: X-Service-Secret}}]
"#
    );
    let playbook = dir.path().join("run.yaml");
    std::fs::write(&playbook, yaml).unwrap();
    let env = fake.env(&lab.url(), "rotor-lab");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push(playbook.to_str().unwrap());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::common::run_rotor(&all, &env)
    };
    run(&["init"]).assert_code(0);
    let v1 = String::from_utf8(
        lab.secret_manager()
            .payload(&format!("{SECRET}/versions/1"))
            .unwrap(),
    )
    .unwrap();
    let up = run(&["up"]);
    up.assert_code(0);
    let rotate = run(&["rotate", "--yes"]);
    rotate.assert_code(0);
    // Up, T2 (widen) and T4 (narrow): a validator-only consumer is pointed three times.
    let calls = fake.calls("api");
    let argv: Vec<Vec<String>> = calls
        .iter()
        .map(|c| serde_json::from_value(c["argv"].clone()).unwrap())
        .collect();
    assert_eq!(
        argv,
        [
            [
                "--update-secrets=SERVICE_SECRET=service-secret:1",
                "--remove-secrets=SERVICE_SECRET_PREVIOUS",
                "--tag=v1"
            ],
            [
                "--update-secrets=SERVICE_SECRET=service-secret:1,SERVICE_SECRET_PREVIOUS=service-secret:2",
                "--remove-secrets=",
                "--tag=v1"
            ],
            [
                "--update-secrets=SERVICE_SECRET=service-secret:2",
                "--remove-secrets=SERVICE_SECRET_PREVIOUS",
                "--tag=v2"
            ],
        ]
        .map(|a| {
            ["run", "services", "update", "api"]
                .into_iter()
                .chain(a)
                .map(String::from)
                .collect::<Vec<_>>()
        })
    );
    assert_eq!(calls[1]["env"]["ROTOR_PRIMARY_VERSION"], "1");
    assert_eq!(calls[1]["env"]["ROTOR_SECONDARY_VERSION"], "2");
    assert_eq!(calls[2]["env"]["ROTOR_SECONDARY_VERSION"], "");
    let s = lab.secret_manager().secret(SECRET).unwrap();
    assert_eq!(alias(&s, "rotor-primary"), Some(2));
    assert_eq!(
        calls[2]["env"]["ROTOR_PRIMARY_FINGERPRINT"],
        s.annotations["rotor-fp-2"].as_str()
    );
    // The service now holds version 2 alone; no value reached the hook's argv or environment.
    let held: serde_json::Value = reqwest::get(format!("http://{target}/fingerprints"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        held["names"]["SERVICE_SECRET"].as_str(),
        Some(s.annotations["rotor-fp-2"].as_str()),
        "{held}"
    );
    let recorded = std::fs::read_to_string(dir.path().join("run/api/calls.jsonl")).unwrap();
    for n in [1, 2] {
        // Version 1 is destroyed by now: its value is what the service held before.
        let value = match n {
            1 => v1.clone(),
            _ => String::from_utf8(
                lab.secret_manager()
                    .payload(&format!("{SECRET}/versions/2"))
                    .unwrap(),
            )
            .unwrap(),
        };
        assert!(
            !recorded.contains(&value),
            "value {n} reached the apply command"
        );
        for out in [&up.stdout, &up.stderr, &rotate.stdout, &rotate.stderr] {
            assert!(!out.contains(&value), "value {n} reached rotor's output");
        }
    }
    // The next revision breaks once it holds two values: rotor cannot hold traffic back from a
    // service it does not run, so it proves the target right after `apply`, and rolls back.
    std::fs::write(&fault, "two-keys").unwrap();
    let broken = run(&["--output", "json", "rotate", "--yes"]);
    broken.assert_code(3);
    let refused: Vec<serde_json::Value> = broken
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "instance_gated" && e["passed"] == false)
        .collect();
    assert_eq!(refused.len(), 1, "{}", broken.stdout);
    assert_eq!(refused[0]["consumer"], "api");
    assert!(
        broken.stderr.contains("T2 widen forward failed"),
        "{}",
        broken.stderr
    );
    assert_eq!(
        alias(
            &lab.secret_manager().secret(SECRET).unwrap(),
            "rotor-primary"
        ),
        Some(2)
    );
    std::fs::write(&fault, "").unwrap();
    run(&["check"]).assert_code(0);
    // Cloud Run kept the references of the revision that serves: version 2 alone.
    assert_eq!(
        fake.serving("api").unwrap()["secrets"],
        serde_json::json!({"SERVICE_SECRET": "service-secret:2"})
    );
    drop(fake);
    lab.shutdown().await;
}

/// Application Default Credentials: with `GOOGLE_APPLICATION_CREDENTIALS` naming a
/// service-account key (and no `credentials: anonymous`), every call rotor makes carries a JWT
/// signed with that key; a key file that is not there is reported as a credentials problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_service_account_key_from_the_environment_signs_every_call() {
    let (dir, lab) = crate::common::scratch_lab("rotor-gcp-adc-", Default::default(), |_| {}).await;
    let pem = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl generates the test key");
    assert!(
        pem.status.success(),
        "{}",
        String::from_utf8_lossy(&pem.stderr)
    );
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "rotor-lab",
        "private_key_id": "k-123",
        "private_key": String::from_utf8(pem.stdout).unwrap(),
        "client_email": "rotor@rotor-lab.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    });
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, key.to_string()).unwrap();
    let playbook = dir.path().join("run.yaml");
    std::fs::write(
        &playbook,
        "secret: service-secret\nenvironment: development\nstore: {kind: gcp, project: rotor-lab, name: service-secret}\n\
         consumers:\n  - {name: api, role: validator, kind: exec, apply: [\"true\"], targets: [\"127.0.0.1:9\"],\n     \
         slots: {primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}, probes: [{type: header, path: /api/ping, header: X-Service-Secret}]}\n",
    )
    .unwrap();
    let run = |args: &[&str], creds: &std::path::Path| {
        let mut all = args.to_vec();
        all.push(playbook.to_str().unwrap());
        let env = [
            ("ROTOR_GCP_ENDPOINT", lab.url()),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                creds.display().to_string(),
            ),
            ("HOME", dir.path().display().to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::common::run_rotor(&all, &env)
    };
    run(&["init"], &key_file).assert_code(0);
    run(&["status"], &key_file).assert_code(0);
    let callers = lab.secret_manager().stats().callers;
    assert_eq!(
        callers.keys().collect::<Vec<_>>(),
        ["jwt iss=rotor@rotor-lab.iam.gserviceaccount.com kid=k-123"],
        "{callers:?}"
    );
    assert!(lab.secret_manager().secret(SECRET).is_some());
    let missing = run(&["status"], &dir.path().join("no-such-key.json"));
    assert_ne!(missing.code(), Some(0));
    for needle in [
        "cannot set up the Secret Manager client",
        "no-such-key.json",
        "help: set up Application Default Credentials",
    ] {
        assert!(
            missing.stderr.contains(needle),
            "{needle}: {}",
            missing.stderr
        );
    }
    lab.shutdown().await;
}

/// Secret Manager's own schedule: `status` and `rotate --if-due` read `next_rotation_time`,
/// and a rotation that reaches S5 sets it to now + the playbook's `max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_rotation_schedule_is_read_and_advanced() {
    let env = gcp_env(|y| format!("max_age: 30d\n{y}")).await;
    env.up().await;
    let url = format!("{}/v1/{SECRET}", env.lab().url());
    let http = reqwest::Client::new();
    let at = chrono::Utc::now() + chrono::Duration::minutes(10);
    let resp = http
        .patch(format!("{url}?updateMask=topics,rotation"))
        .json(&serde_json::json!({
            "topics": [{"name": "projects/rotor-lab/topics/rotations"}],
            "rotation": {"nextRotationTime": at.to_rfc3339(), "rotationPeriod": "86400s"},
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let status = env.rotor(&["--output", "json", "status"]).await;
    status.assert_code(0);
    let next = status.last_json()["next_rotation"]
        .as_str()
        .unwrap()
        .to_string();
    let next: chrono::DateTime<chrono::Utc> = next.parse().unwrap();
    assert!((next - at).num_seconds().abs() <= 1, "{next} vs {at}");
    let not_due = env.rotor(&["rotate", "--if-due"]).await;
    not_due.assert_code(9);
    assert!(
        not_due
            .stdout
            .contains("Secret Manager schedules the next rotation"),
        "{}",
        not_due.stdout
    );
    let started = chrono::Utc::now();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let secret: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    let advanced: chrono::DateTime<chrono::Utc> = secret["rotation"]["nextRotationTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // rotor writes the next time from max_age (Google never returns rotation_period).
    let expected = started + chrono::Duration::days(30);
    assert!(
        (advanced - expected).num_seconds().abs() <= 60,
        "next rotation {advanced}, expected about {expected}"
    );
    assert!(
        secret["annotations"]["rotor-last-rotation"].is_string(),
        "{secret}"
    );
    env.finish().await;
}

/// A secret that services already use, adopted by pointing `rotor-primary` at the version in
/// use: `init` refuses to add a value beside it (and says how to adopt), and the rotation
/// records the adopted version's fingerprint before it disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_an_adopted_secret_rotates_and_keeps_its_history() {
    let env = gcp_env(|y| y).await;
    let value = "adopted-value-0123456789abcdefghijklmnopqrstuv";
    env.lab()
        .secret_manager()
        .seed(SECRET, &[value.as_bytes()])
        .unwrap();
    let init = env.rotor(&["init"]).await;
    init.assert_code(2);
    assert!(
        init.stderr
            .contains("--update-version-aliases=rotor-primary=1"),
        "{}",
        init.stderr
    );
    assert_eq!(secret(&env).versions.len(), 1, "init added nothing");
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/v1/{SECRET}?updateMask=versionAliases",
            env.lab().url()
        ))
        .json(&serde_json::json!({"versionAliases": {"rotor-primary": "1"}}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    env.rotor(&["up"]).await.assert_code(0);
    let load = env.load();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let s = secret(&env);
    assert_eq!(alias(&s, "rotor-primary"), Some(2));
    assert_eq!(state(&s, 1), VersionState::Destroyed);
    let adopted = rotor::secret::SecretValue::new(value.into()).fingerprint("service-secret");
    assert_eq!(s.annotations["rotor-fp-1"], adopted.as_str(), "{s:?}");
    assert!(s.annotations.contains_key("rotor-fp-2"));
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}
