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

    /// Requests answered so far, over every path.
    fn ok_so_far(&self) -> u64 {
        self.stats.lock().unwrap().values().map(|s| s.ok).sum()
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
                let body: String = r.text().await.unwrap_or_default().chars().take(300).collect();
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
        out.insert(name.to_string(), r.json::<serde_json::Value>().await.unwrap()["names"].clone());
    }
    out
}

/// Asserts the fleet's end state after a rotation to version `new` from `old`: the primary
/// alias on `new`, no secondary, `old` destroyed; every service's serving revision reads
/// `new` alone (describe) and holds only its fingerprint (its own report).
async fn assert_only(
    run: &FakeRun,
    lab: &rotor_lab::LabHandle,
    urls: &BTreeMap<&str, String>,
    ca_pem: &str,
    old: i64,
    new: i64,
) {
    let s = lab.secret_manager().secret(SECRET).unwrap();
    assert_eq!(alias(&s, "rotor-primary"), Some(new));
    assert_eq!(alias(&s, "rotor-secondary"), None);
    assert_eq!(version_state(&s, old), VersionState::Destroyed);
    assert_eq!(version_state(&s, new), VersionState::Enabled);
    let fp = s.annotations[&format!("rotor-fp-{new}")].clone();
    let expected_refs = BTreeMap::from([
        ("auth", vec!["SECRET_KEY", "SERVICE_SECRET"]),
        ("backend", vec!["JWT_SECRET_KEY", "SERVICE_SECRET"]),
        ("analytics", vec!["JWT_SECRET_KEY"]),
    ]);
    let held = held(urls, ca_pem).await;
    for (service, names) in expected_refs {
        let d = run.describe(service);
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let refs: Vec<(String, String, String)> = env
            .iter()
            .map(|e| {
                let r = &e["valueFrom"]["secretKeyRef"];
                (
                    e["name"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = names
            .iter()
            .map(|n| (n.to_string(), "service-secret".into(), new.to_string()))
            .collect();
        assert_eq!(refs, want, "{service}: {d}");
        assert_eq!(
            d["status"]["latestReadyRevisionName"],
            run.serving(service).unwrap()["revision"]
        );
        let names_held = held[service].as_object().unwrap();
        assert_eq!(names_held.len(), names.len(), "{service}: {names_held:?}");
        for n in names {
            assert_eq!(names_held[n], fp.as_str(), "{service} {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudrun_fleet_rotates_and_rekeys_under_load_with_no_failed_request() {
    let (dir, lab) = crate::common::scratch_lab("rotor-cloudrun-", Default::default(), |_| {}).await;
    let root = dir.path();
    let ca = Ca::new("rotor cloud run test CA");
    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = frontend_cert(&ca, root, "frontend");
    let mut run = FakeRun::new(&root.join("run"));
    let ca_arg = ca_file.to_str().unwrap();
    let demo = |name: &'static str, primary: &'static str, extra: &[&'static str]| {
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
        ];
        argv.push(match primary {
            "SERVICE_SECRET" => "SERVICE_SECRET_PREVIOUS",
            _ => "JWT_SECRET_KEY_PREVIOUS",
        });
        argv.extend_from_slice(extra);
        argv
    };
    let mut urls = BTreeMap::new();
    for (name, argv) in [
        (
            "auth",
            demo(
                "auth",
                "SERVICE_SECRET",
                &["--alias-env", "SECRET_KEY", "--peer", "backend=jwt", "--peer", "analytics=jwt"],
            ),
        ),
        (
            "backend",
            demo(
                "backend",
                "SERVICE_SECRET",
                &["--alias-env", "JWT_SECRET_KEY", "--peer", "auth=header"],
            ),
        ),
        ("analytics", demo("analytics", "JWT_SECRET_KEY", &[])),
    ] {
        let mut argv = argv;
        argv.extend(["--peer-ca-file", ca_arg]);
        urls.insert(name, run.service(name, &argv, Some((&cert, &key))));
    }

    // The playbook as shipped, with the test's URLs, the lab's anonymous credentials and short
    // waits (grace stays longer than a caller takes from reading the alias to being answered).
    let mut yaml = PLAYBOOK.to_string();
    for (name, url) in &urls {
        yaml = substitute(&yaml, &format!("https://{name}-abc123-ew.a.run.app:443\"]"), &format!("{url}\"]"));
    }
    yaml = substitute(&yaml, "  # credentials: default", "  credentials: anonymous");
    yaml = substitute(&yaml, "grace: 1h ", "grace: 3s ");
    yaml = substitute(&yaml, "retention: 7d ", "retention: 0s ");
    let playbook = root.join("cloudrun-fleet.yaml");
    std::fs::write(&playbook, &yaml).unwrap();

    let mut env = run.env(&lab.url(), PROJECT);
    env.extend([
        ("SSL_CERT_FILE".to_string(), ca_arg.to_string()),
        ("CURL_CA_BUNDLE".to_string(), ca_arg.to_string()),
        ("AUTH_URL".to_string(), urls["auth"].clone()),
        ("BACKEND_URL".to_string(), urls["backend"].clone()),
        ("ANALYTICS_URL".to_string(), urls["analytics"].clone()),
    ]);
    // Every rotor run's stdout and stderr, for the leak check.
    let outputs: Mutex<Vec<String>> = Mutex::default();
    let rotor = |args: &[&str]| -> Out {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut all = args.to_vec();
        all.push(playbook.to_str().unwrap());
        let out = run_rotor(&all, &env);
        outputs
            .lock()
            .unwrap()
            .push(format!("{}{}", out.stdout, out.stderr));
        out
    };

    rotor(&["init"]).assert_code(0);
    rotor(&["up"]).assert_code(0);
    let sm = lab.secret_manager();
    let value = |n: i64| {
        String::from_utf8(sm.payload(&format!("{SECRET}/versions/{n}")).unwrap()).unwrap()
    };
    let mut values = vec![value(1)];

    let load = Load::start(&urls, &ca.pem(), &lab);
    wait_for("traffic on every path", Duration::from_secs(60), async || {
        load.ok_so_far() > 20
    })
    .await;
    let rotate = tokio::task::block_in_place(|| rotor(&["rotate", "--yes"]));
    rotate.assert_code(0);
    values.push(value(2));
    assert_only(&run, &lab, &urls, &ca.pem(), 1, 2).await;

    let rekey = tokio::task::block_in_place(|| {
        rotor(&["rekey", "--emergency", "--reason", "rehearsal: the key was leaked"])
    });
    rekey.assert_code(0);
    values.push(value(3));
    assert_only(&run, &lab, &urls, &ca.pem(), 2, 3).await;
    let report = load.finish().await;
    let failed: u64 = report.values().map(|s| s.failed).sum();
    assert_eq!(failed, 0, "failed requests: {report:#?}");
    assert_eq!(report.len(), 6, "{report:#?}");
    for (path, s) in &report {
        assert!(s.ok > 0, "no request on {path}");
    }

    // Every update got version references, never a value: argv and ROTOR_* environment as
    // the fake recorded them. Up, T2, T3, T4 twice over for `both`; up, T2, T4 for analytics.
    for (service, n) in [("auth", 7), ("backend", 7), ("analytics", 5)] {
        assert_eq!(run.calls(service).len(), n, "{service}");
    }
    let last = run.calls("analytics").pop().unwrap();
    assert_eq!(
        last["env"]["ROTOR_SECRET_REFS"],
        "JWT_SECRET_KEY=service-secret:3"
    );
    assert_eq!(
        last["env"]["ROTOR_UNSET_NAMES"],
        "JWT_SECRET_KEY_PREVIOUS"
    );
    // The exec round trips ran and proved the signers (rotor's report of T3).
    for out in [&rotate, &rekey] {
        assert!(out.stdout.contains("round trip") || out.stderr.contains("round trip"), "{out:?}");
    }
    // No value anywhere: rotor's output, the fake's records, revision and front end logs, the
    // state rotor keeps beside the playbook.
    let mut texts: Vec<(String, String)> = outputs
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("rotor run #{i}"), o.clone()))
        .collect();
    for f in walk(root) {
        if f.starts_with(root.join("lab")) {
            continue;
        }
        if let Ok(t) = std::fs::read(&f) {
            texts.push((f.display().to_string(), String::from_utf8_lossy(&t).into_owned()));
        }
    }
    assert!(texts.iter().any(|(n, _)| n.ends_with("calls.jsonl")));
    for v in &values {
        for (name, t) in &texts {
            assert!(!t.contains(v.as_str()), "a value leaked into {name}");
        }
    }
    drop(run);
    lab.shutdown().await;
}
