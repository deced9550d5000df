//! The production fleet on Cloud Run, end to end: `playbooks/cloudrun-fleet.yaml` (auth and
//! backend `both`, analytics `validator`, all `exec` consumers; values in the lab's Secret
//! Manager; probes over HTTPS verified against the test's CA; signers proven by exec round
//! trips) against a stand-in for Cloud Run (tests/fixtures/gcp/fake_cloudrun.py, on PATH as
//! `gcloud`): each service has a stable HTTPS front end, and `services update` starts a new
//! revision that resolves its secret versions in Secret Manager, switches the front end to it
//! once healthy, then drains and stops the old one. A full rotation and then an emergency rekey
//! run while the services call each other through their front ends, with no failed request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use rotor_lab::{SecretSnapshot, VersionState};

use crate::common::{Out, rotor_exe, run_rotor, wait_for, walk};
use crate::tls::Ca;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gcp/fake_cloudrun.py"
);
const PLAYBOOK: &str = include_str!("../playbooks/cloudrun-fleet.yaml");
const PROJECT: &str = "my-project";
const SECRET: &str = "projects/my-project/secrets/service-secret";

/// The stand-in for Cloud Run: its state directory, a `gcloud` on PATH, and the front ends
/// the test started (stopped, with every revision, on drop).
pub(crate) struct FakeRun {
    pub(crate) dir: PathBuf,
    frontends: Vec<std::process::Child>,
}

impl FakeRun {
    /// A fake Cloud Run keeping its state under `dir` (created).
    pub(crate) fn new(dir: &Path) -> FakeRun {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(FIXTURE, dir.join("bin/gcloud")).unwrap();
        FakeRun {
            dir: dir.to_path_buf(),
            frontends: Vec::new(),
        }
    }

    /// Deploys service `name` (its "image": `command`; no revision yet) and starts its front
    /// end, over TLS with `cert` (certificate and key files) if given. Returns the front end's
    /// address: `https://localhost:PORT` with TLS, `127.0.0.1:PORT` without.
    pub(crate) fn service(
        &mut self,
        name: &str,
        command: &[&str],
        cert: Option<(&Path, &Path)>,
    ) -> String {
        let sdir = self.dir.join(name);
        std::fs::create_dir_all(&sdir).unwrap();
        std::fs::write(
            sdir.join("service.json"),
            serde_json::json!({"command": command, "env": {}}).to_string(),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("python3");
        cmd.args([FIXTURE, "frontend", name, "--port", "0"])
            .env("FAKE_RUN_DIR", &self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(sdir.join("frontend.log")).unwrap());
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
        self.frontends.push(cmd.spawn().unwrap());
        let port_file = sdir.join("frontend.port");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().to_string();
            }
            assert!(
                std::time::Instant::now() < until,
                "the front end of {name} never listened: {}",
                std::fs::read_to_string(sdir.join("frontend.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        match cert {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("127.0.0.1:{port}"),
        }
    }

    /// The environment rotor (and the commands it runs) needs to reach the fake: `gcloud` on
    /// PATH, the Secret Manager API, the state directory, gcloud's project and region.
    pub(crate) fn env(&self, lab_url: &str, project: &str) -> Vec<(String, String)> {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        vec![
            ("PATH".into(), path),
            ("ROTOR_GCP_ENDPOINT".into(), lab_url.into()),
            ("FAKE_RUN_ENDPOINT".into(), lab_url.into()),
            ("FAKE_RUN_DIR".into(), self.dir.display().to_string()),
            ("FAKE_RUN_DRAIN".into(), "0.5".into()),
            ("CLOUDSDK_CORE_PROJECT".into(), project.into()),
            ("CLOUDSDK_RUN_REGION".into(), "europe-west1".into()),
        ]
    }

    /// Every `services update` of `service`: its argv and ROTOR_* environment.
    pub(crate) fn calls(&self, service: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(service).join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The serving revision of `service` (`revision`, `port`, `pid`, `secrets`).
    pub(crate) fn serving(&self, service: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join(service).join("serving.json")).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    /// `gcloud run services update SERVICE --update-secrets=REFS` by hand (a deploy outside
    /// rotor), with `env` (from [`FakeRun::env`]).
    fn deploy(&self, service: &str, refs: &str, env: &[(String, String)]) {
        let out = std::process::Command::new(self.dir.join("bin/gcloud"))
            .args(["run", "services", "update", service, "--quiet"])
            .arg(format!("--update-secrets={refs}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// `gcloud run services describe SERVICE --format=json`, as the fleet's scripts see it.
    fn describe(&self, service: &str) -> serde_json::Value {
        let out = std::process::Command::new(self.dir.join("bin/gcloud"))
            .args(["run", "services", "describe", service, "--format=json"])
            .env("FAKE_RUN_DIR", &self.dir)
            .env("CLOUDSDK_CORE_PROJECT", PROJECT)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for FakeRun {
    fn drop(&mut self) {
        for f in &mut self.frontends {
            let _ = f.kill();
            let _ = f.wait();
        }
        let Ok(services) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for s in services.flatten() {
            let name = s.file_name().to_string_lossy().into_owned();
            if let Some(pid) = self.serving(&name).and_then(|v| v["pid"].as_i64()) {
                // A revision the fixture started for this test.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

/// A certificate for `localhost` and `127.0.0.1` signed by `ca`, written as `<stem>.pem` and
/// `<stem>.key` under `dir`.
fn frontend_cert(ca: &Ca, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.0).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// `text` with `from` replaced by `to`, which must be there.
#[track_caller]
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the playbook no longer has `{from}`");
    text.replace(from, to)
}

fn alias(s: &SecretSnapshot, name: &str) -> Option<i64> {
    s.version_aliases.get(name).copied()
}

fn version_state(s: &SecretSnapshot, n: i64) -> VersionState {
    s.versions.iter().find(|v| v.number == n).unwrap().state
}

/// One kind of request of the load, and how it went.
#[derive(Default, Debug)]
struct PathStats {
    ok: u64,
    failed: u64,
    first_failures: Vec<String>,
}

/// Real traffic through the front ends while rotor works: the services calling each other
/// (auth→backend and auth→analytics with tokens, backend→auth with the header) and callers
/// outside the fleet presenting the value in Secret Manager's `rotor-primary` right now
/// (read before every request, as a client that follows the alias would) to auth (header),
/// backend and analytics (tokens). Every answer but a 200 counts as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<BTreeMap<String, PathStats>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: &BTreeMap<&str, String>, ca_pem: &str, lab: &rotor_lab::LabHandle) -> Load {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Arc<Mutex<BTreeMap<String, PathStats>>> = Arc::default();
        let relays = [
            ("auth", "backend"),
            ("auth", "analytics"),
            ("backend", "auth"),
        ];
        let mut tasks = Vec::new();
        for (from, to) in relays {
            let url = format!("{}/relay/{to}?target={}", urls[from], urls[to]);
            let name = format!("{from}->{to} (relay)");
            tasks.push(tokio::spawn(worker(
                name,
                client.clone(),
                stop.clone(),
                stats.clone(),
                move |c: &reqwest::Client| c.get(&url),
            )));
        }
        for (to, jwt) in [("auth", false), ("backend", true), ("analytics", true)] {
            let url = format!("{}/api/ping", urls[to]);
            let name = format!("caller->{to} ({})", if jwt { "jwt" } else { "header" });
            let sm = lab.secret_manager().clone();
            tasks.push(tokio::spawn(worker(
                name,
                client.clone(),
                stop.clone(),
                stats.clone(),
                move |c: &reqwest::Client| {
                    let value = current_primary(&sm);
                    let r = c.get(&url);
                    if jwt {
                        let token = rotor_secret::jwt::sign_hs256(
                            &value,
                            &rotor_secret::jwt::claims_for("caller", Duration::from_secs(60)),
                        );
                        r.bearer_auth(token)
                    } else {
                        r.header("X-Service-Secret", value.expose())
                    }
                },
            )));
        }
        Load { stop, stats, tasks }
    }

    /// Stops the load and returns what each path saw.
    async fn finish(self) -> BTreeMap<String, PathStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.stats.lock().unwrap())
    }
}

/// The value in `rotor-primary` now.
fn current_primary(sm: &rotor_lab::SecretManagerLab) -> rotor_secret::secret::SecretValue {
    let s = sm.secret(SECRET).unwrap();
    let n = alias(&s, "rotor-primary").unwrap();
    let bytes = sm.payload(&format!("{SECRET}/versions/{n}")).unwrap();
    rotor_secret::secret::SecretValue::new(String::from_utf8(bytes).unwrap())
}

async fn worker(
    name: String,
    client: reqwest::Client,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<BTreeMap<String, PathStats>>>,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) {
    while !stop.load(Ordering::Relaxed) {
        let failure = match request(&client).send().await {
            Ok(r) if r.status() == 200 => None,
            Ok(r) => {
                let status = r.status();
                let body: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                Some(format!("{status}: {body}"))
            }
            Err(e) => Some(format!("transport: {e:?}").chars().take(300).collect()),
        };
        {
            let mut all = stats.lock().unwrap();
            let s = all.entry(name.clone()).or_default();
            match failure {
                None => s.ok += 1,
                Some(f) => {
                    s.failed += 1;
                    if s.first_failures.len() < 5 {
                        s.first_failures.push(f);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What every service of the fleet holds: the fingerprint per name it reads, from its own
/// `/fingerprints` through its front end.
async fn held(urls: &BTreeMap<&str, String>, ca_pem: &str) -> BTreeMap<String, serde_json::Value> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut out = BTreeMap::new();
    for (name, url) in urls {
        let r = client
            .get(format!("{url}/fingerprints"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        out.insert(
            name.to_string(),
            r.json::<serde_json::Value>().await.unwrap()["names"].clone(),
        );
    }
    out
}

/// The fleet of `playbooks/cloudrun-fleet.yaml` deployed on the fake Cloud Run, with rotor's
/// environment and every rotor output kept for the leak check.
struct Fleet {
    /// First, so that it is dropped first: it stops the revisions it finds in `dir`.
    run: FakeRun,
    lab: rotor_lab::LabHandle,
    urls: BTreeMap<&'static str, String>,
    ca_pem: String,
    playbook: PathBuf,
    env: Vec<(String, String)>,
    outputs: Mutex<Vec<String>>,
    /// Every value any version of the secret held, collected while the test runs.
    values: Arc<Mutex<std::collections::BTreeSet<String>>>,
    watcher: tokio::task::JoinHandle<()>,
    /// Last, so that it outlives `run`.
    dir: tempfile::TempDir,
}

/// Collects every value the secret's versions hold, every 20 ms, until aborted.
async fn watch_values(
    sm: rotor_lab::SecretManagerLab,
    values: Arc<Mutex<std::collections::BTreeSet<String>>>,
) {
    loop {
        if let Some(s) = sm.secret(SECRET) {
            for v in &s.versions {
                if let Some(p) = sm.payload(&v.name) {
                    values.lock().unwrap().insert(String::from_utf8(p).unwrap());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Fleet {
    /// The lab, the services with their HTTPS front ends, the playbook as shipped (with the
    /// test's URLs, the lab's anonymous credentials and short waits: grace stays longer than a
    /// caller takes from reading the alias to being answered), `rotor init`, a first deploy of
    /// every service outside rotor, and `rotor up`.
    async fn start(prefix: &str) -> Fleet {
        let (dir, lab) = crate::common::scratch_lab(prefix, Default::default(), |_| {}).await;
        let root = dir.path().to_path_buf();
        let ca = Ca::new("rotor cloud run test CA");
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let (cert, key) = frontend_cert(&ca, &root, "frontend");
        let mut run = FakeRun::new(&root.join("run"));
        let ca_arg = ca_file.to_str().unwrap();
        let services: [(&'static str, &str, &[&str]); 3] = [
            (
                "auth",
                "SERVICE_SECRET",
                &[
                    "--alias-env",
                    "SECRET_KEY",
                    "--peer",
                    "backend=jwt",
                    "--peer",
                    "analytics=jwt",
                ],
            ),
            (
                "backend",
                "SERVICE_SECRET",
                &["--alias-env", "JWT_SECRET_KEY", "--peer", "auth=header"],
            ),
            ("analytics", "JWT_SECRET_KEY", &[]),
        ];
        let mut urls = BTreeMap::new();
        for (name, primary, extra) in services {
            let secondary = format!("{primary}_PREVIOUS");
            let mut argv = vec![
                rotor_exe(),
                "demo-service",
                "--name",
                name,
                "--secret-name",
                "service-secret",
                "--primary-env",
                primary,
                "--secondary-env",
                &secondary,
                "--peer-ca-file",
                ca_arg,
            ];
            argv.extend_from_slice(extra);
            urls.insert(name, run.service(name, &argv, Some((&cert, &key))));
        }
        let mut yaml = PLAYBOOK.to_string();
        for (name, url) in &urls {
            yaml = substitute(
                &yaml,
                &format!("https://{name}-abc123-ew.a.run.app:443\"]"),
                &format!("{url}\"]"),
            );
        }
        yaml = substitute(
            &yaml,
            "  # credentials: default",
            "  credentials: anonymous",
        );
        yaml = substitute(&yaml, "grace: 1h ", "grace: 3s ");
        yaml = substitute(&yaml, "retention: 7d ", "retention: 0s ");
        let playbook = root.join("cloudrun-fleet.yaml");
        std::fs::write(&playbook, &yaml).unwrap();
        let mut env = run.env(&lab.url(), PROJECT);
        env.extend([
            // rotor's probes and the round trips' curl verify the front ends against the CA.
            ("SSL_CERT_FILE".to_string(), ca_arg.to_string()),
            ("CURL_CA_BUNDLE".to_string(), ca_arg.to_string()),
            ("AUTH_URL".to_string(), urls["auth"].clone()),
            ("BACKEND_URL".to_string(), urls["backend"].clone()),
            ("ANALYTICS_URL".to_string(), urls["analytics"].clone()),
        ]);
        let values: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        let watcher = tokio::spawn(watch_values(lab.secret_manager().clone(), values.clone()));
        let fleet = Fleet {
            values,
            watcher,
            dir,
            lab,
            run,
            urls,
            ca_pem: ca.pem(),
            playbook,
            env,
            outputs: Mutex::default(),
        };
        fleet.rotor(&["init"]).assert_code(0);
        // The services exist before rotor: each deployed once reading the version in
        // `rotor-primary` (the playbook's "before the first run"), so each signer's round trips
        // find their validators serving when `up` proves it.
        for (service, names) in [
            ("analytics", "JWT_SECRET_KEY"),
            ("backend", "SERVICE_SECRET,JWT_SECRET_KEY"),
            ("auth", "SERVICE_SECRET,SECRET_KEY"),
        ] {
            let refs: Vec<String> = names
                .split(',')
                .map(|n| format!("{n}=service-secret:1"))
                .collect();
            fleet.run.deploy(service, &refs.join(","), &fleet.env);
        }
        fleet.rotor(&["up"]).assert_code(0);
        fleet
    }

    /// `rotor ARGS PLAYBOOK` in the fleet's environment (blocking this worker only).
    fn rotor(&self, args: &[&str]) -> Out {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut all = args.to_vec();
        all.push(self.playbook.to_str().unwrap());
        let out = tokio::task::block_in_place(|| run_rotor(&all, &env));
        self.outputs
            .lock()
            .unwrap()
            .push(format!("{}{}", out.stdout, out.stderr));
        out
    }

    fn secret(&self) -> SecretSnapshot {
        self.lab.secret_manager().secret(SECRET).unwrap()
    }

    /// Load through the front ends, once it flows on every path.
    async fn load(&self) -> Load {
        let load = Load::start(&self.urls, &self.ca_pem, &self.lab);
        wait_for(
            "traffic on every path",
            Duration::from_secs(60),
            async || {
                let stats = load.stats.lock().unwrap();
                stats.len() == 6 && stats.values().all(|s| s.ok > 0)
            },
        )
        .await;
        load
    }

    /// Asserts the end state after a rotation to version `new` from `old`: the primary alias on
    /// `new`, no secondary, `old` destroyed; every service's serving revision reads `new` alone
    /// (`services describe`) and holds only its fingerprint (its own report).
    async fn assert_only(&self, old: i64, new: i64) {
        let s = self.secret();
        assert_eq!(alias(&s, "rotor-primary"), Some(new));
        assert_eq!(alias(&s, "rotor-secondary"), None);
        assert_eq!(version_state(&s, old), VersionState::Destroyed);
        assert_eq!(version_state(&s, new), VersionState::Enabled);
        let fp = s.annotations[&format!("rotor-fp-{new}")].clone();
        let held = held(&self.urls, &self.ca_pem).await;
        for (service, names) in [
            ("auth", ["SECRET_KEY", "SERVICE_SECRET"].as_slice()),
            ("backend", &["JWT_SECRET_KEY", "SERVICE_SECRET"]),
            ("analytics", &["JWT_SECRET_KEY"]),
        ] {
            let d = self.run.describe(service);
            let refs: Vec<(String, String, String)> = d["spec"]["template"]["spec"]["containers"]
                [0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
                    (text(&e["name"]), text(&r["name"]), text(&r["key"]))
                })
                .collect();
            let want: Vec<(String, String, String)> = names
                .iter()
                .map(|n| (n.to_string(), "service-secret".into(), new.to_string()))
                .collect();
            assert_eq!(refs, want, "{service}: {d}");
            assert_eq!(
                d["status"]["latestReadyRevisionName"],
                self.run.serving(service).unwrap()["revision"]
            );
            let names_held = held[service].as_object().unwrap();
            assert_eq!(names_held.len(), names.len(), "{service}: {names_held:?}");
            for n in names {
                assert_eq!(names_held[*n], fp.as_str(), "{service} {n}");
            }
        }
    }

    /// Asserts that the watcher saw `versions` values and none of them is in any rotor output or any file of the test (the fake's
    /// records of every argv and ROTOR_* environment, revision and front end logs, rotor's
    /// state), then stops everything.
    async fn finish(self, versions: usize) {
        self.watcher.abort();
        let values = self.values.lock().unwrap().clone();
        // The watcher saw each version's value, the short-lived ones included.
        assert_eq!(values.len(), versions, "values seen");
        let mut texts: Vec<(String, String)> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("rotor run #{i}"), o.clone()))
            .collect();
        let root = self.dir.path();
        for f in walk(root) {
            if f.starts_with(root.join("lab")) {
                continue;
            }
            if let Ok(t) = std::fs::read(&f) {
                texts.push((
                    f.display().to_string(),
                    String::from_utf8_lossy(&t).into_owned(),
                ));
            }
        }
        assert!(texts.iter().any(|(n, _)| n.ends_with("calls.jsonl")));
        // The round trips of kind (b) read versions with `gcloud secrets versions access`
        // (every gcloud argv is in gcloud.jsonl, scanned below).
        let gcloud = std::fs::read_to_string(self.run.dir.join("gcloud.jsonl")).unwrap();
        assert!(
            gcloud.contains(r#"["secrets", "versions", "access", "#),
            "{gcloud}"
        );
        assert!(texts.iter().any(|(n, _)| n.ends_with("-00002.log")));
        for v in &values {
            for (name, t) in &texts {
                assert!(!t.contains(v.as_str()), "a value leaked into {name}");
            }
        }
        drop(self.run);
        self.lab.shutdown().await;
    }
}

/// Asserts the load saw no failure and traffic on every path.
#[track_caller]
fn assert_no_failures(report: &BTreeMap<String, PathStats>) {
    let failed: u64 = report.values().map(|s| s.failed).sum();
    assert_eq!(failed, 0, "failed requests: {report:#?}");
    assert_eq!(report.len(), 6, "{report:#?}");
    for (path, s) in report {
        assert!(s.ok > 0, "no request on {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudrun_fleet_rotates_and_rekeys_under_load_with_no_failed_request() {
    let fleet = Fleet::start("rotor-cloudrun-").await;
    let load = fleet.load().await;
    let rotate = fleet.rotor(&["rotate", "--yes"]);
    rotate.assert_code(0);
    fleet.assert_only(1, 2).await;
    let rekey = fleet.rotor(&[
        "rekey",
        "--emergency",
        "--reason",
        "rehearsal: the key leaked",
    ]);
    rekey.assert_code(0);
    fleet.assert_only(2, 3).await;
    // `check` agrees: the store and every service, proven again (probes and round trips).
    fleet.rotor(&["check"]).assert_code(0);
    assert_no_failures(&load.finish().await);

    // Every update got version references, never a value (argv and ROTOR_* environment as the
    // fake recorded them): the first deploy, then up, T2, T3, T4 twice over for `both`; up, T2,
    // T4 twice over for analytics.
    for (service, n) in [("auth", 8), ("backend", 8), ("analytics", 6)] {
        assert_eq!(fleet.run.calls(service).len(), n, "{service}");
    }
    let last = fleet.run.calls("analytics").pop().unwrap();
    assert_eq!(
        last["env"]["ROTOR_SECRET_REFS"],
        "JWT_SECRET_KEY=service-secret:3"
    );
    assert_eq!(last["env"]["ROTOR_UNSET_NAMES"], "JWT_SECRET_KEY_PREVIOUS");
    // The signers were proven by their exec round trips after T3.
    for out in [&rotate, &rekey] {
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains("round trip"), "{text}");
    }
    fleet.finish(3).await;
}

/// A Cloud Run service whose traffic is pinned to its old revision: `services update` succeeds,
/// the new revision never serves, so the signer keeps sending the old value after T3. Its
/// exec round trip catches it, of either kind: (a) auth's relay names the old key, (b) the
/// revision backend serves reads the old version. T3 fails, the rotation rolls back to S0 with
/// no failed request, and once the pin is gone the next rotation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudrun_signers_that_keep_sending_the_old_value_fail_their_round_trips() {
    let fleet = Fleet::start("rotor-cloudrun-pin-").await;
    let load = fleet.load().await;
    for (service, version) in [("auth", 2), ("backend", 3)] {
        let pin = fleet.run.dir.join(service).join("pin");
        std::fs::write(&pin, "SERVICE_SECRET").unwrap();
        let out = fleet.rotor(&["rotate", "--yes"]);
        out.assert_code(3);
        assert!(
            out.stderr.contains("T3 switch forward failed"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("consumer {service}"))
                && out.stderr.contains("it sends something other than"),
            "{}",
            out.stderr
        );
        let s = fleet.secret();
        assert_eq!(alias(&s, "rotor-primary"), Some(1));
        assert_eq!(alias(&s, "rotor-secondary"), None);
        assert_eq!(version_state(&s, version), VersionState::Destroyed);
        std::fs::remove_file(&pin).unwrap();
        // Back to S0: every service serves version 1 alone again.
        for service in ["auth", "backend", "analytics"] {
            let secrets = &fleet.run.serving(service).unwrap()["secrets"];
            assert!(
                secrets
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v == "service-secret:1"),
                "{service}: {secrets}"
            );
        }
    }
    fleet.rotor(&["rotate", "--yes"]).assert_code(0);
    fleet.assert_only(1, 4).await;
    assert_no_failures(&load.finish().await);
    fleet.finish(4).await;
}

/// The fake itself, as the fleet's tests rely on it: like gcloud's `--update-secrets`, an update
/// keeps the references it is not told about and `--remove-secrets` drops names; a version that
/// cannot be resolved fails the update and the serving revision stays; and a client of the
/// front end sees no failed request across revisions (each request goes to the revision serving
/// when it arrives; the old one is stopped only after the switch and a drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_cloud_run_keeps_references_like_gcloud_and_switches_revisions_without_a_failure() {
    let (dir, lab) =
        crate::common::scratch_lab("rotor-fake-run-", Default::default(), |_| {}).await;
    lab.secret_manager()
        .seed(SECRET, &[b"value-one", b"value-two"])
        .unwrap();
    let mut run = FakeRun::new(&dir.path().join("run"));
    let target = run.service("api", &[rotor_exe(), "demo-service", "--name", "api"], None);
    let env = run.env(&lab.url(), PROJECT);
    let refs = |run: &FakeRun| run.serving("api").unwrap()["secrets"].clone();
    run.deploy("api", "SERVICE_SECRET=service-secret:1", &env);
    run.deploy("api", "SERVICE_SECRET_PREVIOUS=service-secret:2", &env);
    assert_eq!(
        refs(&run),
        serde_json::json!({
            "SERVICE_SECRET": "service-secret:1",
            "SERVICE_SECRET_PREVIOUS": "service-secret:2",
        })
    );
    let first = run.serving("api").unwrap()["revision"].clone();

    // Requests keep flowing, over kept-alive connections, while three revisions replace each
    // other.
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let traffic = tokio::spawn({
        let (stop, url) = (stop.clone(), format!("http://{target}/api/ping"));
        async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get(&url)
                    .header("X-Service-Secret", "value-two")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failed)
        }
    });
    for update in [
        "--update-secrets=SERVICE_SECRET=service-secret:2",
        "--remove-secrets=SERVICE_SECRET_PREVIOUS",
        "--update-secrets=SERVICE_SECRET=service-secret:2,OTHER=service-secret:1",
    ] {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(run.dir.join("bin/gcloud"))
                .args(["run", "services", "update", "api", update])
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output()
                .unwrap()
        });
        assert!(out.status.success(), "{out:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{ok} answered, failed: {failed:?}");
    assert!(ok > 0);
    assert_eq!(
        refs(&run),
        serde_json::json!({"SERVICE_SECRET": "service-secret:2", "OTHER": "service-secret:1"})
    );
    let serving = run.serving("api").unwrap();
    assert_ne!(serving["revision"], first);
    assert_eq!(serving["revision"], "api-00005");

    // A reference that does not resolve: the update fails naming it, nothing else changes.
    let out = std::process::Command::new(run.dir.join("bin/gcloud"))
        .args([
            "run",
            "services",
            "update",
            "api",
            "--update-secrets=SERVICE_SECRET=service-secret:9",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("service-secret:9 cannot be accessed"),
        "{out:?}"
    );
    assert_eq!(run.serving("api").unwrap(), serving);
    let held: serde_json::Value = reqwest::get(format!("http://{target}/fingerprints"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held["names"].as_object().unwrap().len(), 1, "{held}");
    drop(run);
    lab.shutdown().await;
}
