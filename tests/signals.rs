//! Stopping a run with a signal (issue 18, "Graceful stop"): the first SIGINT or SIGTERM stops
//! the run at its next safe point (the instance in flight finishes, nothing new begins), every
//! path keeps serving, and rotor says where it stopped and what to run next, exiting 128 + the
//! signal; a second signal stops it at once, leaving a journal `resume` finishes.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::Env;

/// `rotor --output json rotate --yes` in the background; its stdout lines as they come, and the
/// child.
fn rotate(
    env: &Env,
) -> (
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = env.spawn(&["--output", "json", "rotate", "--yes"]);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads `rx` until a line satisfies `want` (within a minute); every line read, in order.
async fn until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    want: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the event in time")
            .expect("rotor still running");
        seen.push(line.clone());
        if serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| want(&v)) {
            return;
        }
    }
}

fn signal(child: &tokio::process::Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
}

/// SIGTERM in the middle of T2's rollout (one instance replaced): rotor finishes the instance in
/// flight, begins no other, exits 143 saying where it stopped and what to run, with the step left
/// open in the journal; not one request fails; `resume` completes the rotation and `check` is
/// clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sigterm_stops_at_the_next_instance_boundary_and_resume_finishes() {
    let env = Env::new();
    env.up().await;
    let load = env.load();
    let (mut child, mut rx) = rotate(&env);
    let mut seen = Vec::new();
    until(&mut rx, &mut seen, |v| v["event"] == "instance_replaced").await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().await.unwrap();
    while let Some(l) = rx.recv().await {
        seen.push(l);
    }
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}\n{}", seen.join("\n"));
    assert!(
        stderr.contains("SIGTERM received: stopping at the next safe point"),
        "said at once: {stderr}"
    );
    assert!(
        stderr.contains("stopped by SIGTERM at S1 published during T2 widen forward")
            && stderr.contains("rotor resume")
            && stderr.contains("rotor rollback"),
        "where it stopped and what to run: {stderr}"
    );
    // The instance in flight finished; nothing began after it.
    let events: Vec<serde_json::Value> = seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let notice = events
        .iter()
        .position(|e| e["event"] == "notice")
        .expect("the notice as a JSON event");
    let after: Vec<&serde_json::Value> = events[notice..]
        .iter()
        .filter(|e| e["event"] == "instance_replaced" || e["event"] == "rollout_started")
        .collect();
    assert!(
        after.len() <= 1 && after.iter().all(|e| e["event"] == "instance_replaced"),
        "at most the instance in flight after the signal: {after:#?}"
    );
    let j = env.journal();
    assert_eq!(j["state"], "S1", "{j}");
    let last = j["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["transition"].as_str(), last["outcome"].as_str()),
        (Some("T2"), Some("running")),
        "the step stays open: {last}"
    );
    // `check` compares each instance with the states before and after T2 (some were rolled,
    // some not): no drift, and its own exit code for a rotation interrupted mid-step.
    let check = env.rotor(&["--output", "json", "check"]).await;
    check.assert_code(13);
    let r = check.last_json();
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    let in_progress = r["in_progress"].as_str().unwrap();
    assert!(
        in_progress.contains("in the middle of T2 widen forward")
            && in_progress.contains("no run is driving rotation"),
        "{in_progress}"
    );
    let resumed = env.rotor(&["--output", "json", "resume", "--yes"]).await;
    resumed.assert_code(0);
    assert_eq!(resumed.last_json()["report"]["state"], "S5");
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.rotor(&["check"]).await.assert_code(0);
}

/// SIGINT twice: the second stops rotor at once (exit 130), the journal holding the step begun;
/// `resume` finishes the rotation and `check` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_stops_at_once_and_resume_finishes() {
    let env = Env::new();
    env.up().await;
    let (mut child, mut rx) = rotate(&env);
    let mut seen = Vec::new();
    until(&mut rx, &mut seen, |v| v["event"] == "rollout_started").await;
    signal(&child, nix::sys::signal::Signal::SIGINT);
    until(&mut rx, &mut seen, |v| v["event"] == "notice").await;
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("SIGINT again: stopping now"), "{stderr}");
    let resumed = env.rotor(&["--output", "json", "resume", "--yes"]).await;
    resumed.assert_code(0);
    assert_eq!(resumed.last_json()["report"]["state"], "S5");
    env.rotor(&["check"]).await.assert_code(0);
}

/// A stop asked between two steps (during the grace wait before T4) pauses the rotation at
/// S3, exit 130, and `resume` completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigint_during_the_grace_wait_pauses_at_the_stable_state() {
    let env = Env::with(|y| y.replace("grace: 0s ", "grace: 1h "));
    env.up().await;
    let (mut child, mut rx) = rotate(&env);
    let mut seen = Vec::new();
    until(&mut rx, &mut seen, |v| v["event"] == "waiting").await;
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGINT at S3 promoted;"),
        "{stderr}"
    );
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S3"), Some("paused"))
    );
}

/// rotor killed mid-rotation (SIGKILL): `status` says no run drives the rotation, that the lock
/// file names a run that is gone (stale), and gives the commands to continue or undo.
/// rotor stopped mid-rotation (SIGSTOP, as Ctrl-Z does): `status` and a second `rotate` say the
/// holder is stopped and how to let it continue; after SIGCONT it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_the_holder_is_gone_or_stopped_and_what_to_run() {
    let env = Env::new();
    env.up().await;
    let pb = env.playbook.display().to_string();

    // Stopped (Ctrl-Z): it holds the lock and does nothing.
    let (mut child, mut rx) = rotate(&env);
    let mut seen = Vec::new();
    until(&mut rx, &mut seen, |v| v["event"] == "rollout_started").await;
    let pid = child.id().unwrap();
    signal(&child, nix::sys::signal::Signal::SIGSTOP);
    let status = env.rotor(&["status"]).await;
    status.assert_code(0);
    assert!(
        status.stdout.contains("is STOPPED")
            && status.stdout.contains(&format!("kill -CONT {pid}")),
        "{}",
        status.stdout
    );
    let again = env.rotor(&["rotate", "--yes"]).await;
    again.assert_code(4);
    assert!(again.stderr.contains("is STOPPED"), "{}", again.stderr);
    signal(&child, nix::sys::signal::Signal::SIGCONT);
    let done = child.wait().await.unwrap();
    assert_eq!(done.code(), Some(0), "{}", seen.join("\n"));

    // Killed: the kernel frees the lock, the holder file stays behind.
    let (mut child, mut rx) = rotate(&env);
    let mut seen = Vec::new();
    until(&mut rx, &mut seen, |v| v["event"] == "instance_replaced").await;
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait().await;
    let status = env.rotor(&["--output", "json", "status"]).await;
    status.assert_code(0);
    let s = status.last_json();
    assert!(s["lock"].is_null(), "{s}");
    assert!(s["stale_lock"]["identity"].is_string(), "{s}");
    let next = s["next"].as_str().unwrap();
    assert!(
        next.contains("no run is driving rotation")
            && next.contains(&format!("rotor resume {pb}"))
            && next.contains(&format!("rotor rollback {pb}")),
        "{next}"
    );
    let human = env.rotor(&["status"]).await;
    assert!(
        human
            .stdout
            .contains("a run that ended without releasing it"),
        "{}",
        human.stdout
    );
    let resumed = env.rotor(&["--output", "json", "resume", "--yes"]).await;
    resumed.assert_code(0);
    let s = env.rotor(&["--output", "json", "status"]).await.last_json();
    assert!(s["stale_lock"].is_null() && s["next"].is_null(), "{s}");
}
