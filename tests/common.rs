//! Test harness: a demo fleet in a temp dir, a rotor runner, continuous load, and a leak check
//! that every generated value stays out of every output, journal, audit and log file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rotor::demo::load::{Load, LoadReport};
use rotor::playbook::Playbook;

/// One rotor invocation's result.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the process, if any.
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    /// The last stdout line parsed as JSON.
    pub fn last_json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit: {self:#?}");
        self
    }
}

/// A demo fleet in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub playbook: PathBuf,
    pub pb: Playbook,
    outputs: Mutex<Vec<String>>,
    values: Arc<Mutex<BTreeSet<String>>>,
    watching: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

/// A scratch directory (name starting with `prefix`) holding the playbook `file` written from
/// `yaml`, its path, and the playbook loaded from it.
pub fn scratch_playbook(
    prefix: &str,
    file: &str,
    yaml: String,
) -> (tempfile::TempDir, PathBuf, Playbook) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let playbook = dir.path().join(file);
    std::fs::write(&playbook, yaml).unwrap();
    let pb = rotor::playbook::load_file(&playbook).expect("test playbook loads");
    (dir, playbook, pb)
}

/// A finished rotor run as [`Out`], its stdout and stderr kept in `outputs` for the leak check.
pub fn record(outputs: &Mutex<Vec<String>>, out: std::process::Output) -> Out {
    let o = Out::from(out);
    let mut all = outputs.lock().unwrap();
    all.push(o.stdout.clone());
    all.push(o.stderr.clone());
    o
}

pub fn rotor_exe() -> &'static str {
    env!("CARGO_BIN_EXE_rotor")
}

/// The demo service as a lab image: this build's `rotor demo-service`.
pub fn demo_service_image() -> rotor_lab::ImageSpec {
    rotor_lab::ImageSpec::Command(vec![rotor_exe().into(), "demo-service".into()])
}

/// A demo playbook whose grace (1h) and retention (7d) an ordinary rotation would wait for.
pub fn slow_yaml(y: String) -> String {
    let y = y
        .replace("grace: 0s ", "grace: 1h ")
        .replace("retention: 0s ", "retention: 7d ");
    assert!(y.contains("grace: 1h") && y.contains("retention: 7d"));
    y
}

/// What a child of [`Env::at_a_terminal`] reported.
pub async fn terminal_result(child: tokio::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().await.unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The top of a local-store test fleet (everything before its consumers' items): test
/// timings, with `readiness` for the readiness timeout (third-party servers start slower).
pub fn fleet_head(readiness: &str) -> String {
    format!(
        "secret: service-secret
environment: development
generate:
  length: 48
  alphabet: base64url
store:
  kind: local
  path: store.json
timings:
  rollout_timeout: 2m
  readiness_timeout: {readiness}
  soak: 0s
  grace: 0s
  retention: 0s
  drain: 150ms
  probe_timeout: 5s
consumers:
"
    )
}

/// The demo playbook with test timings (no grace, short drain), edited by `edit`.
pub fn demo_yaml(edit: impl FnOnce(String) -> String) -> String {
    let y = rotor::demo::LOCAL_DEMO
        .replace("grace: 1s ", "grace: 0s ")
        .replace("drain: 300ms", "drain: 150ms");
    edit(y)
}

impl Env {
    pub fn new() -> Env {
        Env::with(|y| y)
    }

    pub fn with(edit: impl FnOnce(String) -> String) -> Env {
        let (dir, playbook, pb) = scratch_playbook("rotor-test-", "demo.yaml", demo_yaml(edit));
        let values = Arc::new(Mutex::new(BTreeSet::new()));
        let watching = Arc::new(AtomicBool::new(true));
        let store = match &pb.store {
            rotor::playbook::StoreSpec::Local { path } => path.clone(),
            other => panic!("the harness runs local stores, not {other:?}"),
        };
        // Collect every value that ever sits in the store, so the leak check knows them all.
        let watcher = {
            let (values, watching) = (values.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    collect_values(&store, &values);
                    std::thread::sleep(Duration::from_millis(5));
                }
                collect_values(&store, &values);
            })
        };
        Env {
            dir,
            playbook,
            pb,
            outputs: Mutex::new(Vec::new()),
            values,
            watching,
            watcher: Some(watcher),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `rotor <args> <playbook>` (the playbook goes last unless `args` has `{pb}`).
    pub async fn rotor(&self, args: &[&str]) -> Out {
        self.rotor_env(args, &[]).await
    }

    pub async fn rotor_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let cmd = self.command(args, env);
        let out = tokio::process::Command::from(cmd).output().await.unwrap();
        self.record(out)
    }

    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let pb = self.playbook.to_str().unwrap();
        let mut cmd = std::process::Command::new(rotor_exe());
        let has_pb = args.contains(&"{pb}");
        cmd.args(args.iter().map(|a| if *a == "{pb}" { pb } else { a }));
        if !has_pb {
            cmd.arg(pb);
        }
        cmd.current_dir(self.path());
        cmd.env_remove("ROTOR_FAILPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    pub fn record(&self, out: std::process::Output) -> Out {
        record(&self.outputs, out)
    }

    /// `init` + `up`.
    pub async fn up(&self) {
        self.rotor(&["init"]).await.assert_code(0);
        self.rotor(&["up"]).await.assert_code(0);
    }

    /// Continuous load through every signer→validator path.
    pub fn load(&self) -> Load {
        Load::start(
            rotor::demo::load::paths(&self.pb),
            1,
            Duration::from_millis(3),
        )
    }

    /// The addresses process consumer `consumer` publishes now (its `endpoints.json`).
    pub fn endpoints(&self, consumer: &str) -> Vec<String> {
        let file = rotor::demo::load::endpoints_file(&self.pb, consumer);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        json["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    /// The journal as JSON.
    pub fn journal(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.pb.state_dir.join("journal.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The store file as JSON.
    pub fn store(&self) -> serde_json::Value {
        let rotor::playbook::StoreSpec::Local { path } = &self.pb.store else {
            panic!("a local store")
        };
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Fingerprint in the store's primary slot.
    pub fn store_primary(&self) -> String {
        let s = self.store();
        let id = s["primary"].as_str().unwrap().to_string();
        version(&s, &id)["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `rotor <args> <playbook>` started in the background, its output piped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::from(self.command(args, &[]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `rotor <args> <playbook>` with its stdin on a terminal into which `typed` is typed (and
    /// nothing more), through Python's pty; the child prints `{"code", "stdout", "stderr"}`
    /// as JSON (read it with [`terminal_result`]).
    pub fn at_a_terminal(&self, args: &[&str], typed: &str) -> tokio::process::Child {
        const SCRIPT: &str = r#"
import json, os, subprocess, sys
master, slave = os.openpty()
os.write(master, sys.argv[1].encode())
p = subprocess.run(sys.argv[2:], stdin=slave, capture_output=True, text=True)
print(json.dumps({"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}))
"#;
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(typed)
            .arg(rotor_exe())
            .args(args)
            .arg(&self.playbook)
            .current_dir(self.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The stage the lock's holder file names, if a run holds the lock.
    pub fn lock_stage(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.pb.state_dir.join("lock.json")).ok()?;
        let holder: serde_json::Value = serde_json::from_str(&text).ok()?;
        holder["stage"].as_str().map(str::to_string)
    }
    /// `rotate --yes` under load through every signer→validator path: exit 0, no failed
    /// request, at least `min_per_path` requests on each path. Returns rotor's output and the
    /// final report.
    pub async fn rotate_under_load(&self, min_per_path: u64) -> (Out, serde_json::Value) {
        let load = self.load();
        let out = self.rotor(&["--output", "json", "rotate", "--yes"]).await;
        let report = load.stop().await;
        out.assert_code(0);
        self.assert_no_failures(&report);
        for (path, (n, _)) in &report.per_path {
            assert!(*n >= min_per_path, "only {n} requests on {path}");
        }
        let r = out.last_json()["report"].clone();
        assert_eq!(r["state"], "S5", "{r}");
        (out, r)
    }

    /// `rotor --output json rekey --emergency --reason <reason> <extra…>`.
    pub async fn rekey(&self, reason: &str, extra: &[&str]) -> Out {
        let mut args = vec![
            "--output",
            "json",
            "rekey",
            "--emergency",
            "--reason",
            reason,
        ];
        args.extend_from_slice(extra);
        self.rotor(&args).await
    }

    /// The test failpoints of `direction` (`forward`, `inverse`) that `rotor failpoints` lists.
    pub async fn failpoints(&self, direction: &str) -> Vec<String> {
        let out = self.rotor(&["--output", "json", "failpoints"]).await;
        out.assert_code(0);
        let all: Vec<String> = serde_json::from_value(out.last_json()).unwrap();
        let picked: Vec<String> = all
            .into_iter()
            .filter(|f| f.contains(&format!(".{direction}.")))
            .collect();
        assert!(picked.len() >= 15, "too few failpoints: {picked:?}");
        picked
    }

    /// Runs `args` with the failpoint `fp` armed and asserts rotor died by SIGKILL there,
    /// leaving a rotation that is not complete.
    pub async fn crash(&self, args: &[&str], fp: &str) {
        let out = self.rotor_env(args, &[("ROTOR_FAILPOINT", fp)]).await;
        assert_eq!(out.signal(), Some(9), "rotor did not die at {fp}: {out:#?}");
        let j = self.journal();
        assert_ne!(j["status"], "completed", "{fp}");
    }

    /// The first forward failpoint whose name starts with `prefix` (`T3.forward.rolled.`).
    pub async fn failpoint(&self, prefix: &str) -> String {
        self.failpoints("forward")
            .await
            .into_iter()
            .find(|f| f.starts_with(prefix))
            .unwrap_or_else(|| panic!("no failpoint starts with {prefix}"))
    }

    /// The store file with the primary's `created_at` moved `days` into the past (the scheduled
    /// mode reads the primary's age from the store).
    pub fn age_primary(&self, days: i64) {
        let rotor::playbook::StoreSpec::Local { path } = &self.pb.store else {
            panic!("a local store")
        };
        let mut s = self.store();
        let id = s["primary"].as_str().unwrap().to_string();
        let when = chrono::Utc::now() - chrono::Duration::days(days);
        for v in s["versions"].as_array_mut().unwrap() {
            if v["id"] == id.as_str() {
                v["created_at"] = serde_json::json!(when.to_rfc3339());
            }
        }
        std::fs::write(path, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    }

    /// The store's record of the version with fingerprint `fp`.
    pub fn version_with(&self, fp: &str) -> serde_json::Value {
        self.store()["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["fingerprint"] == fp)
            .unwrap_or_else(|| panic!("no version {fp} in the store"))
            .clone()
    }

    /// Asserts no request failed and some went through on every path.
    #[track_caller]
    pub fn assert_no_failures(&self, r: &LoadReport) {
        assert_eq!(
            r.failed_requests, 0,
            "failed requests: {:#?}",
            r.first_failures
        );
        assert!(r.requests > 0);
        for (path, (n, _)) in &r.per_path {
            assert!(*n > 0, "no request on {path}");
        }
    }

    /// Stops the fleet and checks that no value leaked anywhere.
    pub async fn finish(mut self) {
        let down = self.rotor(&["down"]).await;
        assert_eq!(down.code(), Some(0), "{down:?}");
        self.watching.store(false, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            w.join().unwrap();
        }
        let values = self.values.lock().unwrap().clone();
        assert!(!values.is_empty(), "the watcher saw no value");
        let mut texts: Vec<(String, String)> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("output #{i}"), t.clone()))
            .collect();
        let rotor::playbook::StoreSpec::Local { path: store } = &self.pb.store else {
            panic!("a local store")
        };
        for f in walk(self.path()) {
            if &f == store {
                continue; // the store is where values belong
            }
            if let Ok(t) = std::fs::read(&f) {
                texts.push((
                    f.display().to_string(),
                    String::from_utf8_lossy(&t).into_owned(),
                ));
            }
        }
        assert!(
            texts.iter().any(|(n, _)| n.ends_with("audit.log"))
                || !self.pb.state_dir.join("audit.log").exists(),
            "audit log not scanned"
        );
        for v in &values {
            for (name, t) in &texts {
                assert!(
                    !t.contains(v.as_str()),
                    "a generated value leaked into {name}"
                );
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // If a test failed before finish(), still stop every instance it started.
        if self.watcher.is_some() {
            self.watching.store(false, Ordering::Relaxed);
            let _ = self.command(&["down"], &[]).output();
        }
    }
}

/// A webhook receiver on loopback: its URL, and the `text` of every message it heard.
pub async fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::routing::post;
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = {
        let heard = heard.clone();
        axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let heard = heard.clone();
                async move {
                    let text = body["text"].as_str().unwrap_or_default().to_string();
                    heard.lock().unwrap().push(text);
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, heard)
}

/// Every file under `dir` (instance logs aside) with its bytes and modification time: what a
/// read or a refusal must leave exactly as it was.
pub fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = crate::common::walk(dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/logs/"))
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (
                p.display().to_string(),
                std::fs::read(&p).unwrap(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

pub fn version<'a>(store: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    store["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap()
}

fn collect_values(store: &Path, values: &Mutex<BTreeSet<String>>) {
    let Ok(bytes) = std::fs::read(store) else {
        return;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    if let Some(vs) = json["versions"].as_array() {
        let mut set = values.lock().unwrap();
        for v in vs {
            if let Some(val) = v["value"].as_str() {
                set.insert(val.to_string());
            }
        }
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PyPI package installed once under `target/<dir>` (pip `--target`, under a file lock so
/// parallel tests share one install; a stamp marks a finished one), checked by `probe`, a path
/// inside it. Returns the directory (for PYTHONPATH, or its `bin/`).
pub fn pip_install(package: &str, dir: &str, probe: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let root = target.join(dir);
    let stamp = root.join(".rotor-installed");
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join(format!(".{dir}.lock"))).unwrap();
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if stamp.is_file() {
        return root;
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&root)
        .arg(package)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        root.join(probe).is_file(),
        "{package} did not install {probe} under {}",
        root.display()
    );
    std::fs::write(&stamp, b"ok\n").unwrap();
    root
}

/// Debian `packages` fetched with `apt-get download` and unpacked with `dpkg -x` (no maintainer
/// scripts, no system service, nothing outside the tree) once under `target/<dir>`: under a file
/// lock, so parallel tests share one unpacking, and complete once its stamp lists exactly
/// `packages`. When the download fails (a fresh machine has no package lists yet) it runs
/// `apt-get update` once and tries again. Panics, with apt's or dpkg's stderr (the last few KB),
/// when that fails, when `probe` (a path inside the tree, `usr/sbin/nginx`) is missing, or when
/// `ldd` finds a library of `probe` neither on the machine nor in the tree (add its package to
/// `packages`). Returns the unpacked root, for [`deb_bin`] and [`deb_library_path`].
pub fn deb_install(packages: &[&str], dir: &str, probe: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let root = target.join(dir);
    let stamp = root.join(".rotor-debs");
    let listed = format!("{}\n", packages.join("\n"));
    std::fs::create_dir_all(&target).unwrap();
    let lock_path = target.join(format!(".{dir}.lock"));
    let lock_file = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    let _held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", lock_path.display()));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == listed) {
        return root;
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let what = packages.join(" ");
    let downloads = tempfile::Builder::new()
        .prefix(&format!(".{dir}-debs-"))
        .tempdir_in(&target)
        .unwrap();
    let download = || apt_get(&["download"], packages, downloads.path());
    if let Err(first) = download() {
        if let Err(update) = apt_get(&["update"], &[], downloads.path()) {
            panic!("apt-get download {what} failed: {first}\nand so did apt-get update: {update}");
        }
        if let Err(again) = download() {
            panic!("apt-get download {what} failed, even after apt-get update: {again}");
        }
    }
    std::fs::create_dir_all(&root).unwrap();
    let mut debs: Vec<PathBuf> = walk(downloads.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    assert!(!debs.is_empty(), "apt-get download {what} fetched no .deb");
    for deb in &debs {
        let out = std::process::Command::new("dpkg")
            .arg("-x")
            .arg(deb)
            .arg(&root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run dpkg: {e}"));
        assert!(
            out.status.success(),
            "dpkg -x {} failed ({}): {}",
            deb.display(),
            out.status,
            stderr_tail(&out.stderr)
        );
    }
    let bin = root.join(probe);
    assert!(
        bin.is_file(),
        "{what} did not unpack {probe} under {}",
        root.display()
    );
    let ldd = std::process::Command::new("ldd")
        .arg(&bin)
        .env("LD_LIBRARY_PATH", deb_library_path(&root))
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
    let listing = String::from_utf8_lossy(&ldd.stdout);
    let missing: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("not found"))
        .map(str::trim)
        .collect();
    assert!(
        missing.is_empty(),
        "{probe} needs libraries that neither this machine nor {what} provide: {}; \
         add the Debian packages that ship them to the list",
        missing.join(", ")
    );
    std::fs::write(&stamp, listed).unwrap();
    root
}

/// `apt-get -q <args> <packages>` run in `dir`; on failure its status and stderr (the end).
fn apt_get(args: &[&str], packages: &[&str], dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new("apt-get")
        .arg("-q")
        .args(args)
        .args(packages)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{}: {}", out.status, stderr_tail(&out.stderr)))
}

/// The last 4 KiB of a child's stderr, as text.
fn stderr_tail(stderr: &[u8]) -> String {
    const KEEP: usize = 4096;
    let cut = stderr.len().saturating_sub(KEEP);
    let text = String::from_utf8_lossy(&stderr[cut..]);
    if cut > 0 {
        format!("…{}", text.trim_end())
    } else {
        text.trim_end().to_string()
    }
}

/// The executable `name` in a [`deb_install`] root (`usr/sbin`, `usr/bin`, `sbin` or `bin`).
pub fn deb_bin(root: &Path, name: &str) -> PathBuf {
    ["usr/sbin", "usr/bin", "sbin", "bin"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no executable {name} under {}", root.display()))
}

/// An `LD_LIBRARY_PATH` for the shared libraries unpacked in a [`deb_install`] root: every
/// directory there holding a `*.so` or `*.so.*` file (empty when there is none).
pub fn deb_library_path(root: &Path) -> String {
    let dirs: BTreeSet<PathBuf> = walk(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".so") || n.contains(".so."))
        })
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.join(":")
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `rotor ARGS…` with `env` added and stdin closed, for tests outside an [`Env`].
pub fn run_rotor(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = std::process::Command::new(rotor_exe());
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Out::from(cmd.output().unwrap())
}

/// Python `code` with `pythonpath` (a [`pip_install`] directory), `args`, and `stdin` on its
/// standard input; its standard output. Panics with its standard error if it fails.
pub fn python(pythonpath: &Path, code: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A lab with `topology` in a new scratch directory named `prefix…` (its options adjusted by
/// `tune`), and the directory, which must outlive it.
pub async fn scratch_lab(
    prefix: &str,
    topology: rotor_lab::Topology,
    tune: impl FnOnce(&mut rotor_lab::LabOptions),
) -> (tempfile::TempDir, rotor_lab::LabHandle) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let mut opts = rotor_lab::LabOptions::new(topology, dir.path().join("lab"));
    tune(&mut opts);
    let lab = rotor_lab::Lab::start(opts).await.unwrap();
    (dir, lab)
}

/// The demo fleet (three services of processes) with its store on a server a test started
/// (OpenBao, moto's Secrets Manager): the playbook, the variables every rotor run gets to reach
/// that server, and every output, so [`StoreEnv::finish`] can check that no value leaked.
pub struct StoreEnv {
    pub dir: tempfile::TempDir,
    pub playbook: PathBuf,
    pub pb: Playbook,
    /// `store:` and its fixed lines (the kind and the secret's name).
    head: String,
    /// Set on every rotor run.
    vars: Vec<(String, String)>,
    /// Removed from every rotor run (inherited ones that would point it elsewhere).
    unset: Vec<String>,
    outputs: Mutex<Vec<String>>,
}

impl StoreEnv {
    /// The demo playbook with `head` (`store:` and its fixed lines) and `extra` lines under
    /// `store:`, in a new temporary directory named `prefix…`.
    pub fn with_store(
        prefix: &str,
        head: &str,
        extra: &str,
        vars: Vec<(String, String)>,
        unset: &[&str],
    ) -> StoreEnv {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let playbook = dir.path().join("demo.yaml");
        let y = demo_yaml(|y| y);
        let local = "store:\n  kind: local\n  path: demo-store.json\n";
        assert!(y.contains(local));
        std::fs::write(&playbook, y.replace(local, &format!("{head}{extra}"))).unwrap();
        let pb = rotor::playbook::load_file(&playbook).expect("test playbook loads");
        StoreEnv {
            dir,
            playbook,
            pb,
            head: head.to_string(),
            vars,
            unset: unset.iter().map(|s| s.to_string()).collect(),
            outputs: Mutex::new(Vec::new()),
        }
    }

    /// A `rotor` command for `args` and the playbook, in this environment.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(rotor_exe());
        cmd.args(args)
            .arg(&self.playbook)
            .current_dir(self.dir.path())
            .env_remove("ROTOR_FAILPOINT")
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null());
        for k in &self.unset {
            cmd.env_remove(k);
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn rotor(&self, args: &[&str]) -> Out {
        self.rotor_env(args, &[]).await
    }

    pub async fn rotor_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::process::Command::from(cmd).output().await.unwrap();
        let o = Out::from(out);
        let mut all = self.outputs.lock().unwrap();
        all.push(o.stdout.clone());
        all.push(o.stderr.clone());
        o
    }

    /// The same fleet and state with `lines` under `store:` instead of the extra ones it had.
    pub fn with_store_lines(mut self, lines: &str) -> StoreEnv {
        let yaml = std::fs::read_to_string(&self.playbook).unwrap();
        let at = yaml.find(&self.head).expect("the store's head") + self.head.len();
        let rest = &yaml[at..];
        let end: usize = rest
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.len() + 1)
            .sum();
        let yaml = format!("{}{lines}{}", &yaml[..at], &rest[end..]);
        std::fs::write(&self.playbook, yaml).unwrap();
        self.pb = rotor::playbook::load_file(&self.playbook).expect("test playbook loads");
        self
    }

    /// `rotor <args> <playbook>` started in the background, its output piped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::from(self.command(args));
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    }

    pub fn load(&self) -> Load {
        Load::start(
            rotor::demo::load::paths(&self.pb),
            1,
            Duration::from_millis(3),
        )
    }

    /// Asserts no request failed and some went through on every path.
    #[track_caller]
    pub fn assert_no_failures(&self, r: &LoadReport) {
        assert_eq!(
            r.failed_requests, 0,
            "failed requests: {:#?}",
            r.first_failures
        );
        assert!(r.requests > 0);
        for (path, (n, _)) in &r.per_path {
            assert!(*n > 0, "no request on {path}");
        }
    }

    pub fn journal(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.pb.state_dir.join("journal.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Stops the fleet and checks that none of `values` is in any output or file of the run.
    pub async fn finish(self, values: &[String]) {
        let down = self.rotor(&["down"]).await;
        assert_eq!(down.code(), Some(0), "{down:?}");
        assert!(!values.is_empty());
        let mut texts: Vec<(String, String)> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("output #{i}"), t.clone()))
            .collect();
        for f in walk(self.dir.path()) {
            if let Ok(t) = std::fs::read(&f) {
                texts.push((
                    f.display().to_string(),
                    String::from_utf8_lossy(&t).into_owned(),
                ));
            }
        }
        assert!(texts.iter().any(|(n, _)| n.ends_with("journal.json")));
        for v in values {
            for (name, t) in &texts {
                assert!(!t.contains(v.as_str()), "a value leaked into {name}");
            }
        }
    }
}

impl Drop for StoreEnv {
    fn drop(&mut self) {
        let _ = self.command(&["down"]).output();
    }
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
