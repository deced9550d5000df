//! What users read: help, exit codes, errors.

use crate::common::Env;

#[tokio::test]
async fn help_lists_every_command() {
    let out = std::process::Command::new(crate::common::rotor_exe())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "plan", "rotate", "resume", "rollback", "status", "check", "init", "up", "down", "demo",
        "graph",
    ] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}:\n{text}"
        );
    }
    assert!(!text.contains("demo-service"), "hidden command shown");
}

#[tokio::test]
async fn resume_without_a_rotation_says_what_to_do() {
    let env = Env::new();
    env.rotor(&["init"]).await.assert_code(0);
    let out = env.rotor(&["resume"]).await;
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("no rotation of this secret is in progress"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("help: start one with `rotor rotate`"),
        "{}",
        out.stderr
    );
    let status = env.rotor(&["status"]).await;
    status.assert_code(0);
    assert!(
        status.stdout.contains("no rotation recorded"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("lock: free"), "{}", status.stdout);
    env.finish().await;
}

#[tokio::test]
async fn a_bad_playbook_is_exit_2_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("bad.yaml");
    let yaml = crate::common::demo_yaml(|y| y.replace("role: validator", "role: validater"));
    std::fs::write(&playbook, yaml).unwrap();
    let out = std::process::Command::new(crate::common::rotor_exe())
        .args(["plan"])
        .arg(&playbook)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = playbook.display().to_string();
    assert!(err.starts_with(&format!("error: playbook {p}:")), "{err}");
    assert!(err.contains("role"), "{err}");
    assert!(err.contains("help:"), "{err}");
}

#[tokio::test]
async fn init_refuses_an_existing_store_and_changes_nothing() {
    let env = Env::new();
    env.rotor(&["init"]).await.assert_code(0);
    let before = env.store();
    let out = env.rotor(&["init"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(before, env.store());
    env.finish().await;
}

#[test]
fn graph_maps_several_playbooks_and_names_multi_name_readers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let (k8s, gcp) = (root.join("k8s-demo.yaml"), root.join("gcp-cloudrun.yaml"));
    let run = |format: &str| {
        let out = crate::common::run_rotor(
            &[
                "graph",
                "--format",
                format,
                k8s.to_str().unwrap(),
                gcp.to_str().unwrap(),
            ],
            &[],
        );
        out.assert_code(0);
        out.stdout
    };
    let m = run("mermaid");
    assert!(m.starts_with("flowchart LR\n"), "{m}");
    // Two secrets (one per playbook), five consumers, one edge each.
    assert!(
        m.contains(
            "s0[(\"service-secret<br/>development<br/>kubernetes:demo/service-secret-store\")]"
        ),
        "{m}"
    );
    assert!(m.contains("s1[(\"service-secret<br/>production<br/>gcp:projects/my-project/secrets/service-secret\")]"), "{m}");
    assert!(m.contains("c0[\"auth<br/>Deployment demo/auth\"]"), "{m}");
    assert!(m.contains("s1 -- \"validator<br/>primary: SERVICE_SECRET, SECRET_KEY<br/>secondary: SERVICE_SECRET_PREVIOUS\" --> c4"), "{m}");
    assert_eq!(m.matches(" --> ").count(), 5, "{m}");
    // auth, backend and admin-api read one value under two names.
    for line in [
        "%% auth reads service-secret/development under 2 names: SERVICE_SECRET, SECRET_KEY",
        "%% backend reads service-secret/development under 2 names: SERVICE_SECRET, JWT_SECRET_KEY",
        "%% admin-api reads service-secret/production under 2 names: SERVICE_SECRET, SECRET_KEY",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    assert!(!m.contains("analytics reads"), "{m}");
    let d = run("dot");
    assert!(d.starts_with("digraph rotor {"), "{d}");
    // An independent DOT parser (pydot, from PyPI) reads it: 7 nodes, 5 edges.
    let pydot = crate::common::pip_install("pydot", "pytools-pydot", "pydot/__init__.py");
    let parsed = crate::common::python(
        &pydot,
        "import sys, pydot; [g] = pydot.graph_from_dot_data(sys.stdin.read()); \
         print(len(g.get_nodes()), len(g.get_edges()))",
        &[],
        &d,
    );
    assert_eq!(parsed.trim(), "7 5", "{d}");
    assert_eq!(d.matches(" -> ").count(), 5, "{d}");
    assert!(
        d.contains("c0 [shape=box, label=\"auth\\nDeployment demo/auth\", color=red, penwidth=2];"),
        "{d}"
    );
    assert!(d.contains("// admin-api reads"), "{d}");
}

fn manifests(playbook: &str) -> crate::common::Out {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("playbooks")
        .join(playbook);
    crate::common::run_rotor(
        &[
            "manifests",
            "--image",
            "registry.example/rotor:1.0",
            "--playbook",
            path.to_str().unwrap(),
        ],
        &[],
    )
}

fn yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml).unwrap()
}

#[test]
fn manifests_grant_only_what_the_playbook_names_and_run_if_due() {
    use k8s_openapi::api::batch::v1::CronJob;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let out = manifests("k8s-demo.yaml");
    out.assert_code(0);
    let docs = yaml_docs(&out.stdout);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "CronJob"
        ]
    );
    let role: Role = serde_json::from_value(docs[1].clone()).unwrap();
    assert_eq!(role.metadata.namespace.as_deref(), Some("demo"));
    let rules: Vec<(String, Vec<String>, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.resources.unwrap().join(","),
                r.verbs,
                r.resource_names.unwrap_or_default(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (
                "secrets".into(),
                s(&["get", "update"]),
                s(&[
                    "analytics-secrets",
                    "auth-secrets",
                    "backend-secrets",
                    "service-secret-store"
                ])
            ),
            (
                "deployments".into(),
                s(&["get", "patch"]),
                s(&["analytics", "auth", "backend"])
            ),
            ("pods".into(), s(&["list"]), vec![]),
            ("pods/status".into(), s(&["patch"]), vec![]),
            (
                "leases".into(),
                s(&["get", "update"]),
                s(&["rotor-service-secret-development"])
            ),
            ("leases".into(), s(&["create"]), vec![]),
            (
                "configmaps".into(),
                s(&["get", "update"]),
                s(&["rotor-journal-service-secret-development"])
            ),
            ("configmaps".into(), s(&["create"]), vec![]),
        ]
    );
    let binding: RoleBinding = serde_json::from_value(docs[2].clone()).unwrap();
    assert_eq!(binding.role_ref.name, "rotor-service-secret-development");
    assert_eq!(
        binding.subjects.unwrap()[0].name,
        "rotor-service-secret-development"
    );
    let cm: ConfigMap = serde_json::from_value(docs[3].clone()).unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/k8s-demo.yaml"),
    )
    .unwrap();
    assert_eq!(cm.data.unwrap()["playbook.yaml"], text);
    let cron: CronJob = serde_json::from_value(docs[4].clone()).unwrap();
    let spec = cron.spec.unwrap();
    assert_eq!(spec.schedule, "17 3 * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("rotor-service-secret-development")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/rotor:1.0"));
    let script = c.command.as_ref().unwrap().join(" ");
    assert!(
        script.contains("rotor --output json rotate --if-due /etc/rotor/playbook.yaml"),
        "{script}"
    );
    assert!(script.contains("-eq 9 ] && exit 0"), "{script}");
    assert_eq!(
        script,
        format!("/bin/sh -c {}", rotor::manifests::cron_script())
    );
    // The pod may take one instance's rollout to stop (k8s-demo.yaml: readiness 60s, drain 2s,
    // probes 2 × 5s, and a minute to spare).
    let pb = rotor::playbook::load_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/k8s-demo.yaml"),
    )
    .unwrap();
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(rotor::manifests::grace_period(&pb))
    );
    assert!(
        pod.termination_grace_period_seconds.unwrap()
            > pb.timings.readiness_timeout.as_secs() as i64
    );

    // A Secret Manager store: the lock is on the secret (no Lease rules); workload identity.
    let out = manifests("gcp-k8s.yaml");
    out.assert_code(0);
    let (yaml, docs) = (&out.stdout, yaml_docs(&out.stdout));
    assert_eq!(
        docs[0]["metadata"]["annotations"]["iam.gke.io/gcp-service-account"],
        "rotor@rotor-lab.iam.gserviceaccount.com"
    );
    assert!(!yaml.contains("leases"), "{yaml}");

    // Local processes cannot be run from a cluster: refused, nothing printed.
    let out = manifests("local-demo.yaml");
    out.assert_code(2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("is a local process"), "{}", out.stderr);
}

/// The value policy in `check`: a weak value in the store, and one value in two environments.
#[test]
fn check_reports_weak_values_and_values_shared_between_environments() {
    let dir = tempfile::tempdir().unwrap();
    let write = |env: &str| {
        let y = crate::common::demo_yaml(|y| {
            y.replace("environment: development", &format!("environment: {env}"))
                .replace("path: demo-store.json", &format!("path: {env}-store.json"))
        });
        let p = dir.path().join(format!("{env}.yaml"));
        std::fs::write(&p, y).unwrap();
        p
    };
    let (dev, staging) = (write("development"), write("staging"));
    let rotor = |args: &[&str], files: &[&std::path::Path]| {
        let mut all = args.to_vec();
        all.extend(files.iter().map(|f| f.to_str().unwrap()));
        let out = crate::common::run_rotor(&all, &[]);
        (out.code(), out.stdout, out.stderr)
    };
    assert_eq!(rotor(&["init"], &[&dev]).0, Some(0));
    // Staging gets a copy of development's store: the same value in both environments.
    std::fs::copy(
        dir.path().join("development-store.json"),
        dir.path().join("staging-store.json"),
    )
    .unwrap();
    let (code, stdout, _) = rotor(&["check"], &[&dev, &staging]);
    assert_eq!(code, Some(5), "{stdout}");
    assert!(
        stdout.contains("holds the same value sha256:")
            && stdout.contains("in development and staging"),
        "{stdout}"
    );
    // A weak value in development's store (consistent fingerprint, so the store loads).
    let path = dir.path().join("development-store.json");
    let mut store: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let weak = rotor::secret::SecretValue::new("ChangeMe".into());
    let v = &mut store["versions"][0];
    v["value"] = serde_json::json!("ChangeMe");
    v["fingerprint"] = serde_json::json!(weak.fingerprint("service-secret").as_str());
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    let (code, stdout, _) = rotor(&["check"], &[&dev]);
    assert_eq!(code, Some(5), "{stdout}");
    for needle in [
        "policy: the store's primary",
        "is 8 characters, the policy for development asks for at least 48",
        "is a known weak or development value",
    ] {
        assert!(stdout.contains(needle), "{needle}\n{stdout}");
    }
    assert!(!stdout.contains("ChangeMe"), "a value in check's output");
}

/// The demo's traffic runs through http round trips; a playbook whose signers are proven by
/// exec round trips only would report "0 failed requests" out of 0, so it is refused before
/// anything starts.
#[tokio::test]
async fn demo_refuses_a_playbook_it_could_not_drive_load_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = rotor::demo::LOCAL_DEMO.to_string();
    for relay in [
        "      - to: backend\n        path: \"/relay/backend?target={target}\"\n      - to: analytics\n        path: \"/relay/analytics?target={target}\"\n",
        "      - to: auth\n        path: \"/relay/auth?target={target}\"\n",
    ] {
        assert!(yaml.contains(relay));
        yaml = yaml.replace(
            relay,
            "      - {type: exec, command: [\"true\"], via: stdin}\n",
        );
    }
    let playbook = dir.path().join("exec-only.yaml");
    std::fs::write(&playbook, yaml).unwrap();
    let demo_dir = dir.path().join("run");
    let out = crate::common::run_rotor(
        &[
            "demo",
            "--playbook",
            playbook.to_str().unwrap(),
            "--dir",
            demo_dir.to_str().unwrap(),
        ],
        &[],
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains("has none, so it would measure nothing"),
        "{}",
        out.stderr
    );
    // Nothing was started: no store, no instance.
    assert!(!crate::common::walk(&demo_dir).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == "demo-store.json" || n == "endpoints.json")
    }));
}

/// The CronJob's shell is PID 1 in its pod: the kubelet's SIGTERM reaches the shell, which must
/// pass it to rotor and wait until rotor stopped at its safe point, exiting with rotor's code;
/// exit 9 (not due) is success. Checked with a stand-in `rotor` that records the signal.
#[test]
fn the_cronjob_script_forwards_sigterm_to_rotor_and_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stand_in = d.join("rotor");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\ntrap 'echo term > \"$STAND_IN_DIR/got\"; exit 143' TERM\n[ -n \"$EXIT_NOW\" ] && exit \"$EXIT_NOW\"\ntouch \"$STAND_IN_DIR/started\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        d.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |exit_now: Option<&str>| {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(rotor::manifests::cron_script())
            .env("PATH", &path)
            .env("STAND_IN_DIR", d);
        if let Some(code) = exit_now {
            cmd.env("EXIT_NOW", code);
        }
        cmd.spawn().unwrap()
    };
    assert_eq!(
        run(Some("9")).wait().unwrap().code(),
        Some(0),
        "not due is success"
    );
    assert_eq!(
        run(Some("3")).wait().unwrap().code(),
        Some(3),
        "rotor's failure"
    );
    let mut sh = run(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !d.join("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sh.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(sh.wait().unwrap().code(), Some(143), "rotor's exit code");
    assert_eq!(
        std::fs::read_to_string(d.join("got")).unwrap().trim(),
        "term",
        "rotor got the SIGTERM"
    );
}
