//! Long life: the state a secret accumulates over many rotations stays within the playbook's
//! `keep` (finished journals, stopped instances' logs, the local store's destroyed versions,
//! the audit log), and the pruning at the end of a run survives being killed part-way.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{Env, walk};

/// File names in `dir` (none when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The id's start time in milliseconds: `<consumer>-<millis>-<n>`.
fn instance_started_ms(consumer: &str, id: &str) -> i64 {
    let rest = id
        .strip_prefix(consumer)
        .and_then(|r| r.strip_prefix('-'))
        .unwrap();
    rest.split_once('-').unwrap().0.parse().unwrap()
}

/// The logs in `fleet/<consumer>/logs`, and the ids recorded in `fleet/<consumer>/instances`.
fn logs_and_records(state: &Path, consumer: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = state.join("fleet").join(consumer);
    let logs = names(&dir.join("logs"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
        .collect();
    let records = names(&dir.join("instances"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    (logs, records)
}

/// Six rotations under load with small `keep` settings: after each, the history, the audit
/// log, the instance logs and the store's destroyed versions are within what `keep` allows,
/// and the number of files in the state directory stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rotations_stay_within_what_keep_allows() {
    const AUDIT_MAX: u64 = 64 * 1024;
    let env = Env::with(|y| {
        format!(
            "keep: {{history: 2, instance_logs: 1, destroyed_versions: 2, audit_log_size: 64KiB, audit_logs: 1}}\n{y}"
        )
    });
    env.up().await;
    let state = env.pb.state_dir.clone();
    let consumers: Vec<String> = env.pb.consumers.iter().map(|c| c.name.clone()).collect();
    let mut files = Vec::new();
    let mut audit_lines = 0;
    for round in 1..=6 {
        env.rotate_under_load(1).await;
        let j = env.journal();
        assert_eq!(j["status"], "completed");

        // Finished journals: the two newest (the latest rotation is journal.json).
        let history = names(&state.join("history"));
        assert_eq!(
            history.len(),
            (round - 1).min(2),
            "round {round}: {history:?}"
        );

        // The audit log: audit.log and at most one rotated file, each about 64 KiB at most.
        let audit: Vec<String> = names(&state)
            .into_iter()
            .filter(|n| n.starts_with("audit.log"))
            .collect();
        assert!(
            audit == ["audit.log"] || audit == ["audit.log", "audit.log.1"],
            "round {round}: {audit:?}"
        );
        audit_lines = 0;
        for n in &audit {
            let text = std::fs::read_to_string(state.join(n)).unwrap();
            assert!(
                text.len() as u64 <= AUDIT_MAX + 8 * 1024,
                "round {round}: {n} is {} bytes",
                text.len()
            );
            // Whole JSON lines only.
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
            audit_lines += text.lines().count();
        }

        // The store: at most two destroyed versions' records beside the primary.
        let store = env.store();
        let versions = store["versions"].as_array().unwrap();
        let destroyed = versions
            .iter()
            .filter(|v| v["state"] == "destroyed")
            .count();
        assert_eq!(destroyed, round.min(2), "round {round}: {store}");
        assert_eq!(versions.len(), destroyed + 1, "round {round}: {store}");

        // Logs: every running instance's, and those of instances that ran during this
        // rotation (started, or wrote their log, since it started); none older.
        let started: chrono::DateTime<chrono::Utc> =
            j["started_at"].as_str().unwrap().parse().unwrap();
        for c in &consumers {
            let (logs, records) = logs_and_records(&state, c);
            assert!(!records.is_empty(), "{c}");
            for r in &records {
                assert!(
                    logs.contains(r),
                    "round {round}: {c}: the log of running {r} is gone"
                );
            }
            for l in logs.difference(&records) {
                let path = state
                    .join("fleet")
                    .join(c)
                    .join("logs")
                    .join(format!("{l}.log"));
                let written: chrono::DateTime<chrono::Utc> =
                    std::fs::metadata(&path).unwrap().modified().unwrap().into();
                assert!(
                    instance_started_ms(c, l) >= started.timestamp_millis() || written >= started,
                    "round {round}: {c}: {l} stopped before this rotation, yet its log is kept"
                );
            }
        }
        files.push(walk(&state).len());
    }
    // Old audit lines went: six rotations wrote more than two files' worth.
    assert!(
        state.join("audit.log.1").exists(),
        "the audit log never rotated ({audit_lines} lines kept)"
    );
    // Flat: once the history is full, the state directory holds as many files after every
    // rotation (within the audit log's one rotated file).
    let last = &files[3..];
    assert!(
        last.iter().max().unwrap() - last.iter().min().unwrap() <= 1,
        "files in the state directory after each rotation: {files:?}"
    );
    env.finish().await;
}

/// A run killed in the middle of its pruning leaves finished journals that are whole and a
/// state every command accepts; the next run prunes the rest, and never the journal of the
/// rotation in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_prune_leaves_a_consistent_state_that_the_next_run_prunes() {
    let env = Env::new();
    env.up().await;
    for _ in 0..3 {
        env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    }
    let state = env.pb.state_dir.clone();
    let history = state.join("history");
    assert_eq!(names(&history).len(), 2, "the default keeps 50");

    // From now on no finished journal is kept.
    let yaml = std::fs::read_to_string(&env.playbook).unwrap();
    std::fs::write(
        &env.playbook,
        format!("keep: {{history: 0, instance_logs: 1}}\n{yaml}"),
    )
    .unwrap();
    let out = env
        .rotor_env(
            &["rotate", "--yes"],
            &[("ROTOR_FAILPOINT", "prune.history")],
        )
        .await;
    assert_eq!(out.signal(), Some(9), "not killed mid-prune: {out:#?}");
    // The rotation had finished; one of the three finished journals went, two are left whole.
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S5"), Some("completed"))
    );
    let left = names(&history);
    assert_eq!(left.len(), 2, "{left:?}");
    for f in &left {
        let old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(history.join(f)).unwrap()).unwrap();
        assert_eq!(old["status"], "completed", "{f}");
    }
    env.rotor(&["status"]).await.assert_code(0);
    env.rotor(&["check"]).await.assert_code(0);

    // The next run pauses mid-rotation: it prunes every finished journal, not its own.
    env.rotor(&["rotate", "--yes", "--until", "S3"])
        .await
        .assert_code(0);
    assert_eq!(names(&history), Vec::<String>::new());
    let j = env.journal();
    assert_eq!(
        (j["state"].as_str(), j["status"].as_str()),
        (Some("S3"), Some("paused"))
    );
    env.rotor(&["resume", "--yes"]).await.assert_code(0);
    assert_eq!(env.journal()["status"], "completed");
    assert_eq!(names(&history), Vec::<String>::new());
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}
