//! Hardening (issue 13): no value in any output even when a peer quotes one, refusals that
//! change nothing, and time arithmetic that cannot shorten a safety wait.

use crate::common::{Env, tree, webhook_receiver};

/// A signer whose error pages quote its own key (in the body and in a header): the value must
/// reach none of stdout, stderr, JSON events, the journal, the audit log, the webhook, the
/// metrics file or `status` (`Env::finish` scans every output and every file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_quotes_its_value_never_puts_it_in_any_output() {
    let (url, heard) = webhook_receiver().await;
    let env = Env::with(|y| {
        let y = y.replace(
            r#""--peer", "auth=header"]"#,
            r#""--peer", "auth=header", "--fault-file", "faults/backend"]"#,
        );
        format!(
            "notify: {{webhook_env: ROTOR_TEST_WEBHOOK, metrics_file: metrics/rotor.prom}}\n{y}"
        )
    });
    env.up().await;
    std::fs::create_dir_all(env.path().join("faults")).unwrap();
    std::fs::write(env.path().join("faults/backend"), "leak").unwrap();
    let hook = [("ROTOR_TEST_WEBHOOK", url.as_str())];
    // The running backend instances leak from now on: check reports their round trips, and a
    // rotation's first gate on a backend instance fails and rolls back.
    let check = env.rotor_env(&["check"], &hook).await;
    check.assert_code(5);
    assert!(
        check.stdout.contains("round trip to auth") && check.stdout.contains("a body of "),
        "{}",
        check.stdout
    );
    let out = env
        .rotor_env(&["--output", "json", "rotate", "--yes"], &hook)
        .await;
    out.assert_code(5);
    env.rotor_env(&["--output", "json", "status"], &hook)
        .await
        .assert_code(0);
    // Now a rotation under way when the leak starts: the next gate on a backend instance fails.
    std::fs::write(env.path().join("faults/backend"), "").unwrap();
    let out = env
        .rotor_env(
            &["--output", "json", "rotate", "--yes", "--until", "S2"],
            &hook,
        )
        .await;
    out.assert_code(0);
    std::fs::write(env.path().join("faults/backend"), "leak").unwrap();
    let out = env
        .rotor_env(&["--output", "json", "resume", "--yes"], &hook)
        .await;
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("a body of "), "{}", out.stdout);
    env.rotor_env(&["--output", "json", "status"], &hook)
        .await
        .assert_code(0);
    let texts = heard.lock().unwrap().clone();
    assert!(!texts.is_empty(), "the webhook heard nothing");
    // Every value the store ever held, against every webhook message.
    let store = env.store();
    for v in store["versions"].as_array().unwrap() {
        if let Some(value) = v["value"].as_str() {
            assert!(
                !texts.iter().any(|t| t.contains(value)),
                "a value reached the webhook"
            );
        }
    }
    std::fs::write(env.path().join("faults/backend"), "").unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_pasted_into_the_playbook_is_refused_without_being_printed() {
    let env = Env::new();
    env.up().await;
    let store = env.store();
    let id = store["primary"].as_str().unwrap().to_string();
    let value = crate::common::version(&store, &id)["value"]
        .as_str()
        .unwrap()
        .to_string();
    let original = std::fs::read_to_string(&env.playbook).unwrap();
    // Someone pastes the value into a consumer's environment "to debug".
    let pasted = original.replacen(
        "    slots:\n      primary: JWT_SECRET_KEY",
        &format!(
            "    env:\n      DEBUG_COPY: \"{value}\"\n    slots:\n      primary: JWT_SECRET_KEY"
        ),
        1,
    );
    assert_ne!(pasted, original);
    std::fs::write(&env.playbook, &pasted).unwrap();
    let before = tree(env.path());
    for cmd in [&["rotate", "--yes"][..], &["check"], &["up"], &["resume"]] {
        let out = env.rotor(cmd).await;
        out.assert_code(2);
        if cmd[0] != "resume" {
            assert!(
                out.stderr.contains("contains the value of store version"),
                "{cmd:?}: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains(&value) && !out.stdout.contains(&value));
    }
    assert_eq!(tree(env.path()), before, "a refusal changed files");
    std::fs::write(&env.playbook, &original).unwrap();
    env.rotor(&["check"]).await.assert_code(0);
    // A leak report often quotes what leaked: the reason is recorded with the value replaced by
    // its fingerprint (finish() scans the journal, its history and the audit log).
    let reason = format!("leaked in CI: {value}");
    env.rekey(&reason, &[]).await.assert_code(0);
    // A handover timeout beyond 24h is refused before anything runs.
    env.rekey("x", &["--handover-timeout", "300000000years"])
        .await
        .assert_code(2);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_reads_create_nothing() {
    // No store yet: rotate is refused (exit 2) and nothing appears; plan, status and check
    // read only.
    let env = Env::new();
    let before = tree(env.path());
    env.rotor(&["rotate", "--yes"]).await.assert_code(2);
    env.rotor(&["plan"]).await.assert_code(0);
    env.rotor(&["status"]).await.assert_code(0);
    let _ = env.rotor(&["check"]).await;
    assert_eq!(
        tree(env.path()),
        before,
        "a refusal or a read created files"
    );
    assert!(!env.pb.state_dir.exists());

    // A store outside the state directory gets no lock file beside it; the state directory is
    // created and marked.
    env.rotor(&["init"]).await.assert_code(0);
    let rotor::playbook::StoreSpec::Local { path } = &env.pb.store else {
        unreachable!()
    };
    let siblings: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lock"))
        .collect();
    assert!(siblings.is_empty(), "{siblings:?}");
    assert!(env.pb.state_dir.join(".rotor-state").is_file());

    // Refusals after the store exists write nothing either: no state directory appears for
    // `init` on an existing store, `resume`/`rollback` with no rotation, `--if-due` without a
    // schedule; `status` creates no lock file.
    std::fs::remove_dir_all(&env.pb.state_dir).unwrap();
    let before = tree(env.path());
    for cmd in [
        &["init"][..],
        &["resume"],
        &["rollback"],
        &["rotate", "--if-due"],
    ] {
        env.rotor(cmd).await.assert_code(2);
    }
    env.rotor(&["status"]).await.assert_code(0);
    assert_eq!(tree(env.path()), before, "a refusal created files");
    assert!(!env.pb.state_dir.exists());
    env.rotor(&["up"]).await.assert_code(0);

    // plan reports a store it cannot read as check does.
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(path, perms.clone()).unwrap();
    let plan = env.rotor(&["plan"]).await;
    let check = env.rotor(&["check"]).await;
    assert_ne!(plan.code(), Some(0), "{plan:?}");
    assert_eq!(plan.code(), check.code());
    assert!(!plan.stdout.contains("not initialized"), "{}", plan.stdout);
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(path, perms).unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_is_a_root_or_someone_elses_directory_is_refused() {
    for (state_dir, why) in [
        ("/", "filesystem root"),
        ("foreign", "entries rotor did not create"),
    ] {
        let env = Env::with(|y| format!("state_dir: {state_dir}\n{y}"));
        std::fs::create_dir_all(env.path().join("foreign")).unwrap();
        std::fs::write(env.path().join("foreign/notes.txt"), "mine").unwrap();
        let out = env.rotor(&["init"]).await;
        out.assert_code(2);
        assert!(out.stderr.contains(why), "{}", out.stderr);
        assert!(!std::path::Path::new("/lock").exists());
        assert!(!std::path::Path::new("/.rotor-state").exists());
        assert_eq!(
            std::fs::read_dir(env.path().join("foreign"))
                .unwrap()
                .count(),
            1,
            "the foreign directory was written to"
        );
    }
}
