//! `rotor discover` on a fixture repository shaped like the one the team mapped by hand
//! (tests/fixtures/discover/repo): three services reading one secret under three names
//! (auth `SERVICE_SECRET`, backend `JWT_SECRET_KEY`, analytics `SECRET_KEY`), six env files,
//! three compose files, a Cloud Run deploy script and Terraform, code in Python and
//! TypeScript, a test fixture that sets the value, a git-ignored `.env.local`, and one planted
//! problem of each kind. Every finding is asserted by file and line; no value reaches the output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Out, rotor_exe};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/discover/repo")
}

fn discover(args: &[&str]) -> Out {
    Out::from(
        std::process::Command::new(rotor_exe())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
    )
}

/// Every literal value in the fixture (what must never be printed).
fn fixture_values() -> Vec<String> {
    let mut values = Vec::new();
    for f in crate::common::walk(&fixture()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            if let Some((_, v)) = line.split_once('=')
                && v.len() >= 16
                && !v.contains('$')
                && !v.contains(' ')
            {
                values.push(v.trim_matches('"').to_string());
            }
        }
    }
    values.push("ci-only-value-0123456789abcdefghijkl".into());
    values
}

#[test]
fn the_fixture_repository_yields_every_planted_finding_by_file_and_line() {
    let root = fixture();
    let out = discover(&[
        "--output",
        "json",
        "discover",
        root.to_str().unwrap(),
        "--secret",
        "SERVICE_SECRET",
    ]);
    assert_eq!(
        out.code(),
        Some(12),
        "findings exit 12: {}{}",
        out.stdout,
        out.stderr
    );
    let j = out.last_json();
    let d = &j["discover"];
    let found: BTreeSet<(String, String, String)> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                format!("{}:{}", f["file"].as_str().unwrap(), f["line"]),
                f["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = [
        // Planted: SERVICE_SECRET given twice, with different values, in one env file.
        ("duplicate-name", ".env.development:5", "SERVICE_SECRET"),
        // Planted: CI's fixed value reused in staging.
        (
            "shared-across-environments",
            "config/staging.env:2",
            "SERVICE_SECRET",
        ),
        // Planted: the production template ships `changeme` (also too short for production).
        ("weak-value", ".env.production.template:2", "SERVICE_SECRET"),
        ("too-short", ".env.production.template:2", "SERVICE_SECRET"),
        // Planted: staging's JWT key is 20 characters (staging needs 32).
        ("too-short", "config/staging.env:3", "JWT_SECRET_KEY"),
        // Planted: analytics reads SECRET_KEY; production (config/production.env and the Cloud
        // Run script) gives SERVICE_SECRET and JWT_SECRET_KEY, never SECRET_KEY.
        (
            "read-not-provided",
            "services/analytics/settings.py:3",
            "SECRET_KEY",
        ),
        // Planted: a per-service name of a service that no longer exists, read by nothing.
        (
            "provided-not-read",
            "config/production.env:3",
            "SERVICE_SECRET_REPORTING",
        ),
        // Planted: three services, three names, one secret (reported at its first reference).
        ("name-aliases", ".env.alpine-test:1", "SERVICE_SECRET"),
        // Every literal value in a tracked file (`.env.local` is git-ignored: never read).
        (
            "literal-in-tracked-file",
            ".env.alpine-test:1",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            ".env.development:2",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            ".env.development:5",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            ".env.production.template:2",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            ".env.test.fixed:2",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            "config/production.env:1",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            "config/production.env:3",
            "SERVICE_SECRET_REPORTING",
        ),
        (
            "literal-in-tracked-file",
            "config/staging.env:2",
            "SERVICE_SECRET",
        ),
        (
            "literal-in-tracked-file",
            "config/staging.env:3",
            "JWT_SECRET_KEY",
        ),
        (
            "literal-in-tracked-file",
            "tests/conftest.py:6",
            "SERVICE_SECRET",
        ),
    ]
    .into_iter()
    .map(|(k, at, n)| (k.to_string(), at.to_string(), n.to_string()))
    .collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nextra {extra:#?}"
    );

    // The references: what each kind of file says, with environment and service.
    let refs = d["references"].as_array().unwrap();
    let at = |file: &str, line: u64| {
        refs.iter()
            .find(|r| r["file"] == file && r["line"] == line)
            .unwrap_or_else(|| panic!("no reference at {file}:{line}"))
    };
    let r = at("docker-compose.alpine-test.yml", 8);
    assert_eq!(
        (
            &r["name"],
            &r["kind"],
            &r["to"],
            &r["environment"],
            &r["service"]
        ),
        (
            &Value::from("JWT_SECRET_KEY"),
            &Value::from("maps"),
            &Value::from("SERVICE_SECRET"),
            &Value::from("test"),
            &Value::from("backend")
        )
    );
    let r = at("deploy/production/cloudrun.sh", 6);
    assert_eq!(r["to"], "secretmanager:service-secret");
    assert_eq!(r["environment"], "production");
    let r = at("services/backend/src/index.ts", 2);
    assert_eq!(
        (&r["kind"], &r["service"]),
        (&Value::from("reads"), &Value::from("backend"))
    );
    let r = at("config/staging.env", 3);
    // The staging compose file loads config/staging.env for auth only.
    assert_eq!(
        (&r["environment"], &r["service"]),
        (&Value::from("staging"), &Value::from("auth"))
    );
    assert!(
        refs.iter().all(|r| r["file"] != ".env.local"),
        "a git-ignored file was read"
    );
    // The secret: three names, one Secret Manager secret, three readers.
    let s = &d["secrets"][0];
    assert_eq!(
        s["names"],
        serde_json::json!(["JWT_SECRET_KEY", "SECRET_KEY", "SERVICE_SECRET"]),
        "{s}"
    );
    assert_eq!(
        s["external"],
        serde_json::json!(["secretmanager:service-secret"])
    );
    assert_eq!(
        s["readers"]["backend"],
        serde_json::json!(["JWT_SECRET_KEY"])
    );
    assert_eq!(s["readers"]["analytics"], serde_json::json!(["SECRET_KEY"]));

    // No value anywhere in the output: values are named by fingerprint.
    for v in fixture_values() {
        assert!(
            !out.stdout.contains(&v) && !out.stderr.contains(&v),
            "a value leaked: {v}"
        );
    }
    // The same findings without --secret (every name that looks like a shared secret).
    let all = discover(&["--output", "json", "discover", root.to_str().unwrap()]);
    assert_eq!(all.code(), Some(12));
    assert_eq!(all.last_json()["discover"]["findings"], d["findings"]);
}

#[test]
fn the_human_report_the_diagram_and_a_draft_that_loads_once_its_blanks_are_filled() {
    let root = fixture();
    let dir = tempfile::tempdir().unwrap();
    let draft = dir.path().join("draft.yaml");
    let out = discover(&[
        "discover",
        root.to_str().unwrap(),
        "--format",
        "mermaid",
        "--playbook-draft",
        draft.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(12), "{}", out.stderr);
    assert!(
        out.stdout.contains(".env.development:5") && out.stdout.contains("[duplicate-name]"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("flowchart LR"), "{}", out.stdout);
    assert!(
        out.stdout.contains("class c1 multiname") || out.stdout.contains("multiname"),
        "auth reads two names: {}",
        out.stdout
    );
    // A second draft never overwrites the first.
    let again = discover(&[
        "discover",
        root.to_str().unwrap(),
        "--playbook-draft",
        draft.to_str().unwrap(),
    ]);
    assert_eq!(again.code(), Some(2), "{}", again.stderr);
    let text = std::fs::read_to_string(&draft).unwrap();
    assert!(text.contains("<FILL:"));
    // Fill every blank from the field it stands for, and nothing else.
    let filled: String = text
        .lines()
        .map(|l| {
            let Some(start) = l.find("\"<FILL:") else {
                return format!("{l}\n");
            };
            let end = l[start..].find(">\"").unwrap() + start + 2;
            let key = l
                .trim_start()
                .trim_start_matches("- ")
                .split(':')
                .next()
                .unwrap();
            let value = match key {
                "secret" => "service-secret",
                "environment" => "staging",
                "project" => "my-project",
                "apply" => "true",
                "targets" => "127.0.0.1:9",
                "to" => "auth",
                "path" if l.contains("{target}") => "/relay?target={target}",
                "path" => "/api/ping",
                other => panic!("a blank for an unexpected field {other}: {l}"),
            };
            format!("{}{value}{}\n", &l[..start], &l[end..])
        })
        .collect();
    assert!(
        filled
            .lines()
            .all(|l| l.trim_start().starts_with('#') || !l.contains("<FILL")),
        "{filled}"
    );
    let pb = rotor::playbook::load_str(&filled, "draft.yaml", dir.path())
        .unwrap_or_else(|e| panic!("the filled draft does not load: {e}\n{filled}"));
    let auth = pb.consumer("auth").unwrap();
    assert_eq!(auth.slots.primary, "SERVICE_SECRET");
    assert!(auth.slots.aliases.contains_key("JWT_SECRET_KEY"));
    assert_eq!(
        pb.consumer("backend").unwrap().slots.primary,
        "JWT_SECRET_KEY"
    );
    assert_eq!(
        pb.consumer("analytics").unwrap().slots.primary,
        "SECRET_KEY"
    );
    assert!(matches!(&pb.store, rotor::playbook::StoreSpec::Gcp(g) if g.name == "service-secret"));
}

#[test]
fn a_clean_tree_exits_0_and_bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("svc")).unwrap();
    std::fs::write(
        dir.path().join("svc/app.py"),
        "import os\nKEY = os.environ['SERVICE_SECRET']\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "SERVICE_SECRET=${FROM_THE_VAULT_AGENT}\n",
    )
    .unwrap();
    let out = discover(&[
        "discover",
        dir.path().to_str().unwrap(),
        "--secret",
        "SERVICE_SECRET",
    ]);
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("No findings."), "{}", out.stdout);
    let out = discover(&["discover", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let out = discover(&[
        "discover",
        dir.path().to_str().unwrap(),
        "--secret",
        "not a name",
    ]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--secret"), "{}", out.stderr);
}
