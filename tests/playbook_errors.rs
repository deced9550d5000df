//! Playbook validation: every `bad/*.yaml` fixture fails with exactly the error text in its
//! `.expected` file (file path shown as `<fixture>`), and every `good/*.yaml` fixture loads.
//!
//! After an intended change of wording, regenerate the expected files with
//! `ROTOR_BLESS=1 cargo test --test tests playbook_errors` and review the diff.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rotor::playbook::{
    ConsumerKind, Environment, ExecRoundtrip, ExecVia, Pickup, ProbeSpec, Roundtrip, SlotRef,
    StoreSpec, Timings, load_file,
};
use rotor::protocol::Role;
use rotor::secret::Alphabet;

fn fixtures(kind: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/playbooks")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The error a bad fixture produces, with its path replaced by `<fixture>`.
fn error_text(path: &Path) -> String {
    match load_file(path) {
        Ok(_) => panic!("{} loaded, but it should fail", path.display()),
        Err(e) => e
            .to_string()
            .replace(&path.display().to_string(), "<fixture>"),
    }
}

#[test]
fn bad_playbooks_fail_with_the_expected_error() {
    let bless = std::env::var_os("ROTOR_BLESS").is_some();
    let bad = fixtures("bad", "yaml");
    assert!(bad.len() >= 30, "only {} bad fixtures", bad.len());
    let mut failures = Vec::new();
    for path in &bad {
        let actual = error_text(path);
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", expected_path.display()));
        if actual.trim() != expected.trim() {
            failures.push(format!(
                "{}\n--- expected\n{}\n--- actual\n{}\n",
                path.display(),
                expected.trim(),
                actual.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_expected_file_has_a_fixture() {
    for expected in fixtures("bad", "expected") {
        assert!(
            expected.with_extension("yaml").exists(),
            "{} has no .yaml fixture",
            expected.display()
        );
    }
}

#[test]
fn bad_playbook_errors_are_located_and_helpful() {
    for path in fixtures("bad", "yaml") {
        let e = load_file(&path).unwrap_err();
        assert!(
            e.line >= 1 && e.column >= 1,
            "{}: no location: {e}",
            path.display()
        );
        assert!(
            !e.field.is_empty() && !e.message.is_empty(),
            "{}: {e}",
            path.display()
        );
        assert!(
            !e.message.contains('\n'),
            "{}: multi-line message: {e}",
            path.display()
        );
        assert!(!e.help.is_empty(), "{}: no help: {e}", path.display());
        // Env values, and what was written in a field that names a secret, are never echoed.
        assert!(
            !e.to_string().contains("do-not-echo"),
            "{}: {e}",
            path.display()
        );
        // Echoed input is cut to 80 characters: no error is long.
        assert!(e.to_string().len() < 1024, "{}: {e}", path.display());
    }
}

/// Huge files and values, read from disk: refused at once, with a short error that repeats
/// none of them.
#[test]
fn huge_playbooks_are_refused_with_short_errors() {
    let dir = tempfile::tempdir().unwrap();
    let value = "c2VjcmV0".repeat(5 << 17); // 5 MiB
    let cases = [
        // Larger than the 4 MiB a playbook may be: never read past the limit.
        (
            format!("secret: {value}\n"),
            "the playbook is larger than 4 MiB",
        ),
        // Under it, but no name.
        (
            format!("secret: {}\n", &value[..3 << 20]),
            "the value is 3145728 bytes long, more than the 4096 allowed",
        ),
        (
            format!("environment: test\nsecret: \"{}\"\n", &value[..1000]),
            "`secret` must be a name of 1 to 63 lowercase letters, digits and '-', starting with a letter (got 1000 characters that are not: it is longer than 63 characters)",
        ),
    ];
    for (i, (text, message)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let started = std::time::Instant::now();
        let e = load_file(&path).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(e.message, message);
        assert!(e.to_string().len() < 1024, "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }
}

#[test]
fn good_playbooks_load() {
    let good = fixtures("good", "yaml");
    assert!(good.len() >= 3, "only {} good fixtures", good.len());
    for path in good {
        if let Err(e) = load_file(&path) {
            panic!("{} should load:\n{e}", path.display());
        }
    }
}

#[test]
fn documented_example_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/playbook.md")).unwrap();
    let start = doc
        .find("```yaml\n")
        .expect("docs/playbook.md has a yaml example")
        + 8;
    let len = doc[start..].find("```").unwrap();
    let pb = rotor::playbook::load_str(&doc[start..start + len], "docs/playbook.md", root)
        .unwrap_or_else(|e| panic!("the example in docs/playbook.md does not load:\n{e}"));
    assert_eq!(pb.consumers.len(), 3);
}

#[test]
fn unreadable_playbook_is_reported() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/playbooks/missing.yaml");
    let e = load_file(&path).unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (0, 0, "-"));
    assert!(e.message.starts_with("cannot read playbook: "), "{e}");
    assert_eq!(e.help, "check the path");
}

#[test]
fn full_playbook_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/playbooks/good");
    let path = dir.join("full.yaml");
    let pb = load_file(&path).unwrap();

    assert_eq!(pb.source, path.display().to_string());
    assert_eq!(pb.checksum.len(), 64);
    assert_eq!(pb.base_dir, dir);
    assert_eq!(pb.secret, "service-secret");
    assert_eq!(pb.environment, Environment::Development);
    assert_eq!(
        (pb.generate.length, pb.generate.alphabet),
        (48, Alphabet::Base64url)
    );
    assert_eq!(
        pb.store,
        StoreSpec::Local {
            path: dir.join("demo-store.json")
        }
    );
    assert_eq!(pb.state_dir, dir.join("state/service-secret"));
    assert_eq!(
        pb.timings,
        Timings {
            rollout_timeout: Duration::from_secs(600),
            readiness_timeout: Duration::from_secs(45),
            soak: Duration::from_secs(2),
            grace: Duration::from_secs(900),
            retention: Duration::from_secs(3 * 24 * 3600),
            drain: Duration::from_millis(750),
            probe_timeout: Duration::from_secs(3),
        }
    );

    let auth = pb.consumer("auth").unwrap();
    assert_eq!(auth.role, Role::Both);
    assert_eq!(auth.pickup, Pickup::Restart);
    assert_eq!(auth.fingerprints_path.as_deref(), Some("/fingerprints"));
    let ConsumerKind::Process(p) = &auth.kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.instances, 2);
    assert_eq!(p.command.last().map(String::as_str), Some("4"));
    assert_eq!(p.env["RUST_BACKTRACE"], "1");
    assert_eq!(p.host.to_string(), "127.0.0.2");
    assert_eq!(p.health_path, "/ready");
    assert_eq!(
        auth.slots.secondary.as_deref(),
        Some("SERVICE_SECRET_PREVIOUS")
    );
    assert_eq!(auth.slots.aliases["SECRET_KEY"], SlotRef::Primary);
    assert_eq!(auth.slots.aliases["SECRET_KEY_OLD"], SlotRef::Secondary);
    assert_eq!(
        auth.probes,
        vec![
            ProbeSpec::Header {
                path: "/api/ping".into(),
                header: "X-Service-Secret".into(),
                accept: vec![200, 204],
                reject: vec![401, 403, 451],
            },
            ProbeSpec::Jwt {
                path: "/api/me".into(),
                ttl: Duration::from_secs(90),
                accept: vec![200],
                reject: vec![401, 403],
            },
            ProbeSpec::Exec {
                command: vec!["./check.sh".into(), "--quiet".into()],
                via: ExecVia::Env("PROBE_SECRET".into()),
            },
            ProbeSpec::Exec {
                command: vec!["./check-stdin.sh".into()],
                via: ExecVia::Stdin
            },
        ]
    );
    assert_eq!(auth.roundtrips.len(), 4);
    let http = |i: usize| auth.roundtrips[i].http().expect("an http round trip");
    assert_eq!(http(0).expect, 200);
    assert_eq!(http(1).to, "analytics");
    assert_eq!(http(1).path, "/relay/analytics?target={target}&mode=jwt");
    assert_eq!(http(1).expect, 204);
    assert_eq!(
        auth.roundtrips[2],
        Roundtrip::Exec(ExecRoundtrip {
            command: vec!["./sends.sh".into()],
            via: ExecVia::Env("SIGNER_SECRET".into()),
        })
    );
    assert_eq!(http(3).to, "analytics");

    let analytics = pb.consumer("analytics").unwrap();
    let ConsumerKind::Process(p) = &analytics.kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.host.to_string(), "::1");
    assert_eq!(p.health_path, "/healthz");
    assert!(analytics.roundtrips.is_empty());

    let cron = pb.consumer("cron").unwrap();
    assert_eq!(cron.role, Role::Signer);
    assert_eq!(cron.slots.secondary, None);
    assert!(cron.probes.is_empty());
}

#[test]
fn minimal_playbook_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/playbooks/good");
    let pb = load_file(&dir.join("minimal.yaml")).unwrap();
    assert_eq!(pb.environment, Environment::Production);
    assert_eq!(pb.generate.length, 64, "defaults to the production minimum");
    assert_eq!(pb.generate.alphabet, Alphabet::Alphanumeric);
    assert_eq!(pb.timings, Timings::default());
    assert_eq!(
        pb.store,
        StoreSpec::Local {
            path: "/var/lib/rotor/api-key.json".into()
        }
    );
    assert_eq!(pb.state_dir, dir.join(".rotor/api-key-production"));
    let client = pb.consumer("client").unwrap();
    let trip = client.roundtrips[0].http().expect("an http round trip");
    assert_eq!(trip.to, "api");
    assert_eq!(trip.expect, 200);
    let ConsumerKind::Process(p) = &client.kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.host.to_string(), "127.0.0.1");
    assert!(p.env.is_empty());
}
