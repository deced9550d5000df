//! `kind: dotenv` consumers, the way a docker compose dev stack is rotated, without Docker:
//! rotor writes the services' env files, then runs an `apply` command that stands in for
//! `docker compose up -d --wait --no-deps --force-recreate SERVICE`. That command
//! (`restart.py`, below) reads the env files with python-dotenv from PyPI (a dotenv parser rotor
//! did not write, as compose reads them with its own), stops the service's running process,
//! starts a new one with the files' values in its environment, and waits until it answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Out, fleet_head, free_port, pip_install, rotor_exe, wait_for, walk};

/// The stand-in for `docker compose up -d --wait --no-deps --force-recreate NAME`:
/// `restart.py NAME PORT "FILES" -- COMMAND…`. While `run/hold` exists it waits after
/// creating `run/holding` (a test kills rotor there, after the files were written and before
/// the service restarted).
const RESTART_PY: &str = r#"
import fcntl, os, signal, subprocess, sys, time, urllib.request
from dotenv import dotenv_values

name, port, files = sys.argv[1], sys.argv[2], sys.argv[3].split(" ")
command = sys.argv[sys.argv.index("--") + 1:]
assert os.environ["ROTOR_CONSUMER"] == name, "ROTOR_CONSUMER"
assert os.environ["ROTOR_FILES"] == sys.argv[3], "ROTOR_FILES"
# One recreate of a service at a time, as the docker daemon does it.
lock = open(f"run/{name}.lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
if os.path.exists("run/hold"):
    open("run/holding", "w").close()
    while os.path.exists("run/hold"):
        time.sleep(0.05)

env = {k: v for k, v in os.environ.items() if not k.startswith("ROTOR_")}
for f in files:
    for k, v in dotenv_values(f).items():
        if v is not None:
            env[k] = v
env.update(HOST="127.0.0.1", PORT=port)

def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as s:
            return s.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True

pidfile = f"run/{name}.pid"
if os.path.exists(pidfile):
    old = int(open(pidfile).read())
    if not gone(old):
        os.kill(old, signal.SIGTERM)
    deadline = time.time() + 20
    while not gone(old):
        if time.time() > deadline:
            sys.exit(f"{name}: the old process {old} did not stop")
        time.sleep(0.02)

log = open(f"run/{name}.log", "ab")
p = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                     start_new_session=True)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(p.pid))
os.replace(pidfile + ".tmp", pidfile)
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        break
    except Exception:
        if p.poll() is not None:
            sys.exit(f"{name} exited with {p.returncode}")
        if time.time() > deadline:
            sys.exit(f"{name} did not answer")
        time.sleep(0.02)
"#;

/// The shared env file before rotor ever wrote it: comments, other settings, an `export`
/// line, and the planted duplicate of one of auth's names.
const SHARED_ENV: &str = "# development settings, shared by every service\nexport DEBUG=1\nSERVICE_SECRET=dev-secret-for-local-only # set by hand\nLOG_LEVEL=info\n\n# analytics\nANALYTICS_SAMPLE=0.5\nSERVICE_SECRET=another-dev-value\n";

/// A compose-like project: `.env.development` shared by both services, `config/auth.env`
/// for auth alone, the playbook and the apply command.
struct Project {
    dir: tempfile::TempDir,
    playbook: PathBuf,
    dotenv: PathBuf,
    auth_port: u16,
    outputs: Vec<String>,
}

impl Project {
    fn new() -> Project {
        let dotenv = pip_install(
            "python-dotenv==1.0.1",
            "pytools-dotenv-1.0.1",
            "dotenv/main.py",
        );
        let dir = tempfile::Builder::new()
            .prefix("rotor-compose-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("config")).unwrap();
        std::fs::create_dir_all(p.join("run")).unwrap();
        std::fs::write(p.join(".env.development"), SHARED_ENV).unwrap();
        std::fs::write(
            p.join("config/auth.env"),
            "# auth only\nAUTH_ISSUER=rotor-test\n",
        )
        .unwrap();
        std::fs::write(p.join("restart.py"), RESTART_PY).unwrap();
        let (auth, analytics) = (free_port(), free_port());
        let rotor = rotor_exe();
        let yaml = format!(
            "{head}  - name: auth
    role: both
    kind: dotenv
    files: [.env.development, config/auth.env]
    apply: [python3, restart.py, auth, \"{auth}\", \"{{files}}\", \"--\", \"{rotor}\", demo-service,
            --name, auth, --primary-env, SERVICE_SECRET, --secondary-env, SERVICE_SECRET_PREVIOUS,
            --alias-env, SECRET_KEY, --peer, analytics=jwt]
    targets: [\"127.0.0.1:{auth}\"]
    slots:
      primary: SERVICE_SECRET
      secondary: SERVICE_SECRET_PREVIOUS
      aliases:
        SECRET_KEY: primary
    fingerprints_path: /fingerprints
    probes:
      - type: header
        path: /api/ping
        header: X-Service-Secret
    roundtrips:
      - to: analytics
        path: \"/relay/analytics?target={{target}}\"
  - name: analytics
    role: validator
    kind: dotenv
    files: [.env.development]
    apply: [python3, restart.py, analytics, \"{analytics}\", \"{{files}}\", \"--\", \"{rotor}\", demo-service,
            --name, analytics, --primary-env, JWT_SECRET_KEY, --secondary-env, JWT_SECRET_KEY_PREVIOUS]
    targets: [\"127.0.0.1:{analytics}\"]
    slots:
      primary: JWT_SECRET_KEY
      secondary: JWT_SECRET_KEY_PREVIOUS
    probes:
      - type: jwt
        path: /api/ping
",
            head = fleet_head("15s"),
        );
        let playbook = p.join("rotor.yaml");
        std::fs::write(&playbook, yaml).unwrap();
        rotor::playbook::load_file(&playbook).expect("the compose playbook loads");
        Project {
            dir,
            playbook,
            dotenv,
            auth_port: auth,
            outputs: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(rotor_exe());
        cmd.args(args)
            .arg(&self.playbook)
            .current_dir(self.path())
            .env_remove("ROTOR_FAILPOINT")
            .env("PYTHONPATH", &self.dotenv)
            .stdin(std::process::Stdio::null());
        cmd
    }

    async fn rotor(&mut self, args: &[&str]) -> Out {
        let out = tokio::process::Command::from(self.command(args))
            .output()
            .await
            .unwrap();
        let o = Out::from(out);
        self.outputs.push(o.stdout.clone());
        self.outputs.push(o.stderr.clone());
        o
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path().join(file)).unwrap()
    }

    /// What python-dotenv reads from `file`: name → value.
    fn values(&self, file: &str) -> serde_json::Value {
        let out = crate::common::python(
            &self.dotenv,
            "import json, sys\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(sys.argv[1])))",
            &[self.path().join(file).to_str().unwrap()],
            "",
        );
        serde_json::from_str(&out).unwrap()
    }

    /// The fingerprint of the value python-dotenv reads for `name` in `file`.
    fn fingerprint(&self, file: &str, name: &str) -> Option<String> {
        let v = self.values(file);
        v[name].as_str().map(|s| {
            rotor::secret::SecretValue::new(s.to_string())
                .fingerprint("service-secret")
                .to_string()
        })
    }

    fn pid(&self, service: &str) -> i32 {
        self.read(&format!("run/{service}.pid"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The store's primary and secondary fingerprints.
    fn store_slots(&self) -> (String, Option<String>) {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.path().join("store.json")).unwrap())
                .unwrap();
        let fp = |slot: &str| {
            let id = s[slot].as_str()?;
            crate::common::version(&s, id)["fingerprint"]
                .as_str()
                .map(str::to_string)
        };
        (fp("primary").unwrap(), fp("secondary"))
    }

    /// Every value the store ever held (for the leak check).
    fn store_values(&self) -> Vec<String> {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.path().join("store.json")).unwrap())
                .unwrap();
        s["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["value"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for service in ["auth", "analytics"] {
            if let Ok(pid) = std::fs::read_to_string(self.path().join(format!("run/{service}.pid")))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Every other line of a file rotor wrote, as it was.
fn other_lines(text: &str, owned: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l.trim_start().trim_start_matches("export ");
            !owned.iter().any(|n| l.starts_with(&format!("{n}=")))
        })
        .map(str::to_string)
        .collect()
}

const AUTH_NAMES: &[&str] = &["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"];
const ANALYTICS_NAMES: &[&str] = &["JWT_SECRET_KEY", "JWT_SECRET_KEY_PREVIOUS"];

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `up` writes both services' names into their env files (the planted duplicate removed and
/// reported) and starts them through `apply`; a rotation rewrites the files at every step and
/// restarts the processes that read them, each proven; `check` reads the files back and
/// names a hand edit by file and name; a file rotor cannot rewrite is refused before anything
/// changes. Values never reach an output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_style_fleet_is_rotated_through_its_env_files() {
    let mut p = Project::new();
    let shared_before = other_lines(SHARED_ENV, &[]);
    p.rotor(&["init"]).await.assert_code(0);
    let up = p.rotor(&["up"]).await;
    up.assert_code(0);
    assert!(
        up.stdout
            .contains(".env.development:8: a second entry of SERVICE_SECRET was removed")
            || up
                .stderr
                .contains(".env.development:8: a second entry of SERVICE_SECRET was removed"),
        "the duplicate is reported by file:line: {up:#?}"
    );
    let (a, _) = p.store_slots();
    let mut values = p.store_values();
    // Both files name each of their names once, hold the store's primary, and kept every
    // other line (the shared file's comments, `export DEBUG=1`, the trailing comment).
    let shared = p.read(".env.development");
    for n in ["SERVICE_SECRET", "SECRET_KEY", "JWT_SECRET_KEY"] {
        assert_eq!(
            shared.matches(&format!("\n{n}=")).count(),
            1,
            "{n} once:\n{}",
            other_lines(&shared, AUTH_NAMES).join("\n")
        );
        assert_eq!(
            p.fingerprint(".env.development", n).as_deref(),
            Some(a.as_str())
        );
    }
    assert!(
        shared.contains("# set by hand\n"),
        "the trailing comment stays"
    );
    let kept: Vec<String> = other_lines(&shared, &[AUTH_NAMES, ANALYTICS_NAMES].concat());
    let before: Vec<String> = shared_before
        .iter()
        .filter(|l| !l.starts_with("SERVICE_SECRET="))
        .cloned()
        .collect();
    assert_eq!(
        kept, before,
        "every other line of the shared file, in order"
    );
    assert_eq!(
        p.fingerprint("config/auth.env", "SECRET_KEY").as_deref(),
        Some(a.as_str())
    );
    assert_eq!(p.values("config/auth.env")["AUTH_ISSUER"], "rotor-test");
    assert_eq!(
        p.values(".env.development")["SERVICE_SECRET_PREVIOUS"],
        serde_json::Value::Null
    );
    for f in [".env.development", "config/auth.env"] {
        assert_eq!(mode(&p.path().join(f)), 0o600, "{f}");
    }
    let check = p.rotor(&["--output", "json", "check"]).await;
    check.assert_code(0);
    let report = check.last_json();
    assert_eq!(report["files"].as_array().unwrap().len(), 3, "{report}");

    // A rotation: every step rewrites the files and restarts the processes reading them.
    let (auth0, analytics0) = (p.pid("auth"), p.pid("analytics"));
    let out = p.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    assert_eq!(out.last_json()["report"]["state"], "S5", "{out:#?}");
    let (b, secondary) = p.store_slots();
    values.extend(p.store_values());
    assert_ne!(a, b);
    assert_eq!(secondary, None);
    assert_ne!(p.pid("auth"), auth0, "auth was restarted");
    assert_ne!(p.pid("analytics"), analytics0, "analytics was restarted");
    for (file, n) in [
        (".env.development", "SERVICE_SECRET"),
        (".env.development", "SECRET_KEY"),
        (".env.development", "JWT_SECRET_KEY"),
        ("config/auth.env", "SERVICE_SECRET"),
    ] {
        assert_eq!(
            p.fingerprint(file, n).as_deref(),
            Some(b.as_str()),
            "{file} {n}"
        );
    }
    for n in ["SERVICE_SECRET_PREVIOUS", "JWT_SECRET_KEY_PREVIOUS"] {
        assert_eq!(
            p.values(".env.development")[n],
            serde_json::Value::Null,
            "{n} removed at S5"
        );
    }
    assert_eq!(
        other_lines(
            &p.read(".env.development"),
            &[AUTH_NAMES, ANALYTICS_NAMES].concat()
        ),
        kept,
        "a rotation keeps every other line"
    );
    // The running auth process holds what the files say (it was started from them).
    let held: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/fingerprints", p.auth_port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(held["names"]["SERVICE_SECRET"], b.as_str(), "{held}");
    p.rotor(&["check"]).await.assert_code(0);

    // A hand edit of one file: check names the file and the name, never the value.
    let auth_env = p.read("config/auth.env");
    std::fs::write(
        p.path().join("config/auth.env"),
        format!("{auth_env}SECRET_KEY=changeme-by-hand\n"),
    )
    .unwrap();
    let check = p.rotor(&["check"]).await;
    check.assert_code(5);
    let text = format!("{}{}", check.stdout, check.stderr);
    assert!(
        text.contains("config/auth.env: SECRET_KEY is given 2 times"),
        "{text}"
    );
    assert!(
        text.contains("config/auth.env: SECRET_KEY holds") && text.contains("never had"),
        "{text}"
    );
    assert!(!text.contains("changeme-by-hand"));
    std::fs::write(p.path().join("config/auth.env"), &auth_env).unwrap();
    p.rotor(&["check"]).await.assert_code(0);

    // A line the dotenv grammar refuses: the rotation is refused before anything changes.
    let broken = format!("{auth_env}not an entry\n");
    let bad_line = auth_env.lines().count() + 1;
    std::fs::write(p.path().join("config/auth.env"), &broken).unwrap();
    let files_before: Vec<(String, Vec<u8>)> = walk(p.path())
        .into_iter()
        .filter(|f| !f.starts_with(p.path().join("run")))
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    let refused = p.rotor(&["rotate", "--yes"]).await;
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("config/auth.env")
            && refused
                .stderr
                .contains(&format!("line {bad_line}: not a `NAME=value` line"))
            && refused.stderr.contains("rotor changed nothing"),
        "{refused:#?}"
    );
    let files_after: Vec<(String, Vec<u8>)> = walk(p.path())
        .into_iter()
        .filter(|f| !f.starts_with(p.path().join("run")))
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    let changed: Vec<&String> = files_after
        .iter()
        .filter(|f| !files_before.contains(f))
        .map(|(n, _)| n)
        .collect();
    assert!(
        changed.is_empty(),
        "a refusal changes nothing on disk: {changed:?}"
    );
    assert_eq!(files_before.len(), files_after.len());

    values.sort();
    values.dedup();
    assert_eq!(values.len(), 2, "A and B");
    for v in &values {
        for (i, o) in p.outputs.iter().enumerate() {
            assert!(!o.contains(v.as_str()), "a value leaked into output #{i}");
        }
    }
}

/// rotor killed after it wrote the files and while the apply command runs: the service has not
/// restarted yet. `resume` runs the command again (the record says it never finished) and the
/// rotation completes with every process holding what its files say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotor_killed_between_writing_the_files_and_the_restart_is_finished_by_resume() {
    let mut p = Project::new();
    p.rotor(&["init"]).await.assert_code(0);
    p.rotor(&["up"]).await.assert_code(0);
    let (a, _) = p.store_slots();
    std::fs::write(p.path().join("run/hold"), b"").unwrap();
    let mut child = tokio::process::Command::from(p.command(&["rotate", "--yes"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let holding = p.path().join("run/holding");
    wait_for(
        "the apply command to hold",
        Duration::from_secs(60),
        async || holding.exists(),
    )
    .await;
    // The files already hold the new secondary (under the name of whichever service went
    // first); its process still runs with the old values.
    let (_, b) = p.store_slots();
    let b = b.expect("a secondary at S1");
    assert!(
        ["SERVICE_SECRET_PREVIOUS", "JWT_SECRET_KEY_PREVIOUS"]
            .iter()
            .any(|n| p.fingerprint(".env.development", n).as_deref() == Some(b.as_str())),
        "the files hold B before the restart"
    );
    child.kill().await.unwrap();
    let _ = child.wait().await;
    std::fs::remove_file(p.path().join("run/hold")).unwrap();
    std::fs::remove_file(&holding).unwrap();
    // The orphaned command finishes its restart in the background; `resume` does not rely on
    // it: the record never said the command finished, so it runs again.
    let resumed = p.rotor(&["--output", "json", "resume", "--yes"]).await;
    resumed.assert_code(0);
    assert_eq!(resumed.last_json()["report"]["state"], "S5", "{resumed:#?}");
    let (now, _) = p.store_slots();
    assert_eq!(now, b);
    assert_ne!(now, a);
    assert_eq!(
        p.fingerprint("config/auth.env", "SERVICE_SECRET")
            .as_deref(),
        Some(b.as_str())
    );
    p.rotor(&["check"]).await.assert_code(0);
}

/// Every value rotor writes into an env file is read back by python-dotenv as exactly that
/// value: awkward characters (quotes, backslashes, `$`, `#`, line breaks, spaces at the ends,
/// unicode) at random, each written in place of an entry that a double-quoted entry follows
/// (python-dotenv reads past a closing quote a backslash precedes up to the next `"`), in LF
/// and CRLF files. A value
/// no quoting carries to every reader is refused rather than written.
#[test]
fn python_dotenv_reads_every_value_rotor_writes_as_written() {
    let dotenv = pip_install(
        "python-dotenv==1.0.1",
        "pytools-dotenv-1.0.1",
        "dotenv/main.py",
    );
    let alphabet: Vec<char> = "aZ9 '\"\\$#=\n\r\t{}ü✓-_".chars().collect();
    let mut values: Vec<String> = [
        "it's $5",
        "p4ss$WORD9",
        "a\\\\b",
        "back\\slash",
        "line\nwith $",
        " padded ",
        "#hash",
        "\"quoted\"",
        "x\\'y",
        "",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..1500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut x = seed;
        let len = (seed % 14) as usize;
        values.push(
            (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(x >> 33) as usize % alphabet.len()]
                })
                .collect(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut written = Vec::new();
    for (i, v) in values.iter().enumerate() {
        // Every other file with CRLF line ends.
        let before = "# a comment\nK=old # kept\nQ=\"after\"\nexport R='r'\n";
        let before = if i % 2 == 0 {
            before.to_string()
        } else {
            before.replace('\n', "\r\n")
        };
        let Ok(r) = rotor::dotenv::rewrite(&before, &[("K", Some(v.as_str()))]) else {
            continue;
        };
        let file = dir.path().join(format!("{i}.env"));
        std::fs::write(&file, r.text.as_bytes()).unwrap();
        files.push(file.display().to_string());
        written.push(v);
    }
    assert!(written.len() > 1000, "{} values written", written.len());
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = crate::common::python(
        &dotenv,
        "import json, sys\nfrom dotenv import dotenv_values\nprint(json.dumps([dotenv_values(f) for f in sys.argv[1:]]))",
        &args,
        "",
    );
    let read: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for (v, got) in written.iter().zip(&read) {
        assert_eq!(got["K"].as_str(), Some(v.as_str()), "{v:?}: {got}");
        assert_eq!(got["Q"], "after", "{v:?}: {got}");
        assert_eq!(got["R"], "r", "{v:?}: {got}");
    }
}
