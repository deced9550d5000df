//! Per-instance gates, the canary and recovery, on the local demo fleet: a new instance takes
//! no traffic before rotor proved it, a validator that fails open is refused before anything
//! changes, and a broken wave is recovered by rotor alone once its cause is fixed.
//!
//! Faults come from the demo service's `--fault-file` (read on every request): `two-keys`
//! breaks an instance only while it holds a secondary (the bug that reaches production: it
//! passes its health check and every test with one key), `accept-all` fails open,
//! `reject-all` rejects everything.

use crate::common::Env;

/// The demo fleet with analytics reading its faults from `faults/analytics` (every instance)
/// and `faults/<instance id>` (one instance), relative to the playbook's directory.
fn faulty_fleet() -> Env {
    Env::with(|y| {
        y.replace(
            r#""--primary-env", "JWT_SECRET_KEY", "--secondary-env", "JWT_SECRET_KEY_PREVIOUS"]"#,
            r#""--primary-env", "JWT_SECRET_KEY", "--secondary-env", "JWT_SECRET_KEY_PREVIOUS",
              "--fault-file", "faults/analytics", "--fault-file", "faults/{instance}"]"#,
        )
    })
}

/// Sets (or with `None` clears) the fault of `target` (`analytics` or an instance id).
fn fault(env: &Env, target: &str, fault: Option<&str>) {
    let dir = env.path().join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(target);
    match fault {
        Some(f) => std::fs::write(path, f).unwrap(),
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Ids of the published instances of `consumer`, from `rotor status --output json`.
async fn instance_ids(env: &Env, consumer: &str) -> Vec<String> {
    let out = env.rotor(&["--output", "json", "status"]).await;
    out.assert_code(0);
    let status = out.last_json();
    let mut ids: Vec<String> = status["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("status lists no instances: {status}"))
        .iter()
        .filter(|i| i["consumer"] == consumer)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// `T2.forward.failed`, … for every step of the journal.
fn steps(journal: &serde_json::Value) -> Vec<String> {
    journal["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "{}.{}.{}",
                        s["transition"].as_str().unwrap(),
                        s["direction"].as_str().unwrap(),
                        s["outcome"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_whose_new_instances_fail_the_gate_takes_no_traffic_and_is_rolled_back() {
    let env = faulty_fleet();
    env.up().await;
    let a = env.store_primary();
    let before = env.endpoints("analytics");
    // `status` lists every serving instance with its address, pid and fingerprints.
    let status = env.rotor(&["--output", "json", "status"]).await.last_json();
    let listed = status["instances"].as_array().unwrap();
    assert_eq!(listed.len(), 6, "{status}");
    for i in listed {
        assert!(i["pid"].as_i64().is_some_and(|p| p > 1), "{i}");
        assert_eq!(i["primary"], a.as_str(), "{i}");
        if i["consumer"] == "analytics" {
            assert!(
                before.contains(&i["addr"].as_str().unwrap().to_string()),
                "{i}"
            );
        }
    }
    // One key: healthy. Two keys: every value rejected, /healthz still 200.
    fault(&env, "analytics", Some("two-keys"));
    env.rotor(&["check"]).await.assert_code(0);

    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(3);
    env.assert_no_failures(&report);
    assert!(
        out.stderr.contains("analytics") && out.stderr.contains("failed its gate"),
        "{}",
        out.stderr
    );
    // The gate failed the first new analytics instance during T2; T2 was undone, then T1.
    let j = env.journal();
    assert_eq!(j["state"], "S0");
    assert_eq!(j["status"], "rolled_back");
    let failed: Vec<&serde_json::Value> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{j}");
    assert_eq!(failed[0]["transition"], "T2");
    // The refused instance never joined the endpoints: the analytics instances serving now are
    // the ones that served before, and nothing else was published on the way.
    assert_eq!(env.endpoints("analytics"), before);
    let gated: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["event"] == "instance_gated")
        .collect();
    let refused: Vec<&serde_json::Value> = gated
        .iter()
        .filter(|e| e["consumer"] == "analytics" && e["passed"] == false)
        .collect();
    assert_eq!(refused.len(), 1, "{gated:?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains("which it must accept"),
        "{}",
        refused[0]
    );
    // The old value still works everywhere, and the fleet is clean.
    assert_eq!(env.store_primary(), a);
    fault(&env, "analytics", None);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_that_fails_open_is_refused_at_preflight_and_nothing_changes() {
    let env = faulty_fleet();
    env.up().await;
    fault(&env, "analytics", Some("accept-all"));
    let store = std::fs::read(&match &env.pb.store {
        rotor::playbook::StoreSpec::Local { path } => path.clone(),
        _ => unreachable!(),
    })
    .unwrap();

    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(11);
    assert!(
        out.stderr.contains("analytics") && out.stderr.contains("fails open"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.store()["primary"],
        serde_json::from_slice::<serde_json::Value>(&store).unwrap()["primary"]
    );
    assert!(env.store()["secondary"].is_null());
    assert!(
        !env.pb.state_dir.join("journal.json").exists() || env.journal()["status"] != "running",
        "a journal was started"
    );

    // check names the consumer and every instance that fails open.
    let check = env.rotor(&["check"]).await;
    check.assert_code(5);
    for id in instance_ids(&env, "analytics").await {
        assert!(
            check
                .stdout
                .contains(&format!("analytics {id}: fails open")),
            "{id} not named: {}",
            check.stdout
        );
    }
    fault(&env, "analytics", None);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_that_fails_open_only_with_two_keys_is_caught_at_the_first_gate() {
    let env = faulty_fleet();
    env.up().await;
    fault(&env, "analytics", Some("two-keys-open"));
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(3);
    assert!(out.stderr.contains("fails open"), "{}", out.stderr);
    // Caught while widening, never as late as T4's negative proof.
    let stages = steps(&env.journal());
    assert!(
        stages.contains(&"T2.forward.failed".to_string()),
        "{stages:?}"
    );
    assert!(
        !stages
            .iter()
            .any(|s| s.starts_with("T3.forward") || s.starts_with("T4"))
    );
    assert_eq!(env.journal()["state"], "S0");
    fault(&env, "analytics", None);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wholly_broken_wave_is_recovered_by_rollback_alone_once_the_cause_is_fixed() {
    let env = faulty_fleet();
    env.up().await;
    let a = env.store_primary();
    // The rotation stops after its T2 wave (rotor killed); then the analytics instances break,
    // and so does every instance started while the cause lasts.
    let fp = env.failpoint("T2.forward.end").await;
    env.crash(&["rotate", "--yes"], &fp).await;
    let broken = instance_ids(&env, "analytics").await;
    assert_eq!(broken.len(), 2);
    for id in &broken {
        fault(&env, id, Some("reject-all"));
    }
    fault(&env, "analytics", Some("reject-all"));

    // check sees it although every instance reports the right fingerprints.
    let check = env.rotor(&["check"]).await;
    check.assert_code(5);
    for id in &broken {
        assert!(
            check.stdout.contains(&format!("analytics {id}: "))
                && check.stdout.contains("which it must accept"),
            "{id}: {}",
            check.stdout
        );
    }
    // While the cause lasts, rollback cannot prove a replacement: it stops, names it, and
    // leaves the serving instances alone.
    let rb = env.rotor(&["rollback"]).await;
    rb.assert_code(6);
    assert!(rb.stderr.contains("failed its gate"), "{}", rb.stderr);
    assert_eq!(instance_ids(&env, "analytics").await, broken);

    // The cause is fixed (new instances are sound; the broken ones stay broken): rollback
    // alone replaces them. Nothing is killed by hand.
    fault(&env, "analytics", None);
    let rb = env.rotor(&["rollback"]).await;
    rb.assert_code(0);
    let now = instance_ids(&env, "analytics").await;
    assert_eq!(now.len(), 2);
    assert!(now.iter().all(|id| !broken.contains(id)), "{now:?}");
    assert_eq!(env.journal()["status"], "rolled_back");
    assert_eq!(env.store_primary(), a);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replaces_instances_that_hold_the_right_values_but_fail_their_proof() {
    let env = faulty_fleet();
    env.up().await;
    let fp = env.failpoint("T2.forward.end").await;
    env.crash(&["rotate", "--yes"], &fp).await;
    // Both analytics instances hold exactly what S2 wants, and reject everything.
    let broken = instance_ids(&env, "analytics").await;
    for id in &broken {
        fault(&env, id, Some("reject-all"));
    }
    env.rotor(&["check"]).await.assert_code(5);

    let out = env.rotor(&["--output", "json", "resume", "--yes"]).await;
    out.assert_code(0);
    assert_eq!(env.journal()["state"], "S5");
    let now = instance_ids(&env, "analytics").await;
    assert!(now.iter().all(|id| !broken.contains(id)), "{now:?}");
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}
