//! Hardening (issue 13): no value in any output even when a peer quotes one, refusals that
//! change nothing, and time arithmetic that cannot shorten a safety wait.

use crate::common::{Env, webhook_receiver};

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
