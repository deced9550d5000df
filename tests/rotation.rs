//! Rotations of the local demo fleet under continuous load.

use std::time::Duration;

use crate::common::{Env, slow_yaml, terminal_result, version, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rotation_under_load_has_no_failed_request() {
    let env = Env::new();
    env.up().await;
    env.rotor(&["check"]).await.assert_code(0);
    let a = env.store_primary();
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);

    let last = out.last_json();
    assert_eq!(last["event"], "report");
    assert_eq!(last["report"]["state"], "S5");
    // Role-aware waves: `both` restarts three times, validators twice (2 instances each).
    assert_eq!(last["report"]["restarts"]["auth"], 6);
    assert_eq!(last["report"]["restarts"]["backend"], 6);
    assert_eq!(last["report"]["restarts"]["analytics"], 4);
    let stages: Vec<String> = last["report"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}.{}",
                s["transition"].as_str().unwrap(),
                s["direction"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            "T1.forward",
            "T2.forward",
            "T3.forward",
            "T4.forward",
            "T5.forward"
        ]
    );
    // Events stream as JSON lines, each naming values by fingerprint only.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("\"event\":\"instance_replaced\""))
    );

    let j = env.journal();
    assert_eq!(j["state"], "S5");
    assert_eq!(j["status"], "completed");
    let b = j["new"]["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(env.store_primary(), b);
    let store = env.store();
    let old = version(&store, j["old"]["version"].as_str().unwrap());
    assert_eq!(old["state"], "destroyed");
    assert!(old.get("value").is_none());
    assert!(store["secondary"].is_null());
    // Every instance now holds B under every name.
    let check = env.rotor(&["--output", "json", "check"]).await;
    check.assert_code(0);
    let c = check.last_json();
    for inst in c["instances"].as_array().unwrap() {
        for (_, fp) in inst["names"].as_object().unwrap() {
            assert_eq!(fp.as_str().unwrap(), b, "{inst}");
        }
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_every_stage_returns_to_s0_under_load() {
    let env = Env::new();
    env.up().await;
    let a = env.store_primary();
    let load = env.load();
    for until in ["S1", "S2", "S3", "S4"] {
        env.rotor(&["rotate", "--yes", "--until", until])
            .await
            .assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], until);
        assert_eq!(j["status"], "paused");
        let b_version = j["new"]["version"].as_str().unwrap().to_string();
        env.rotor(&["rollback"]).await.assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], "S0", "after rollback from {until}");
        assert_eq!(j["status"], "rolled_back");
        // Inverses leave the store as it was: A primary, no secondary, B destroyed.
        assert_eq!(env.store_primary(), a, "after rollback from {until}");
        let store = env.store();
        assert!(store["secondary"].is_null());
        assert_eq!(version(&store, &b_version)["state"], "destroyed");
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_ignores_the_secondary_fails_t2_and_rolls_back() {
    // analytics reads the secondary under a name rotor never sets: it can never accept B.
    let env = Env::with(|y| {
        y.replace(
            r#""--secondary-env", "JWT_SECRET_KEY_PREVIOUS"]"#,
            r#""--secondary-env", "JWT_SECRET_KEY_OLD"]"#,
        )
    });
    env.up().await;
    let a = env.store_primary();
    let load = env.load();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    assert!(
        out.stderr.contains("T2 widen forward failed"),
        "{}",
        out.stderr
    );
    // Caught by the first new analytics instance's gate, before it took any traffic.
    assert!(
        out.stderr
            .contains("consumer analytics: instance analytics-"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("rejected B (sha256:") && out.stderr.contains("which it must accept"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("rolled back to S0"), "{}", out.stderr);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let j = env.journal();
    assert_eq!(j["status"], "rolled_back");
    assert_eq!(j["state"], "S0");
    assert_eq!(env.store_primary(), a);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotate_is_refused_with_the_holders_stage() {
    let env = Env::with(|y| y.replace("grace: 0s ", "grace: 10m "));
    env.up().await;
    let load = env.load();
    let mut first = env.spawn(&["rotate", "--yes"]);
    wait_for(
        "the first rotor to reach grace",
        Duration::from_secs(120),
        async || {
            let s = env.rotor(&["--output", "json", "status"]).await;
            s.last_json()["lock"]["stage"] == "grace"
        },
    )
    .await;
    let second = env.rotor(&["rotate", "--yes"]).await;
    second.assert_code(4);
    assert!(
        second.stderr.contains("holds the lock since"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("at stage grace"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("(rotate)"), "{}", second.stderr);
    // Kill the holder; the kernel releases its lock; roll back from S3.
    first.start_kill().unwrap();
    let killed = first.wait_with_output().await.unwrap();
    env.record(killed);
    env.rotor(&["rollback"]).await.assert_code(0);
    assert_eq!(env.journal()["state"], "S0");
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_changes_nothing() {
    let env = Env::new();
    env.up().await;
    let before = crate::common::tree(env.path());
    let out = env.rotor(&["plan"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("wave T2 widen"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("restart: analytics (validator, 2 instances, one at a time)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("instance restarts: auth 6, backend 6, analytics 4 (total 16)"),
        "{}",
        out.stdout
    );
    let json = env.rotor(&["--output", "json", "plan"]).await;
    json.assert_code(0);
    assert_eq!(json.last_json()["waves"].as_array().unwrap().len(), 5);
    assert_eq!(
        before,
        crate::common::tree(env.path()),
        "plan changed files"
    );
    env.finish().await;
}

/// Path → (size, content, mtime) of every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_drift_and_rotate_refuses_to_start_on_it() {
    let env = Env::new();
    env.up().await;
    env.rotor(&["check"]).await.assert_code(0);
    // Someone swaps the store's primary behind rotor's back.
    let rotor::playbook::StoreSpec::Local { path } = &env.pb.store else {
        panic!("a local store")
    };
    let store = rotor::store::local::LocalStore::new(
        path.clone(),
        &env.pb.secret,
        env.pb.state_dir.join("store.lock"),
    );
    use rotor::store::Store;
    let v = rotor::secret::SecretValue::generate(rotor::secret::Alphabet::Base64url, 48).unwrap();
    let info = store.add_version(&v).await.unwrap();
    store.set_slots(&info.id, None).await.unwrap();
    let out = env.rotor(&["check"]).await;
    out.assert_code(5);
    assert!(
        out.stdout.contains("SERVICE_SECRET holds"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("expected {}", info.fingerprint)),
        "{}",
        out.stdout
    );
    let rotate = env.rotor(&["rotate", "--yes"]).await;
    rotate.assert_code(5);
    assert!(
        rotate.stderr.contains("refusing to start"),
        "{}",
        rotate.stderr
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_command_reports_zero_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(crate::common::rotor_exe())
        .args(["demo", "--interval", "10ms", "--dir"])
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["failed_requests"], 0, "{stdout}");
    assert!(last["requests"].as_u64().unwrap() > 0);
    assert_eq!(last["restarts"]["auth"], 6);
    assert_eq!(last["restarts"]["backend"], 6);
    assert_eq!(last["restarts"]["analytics"], 4);
    assert_eq!(last["stages"].as_array().unwrap().len(), 5);
    assert!(stdout.contains("failed requests: 0"));
    // The demo stopped everything it started: no published endpoint remains.
    for c in ["auth", "backend", "analytics"] {
        let ep = dir
            .path()
            .join("state/fleet")
            .join(c)
            .join("endpoints.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(ep).unwrap()).unwrap();
        assert!(
            json["endpoints"].as_array().unwrap().is_empty(),
            "{c} still has endpoints"
        );
    }
    // The value the store holds now never appeared in the output.
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo-store.json")).unwrap())
            .unwrap();
    for v in store["versions"].as_array().unwrap() {
        if let Some(val) = v["value"].as_str() {
            assert!(
                !stdout.contains(val) && !stderr.contains(val),
                "value leaked"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_yes_a_rotation_pauses_before_narrowing() {
    let env = Env::new();
    env.up().await;
    let load = env.load();
    // stdin is not a terminal: the question before T4 is declined, the run pauses at S3.
    let out = env.rotor(&["rotate"]).await;
    out.assert_code(7);
    assert!(
        out.stderr
            .contains("T4 narrow: validators will reject the old value"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("T4 narrow not confirmed; paused at S3 promoted"),
        "{}",
        out.stdout
    );
    let j = env.journal();
    assert_eq!(j["state"], "S3");
    assert_eq!(j["status"], "paused");
    let status = env.rotor(&["status"]).await;
    status.assert_code(0);
    assert!(
        status.stdout.contains("state: S3 promoted"),
        "{}",
        status.stdout
    );
    env.rotor(&["resume", "--yes"]).await.assert_code(0);
    assert_eq!(env.journal()["state"], "S5");
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

/// The most consumers rolling at once in a JSON event stream.
fn peak_rolling(stdout: &str) -> usize {
    let (mut now, mut peak) = (0usize, 0usize);
    for l in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        match v["event"].as_str() {
            Some("rollout_started") => {
                now += 1;
                peak = peak.max(now);
            }
            Some("rollout_finished") => now = now.saturating_sub(1),
            _ => {}
        }
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_flag_overrides_the_playbook_budget() {
    let env = Env::new();
    env.up().await;
    // Out of range: a usage error, nothing changes.
    let before = env.store();
    let bad = env.rotor(&["rotate", "--yes", "--concurrency", "0"]).await;
    bad.assert_code(2);
    assert!(bad.stderr.contains("--concurrency"), "{}", bad.stderr);
    assert_eq!(env.store(), before);
    // The playbook says 1: one consumer rolls at a time.
    let one = env
        .rotor(&["--output", "json", "rotate", "--yes", "--until", "S2"])
        .await;
    one.assert_code(0);
    assert_eq!(peak_rolling(&one.stdout), 1);
    env.rotor(&["rollback"]).await.assert_code(0);
    // With --concurrency 3, the validators of T2 roll together.
    let three = env
        .rotor(&[
            "--output",
            "json",
            "rotate",
            "--yes",
            "--until",
            "S2",
            "--concurrency",
            "3",
        ])
        .await;
    three.assert_code(0);
    assert!(peak_rolling(&three.stdout) >= 2, "{}", three.stdout);
    env.rotor(&["rollback"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_due_rotates_old_primaries_resumes_first_and_leaves_fresh_ones() {
    let env = Env::with(|y| format!("max_age: 90d\n{y}"));
    env.up().await;
    let a = env.store_primary();
    // Fresh primary: not due, exit 9, nothing changes.
    let before = env.store();
    let fresh = env.rotor(&["--output", "json", "rotate", "--if-due"]).await;
    fresh.assert_code(9);
    assert!(fresh.stdout.contains(r#""due":"no""#), "{}", fresh.stdout);
    // Its age is what passed since `init` (seconds on a busy machine), never more than a minute.
    let age = fresh
        .stdout
        .split("s old, max_age 90d")
        .next()
        .and_then(|before| before.rsplit("is ").next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(age.is_some_and(|s| s < 60), "{}", fresh.stdout);
    assert_eq!(env.store(), before);
    // A rotation in progress is resumed first, even though the primary is fresh; no terminal,
    // so T4 and T5 go ahead without --yes.
    env.rotor(&["rotate", "--yes", "--until", "S2"])
        .await
        .assert_code(0);
    let resumed = env.rotor(&["rotate", "--if-due"]).await;
    resumed.assert_code(0);
    assert!(
        resumed.stdout.contains("is in progress at S2"),
        "{}",
        resumed.stdout
    );
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S5"), Some("completed"))
    );
    let b = env.store_primary();
    assert_ne!(a, b);
    // An old primary: due, rotated in scheduled mode, no prompt.
    env.age_primary(91);
    let old = env.rotor(&["rotate", "--if-due"]).await;
    old.assert_code(0);
    assert!(old.stdout.contains("older than max_age"), "{}", old.stdout);
    let j = env.journal();
    assert_eq!(j["state"], "S5");
    assert_eq!(j["mode"], "scheduled");
    assert_ne!(env.store_primary(), b);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_due_without_a_schedule_is_a_usage_error() {
    let env = Env::new();
    env.up().await;
    let before = env.store();
    let out = env.rotor(&["rotate", "--if-due"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("max_age: 90d"), "{}", out.stderr);
    assert_eq!(env.store(), before);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rekey_under_load_revokes_in_three_waves_with_no_failed_request() {
    let env = Env::with(slow_yaml);
    env.up().await;
    let a = env.store_primary();
    let load = env.load();
    let out = env
        .rekey("key printed in CI logs", &["--incident", "INC-42"])
        .await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let r = &out.last_json()["report"];
    assert_eq!(r["state"], "S5", "{r}");
    assert_eq!(r["waves"], 3, "{r}");
    let revoke = r["time_to_revoke_seconds"]
        .as_f64()
        .expect("time to revoke reported");
    let wall = r["wall_seconds"].as_f64().unwrap();
    assert!(revoke > 0.0 && revoke <= wall, "{revoke} of {wall}");
    // Neither the hour of grace nor the week of retention was waited for.
    assert!(wall < 120.0, "{wall}");
    let j = env.journal();
    assert_eq!(j["mode"], "emergency");
    assert_eq!(j["reason"], "key printed in CI logs (incident INC-42)");
    assert_eq!(j["state"], "S5");
    // Every audit record of the run says who, in which mode and why.
    let audit = std::fs::read_to_string(env.pb.state_dir.join("audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["rotation"] == j["id"])
        .collect();
    assert!(records.len() > 10, "{audit}");
    for r in &records {
        assert_eq!(r["mode"], "emergency", "{r}");
        assert_eq!(
            r["reason"], "key printed in CI logs (incident INC-42)",
            "{r}"
        );
        assert!(r["who"].as_str().unwrap().contains(" pid "), "{r}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["record"]["event"] == "step_finished" && r["record"]["transition"] == "T4")
    );
    // The old value is destroyed in the store, its fingerprint kept.
    let old = env.version_with(&a);
    assert_eq!(old["state"], "destroyed", "{old}");
    assert!(old.get("value").is_none());
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rekey_takes_over_a_rotation_in_progress_without_waiting_for_grace() {
    let env = Env::with(slow_yaml);
    env.up().await;
    env.rotor(&["rotate", "--yes", "--until", "S3"])
        .await
        .assert_code(0);
    let id = env.journal()["id"].as_str().unwrap().to_string();
    let out = env.rekey("laptop stolen", &[]).await;
    out.assert_code(0);
    let r = &out.last_json()["report"];
    assert_eq!(r["rotation"], id.as_str(), "the same rotation, continued");
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["transition"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["T4", "T5"]);
    assert_eq!(r["waves"], 1);
    assert!(r["time_to_revoke_seconds"].as_f64().is_some(), "{r}");
    let j = env.journal();
    assert_eq!(
        (j["mode"].as_str(), j["state"].as_str()),
        (Some("emergency"), Some("S5"))
    );
    assert_eq!(j["reason"], "laptop stolen");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rekey_asks_a_running_rotation_to_hand_over_instead_of_waiting_for_grace() {
    let env = Env::with(slow_yaml);
    env.up().await;
    let load = env.load();
    // An ordinary rotation, running, waiting out its hour of grace at S3.
    let running = env.spawn(&["--output", "json", "rotate", "--yes"]);
    wait_for(
        "the rotation to wait out its grace",
        Duration::from_secs(60),
        async || env.lock_stage().as_deref() == Some("grace"),
    )
    .await;
    let id = env.journal()["id"].as_str().unwrap().to_string();
    let out = env.rekey("token in a screenshot", &[]).await;
    out.assert_code(0);
    // The running rotation stopped at S3 and said to whom it handed over.
    let ran = env.record(running.wait_with_output().await.unwrap());
    ran.assert_code(10);
    assert!(
        ran.stdout
            .contains("handed over at S3 promoted to an emergency rekey by")
            && ran.stdout.contains("token in a screenshot"),
        "{ran:?}"
    );
    assert!(
        out.stdout.contains("asked") && out.stdout.contains("to stop at its next stable state"),
        "{}",
        out.stdout
    );
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let r = &out.last_json()["report"];
    assert_eq!(r["rotation"], id.as_str(), "the same rotation, taken over");
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["transition"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["T4", "T5"]);
    // Neither the hour of grace nor the week of retention was waited for.
    assert!(r["wall_seconds"].as_f64().unwrap() < 120.0, "{r}");
    let j = env.journal();
    assert_eq!(
        (j["mode"].as_str(), j["state"].as_str()),
        (Some("emergency"), Some("S5"))
    );
    // The request was addressed to the run that handed over; the rekey cleared it.
    assert!(!env.pb.state_dir.join("handover.json").exists());
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_cut_rolls_once_and_reports_the_failures_it_caused() {
    let env = Env::with(slow_yaml);
    env.up().await;
    let a = env.store_primary();
    let load = env.load();
    let out = env.rekey("key on pastebin", &["--hard-cut", "--yes"]).await;
    out.assert_code(0);
    let seen = load.stop().await;
    let r = &out.last_json()["report"];
    assert_eq!(r["state"], "S5", "{r}");
    assert_eq!(r["waves"], 1, "{r}");
    // Every consumer restarted exactly once per instance (2 instances each).
    for c in ["auth", "backend", "analytics"] {
        assert_eq!(r["restarts"][c], 2, "{c}: {r}");
    }
    // The cut broke requests, and says so: the callers' own count and rotor's sample agree
    // that there were failures.
    assert!(seen.failed_requests > 0, "{seen:?}");
    let h = &r["hard_cut"];
    let failed = h["failed_round_trips"].as_u64().unwrap();
    let sampled = h["sampled_round_trips"].as_u64().unwrap();
    assert!(failed > 0 && sampled > failed, "{h}");
    assert!(h["window_seconds"].as_f64().unwrap() > 0.0, "{h}");
    assert!(
        out.stdout.contains("sampled round trips failed during the"),
        "{}",
        out.stdout
    );
    let j = env.journal();
    assert_eq!(j["hard_cut"], true);
    assert_eq!(j["mode"], "emergency");
    // The old value is gone, and the fleet is consistent on the new one.
    let old = env.version_with(&a);
    assert_eq!(old["state"], "destroyed", "{old}");
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

/// A hard cut interrupted before its wave (at T3's store switch) or in the middle of it (after
/// its first consumer rolled) rolls back to a consistent S0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_cut_interrupted_before_or_during_its_wave_rolls_back_to_s0() {
    let env = Env::new();
    env.up().await;
    let a = env.store_primary();
    let wave = env.failpoint("T4.forward.rolled.").await;
    for fp in ["T3.forward.store".to_string(), wave] {
        env.crash(
            &[
                "rekey",
                "--emergency",
                "--reason",
                "drill",
                "--hard-cut",
                "--yes",
            ],
            &fp,
        )
        .await;
        assert_eq!(env.journal()["hard_cut"], true);
        let back = env.rotor(&["rollback"]).await;
        back.assert_code(0);
        let j = env.journal();
        assert_eq!(
            (j["state"].as_str(), j["status"].as_str()),
            (Some("S0"), Some("rolled_back")),
            "after {fp}"
        );
        assert_eq!(env.store_primary(), a, "after {fp}");
        let check = env.rotor(&["check"]).await;
        assert_eq!(check.code(), Some(0), "drift after {fp}: {}", check.stdout);
    }
    env.finish().await;
}

/// A rekey that stops waiting takes its request back: the rotation it asked goes on to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_that_gives_up_leaves_the_running_rotation_undisturbed() {
    let env = Env::with(|y| y.replace("soak: 0s", "soak: 3s"));
    env.up().await;
    let running = env.spawn(&["--output", "json", "rotate", "--yes"]);
    wait_for(
        "the rotation to soak in T2",
        Duration::from_secs(60),
        async || env.lock_stage().as_deref() == Some("T2 widen forward"),
    )
    .await;
    let gave_up = env.rekey("drill", &["--handover-timeout", "1s"]).await;
    gave_up.assert_code(4);
    assert!(
        gave_up
            .stderr
            .contains("was asked to hand its rotation over"),
        "{}",
        gave_up.stderr
    );
    assert!(
        !env.pb.state_dir.join("handover.json").exists(),
        "request withdrawn"
    );
    let ran = env.record(running.wait_with_output().await.unwrap());
    ran.assert_code(0);
    assert_eq!(ran.last_json()["report"]["state"], "S5", "{ran:?}");
    env.finish().await;
}

/// An operator's rotation waiting at its T4 question (at a terminal, unanswered) hands over to
/// an emergency rekey without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_waiting_at_a_question_hands_over_without_an_answer() {
    let env = Env::new();
    env.up().await;
    // `rotor rotate` with its stdin on a terminal nobody types into.
    let asking = env.at_a_terminal(&["--output", "json", "rotate"], "");
    wait_for("the T4 question", Duration::from_secs(60), async || {
        std::fs::read_to_string(env.pb.state_dir.join("journal.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|j| j["state"] == "S3")
    })
    .await;
    let out = env.rekey("drill", &[]).await;
    out.assert_code(0);
    assert_eq!(out.last_json()["report"]["state"], "S5");
    let r = terminal_result(asking).await;
    assert_eq!(r["code"], 10, "{r}");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains("handed over at S3 promoted"),
        "{r}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_cut_asks_twice_and_without_a_terminal_needs_yes() {
    let env = Env::new();
    env.up().await;
    let before = env.store();
    let args = ["rekey", "--emergency", "--reason", "drill", "--hard-cut"];
    let no_tty = env.rotor(&args).await;
    no_tty.assert_code(7);
    assert!(
        no_tty.stderr.contains("not a terminal")
            && no_tty.stderr.contains("--hard-cut not confirmed"),
        "{}",
        no_tty.stderr
    );
    // At a terminal: yes to the first question, no to the second.
    let answered = terminal_result(env.at_a_terminal(&args, "y\nn\n")).await;
    assert_eq!(answered["code"], 7, "{answered}");
    let stderr = answered["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("Cut? [y/N]") && stderr.contains("Once more:"),
        "{stderr}"
    );
    assert_eq!(env.store(), before, "nothing changed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_needs_emergency_and_a_reason() {
    let env = Env::new();
    env.up().await;
    let before = env.store();
    let no_flag = env.rotor(&["rekey", "--reason", "x"]).await;
    no_flag.assert_code(2);
    assert!(no_flag.stderr.contains("--emergency"), "{}", no_flag.stderr);
    let blank = env.rotor(&["rekey", "--emergency", "--reason", " "]).await;
    blank.assert_code(2);
    assert!(
        blank.stderr.contains("--reason is empty"),
        "{}",
        blank.stderr
    );
    assert_eq!(env.store(), before);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_hears_every_stage_and_the_metrics_file_parses() {
    let (url, heard) = crate::common::webhook_receiver().await;
    let env = Env::with(|y| {
        format!(
            "notify: {{webhook_env: ROTOR_TEST_WEBHOOK, metrics_file: metrics/rotor.prom}}\n{y}"
        )
    });
    env.up().await;
    let a = env.store_primary();
    let values = |s: serde_json::Value| -> Vec<String> {
        s["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["value"].as_str().map(String::from))
            .collect()
    };
    let mut secrets = values(env.store());
    env.rotor_env(&["rotate", "--yes"], &[("ROTOR_TEST_WEBHOOK", &url)])
        .await
        .assert_code(0);
    secrets.extend(values(env.store()));
    assert!(secrets.len() >= 2);
    let texts: Vec<String> = heard.lock().unwrap().clone();
    assert!(
        texts[0].starts_with("rotor: rotate of service-secret (development) started"),
        "{texts:#?}"
    );
    for t in [
        "T1 publish",
        "T2 widen",
        "T3 switch",
        "T4 narrow",
        "T5 finalize",
    ] {
        assert!(
            texts
                .iter()
                .any(|m| m.contains(&format!(": {t} forward ok in "))),
            "{t}: {texts:#?}"
        );
    }
    assert!(
        texts.last().unwrap().contains("run completed at S5"),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|m| m.contains(&a)),
        "fingerprints, not values: {texts:#?}"
    );
    for v in &secrets {
        assert!(
            !texts.iter().any(|m| m.contains(v.as_str())),
            "a value reached the webhook"
        );
    }
    // The metrics file, read by Prometheus' own parser (prometheus_client from PyPI).
    let prom = crate::common::pip_install(
        "prometheus_client",
        "pytools-prometheus",
        "prometheus_client/parser.py",
    );
    let file = env.path().join("metrics/rotor.prom");
    let parsed = crate::common::python(
        &prom,
        "import sys, json; from prometheus_client.parser import text_string_to_metric_families as p; \
         print(json.dumps({s.name: [s.labels, s.value] for f in p(open(sys.argv[1]).read()) for s in f.samples}))",
        &[file.to_str().unwrap()],
        "",
    );
    let m: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    let labels = serde_json::json!({"secret": "service-secret", "environment": "development"});
    for name in [
        "rotor_primary_age_seconds",
        "rotor_last_rotation_timestamp_seconds",
        "rotor_last_rotation_duration_seconds",
        "rotor_rotation_failures_total",
        "rotor_rotation_in_progress",
    ] {
        assert_eq!(m[name][0], labels, "{name}: {m}");
    }
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (m["rotor_last_rotation_timestamp_seconds"][1]
            .as_f64()
            .unwrap()
            - now)
            .abs()
            < 120.0,
        "{m}"
    );
    assert!(
        m["rotor_last_rotation_duration_seconds"][1]
            .as_f64()
            .unwrap()
            > 0.0,
        "{m}"
    );
    assert!(
        m["rotor_primary_age_seconds"][1].as_f64().unwrap() < 120.0,
        "{m}"
    );
    assert_eq!(m["rotor_rotation_failures_total"][1], 0.0, "{m}");
    assert_eq!(m["rotor_rotation_in_progress"][1], 0.0, "{m}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_due_over_a_directory_rotates_only_the_due_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    for name in ["alpha", "beta"] {
        let y = crate::common::demo_yaml(|y| {
            format!(
                "max_age: 90d\n{}",
                y.replace("service-secret", name)
                    .replace("demo-store.json", &format!("{name}-store.json"))
            )
        });
        std::fs::write(books.join(format!("{name}.yaml")), y).unwrap();
    }
    let rotor = |args: &[&str]| crate::common::run_rotor(args, &[]);
    let book = |n: &str| books.join(format!("{n}.yaml")).display().to_string();
    // Whatever happens below, the fleets `up` starts are stopped again (by rotor, by pid).
    struct Down(Vec<String>);
    impl Drop for Down {
        fn drop(&mut self) {
            for b in &self.0 {
                crate::common::run_rotor(&["down", b], &[]);
            }
        }
    }
    let _down = Down(vec![book("alpha"), book("beta")]);
    for n in ["alpha", "beta"] {
        rotor(&["init", &book(n)]).assert_code(0);
        rotor(&["up", &book(n)]).assert_code(0);
    }
    // Nothing is due yet.
    let dir_arg = books.display().to_string();
    rotor(&["rotate", "--if-due", &dir_arg]).assert_code(9);
    // alpha's primary is old: only alpha rotates.
    let store = |n: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(books.join(format!("{n}-store.json"))).unwrap(),
        )
        .unwrap()
    };
    let mut alpha = store("alpha");
    alpha["versions"][0]["created_at"] =
        serde_json::json!((chrono::Utc::now() - chrono::Duration::days(91)).to_rfc3339());
    std::fs::write(
        books.join("alpha-store.json"),
        serde_json::to_vec(&alpha).unwrap(),
    )
    .unwrap();
    let beta_before = store("beta");
    let out = rotor(&[
        "--output",
        "json",
        "rotate",
        "--if-due",
        "--parallel",
        "2",
        &dir_arg,
    ]);
    out.assert_code(0);
    let summary = out.last_json();
    assert_eq!(summary["event"], "summary", "{summary}");
    let exits: Vec<(String, u64)> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["playbook"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                r["exit"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut exits = exits;
    exits.sort();
    assert_eq!(
        exits,
        [("alpha.yaml".to_string(), 0), ("beta.yaml".to_string(), 9)]
    );
    assert_eq!(store("alpha")["versions"].as_array().unwrap().len(), 2);
    assert_eq!(store("beta"), beta_before, "beta was not due");
    // Two playbooks of one secret and environment: refused before anything runs.
    std::fs::copy(books.join("alpha.yaml"), books.join("alpha-copy.yaml")).unwrap();
    let dup = rotor(&["rotate", "--if-due", &dir_arg]);
    dup.assert_code(2);
    assert!(
        dup.stderr
            .contains("one rotation per secret and environment"),
        "{}",
        dup.stderr
    );
    std::fs::remove_file(books.join("alpha-copy.yaml")).unwrap();
    for n in ["alpha", "beta"] {
        rotor(&["down", &book(n)]).assert_code(0);
    }
}

/// backend is proven by an exec round trip (a command that asks each instance what it sends)
/// instead of a relay: it runs once per backend instance with the value on stdin and the
/// expected fingerprint in its environment; when it answers "sends something else" (exit 1) the
/// signer proof fails and the rotation rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_round_trips_prove_signers_and_a_refusal_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trips.jsonl");
    let fault = dir.path().join("fault");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/roundtrips/reported-sends.py"
    );
    let trip = format!(
        "      - type: exec\n        command: [python3, \"{script}\", --log, \"{}\", --fault, \"{}\"]\n        via: stdin\n",
        log.display(),
        fault.display()
    );
    let env = Env::with(|y| {
        let relay = "      - to: auth\n        path: \"/relay/auth?target={target}\"\n";
        assert!(y.contains(relay));
        y.replace(relay, &trip)
    });
    env.up().await;
    let load = env.load();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let j = env.journal();
    let b = j["new"]["fingerprint"].as_str().unwrap().to_string();
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // T3's proof and the gates of backend's new instances from T3 on expect B, from every
    // instance, with the value on stdin and a URL that reaches the instance.
    let for_b: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c["ROTOR_EXPECTED_FINGERPRINT"] == b.as_str())
        .collect();
    assert!(for_b.len() >= 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c["ROTOR_CONSUMER"], "backend", "{c}");
        assert_eq!(c["value_came"], true, "{c}");
        assert_eq!(c["sends"], c["ROTOR_EXPECTED_FINGERPRINT"], "{c}");
        let addr = c["ROTOR_INSTANCE_ADDR"].as_str().unwrap();
        assert_eq!(c["ROTOR_INSTANCE_URL"], format!("http://{addr}"), "{c}");
        assert!(
            c["ROTOR_INSTANCE"]
                .as_str()
                .unwrap()
                .starts_with("backend-")
        );
    }

    // The next rotation's signer proof is refused (the check vouches for B only): rolled back,
    // nothing lost.
    std::fs::write(&fault, &b).unwrap();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    assert!(
        out.stderr.contains("it sends something other than sha256:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("rolled back to S0"), "{}", out.stderr);
    assert_eq!(env.store_primary(), b);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    std::fs::remove_file(&fault).unwrap();
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}
