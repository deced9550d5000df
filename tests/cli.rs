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
    let run = |format: &str| {
        let out = std::process::Command::new(crate::common::rotor_exe())
            .args(["graph", "--format", format])
            .arg(root.join("k8s-demo.yaml"))
            .arg(root.join("gcp-cloudrun.yaml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
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
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, pydot; [g] = pydot.graph_from_dot_data(sys.stdin.read()); \
             print(len(g.get_nodes()), len(g.get_edges()))",
        ])
        .env("PYTHONPATH", &pydot)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(d.as_bytes()).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), "7 5", "{d}");
    assert_eq!(d.matches(" -> ").count(), 5, "{d}");
    assert!(
        d.contains("c0 [shape=box, label=\"auth\\nDeployment demo/auth\", color=red, penwidth=2];"),
        "{d}"
    );
    assert!(d.contains("// admin-api reads"), "{d}");
}
