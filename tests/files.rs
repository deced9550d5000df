//! Values as files (`delivery: file`) and hot reload (`pickup: reload`): stock HAProxy in
//! master-worker mode (`tests/fixtures/validators/haproxy-files-validator`) reads the accepted
//! values as pattern files and reloads on SIGUSR2; rotor's demo service signs with the value in
//! its file and re-reads it on SIGHUP. No instance restarts, no request fails, no value reaches
//! an environment, an argv, rotor's output, the journal or the audit log; a reload that does not
//! take is rolled back with the instance's previous files restored; a rotor killed between
//! rewriting files and signalling is finished by `rollback` or `resume`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::common::Env;
use crate::third_party::{Servers, primary_value, quoted, servers, status};

/// A signer (the demo service, 2 instances, values as files, reloaded with SIGHUP) relaying to
/// an HAProxy validator (2 instances, pattern files, reloaded with SIGUSR2).
fn fleet_yaml(s: &Servers, fault: &str, readiness: &str) -> String {
    let wrapper = quoted(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/validators/haproxy-files-validator")
            .display(),
    );
    crate::common::fleet_head(readiness)
        + &format!(
            r#"  - name: signer
    role: signer
    kind: process
    instances: 2
    command: ["{{rotor}}", "demo-service", "--name", "signer", "--secret-name", "service-secret",
              "--primary-env", "SERVICE_SECRET", "--peer", "haproxy=header"]
    delivery: file
    pickup: reload
    reload_signal: SIGHUP
    slots:
      primary: SERVICE_SECRET
    fingerprints_path: /fingerprints
    roundtrips:
      - to: haproxy
        path: "/relay/haproxy?target={{target}}"
  - name: haproxy
    role: validator
    kind: process
    instances: 2
    command: [{wrapper}]
    delivery: file
    pickup: reload
    reload_signal: SIGUSR2   # the wrapper rewrites its configuration and forwards it
    stop_signal: SIGUSR1     # HAProxy's soft stop
    env:
      HAPROXY_BIN: {haproxy}
      LD_LIBRARY_PATH: {libs}
      VALIDATOR_FAULT: {fault}
    slots:
      primary: SERVICE_SECRET
      secondary: SERVICE_SECRET_PREVIOUS
    probes:
      - type: header
        path: /api/ping
        header: X-Service-Secret
"#,
            haproxy = quoted(s.haproxy.display()),
            libs = quoted(&s.haproxy_libs),
            fault = quoted(fault),
        )
}

/// Instance id → pid of `consumer`'s records.
fn pids(env: &Env, consumer: &str) -> BTreeMap<String, i64> {
    let dir = env
        .pb
        .state_dir
        .join("fleet")
        .join(consumer)
        .join("instances");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            (
                r["id"].as_str().unwrap().to_string(),
                r["pid"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn secrets_root(env: &Env, consumer: &str) -> PathBuf {
    env.pb
        .state_dir
        .join("fleet")
        .join(consumer)
        .join("secrets")
}

/// Instance id → (file name → content) of what each instance of `consumer` reads now.
fn files(env: &Env, consumer: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for id in pids(env, consumer).into_keys() {
        let dir = secrets_root(env, consumer).join(&id);
        let mut names = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            names.insert(name, std::fs::read_to_string(e.path()).unwrap());
        }
        out.insert(id, names);
    }
    out
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every instance directory is 0700, every directory in it 0700 and every file 0600 (symlinks
/// followed, as the instance reads them).
fn assert_modes(env: &Env, consumer: &str) {
    let root = secrets_root(env, consumer);
    assert_eq!(mode(&root), 0o700, "{}", root.display());
    let mut seen = 0;
    for id in pids(env, consumer).into_keys() {
        let dir = root.join(&id);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let Ok(m) = std::fs::metadata(&p) else {
                    panic!("{} dangles", p.display())
                };
                if m.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{}", p.display());
                    if !e.file_type().unwrap().is_symlink() {
                        stack.push(p);
                    }
                } else {
                    assert_eq!(mode(&p), 0o600, "{}", p.display());
                    seen += 1;
                }
            }
        }
    }
    assert!(seen > 0, "no file under {}", root.display());
}

/// The processes of `pid`'s process group (the instance and what it started: HAProxy's master
/// and workers).
fn group(pid: i64) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let rest = &s[s.rfind(')').unwrap_or(0) + 1..];
                rest.split_whitespace().nth(2) == Some(&pid.to_string())
            })
        })
        .collect()
}

/// No value in the environment or argv of any process of any instance of `consumers`.
fn assert_no_value_in_processes(env: &Env, consumers: &[&str], values: &[&str]) {
    let mut checked = 0;
    for c in consumers {
        for pid in pids(env, c).into_values() {
            let members = group(pid);
            assert!(
                members.contains(&pid),
                "instance {pid} of {c} is not running"
            );
            for p in members {
                for what in ["environ", "cmdline"] {
                    let Ok(bytes) = std::fs::read(format!("/proc/{p}/{what}")) else {
                        continue; // exited meanwhile (a former HAProxy worker)
                    };
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(
                        text.contains("ROTOR_SECRETS_DIR=") || what == "cmdline",
                        "{c}: process {p} has no ROTOR_SECRETS_DIR"
                    );
                    for v in values {
                        assert!(!text.contains(v), "{c}: a value is in /proc/{p}/{what}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 8, "only {checked} process files checked");
}

async fn assert_haproxy_answers(env: &Env, value: &str, which: &str, expect: u16) {
    let eps = env.endpoints("haproxy");
    assert_eq!(eps.len(), 2);
    for addr in &eps {
        let got = status(
            addr,
            "/api/ping",
            Some(("X-Service-Secret", value.to_string())),
        )
        .await;
        assert_eq!(got, expect, "haproxy at {addr}, the {which} value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_and_the_demo_service_reload_their_files_with_no_restart_and_no_failed_request() {
    let s = servers();
    let env = Env::with(|_| fleet_yaml(&s, "", "30s"));
    env.up().await;
    let plan = env.rotor(&["plan"]).await;
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains("reload (SIGUSR2): haproxy (validator, 2 instances, one at a time)")
            && plan.stdout.contains("reload (SIGHUP): signer")
            && plan
                .stdout
                .contains("haproxy: values as files in ROTOR_SECRETS_DIR")
            && plan
                .stdout
                .contains("instance restarts and reloads: signer 2, haproxy 4 (total 6)"),
        "{}",
        plan.stdout
    );
    let old = primary_value(&env);
    let (signer, haproxy) = (pids(&env, "signer"), pids(&env, "haproxy"));
    assert_eq!((signer.len(), haproxy.len()), (2, 2));
    assert_modes(&env, "haproxy");
    assert_modes(&env, "signer");
    assert_no_value_in_processes(&env, &["signer", "haproxy"], &[&old]);
    assert_haproxy_answers(&env, &old, "current", 200).await;

    let (out, r) = env.rotate_under_load(50).await;
    // Reloads are counted where restarts would be: validators at T2 and T4, the signer at T3.
    assert_eq!(r["restarts"]["haproxy"], 4, "{r}");
    assert_eq!(r["restarts"]["signer"], 2, "{r}");
    let reloaded = out
        .stdout
        .lines()
        .filter(|l| l.contains("\"instance_reloaded\""))
        .count();
    assert_eq!(reloaded, 6, "{}", out.stdout);
    assert!(
        !out.stdout.contains("\"instance_replaced\""),
        "{}",
        out.stdout
    );

    // Nothing restarted: the same instances, the same processes.
    assert_eq!(pids(&env, "signer"), signer);
    assert_eq!(pids(&env, "haproxy"), haproxy);
    let new = primary_value(&env);
    assert!(new != old, "the primary did not change");
    for (id, names) in files(&env, "haproxy") {
        let want = BTreeMap::from([("SERVICE_SECRET".to_string(), new.clone())]);
        assert!(
            names == want,
            "haproxy {id} reads other files: {:?}",
            names.keys()
        );
    }
    for (id, names) in files(&env, "signer") {
        assert!(
            names.get("SERVICE_SECRET") == Some(&new) && names.len() == 1,
            "signer {id} reads other files: {:?}",
            names.keys()
        );
    }
    assert_modes(&env, "haproxy");
    assert_modes(&env, "signer");
    assert_no_value_in_processes(&env, &["signer", "haproxy"], &[&old, &new]);
    assert_haproxy_answers(&env, &new, "new", 200).await;
    assert_haproxy_answers(&env, &old, "old", 403).await;
    assert_haproxy_answers(&env, &"x".repeat(48), "unknown", 403).await;
    env.rotor(&["check"]).await.assert_code(0);

    // Stopped instances leave no files behind.
    env.rotor(&["down"]).await.assert_code(0);
    for c in ["signer", "haproxy"] {
        let left: Vec<_> = std::fs::read_dir(secrets_root(&env, c))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{c}: {left:?}");
    }
    // Output, journal, audit log and every file left: no value (the signers' groups are gone).
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_does_not_take_is_rolled_back_with_the_previous_files_restored() {
    let s = servers();
    // Every HAProxy instance ignores SIGUSR2: after a reload it still holds what it started
    // with, so the T2 gate (accept B) fails.
    let env = Env::with(|_| fleet_yaml(&s, "ignore-reload", "4s"));
    env.up().await;
    let a = env.store_primary();
    let old = primary_value(&env);
    let haproxy = pids(&env, "haproxy");
    let before = files(&env, "haproxy");
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(3);
    assert!(out.stderr.contains("haproxy"), "{}", out.stderr);
    // The failed instance got its files back at once: the rollback had nothing to reload.
    assert!(
        !out.stdout.contains("\"instance_reloaded\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\"instance_gated\""), "{}", out.stdout);
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S0"), Some("rolled_back")),
        "{j}"
    );
    assert_eq!(env.store_primary(), a);
    env.assert_no_failures(&report);
    // The same processes, reading the files they read before.
    assert_eq!(pids(&env, "haproxy"), haproxy);
    assert!(
        files(&env, "haproxy") == before,
        "the files were not restored"
    );
    assert_modes(&env, "haproxy");
    assert_haproxy_answers(&env, &old, "original", 200).await;
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotor_killed_between_rewriting_files_and_signalling_is_finished_by_rollback_or_resume() {
    let s = servers();
    let env = Env::with(|_| fleet_yaml(&s, "", "30s"));
    env.up().await;
    let old = primary_value(&env);
    let haproxy = pids(&env, "haproxy");
    let before = files(&env, "haproxy");
    // Killed at T2 with the first HAProxy instance's files holding A and B, not signalled.
    let out = env
        .rotor_env(
            &["rotate", "--yes"],
            &[("ROTOR_FAILPOINT", "reload.haproxy.written")],
        )
        .await;
    assert_eq!(out.signal(), Some(9), "{out:?}");
    let widened = files(&env, "haproxy")
        .values()
        .filter(|f| f.contains_key("SERVICE_SECRET_PREVIOUS"))
        .count();
    assert_eq!(widened, 1, "one instance's files were rewritten");
    let load = env.load();
    let out = env.rotor(&["rollback"]).await;
    let report = load.stop().await;
    out.assert_code(0);
    env.assert_no_failures(&report);
    assert_eq!(pids(&env, "haproxy"), haproxy);
    assert!(
        files(&env, "haproxy") == before,
        "the files were not restored"
    );
    assert_haproxy_answers(&env, &old, "original", 200).await;
    env.rotor(&["check"]).await.assert_code(0);

    // Killed at the same moment again, then resumed: the rotation completes, nothing restarts.
    let out = env
        .rotor_env(
            &["rotate", "--yes"],
            &[("ROTOR_FAILPOINT", "reload.haproxy.written")],
        )
        .await;
    assert_eq!(out.signal(), Some(9), "{out:?}");
    let load = env.load();
    let out = env.rotor(&["--output", "json", "resume", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(0);
    env.assert_no_failures(&report);
    assert_eq!(out.last_json()["report"]["state"], "S5", "{}", out.stdout);
    assert_eq!(pids(&env, "haproxy"), haproxy);
    let new = primary_value(&env);
    for (id, names) in files(&env, "haproxy") {
        let want = BTreeMap::from([("SERVICE_SECRET".to_string(), new.clone())]);
        assert!(
            names == want,
            "haproxy {id} reads other files: {:?}",
            names.keys()
        );
    }
    assert_haproxy_answers(&env, &new, "new", 200).await;
    assert_haproxy_answers(&env, &old, "old", 403).await;
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_signal_the_server_drops_is_sent_again_and_the_rotation_completes() {
    let s = servers();
    // Every HAProxy instance drops the first SIGUSR2 it gets (as HAProxy's master may drop one
    // that arrives while it re-executes itself): rotor signals it again within the readiness
    // window, so the rotation completes with the same processes and no failed request.
    let env = Env::with(|_| fleet_yaml(&s, "drop-first-reload", "6s"));
    env.up().await;
    let old = primary_value(&env);
    let haproxy = pids(&env, "haproxy");
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(0);
    env.assert_no_failures(&report);
    assert_eq!(out.last_json()["report"]["state"], "S5", "{}", out.stdout);
    assert_eq!(pids(&env, "haproxy"), haproxy);
    let new = primary_value(&env);
    assert_haproxy_answers(&env, &new, "new", 200).await;
    assert_haproxy_answers(&env, &old, "old", 403).await;
    // Each instance logged the signal it dropped: the second signal is what made it reload.
    let dropped = std::fs::read_dir(env.pb.state_dir.join("fleet/haproxy/logs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|l| l.contains("dropping the first SIGUSR2"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(dropped, 2, "{}", out.stderr);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}
