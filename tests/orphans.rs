//! No orphan, ever (issue 18): rotor interrupted at every point of a process instance's start
//! (the `instance.<consumer>.<point>` failpoints), by a failpoint's SIGKILL and by a real
//! signal delivered at that point (SIGKILL; SIGINT to rotor's process group, as Ctrl-C sends
//! it). `check` names every process of the fleet that serves no one, and none survives
//! `resume`, `rollback` or `down`. Processes are counted by scanning `/proc` for the fleet's
//! tag (`ROTOR_FLEET_ID`), so a process without a record is counted too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::common::{Env, Out, wait_for};

/// The consumer whose instance start is interrupted (T2 starts its instances first).
const CONSUMER: &str = "auth";
/// The points of an instance's start, in order (`rotor failpoints` lists them).
const POINTS: [&str; 4] = ["before-spawn", "spawned", "before-rename", "renamed"];

/// How rotor is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// The failpoint itself raises SIGKILL.
    Failpoint,
    /// The failpoint stops rotor; the test sends SIGKILL.
    Kill,
    /// The failpoint stops rotor; the test sends SIGINT to its process group, then SIGCONT.
    Interrupt,
}

/// What ends the interrupted run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Resume,
    Rollback,
    Down,
}

fn consumers(env: &Env) -> Vec<String> {
    env.pb.consumers.iter().map(|c| c.name.clone()).collect()
}

fn fleet_dir(env: &Env, consumer: &str) -> PathBuf {
    env.pb.state_dir.join("fleet").join(consumer)
}

/// Consumer `consumer`'s tag (`fleet/<consumer>/fleet-id`).
fn fleet_id(env: &Env, consumer: &str) -> String {
    let path = fleet_dir(env, consumer).join("fleet-id");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Every live process whose environment carries `ROTOR_FLEET_ID=<id>` (zombies excluded).
fn tagged(id: &str) -> BTreeSet<i32> {
    let want = format!("ROTOR_FLEET_ID={id}");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|st| st == "Z")
            })
            .unwrap_or(true);
        if !zombie && env.split(|b| *b == 0).any(|e| e == want.as_bytes()) {
            out.insert(pid);
        }
    }
    out
}

/// The instance records of `consumer`, as JSON.
fn records(env: &Env, consumer: &str) -> Vec<serde_json::Value> {
    let dir = fleet_dir(env, consumer).join("instances");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

/// Processes of every consumer's fleet that no published record names: (consumer, pid).
fn strays(env: &Env) -> BTreeSet<(String, i32)> {
    let mut out = BTreeSet::new();
    for c in consumers(env) {
        let published: BTreeSet<i64> = records(env, &c)
            .iter()
            .filter(|r| r["published"] == true)
            .filter_map(|r| r["pid"].as_i64())
            .collect();
        for pid in tagged(&fleet_id(env, &c)) {
            if !published.contains(&i64::from(pid)) {
                out.insert((c.clone(), pid));
            }
        }
    }
    out
}

/// Temp files (`.tmp-*`) in every consumer's fleet and instances directories.
fn temps(env: &Env) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for c in consumers(env) {
        let dir = fleet_dir(env, &c);
        for d in [dir.clone(), dir.join("instances")] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// Records still `starting` (a start that never got its pid recorded).
fn starting(env: &Env) -> usize {
    consumers(env)
        .iter()
        .flat_map(|c| records(env, c))
        .filter(|r| r["state"] == "starting")
        .count()
}

/// `/proc/<pid>/stat`'s state letter, if the process exists.
fn state_of(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// `rotate --yes` interrupted at `point` of an instance start of [`CONSUMER`], as `how` says.
async fn interrupt(env: &Env, point: &str, how: How) -> Out {
    let fp = format!("instance.{CONSUMER}.{point}");
    if how == How::Failpoint {
        let out = env
            .rotor_env(&["rotate", "--yes"], &[("ROTOR_FAILPOINT", &fp)])
            .await;
        assert_eq!(out.signal(), Some(9), "rotor did not die at {fp}: {out:#?}");
        return out;
    }
    let stop = format!("{fp}:stop");
    let mut cmd = env.command(&["rotate", "--yes"], &[("ROTOR_FAILPOINT", &stop)]);
    // Its own process group, as a shell's foreground job: Ctrl-C signals the whole group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = tokio::process::Command::from(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    wait_for(
        &format!("rotor to stop at {fp}"),
        Duration::from_secs(120),
        async || {
            let s = state_of(pid);
            assert!(
                s.is_some_and(|s| s != 'Z'),
                "rotor exited before reaching {fp}"
            );
            s == Some('T')
        },
    )
    .await;
    match how {
        How::Kill => kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap(),
        How::Interrupt => {
            killpg(Pid::from_raw(pid), Signal::SIGINT).unwrap();
            killpg(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
        }
        How::Failpoint => unreachable!(),
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("rotor did not end after the signal at {fp}"))
        .unwrap();
    let out = env.record(out);
    if how == How::Kill {
        assert_eq!(out.signal(), Some(9), "{out:#?}");
    } else {
        assert_ne!(
            out.code(),
            Some(0),
            "an interrupted run succeeded: {out:#?}"
        );
    }
    out
}

/// `rotor check` names every process `strays` found (by pid), and fails when there is one.
async fn check_names(env: &Env, strays: &BTreeSet<(String, i32)>, at: &str) {
    let out = env.rotor(&["--output", "json", "check"]).await;
    let report = out.last_json();
    let named: BTreeSet<(String, i32)> = report["leftovers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["consumer"].as_str().unwrap().to_string(),
                        l["pid"].as_i64().unwrap() as i32,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // A process found by the test may have exited before check looked (a start that failed).
    let alive: BTreeSet<(String, i32)> = strays
        .iter()
        .filter(|(_, pid)| state_of(*pid).is_some_and(|s| s != 'Z'))
        .cloned()
        .collect();
    assert!(
        alive.is_subset(&named),
        "check after {at} does not name {:?}: {}",
        alive.difference(&named).collect::<Vec<_>>(),
        out.stdout
    );
    let problems = report["problems"].to_string();
    for (c, pid) in &named {
        assert!(
            problems.contains(&format!("process {pid} ")),
            "{c} {pid} is not a problem: {problems}"
        );
    }
    if !named.is_empty() {
        assert_eq!(out.code(), Some(5), "{out:#?}");
    }
}

/// When a test fails: `rotor down`, then SIGKILL to whatever still carries one of the fleet's
/// tags, so a failure leaves nothing running.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = self.0.command(&["down"], &[]).output();
        for c in consumers(self.0) {
            let Ok(id) = std::fs::read_to_string(fleet_dir(self.0, &c).join("fleet-id")) else {
                continue;
            };
            for pid in tagged(id.trim()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Interrupts a rotation at every point of an instance start as `how` says, checks that `check`
/// names every stray process, ends the run as `ends[point]` says, and proves that no process
/// of the fleet survives that no published record names (none at all after `down`), with no
/// temp file and no `starting` record left.
async fn no_orphan_survives(how: How, ends: [End; 4]) {
    let env = Env::new();
    let cleanup = Cleanup(&env);
    env.up().await;
    for (point, end) in POINTS.into_iter().zip(ends) {
        let at = format!("{how:?} at {point}, then {end:?}");
        assert!(strays(&env).is_empty(), "before {at}: {:?}", strays(&env));
        interrupt(&env, point, how).await;
        let found = strays(&env);
        // The interrupted start left a process (a real kill leaves it to run on its own);
        // before the spawn there is none yet.
        if how != How::Interrupt && point != "before-spawn" {
            assert!(!found.is_empty(), "nothing to find after {at}");
        }
        if how != How::Interrupt && point == "before-rename" {
            assert!(!temps(&env).is_empty(), "no temp file after {at}");
        }
        check_names(&env, &found, &at).await;
        match end {
            End::Resume => {
                env.rotor(&["resume", "--yes"]).await.assert_code(0);
                assert_eq!(env.journal()["status"], "completed", "{at}");
            }
            End::Rollback => {
                env.rotor(&["rollback"]).await.assert_code(0);
                assert_eq!(env.journal()["status"], "rolled_back", "{at}");
            }
            End::Down => {
                let running: usize = consumers(&env)
                    .iter()
                    .map(|c| tagged(&fleet_id(&env, c)).len())
                    .sum();
                let down = env.rotor(&["--output", "json", "down"]).await;
                down.assert_code(0);
                for c in consumers(&env) {
                    let left = tagged(&fleet_id(&env, &c));
                    assert!(left.is_empty(), "{c}: {left:?} survive down after {at}");
                }
                // Every process of the fleets, recorded or not, is counted.
                let stopped = down.last_json()["stopped"].as_u64().unwrap();
                assert_eq!(stopped, running as u64, "after {at}");
            }
        }
        let left = strays(&env);
        assert!(left.is_empty(), "{left:?} survive after {at}");
        assert_eq!(temps(&env), Vec::<PathBuf>::new(), "after {at}");
        assert_eq!(starting(&env), 0, "after {at}");
        if end == End::Down {
            // Back to a running fleet at S0 for the next point.
            env.rotor(&["up"]).await.assert_code(0);
            env.rotor(&["rollback"]).await.assert_code(0);
        }
        env.rotor(&["check"]).await.assert_code(0);
    }
    drop(cleanup);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failpoint_kill_at_every_point_of_an_instance_start_leaves_no_orphan() {
    no_orphan_survives(
        How::Failpoint,
        [End::Resume, End::Down, End::Rollback, End::Resume],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sigkill_at_every_point_of_an_instance_start_leaves_no_orphan() {
    no_orphan_survives(
        How::Kill,
        [End::Rollback, End::Resume, End::Down, End::Rollback],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigint_at_every_point_of_an_instance_start_leaves_no_orphan() {
    no_orphan_survives(
        How::Interrupt,
        [End::Down, End::Rollback, End::Resume, End::Down],
    )
    .await;
}
