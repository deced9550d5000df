//! rotor killed with SIGKILL at every step boundary (test failpoints), under continuous load:
//! `resume` completes, and separately `rollback` returns to S0, with no failed request.

use crate::common::{Env, slow_yaml};

/// The demo fleet with a drain long enough for a busy machine. These tests run dozens of
/// rotations under load, so they retire hundreds of instances; the drain is rotor's promise
/// to clients (an unpublished instance keeps serving that long), and a relay that read the
/// endpoints just before an instance left must reach it within the drain. On a loaded 2-core
/// machine a relay can take longer than the 150ms the other tests use.
fn env() -> Env {
    Env::with(|y| y.replace("drain: 150ms", "drain: 600ms"))
}

/// After a crash in a forward step, `resume` finishes the rotation.
async fn crash_then_resume(part: usize) {
    let env = env();
    env.up().await;
    let load = env.load();
    let fps = env.failpoints("forward").await;
    let half = fps.len() / 2;
    let fps = if part == 0 {
        &fps[..half]
    } else {
        &fps[half..]
    };
    for fp in fps {
        env.crash(&["rotate", "--yes"], fp).await;
        let out = env.rotor(&["resume", "--yes"]).await;
        out.assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], "S5", "resume after {fp}");
        assert_eq!(j["status"], "completed", "resume after {fp}");
        assert_eq!(
            env.store_primary(),
            j["new"]["fingerprint"].as_str().unwrap()
        );
        let check = env.rotor(&["check"]).await;
        assert_eq!(
            check.code(),
            Some(0),
            "drift after resume from {fp}: {}",
            check.stdout
        );
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_forward_boundaries_then_resume_part1() {
    crash_then_resume(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_forward_boundaries_then_resume_part2() {
    crash_then_resume(1).await;
}

/// After a crash in a forward step, `rollback` returns to S0 — except once T5 destroyed A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_forward_boundaries_then_rollback() {
    let env = env();
    env.up().await;
    let load = env.load();
    for fp in env.failpoints("forward").await {
        let a = env.store_primary();
        env.crash(&["rotate", "--yes"], &fp).await;
        let out = env.rotor(&["rollback"]).await;
        if fp == "T5.forward.begin" || !fp.starts_with("T5") {
            out.assert_code(0);
            let j = env.journal();
            assert_eq!(j["state"], "S0", "rollback after {fp}");
            assert_eq!(j["status"], "rolled_back", "rollback after {fp}");
            assert_eq!(env.store_primary(), a, "rollback after {fp}");
        } else {
            // A is destroyed: the rotation can only go forward.
            out.assert_code(2);
            assert!(out.stderr.contains("is finalized"), "{}", out.stderr);
            env.rotor(&["resume", "--yes"]).await.assert_code(0);
            assert_eq!(env.journal()["status"], "completed");
        }
        let check = env.rotor(&["check"]).await;
        assert_eq!(
            check.code(),
            Some(0),
            "drift after rollback from {fp}: {}",
            check.stdout
        );
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

/// A crash during a rollback: `resume` continues the rollback to S0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_rollback_then_resume() {
    let env = Env::new();
    env.up().await;
    let load = env.load();
    for fp in env.failpoints("inverse").await {
        let a = env.store_primary();
        env.rotor(&["rotate", "--yes", "--until", "S4"])
            .await
            .assert_code(0);
        env.crash(&["rollback"], &fp).await;
        let out = env.rotor(&["resume", "--yes"]).await;
        out.assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], "S0", "resume of rollback after {fp}");
        assert_eq!(j["status"], "rolled_back", "resume of rollback after {fp}");
        assert_eq!(env.store_primary(), a);
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

/// A scheduled run (`rotate --if-due`, no terminal) killed in the middle of T3's rollout: the
/// next scheduled run resumes it first (even though it would not be due any more) and finishes
/// it, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_killed_mid_rotation_is_resumed_by_the_next_scheduled_run() {
    let env = Env::with(|y| format!("max_age: 90d\n{y}"));
    env.up().await;
    let load = env.load();
    // Make the primary old enough to be due: a new store value is 0 s old, so age it.
    env.age_primary(91);
    let fp = env.failpoint("T3.forward.rolled.").await;
    env.crash(&["rotate", "--if-due"], &fp).await;
    let j = env.journal();
    assert_eq!(
        (j["mode"].as_str(), j["state"].as_str()),
        (Some("scheduled"), Some("S2"))
    );
    let next = env.rotor(&["--output", "json", "rotate", "--if-due"]).await;
    next.assert_code(0);
    assert!(
        next.stdout.contains(r#""due":"in_progress""#)
            && next.stdout.contains(r#""command":"resume","state":"S2""#),
        "{}",
        next.stdout
    );
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S5"), Some("completed"))
    );
    assert_eq!(
        env.store_primary(),
        j["new"]["fingerprint"].as_str().unwrap()
    );
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

/// An emergency rekey killed mid-rotation stays an emergency when a plain `rotor resume`
/// continues it: no hour of grace, no week of retention, no question without a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_emergency_rekey_resumes_as_an_emergency() {
    let env = Env::with(slow_yaml);
    env.up().await;
    let load = env.load();
    let fp = env.failpoint("T3.forward.rolled.").await;
    env.crash(&["rekey", "--emergency", "--reason", "drill"], &fp)
        .await;
    assert_eq!(env.journal()["mode"], "emergency");
    // In operator mode this would sit out the hour of grace: bound it so a regression fails.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        env.rotor(&["--output", "json", "resume"]),
    )
    .await
    .expect("resume waited for grace: the emergency was not kept");
    out.assert_code(0);
    let r = &out.last_json()["report"];
    assert_eq!(r["state"], "S5", "{r}");
    assert!(r["wall_seconds"].as_f64().unwrap() < 120.0, "{r}");
    assert!(r["time_to_revoke_seconds"].as_f64().is_some(), "{r}");
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}

/// The seconds from the journal's `started_at` (the rotation's first start) to `at`.
fn since_first_start(j: &serde_json::Value, at: chrono::DateTime<chrono::Utc>) -> f64 {
    let started: chrono::DateTime<chrono::Utc> = j["started_at"].as_str().unwrap().parse().unwrap();
    (at - started).num_milliseconds() as f64 / 1000.0
}

/// Time to revoke counts from the rotation's first start, through every resume: a rotation
/// killed at the end of T4's rollout and resumed later reports at least the time from its
/// first start to the resume (not the resume's own few seconds), and one killed after T4 (its
/// resume only finalizes) still reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_rotation_counts_time_to_revoke_from_its_first_start() {
    let env = env();
    env.up().await;
    let load = env.load();
    let fps = env.failpoints("forward").await;
    let last_t4_roll = fps
        .iter()
        .rfind(|f| f.starts_with("T4.forward.rolled."))
        .expect("a T4 rollout failpoint");
    for fp in [last_t4_roll.as_str(), "T5.forward.begin"] {
        env.crash(&["rotate", "--yes"], fp).await;
        // The operator comes back a while later; the old value stays accepted meanwhile.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let resumed_at = chrono::Utc::now();
        let j = env.journal();
        let floor = since_first_start(&j, resumed_at);
        assert!(floor >= 2.0, "{floor}");
        let out = env.rotor(&["--output", "json", "resume", "--yes"]).await;
        out.assert_code(0);
        let r = &out.last_json()["report"];
        assert_eq!(r["state"], "S5", "{r}");
        let revoke = r["time_to_revoke_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no time to revoke after {fp}: {r}"));
        if fp.starts_with("T4") {
            // Revoked during the resume: everything since the first start counts.
            assert!(
                revoke >= floor,
                "after {fp}: time to revoke {revoke}s < {floor}s since the rotation's first start"
            );
        } else {
            // Revoked before the kill: from the first start to the state S4, as journaled.
            let j = env.journal();
            let s4: chrono::DateTime<chrono::Utc> =
                j["reached"]["S4"].as_str().unwrap().parse().unwrap();
            let expected = since_first_start(&j, s4);
            assert!(
                (revoke - expected).abs() < 0.01 && revoke < floor,
                "after {fp}: time to revoke {revoke}s, journal says {expected}s"
            );
        }
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish().await;
}
