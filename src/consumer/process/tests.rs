//! Tests of the process consumer with real processes: a tiny Python HTTP server per instance.

use crate::transport::Transport;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::disk::{Endpoints, Layout, Record, RecordState};
use super::{ProcessConsumer, child_env, os};
use crate::consumer::{Consumer, ConsumerError, HeldSource, LeftoverKind, Slots, Ungated};
use crate::events::{Event, EventSink};
use crate::playbook::{
    ConsumerKind, ConsumerSpec, Delivery, Environment, Generate, Pickup, Playbook, ProcessSpec,
    SlotNames, SlotRef, StopSignal, StoreSpec, Timings,
};
use crate::protocol::Role;
use crate::secret::{Alphabet, SecretValue};

const SECRET: &str = "service-secret";

/// One instance: answers /healthz (503 when its primary starts with `sick-`), /env (sha256 of
/// the slot variables, never the values, and the plain variables rotor sets) and /fingerprints
/// (rotor's fingerprint format, of what it holds). Exits 3 at once when its primary starts with
/// `crash-`. With `ROTOR_SECRETS_DIR` it reads the values from the files there, and again on
/// SIGHUP (unless `IGNORE_HUP` is set; `DIE_ON_HUP` leaves SIGHUP's default: it dies).
const SERVER: &str = r#"
import hashlib, http.server, json, os, signal, sys
SLOTS = ['SERVICE_SECRET', 'SERVICE_SECRET_PREVIOUS', 'SECRET_KEY']
D = os.environ.get('ROTOR_SECRETS_DIR')
def load():
    if not D:
        return {k: os.environ[k] for k in SLOTS if k in os.environ}
    out = {}
    for k in SLOTS:
        try:
            with open(os.path.join(D, k)) as f:
                out[k] = f.read()
        except FileNotFoundError:
            pass
    return out
vals = load()
def hup(*_):
    global vals
    if not os.environ.get('IGNORE_HUP'):
        vals = load()
if not os.environ.get('DIE_ON_HUP'):
    signal.signal(signal.SIGHUP, hup)
primary = vals.get('SERVICE_SECRET', '')
if primary.startswith('crash-'):
    print('crashing on purpose', file=sys.stderr)
    sys.exit(3)
with open(os.path.join(os.environ['PID_DIR'], os.environ['ROTOR_INSTANCE']), 'w') as f:
    f.write(str(os.getpid()))
healthy = not primary.startswith('sick-')
PLAIN = ['HOST', 'PORT', 'ROTOR_FLEET_DIR', 'ROTOR_CONSUMER', 'ROTOR_INSTANCE', 'EXTRA']
def sha(v):
    return None if v is None else hashlib.sha256(v.encode()).hexdigest()
def fp(v):
    d = b'rotor/v1\0' + os.environ['SECRET_NAME'].encode() + b'\0' + v.encode()
    return 'sha256:' + hashlib.sha256(d).hexdigest()[:12]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, {}
        if self.path == '/healthz':
            code = 200 if healthy else 503
        elif self.path == '/env':
            body = {k: sha(os.environ.get(k)) for k in SLOTS}
            body.update({k: os.environ.get(k) for k in PLAIN})
            body['rotor_vars'] = sorted(k for k in os.environ if k.startswith('ROTOR_'))
        elif self.path == '/fingerprints':
            body = {
                'names': {k: fp(vals[k]) for k in SLOTS if k in vals},
                'accepts': [fp(vals[k]) for k in SLOTS[:2] if k in vals],
                'sends': fp(vals['SERVICE_SECRET']),
            }
        else:
            code = 404
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()
"#;

/// The real interpreter (not a pyenv shim), so instances start fast and are the group leader.
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

fn timings() -> Timings {
    Timings {
        rollout_timeout: Duration::from_secs(60),
        readiness_timeout: Duration::from_secs(10),
        drain: Duration::from_millis(200),
        probe_timeout: Duration::from_secs(5),
        ..Timings::default()
    }
}

/// A fleet in a temporary state directory. Dropping it SIGKILLs every recorded instance, so a
/// failing test leaves nothing running.
struct Fleet {
    dir: tempfile::TempDir,
    pb: Playbook,
}

impl Fleet {
    fn new(instances: usize, timings: Timings) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        let env = BTreeMap::from([
            ("SECRET_NAME".to_string(), SECRET.to_string()),
            (
                "PID_DIR".to_string(),
                dir.path().join("pids").display().to_string(),
            ),
            ("EXTRA".to_string(), "extra-setting".to_string()),
        ]);
        let process = ProcessSpec {
            instances,
            command: vec![python().into(), "-c".into(), SERVER.into()],
            env,
            host: "127.0.0.1".parse().unwrap(),
            health_path: "/healthz".into(),
            stop_signal: Default::default(),
            delivery: Default::default(),
            reload_signal: None,
        };
        let consumer = ConsumerSpec {
            name: "auth".into(),
            role: Role::Both,
            kind: ConsumerKind::Process(process),
            slots: SlotNames {
                primary: "SERVICE_SECRET".into(),
                secondary: Some("SERVICE_SECRET_PREVIOUS".into()),
                aliases: BTreeMap::from([("SECRET_KEY".to_string(), SlotRef::Primary)]),
            },
            pickup: Pickup::Restart,
            probes: Vec::new(),
            roundtrips: Vec::new(),
            fingerprints_path: Some("/fingerprints".into()),
            tls: None,
        };
        let pb = Playbook {
            source: "<test>".into(),
            checksum: String::new(),
            base_dir: dir.path().to_path_buf(),
            secret: SECRET.into(),
            environment: Environment::Test,
            generate: Generate {
                length: 32,
                alphabet: Alphabet::Alphanumeric,
            },
            store: StoreSpec::Local {
                path: dir.path().join("store.json"),
            },
            state_dir: dir.path().join("state"),
            timings,
            consumers: vec![consumer],
            cluster: None,
            concurrency: 1,
            max_age: None,
            notify: Default::default(),
            policy: Default::default(),
            keep: Default::default(),
        };
        Fleet { dir, pb }
    }

    fn consumer(&self) -> ProcessConsumer {
        self.consumer_with(|_| {})
    }

    fn consumer_with(&self, f: impl FnOnce(&mut ConsumerSpec)) -> ProcessConsumer {
        let mut spec = self.pb.consumers[0].clone();
        f(&mut spec);
        let ConsumerKind::Process(p) = &spec.kind else {
            panic!("a process consumer")
        };
        ProcessConsumer::new(&self.pb, &spec, p, Transport::plain())
    }

    fn consumer_timed(&self, timings: Timings) -> ProcessConsumer {
        let mut pb = self.pb.clone();
        pb.timings = timings;
        let ConsumerKind::Process(p) = &pb.consumers[0].kind else {
            panic!("a process consumer")
        };
        ProcessConsumer::new(&pb, &pb.consumers[0], p, Transport::plain())
    }

    fn layout(&self) -> Layout {
        Layout::new(&self.pb.state_dir.join("fleet"), "auth")
    }

    fn records(&self) -> Vec<Record> {
        self.layout().load_records().unwrap()
    }

    fn endpoints(&self) -> Endpoints {
        self.layout().load_endpoints().unwrap()
    }

    /// The pid an instance wrote at start (also for instances whose record is gone).
    fn reported_pid(&self, id: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.path().join("pids").join(id)).ok()?;
        text.trim().parse().ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in self.layout().load_records().unwrap_or_default() {
            os::kill_now(r.pid, r.pid_start_ticks);
        }
        // And whatever carries the fleet's tag without a record.
        for p in self.consumer().tagged().unwrap_or_default() {
            os::kill_now(p.pid, p.start_ticks);
        }
    }
}

/// Records every event, and the endpoints file as it was when the event was emitted.
#[derive(Default)]
struct Sink {
    endpoints: Option<PathBuf>,
    seen: Mutex<Vec<(Event, Option<Endpoints>)>>,
}

impl Sink {
    fn watching(layout: &Layout) -> Sink {
        Sink {
            endpoints: Some(layout.endpoints_path()),
            ..Sink::default()
        }
    }

    /// What happened to the fleet (gate events aside: see [`Sink::all`]).
    fn events(&self) -> Vec<(Event, Option<Endpoints>)> {
        self.all()
            .into_iter()
            .filter(|(e, _)| !matches!(e, Event::InstanceGated { .. }))
            .collect()
    }

    fn all(&self) -> Vec<(Event, Option<Endpoints>)> {
        self.seen.lock().unwrap().clone()
    }
}

impl EventSink for Sink {
    fn emit(&self, event: &Event) {
        let eps = self
            .endpoints
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        self.seen.lock().unwrap().push((event.clone(), eps));
    }
}

fn value(prefix: &str) -> SecretValue {
    let v = SecretValue::generate(Alphabet::Alphanumeric, 40).unwrap();
    SecretValue::new(format!("{prefix}{}", v.expose()))
}

fn slots(primary: &SecretValue, secondary: Option<&SecretValue>) -> Slots {
    Slots::new(primary.clone(), secondary.cloned())
}

fn sha(v: &SecretValue) -> String {
    hex::encode(Sha256::digest(v.expose().as_bytes()))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let r = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{addr}{path}");
    r.json().await.unwrap()
}

fn assert_gone(pids: &[(i32, u64)]) {
    for (pid, ticks) in pids {
        assert!(!os::alive(*pid, *ticks), "pid {pid} still runs");
    }
}

fn pids(records: &[Record]) -> Vec<(i32, u64)> {
    records.iter().map(|r| (r.pid, r.pid_start_ticks)).collect()
}

/// The failed new `instance` is stopped and forgotten: records and endpoints as they were
/// (`before`, `eps_before`), the old instances still running.
fn assert_failed_instance_dropped(
    fleet: &Fleet,
    instance: &str,
    before: &[Record],
    eps_before: &Endpoints,
) {
    let failed_pid = fleet.reported_pid(instance).unwrap();
    assert!(os::stat(failed_pid).is_none_or(|s| s.state == 'Z'));
    assert_eq!(fleet.records(), before);
    assert_eq!(&fleet.endpoints(), eps_before);
    for r in before {
        assert!(os::alive(r.pid, r.pid_start_ticks));
    }
}

#[tokio::test]
async fn start_publishes_n_instances_each_with_its_port_and_the_slot_env() {
    let fleet = Fleet::new(3, timings());
    let c = fleet.consumer();
    let a = value("");
    let sink = Sink::default();
    c.start(&slots(&a, None), &Ungated, &sink).await.unwrap();

    let instances = c.instances().await.unwrap();
    assert_eq!(instances.len(), 3);
    let eps = fleet.endpoints();
    assert_eq!(
        eps.generation, 3,
        "one endpoints write per published instance"
    );
    let addrs: BTreeSet<_> = instances.iter().map(|i| i.addr.unwrap()).collect();
    assert_eq!(addrs, eps.endpoints.iter().copied().collect());
    let ports: BTreeSet<_> = addrs.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 3, "each instance has its own port");
    let events = sink.events();
    assert!(matches!(
        &events[0].0,
        Event::RolloutStarted { instances: 3, .. }
    ));
    assert!(matches!(
        &events[4].0,
        Event::RolloutFinished { restarts: 3, .. }
    ));

    let fp_a = a.fingerprint(SECRET);
    for inst in &instances {
        assert!(inst.id.starts_with("auth-"));
        assert_eq!(inst.primary.as_ref(), Some(&fp_a));
        assert_eq!(inst.secondary, None);
        let env = get_json(inst.addr.unwrap(), "/env").await;
        assert_eq!(env["SERVICE_SECRET"], sha(&a));
        assert_eq!(env["SECRET_KEY"], sha(&a));
        assert!(env["SERVICE_SECRET_PREVIOUS"].is_null());
        assert_eq!(env["HOST"], "127.0.0.1");
        assert_eq!(env["PORT"], inst.addr.unwrap().port().to_string());
        assert_eq!(env["ROTOR_INSTANCE"], inst.id.as_str());
        assert_eq!(env["ROTOR_CONSUMER"], "auth");
        assert_eq!(
            env["ROTOR_FLEET_DIR"],
            fleet.pb.state_dir.join("fleet").display().to_string()
        );
        assert_eq!(env["EXTRA"], "extra-setting");
        assert_eq!(
            env["rotor_vars"],
            serde_json::json!([
                "ROTOR_CONSUMER",
                "ROTOR_FLEET_DIR",
                "ROTOR_FLEET_ID",
                "ROTOR_INSTANCE",
                "ROTOR_SECRET"
            ])
        );

        // The instance's own report and rotor's configuration agree.
        let (reported, src) = c.held(inst).await.unwrap();
        assert_eq!(src, HeldSource::Reported);
        let plain = fleet.consumer_with(|s| s.fingerprints_path = None);
        let (configured, src) = plain.held(inst).await.unwrap();
        assert_eq!(src, HeldSource::Configured);
        assert_eq!(reported, configured);
        assert_eq!(configured.sends, Some(fp_a.clone()));
        assert_eq!(configured.accepts, vec![fp_a.clone()]);
    }

    // Values stay out of argv, records, endpoints and logs.
    let layout = fleet.layout();
    for r in fleet.records() {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", r.pid)).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(a.expose()));
        let rec = std::fs::read_to_string(layout.record_path(&r.id)).unwrap();
        assert!(!rec.contains(a.expose()));
        assert!(layout.log_path(&r.id).exists());
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&layout.dir), 0o700);
    assert_eq!(mode(&layout.instances_dir()), 0o700);
    assert_eq!(mode(&layout.endpoints_path()), 0o600);

    let started = pids(&fleet.records());
    assert_eq!(c.stop().await.unwrap(), 3);
    assert_gone(&started);
    assert!(fleet.records().is_empty());
    assert!(fleet.endpoints().endpoints.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_replaces_one_instance_at_a_time_then_is_a_no_op() {
    let fleet = Fleet::new(2, timings());
    let c = fleet.consumer();
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let gen_before = fleet.endpoints().generation;

    // Load: read endpoints.json, call one listed instance, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, smallest) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(99)),
    );
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, requests, smallest, failures) = (
            stop.clone(),
            requests.clone(),
            smallest.clone(),
            failures.clone(),
        );
        let path = fleet.layout().endpoints_path();
        tokio::spawn(async move {
            let client = http();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let eps: Endpoints =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                smallest.fetch_min(eps.endpoints.len(), std::sync::atomic::Ordering::Relaxed);
                if let Some(addr) = eps.endpoints.get(i % eps.endpoints.len().max(1)) {
                    i += 1;
                    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match client.get(format!("http://{addr}/healthz")).send().await {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{addr}: {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("{addr}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let sink = Sink::watching(&fleet.layout());
    let t = Instant::now();
    let report = c
        .apply(&slots(&a, Some(&b)), &Ungated, &sink)
        .await
        .unwrap();
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    assert_eq!(report.restarts, 2);
    assert!(report.waited >= 2 * fleet.pb.timings.drain && report.waited <= took);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "failed requests during the rollout: {failures:?}"
    );
    assert!(requests.load(std::sync::atomic::Ordering::Relaxed) > 20);
    assert_eq!(
        smallest.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "endpoints shrank"
    );

    // Events: started, one replacement per old instance in id order, finished; at each
    // replacement the endpoints list exactly the configured number.
    let events = sink.events();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(
        &events[0].0,
        Event::RolloutStarted { instances: 2, .. }
    ));
    let (fp_a, fp_b) = (a.fingerprint(SECRET), b.fingerprint(SECRET));
    for (i, (ev, eps)) in events[1..3].iter().enumerate() {
        let Event::InstanceReplaced {
            old,
            new,
            primary,
            secondary,
            ..
        } = ev
        else {
            panic!("{ev:?}");
        };
        assert_eq!(old.as_deref(), Some(before[i].id.as_str()));
        assert!(!before.iter().any(|r| &r.id == new));
        assert_eq!((primary, secondary.as_ref()), (&fp_a, Some(&fp_b)));
        assert_eq!(eps.as_ref().unwrap().endpoints.len(), 2);
    }
    assert!(matches!(
        &events[3].0,
        Event::RolloutFinished { restarts: 2, .. }
    ));
    assert_gone(&pids(&before));

    let after = c.instances().await.unwrap();
    assert_eq!(after.len(), 2);
    for inst in &after {
        assert_eq!(inst.secondary.as_ref(), Some(&fp_b));
        let env = get_json(inst.addr.unwrap(), "/env").await;
        assert_eq!(env["SERVICE_SECRET"], sha(&a));
        assert_eq!(env["SERVICE_SECRET_PREVIOUS"], sha(&b));
    }
    // start new, publish (+1), unpublish old (+1), per instance.
    let generation = fleet.endpoints().generation;
    assert_eq!(generation, gen_before + 4);

    // The same slots again: nothing restarts, nothing is written, no event.
    let sink = Sink::default();
    let again = c
        .apply(&slots(&a, Some(&b)), &Ungated, &sink)
        .await
        .unwrap();
    assert_eq!(again.restarts, 0);
    assert!(sink.events().is_empty());
    assert_eq!(fleet.endpoints().generation, generation);
    assert_eq!(
        c.instances()
            .await
            .unwrap()
            .iter()
            .map(|i| &i.id)
            .collect::<Vec<_>>(),
        after.iter().map(|i| &i.id).collect::<Vec<_>>()
    );

    assert_eq!(c.stop().await.unwrap(), 2);
}

#[tokio::test]
async fn an_instance_that_never_gets_ready_fails_and_the_old_ones_keep_serving() {
    let fleet = Fleet::new(2, timings());
    let a = value("");
    fleet
        .consumer()
        .start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let c = fleet.consumer_timed(Timings {
        readiness_timeout: Duration::from_millis(1500),
        ..timings()
    });
    let before = fleet.records();
    let eps_before = fleet.endpoints();

    // Never healthy: NotReady after the readiness timeout, naming the new instance.
    let sick = value("sick-");
    let err = c
        .apply(&slots(&sick, None), &Ungated, &Sink::default())
        .await
        .unwrap_err();
    let ConsumerError::NotReady {
        consumer,
        instance,
        detail,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(consumer, "auth");
    assert!(!before.iter().any(|r| &r.id == instance));
    // (503 unless the machine is so slow that the server was not even listening yet)
    assert!(detail.contains("/healthz"), "{detail}");
    let msg = err.to_string();
    assert!(
        msg.contains(instance.as_str()) && !msg.contains(sick.expose()),
        "{msg}"
    );
    // The failed instance is stopped and forgotten; the old ones still serve.
    assert_failed_instance_dropped(&fleet, instance, &before, &eps_before);
    for r in &before {
        get_json(r.addr, "/env").await;
    }

    // Exits at once: NotReady without waiting for the timeout, with exit status and log path.
    let crash = value("crash-");
    let t = Instant::now();
    let err = c
        .apply(&slots(&crash, None), &Ungated, &Sink::default())
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    let ConsumerError::NotReady {
        instance, detail, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(detail.contains("exit status: 3"), "{detail}");
    let log = fleet.layout().log_path(instance);
    assert!(detail.contains(&log.display().to_string()), "{detail}");
    assert!(
        !detail.contains("crashing on purpose"),
        "log contents leaked: {detail}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("crashing on purpose")
    );
    assert_eq!(fleet.records(), before);

    // The whole rollout bounded: RolloutTimeout, old instances untouched.
    let short = fleet.consumer_timed(Timings {
        rollout_timeout: Duration::from_millis(600),
        ..timings()
    });
    let t = Instant::now();
    let err = short
        .apply(&slots(&sick, None), &Ungated, &Sink::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ConsumerError::RolloutTimeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(fleet.records(), before);
    assert_eq!(fleet.endpoints(), eps_before);

    assert_eq!(c.stop().await.unwrap(), 2);
    assert_gone(&pids(&before));
}

/// A gate that refuses the instances it is told to (every instance when `all`), and remembers
/// every instance it was asked about.
#[derive(Default)]
struct TestGate {
    all: bool,
    refuse: BTreeSet<String>,
    asked: Mutex<Vec<(String, std::net::SocketAddr)>>,
}

#[async_trait::async_trait]
impl crate::consumer::Gate for TestGate {
    async fn prove(
        &self,
        instance: &str,
        at: crate::consumer::Reach<'_>,
    ) -> Result<String, crate::consumer::Refusal> {
        let addr = at.addr;
        self.asked
            .lock()
            .unwrap()
            .push((instance.to_string(), addr));
        // The instance is up and answering at the address it is proven at.
        get_json(addr, "/env").await;
        if self.all || self.refuse.contains(instance) {
            Err(String::from("rejected A, which it must accept").into())
        } else {
            Ok("proven".into())
        }
    }
}

#[tokio::test]
async fn a_new_instance_that_fails_its_gate_is_stopped_and_never_published() {
    let fleet = Fleet::new(2, timings());
    let (a, b) = (value(""), value("b-"));
    let c = fleet.consumer();
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let eps_before = fleet.endpoints();

    let gate = TestGate {
        all: true,
        ..TestGate::default()
    };
    let sink = Sink::watching(&fleet.layout());
    let err = c
        .apply(&slots(&a, Some(&b)), &gate, &sink)
        .await
        .unwrap_err();
    let ConsumerError::Gate { instance, .. } = &err else {
        panic!("{err}");
    };
    // Proven once, at its own address, before it was published; then stopped and forgotten.
    let asked = gate.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(&asked[0].0, instance);
    assert!(!eps_before.endpoints.contains(&asked[0].1));
    assert!(
        sink.all().iter().all(|(_, eps)| eps
            .as_ref()
            .is_none_or(|e| !e.endpoints.contains(&asked[0].1))),
        "the refused instance was published"
    );
    assert_failed_instance_dropped(&fleet, instance, &before, &eps_before);
    assert!(
        sink.all().iter().any(|(e, _)| matches!(e,
            Event::InstanceGated { passed: false, instance: i, .. } if i == instance)),
        "no gate event"
    );
    assert_eq!(c.stop().await.unwrap(), 2);
    assert_gone(&pids(&before));
}

#[tokio::test]
async fn a_running_instance_that_fails_its_gate_is_replaced_although_it_holds_the_slots() {
    let fleet = Fleet::new(2, timings());
    let a = value("");
    let c = fleet.consumer();
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let broken = before[0].id.clone();
    let gate = TestGate {
        refuse: BTreeSet::from([broken.clone()]),
        ..TestGate::default()
    };
    let report = c
        .apply(&slots(&a, None), &gate, &Sink::default())
        .await
        .unwrap();
    assert_eq!(report.restarts, 1);
    let after = fleet.records();
    assert_eq!(after.len(), 2);
    assert!(!after.iter().any(|r| r.id == broken));
    assert!(
        after.iter().any(|r| r.id == before[1].id),
        "the sound one stays"
    );
    assert!(!os::alive(before[0].pid, before[0].pid_start_ticks));
    // Both running instances were asked, then the replacement, before it was published.
    let asked: Vec<String> = gate
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(i, _)| i.clone())
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    // Nothing refused now: the same apply changes nothing.
    let again = c
        .apply(&slots(&a, None), &gate, &Sink::default())
        .await
        .unwrap();
    assert_eq!(again.restarts, 0);
    assert_eq!(fleet.records(), after);
    assert_eq!(c.stop().await.unwrap(), 2);
}

#[tokio::test]
async fn dead_and_unpublished_instances_are_reconciled() {
    let fleet = Fleet::new(2, timings());
    let c = fleet.consumer();
    let a = value("");
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();

    // Killed behind rotor's back.
    let victim = &before[0];
    assert!(os::alive(victim.pid, victim.pid_start_ticks));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while os::alive(victim.pid, victim.pid_start_ticks) {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        c.instances().await.unwrap().len(),
        1,
        "dead instances are not serving"
    );

    // Started but never published (rotor died between start and publish).
    let mut stray_child = tokio::process::Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap();
    let stray_pid = stray_child.id().unwrap() as i32;
    let stray_ticks = os::stat(stray_pid).unwrap().start_ticks;
    tokio::spawn(async move { stray_child.wait().await });
    let stray = Record {
        id: "auth-0000000000000-9999".into(),
        pid: stray_pid,
        pid_start_ticks: stray_ticks,
        addr: "127.0.0.1:9".parse().unwrap(),
        published: false,
        ..before[1].clone()
    };
    fleet.layout().write_record(&stray).unwrap();

    let sink = Sink::default();
    let report = c.apply(&slots(&a, None), &Ungated, &sink).await.unwrap();
    assert_eq!(report.restarts, 1);
    assert!(
        !os::alive(stray_pid, stray_ticks),
        "the unpublished instance still runs"
    );
    let records = fleet.records();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.published && r.id != victim.id && r.id != stray.id)
    );
    assert!(records.iter().any(|r| r.id == before[1].id));
    let eps = fleet.endpoints().endpoints;
    assert_eq!(eps, records.iter().map(|r| r.addr).collect::<Vec<_>>());
    let replaced: Vec<_> = sink
        .events()
        .into_iter()
        .filter_map(|(e, _)| match e {
            Event::InstanceReplaced { old, new, .. } => Some((old, new)),
            _ => None,
        })
        .collect();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].0, None);

    assert_eq!(c.stop().await.unwrap(), 2);
}

#[tokio::test]
async fn a_new_rotor_adopts_the_fleet_and_stops_it() {
    let fleet = Fleet::new(2, timings());
    let (a, b) = (value(""), value(""));
    {
        let first = fleet.consumer();
        first
            .start(&slots(&a, None), &Ungated, &Sink::default())
            .await
            .unwrap();
    }
    let adopted = fleet.records();
    assert_eq!(adopted.len(), 2);

    let c = fleet.consumer();
    let ids: Vec<_> = c
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        ids,
        adopted.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        c.apply(&slots(&a, None), &Ungated, &Sink::default())
            .await
            .unwrap()
            .restarts,
        0
    );
    assert_eq!(
        c.apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
            .await
            .unwrap()
            .restarts,
        2
    );
    assert_gone(&pids(&adopted));

    // Fewer instances configured: the surplus is retired without a restart.
    let one = fleet.consumer_with(|s| {
        let ConsumerKind::Process(p) = &mut s.kind else {
            panic!("a process consumer")
        };
        p.instances = 1;
    });
    let running = fleet.records();
    assert_eq!(
        one.apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
            .await
            .unwrap()
            .restarts,
        0
    );
    assert_eq!(fleet.records().len(), 1);
    assert_eq!(fleet.endpoints().endpoints.len(), 1);

    let generation = fleet.endpoints().generation;
    assert_eq!(fleet.consumer().stop().await.unwrap(), 1);
    assert_gone(&pids(&running));
    assert!(fleet.records().is_empty());
    let eps = fleet.endpoints();
    assert!(eps.endpoints.is_empty());
    assert_eq!(eps.generation, generation + 1);
    assert_eq!(fleet.consumer().stop().await.unwrap(), 0);
}

#[test]
fn the_environment_drops_rotor_and_slot_variables_and_sets_the_slots() {
    let a = SecretValue::new("a".repeat(40));
    let inherited = [
        ("PATH", "/usr/bin"),
        ("ROTOR_STATE_DIR", "/somewhere"),
        ("ROTOR_FAILPOINT", "t3"),
        ("SECRET_KEY", "leaked-from-the-shell"),
        ("SERVICE_SECRET_PREVIOUS", "leaked-too"),
        ("HOST", "0.0.0.0"),
    ]
    .map(|(k, v)| (k.into(), v.into()));
    let extra = BTreeMap::from([("LOG_LEVEL".to_string(), "debug".to_string())]);
    let rotor = [
        ("HOST", "127.0.0.1".into()),
        ("ROTOR_INSTANCE", "auth-1-0001".into()),
    ];
    let values = [
        ("SERVICE_SECRET".to_string(), &a),
        ("SECRET_KEY".to_string(), &a),
    ];
    let env = child_env(
        inherited.into_iter(),
        &["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"],
        &extra,
        &rotor,
        &values,
    );
    let env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
        .collect();
    let want: BTreeMap<String, String> = [
        ("PATH", "/usr/bin"),
        ("LOG_LEVEL", "debug"),
        ("HOST", "127.0.0.1"),
        ("ROTOR_INSTANCE", "auth-1-0001"),
        ("SERVICE_SECRET", a.expose()),
        ("SECRET_KEY", a.expose()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);
}

#[test]
fn a_consumer_without_a_secondary_name_holds_no_secondary() {
    let fleet = Fleet::new(1, timings());
    let (a, b) = (value(""), value(""));
    let signer = fleet.consumer_with(|s| {
        s.role = Role::Signer;
        s.slots.secondary = None;
    });
    let both = slots(&a, Some(&b));
    let d = signer.desired(&both);
    assert_eq!(d.secondary, None);
    assert_eq!(
        d.names.keys().collect::<Vec<_>>(),
        ["SECRET_KEY", "SERVICE_SECRET"]
    );

    let validator = fleet.consumer_with(|s| {
        s.slots.secondary = None;
        s.slots.aliases.insert("OLD_KEY".into(), SlotRef::Secondary);
    });
    let d = validator.desired(&both);
    assert_eq!(d.secondary, Some(b.fingerprint(SECRET)));
    assert_eq!(d.names["OLD_KEY"], b.fingerprint(SECRET));
    let only_a = slots(&a, None);
    let d = validator.desired(&only_a);
    assert!(!d.names.contains_key("OLD_KEY"));
}

#[tokio::test]
async fn stopping_an_instance_also_stops_the_helpers_it_forked() {
    let fleet = Fleet::new(1, timings());
    let c = fleet.consumer_with(|s| {
        let ConsumerKind::Process(p) = &mut s.kind else {
            panic!("a process consumer")
        };
        p.env.insert("SERVER_SRC".into(), SERVER.into());
        p.command = vec![
            "sh".into(),
            "-c".into(),
            format!(
                "sleep 300 & echo $! > \"$PID_DIR/helper-$ROTOR_INSTANCE\"; \
                 exec {} -c \"$SERVER_SRC\"",
                python()
            ),
        ];
    });
    c.start(&slots(&value(""), None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let rec = fleet.records().remove(0);
    let helper = fleet.reported_pid(&format!("helper-{}", rec.id)).unwrap();
    let helper_stat = os::stat(helper).unwrap();
    assert_eq!(
        helper_stat.pgrp, rec.pid,
        "the helper is in the instance's group"
    );

    let t = Instant::now();
    assert_eq!(c.stop().await.unwrap(), 1);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_gone(&[(rec.pid, rec.pid_start_ticks)]);
    assert!(
        !os::alive(helper, helper_stat.start_ticks),
        "the helper still runs"
    );
}

/// The consumer with `delivery: file`, `pickup: reload` and `reload_signal: SIGHUP`; `ignore`
/// makes its instances ignore SIGHUP.
fn reloading(fleet: &Fleet, ignore: bool) -> ProcessConsumer {
    reloading_timed(fleet, ignore, fleet.pb.timings.clone())
}

fn reloading_timed(fleet: &Fleet, ignore: bool, timings: Timings) -> ProcessConsumer {
    let env: &[(&str, &str)] = if ignore { &[("IGNORE_HUP", "1")] } else { &[] };
    reloading_with(fleet, timings, env)
}

/// [`reloading`] with `timings` and `env` added to the instances' environment.
fn reloading_with(fleet: &Fleet, timings: Timings, env: &[(&str, &str)]) -> ProcessConsumer {
    let mut pb = fleet.pb.clone();
    pb.timings = timings;
    let mut spec = pb.consumers[0].clone();
    spec.pickup = Pickup::Reload;
    let ConsumerKind::Process(p) = &mut spec.kind else {
        unreachable!()
    };
    p.delivery = Delivery::File;
    p.reload_signal = Some(StopSignal::Hup);
    for (k, v) in env {
        p.env.insert(k.to_string(), v.to_string());
    }
    let p = p.clone();
    ProcessConsumer::new(&pb, &spec, &p, Transport::plain())
}

/// Name → fingerprint of what instance `id`'s files hold (a failing assertion never prints a
/// value).
fn files_of(fleet: &Fleet, id: &str) -> BTreeMap<String, String> {
    let d = super::disk::SecretsDir::new(fleet.layout().secrets_dir(id));
    d.read(&["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"])
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let v = SecretValue::new(String::from_utf8(v).unwrap());
            (k, v.fingerprint(SECRET).to_string())
        })
        .collect()
}

fn held_names(pairs: &[(&str, &SecretValue)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.fingerprint(SECRET).to_string()))
        .collect()
}

#[tokio::test]
async fn file_delivery_reloads_in_place_without_restarting_and_no_value_in_the_environment() {
    let fleet = Fleet::new(2, timings());
    let c = reloading(&fleet, false);
    assert_eq!(c.pickup(), Pickup::Reload);
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    assert_eq!(before.len(), 2);
    for r in &before {
        let env = get_json(r.addr, "/env").await;
        for k in ["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"] {
            assert!(env[k].is_null(), "{k} is in the environment: {env}");
        }
        assert!(
            env["rotor_vars"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("ROTOR_SECRETS_DIR"))
        );
        assert_eq!(
            files_of(&fleet, &r.id),
            held_names(&[("SERVICE_SECRET", &a), ("SECRET_KEY", &a)])
        );
    }

    let sink = Sink::default();
    let report = c
        .apply(&slots(&a, Some(&b)), &Ungated, &sink)
        .await
        .unwrap();
    assert_eq!(report.restarts, 2, "two reloads");
    let after = fleet.records();
    assert_eq!(pids(&after), pids(&before), "the same processes");
    let fp_b = b.fingerprint(SECRET);
    for r in &after {
        assert_eq!(
            r.secondary.as_ref(),
            Some(&fp_b),
            "the record says what it holds"
        );
        assert_eq!(
            files_of(&fleet, &r.id),
            held_names(&[
                ("SERVICE_SECRET", &a),
                ("SERVICE_SECRET_PREVIOUS", &b),
                ("SECRET_KEY", &a)
            ])
        );
        let inst = c
            .instances()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.id == r.id)
            .unwrap();
        let (held, source) = c.held(&inst).await.unwrap();
        assert_eq!(source, HeldSource::Reported);
        assert_eq!(held.accepts, vec![a.fingerprint(SECRET), fp_b.clone()]);
    }
    let events = sink.events();
    let reloaded = events
        .iter()
        .filter(|(e, _)| matches!(e, Event::InstanceReloaded { signal, .. } if signal == "SIGHUP"))
        .count();
    assert_eq!(reloaded, 2);
    assert!(
        !events
            .iter()
            .any(|(e, _)| matches!(e, Event::InstanceReplaced { .. })),
        "{events:?}"
    );
    // Converged: nothing to do, nothing signalled.
    let again = c
        .apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(again.restarts, 0);

    // Stopped instances leave no directory behind.
    assert_eq!(c.stop().await.unwrap(), 2);
    let left = std::fs::read_dir(fleet.layout().secrets_root())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_reload_that_does_not_take_restores_the_previous_files_and_fails() {
    let fleet = Fleet::new(2, timings());
    let mut t = timings();
    t.readiness_timeout = Duration::from_secs(2);
    let c = reloading_timed(&fleet, true, t);
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let e = c
        .apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConsumerError::NotReady { detail, .. } if detail.contains("other fingerprints")),
        "{e}"
    );
    assert!(!e.to_string().contains(b.expose()));
    // The first instance is back on its old files; the second was never touched.
    assert_eq!(fleet.records(), before);
    for r in &before {
        assert!(os::alive(r.pid, r.pid_start_ticks));
        assert_eq!(
            files_of(&fleet, &r.id),
            held_names(&[("SERVICE_SECRET", &a), ("SECRET_KEY", &a)])
        );
    }
    // What it holds, asked through the old files: rolling back is a no-op.
    let back = c
        .apply(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(back.restarts, 0);
}

#[tokio::test]
async fn files_rewritten_but_never_signalled_are_reloaded_again() {
    let fleet = Fleet::new(1, timings());
    let c = reloading(&fleet, false);
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let rec = fleet.records().remove(0);
    // A rotor killed after rewriting the files (A and B), before the signal: the record says A.
    let d = super::disk::SecretsDir::new(fleet.layout().secrets_dir(&rec.id));
    d.write(
        &["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"],
        &[
            ("SERVICE_SECRET", a.expose().as_bytes()),
            ("SERVICE_SECRET_PREVIOUS", b.expose().as_bytes()),
            ("SECRET_KEY", a.expose().as_bytes()),
        ],
    )
    .unwrap();
    // Rollback (A only): the files differ, so the instance is reloaded onto A's files.
    let r = c
        .apply(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(r.restarts, 1);
    assert_eq!(
        files_of(&fleet, &rec.id),
        held_names(&[("SERVICE_SECRET", &a), ("SECRET_KEY", &a)])
    );
    // Resume (A and B) from the same state: the record differs, so it is reloaded and proven.
    d.write(
        &["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS", "SECRET_KEY"],
        &[
            ("SERVICE_SECRET", a.expose().as_bytes()),
            ("SERVICE_SECRET_PREVIOUS", b.expose().as_bytes()),
            ("SECRET_KEY", a.expose().as_bytes()),
        ],
    )
    .unwrap();
    let r = c
        .apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(r.restarts, 1);
    let now = fleet.records().remove(0);
    assert_eq!(
        (now.pid, now.pid_start_ticks),
        (rec.pid, rec.pid_start_ticks)
    );
    assert_eq!(now.secondary, Some(b.fingerprint(SECRET)));
}

#[tokio::test]
async fn file_delivery_with_restart_starts_each_new_instance_with_its_directory_filled() {
    let fleet = Fleet::new(2, timings());
    let c = fleet.consumer_with(|spec| {
        let ConsumerKind::Process(p) = &mut spec.kind else {
            unreachable!()
        };
        p.delivery = Delivery::File;
    });
    assert_eq!(c.pickup(), Pickup::Restart);
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let sink = Sink::default();
    let report = c
        .apply(&slots(&a, Some(&b)), &Ungated, &sink)
        .await
        .unwrap();
    assert_eq!(report.restarts, 2);
    let after = fleet.records();
    for r in &after {
        assert!(
            !before.iter().any(|o| o.id == r.id || o.pid == r.pid),
            "a new instance"
        );
        let env = get_json(r.addr, "/env").await;
        assert!(
            env["SERVICE_SECRET"].is_null(),
            "a value in the environment"
        );
        // It read its files at start: it reports both values.
        let held = get_json(r.addr, "/fingerprints").await;
        assert_eq!(
            held["accepts"],
            serde_json::json!([a.fingerprint(SECRET), b.fingerprint(SECRET)])
        );
        assert_eq!(
            files_of(&fleet, &r.id),
            held_names(&[
                ("SERVICE_SECRET", &a),
                ("SERVICE_SECRET_PREVIOUS", &b),
                ("SECRET_KEY", &a)
            ])
        );
    }
    // The replaced instances' directories are gone with them.
    let mut dirs: Vec<String> = std::fs::read_dir(fleet.layout().secrets_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let ids: Vec<String> = after.iter().map(|r| r.id.clone()).collect();
    assert_eq!(dirs, ids);
    assert!(
        sink.events()
            .iter()
            .all(|(e, _)| !matches!(e, Event::InstanceReloaded { .. }))
    );
}

#[tokio::test]
async fn an_instance_started_without_files_is_replaced_when_its_consumer_turns_to_reload() {
    let fleet = Fleet::new(1, timings());
    let (a, b) = (value(""), value(""));
    fleet
        .consumer()
        .start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    // The playbook now says delivery: file, pickup: reload.
    let c = reloading(&fleet, false);
    let r = c
        .apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(r.restarts, 1);
    let after = fleet.records();
    assert_eq!(after.len(), 1);
    assert_ne!(
        after[0].id, before[0].id,
        "replaced, since it could not reload"
    );
    assert_gone(&pids(&before));
    assert_eq!(
        files_of(&fleet, &after[0].id),
        held_names(&[
            ("SERVICE_SECRET", &a),
            ("SERVICE_SECRET_PREVIOUS", &b),
            ("SECRET_KEY", &a)
        ])
    );
    // From then on it reloads in place.
    let r = c
        .apply(&slots(&b, Some(&a)), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(r.restarts, 1);
    assert_eq!(pids(&fleet.records()), pids(&after));
}

#[tokio::test]
async fn an_instance_that_dies_on_its_reload_signal_fails_the_reload_and_the_rollback_replaces_it()
{
    let fleet = Fleet::new(1, timings());
    let c = reloading_with(&fleet, timings(), &[("DIE_ON_HUP", "1")]);
    let (a, b) = (value(""), value(""));
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let before = fleet.records();
    let e = c
        .apply(&slots(&a, Some(&b)), &Ungated, &Sink::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConsumerError::NotReady { detail, .. } if detail.contains("exited")),
        "{e}"
    );
    assert_gone(&pids(&before));
    // Rolling back: the dead instance is dropped and replaced, holding A.
    let r = c
        .apply(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(r.restarts, 1);
    let after = fleet.records();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].id, before[0].id);
    assert_eq!(
        files_of(&fleet, &after[0].id),
        held_names(&[("SERVICE_SECRET", &a), ("SECRET_KEY", &a)])
    );
    assert!(!fleet.layout().secrets_dir(&before[0].id).exists());
}

/// A process started behind rotor's back with `env` (and nothing inherited but PATH), in its
/// own group like an instance; reaped in the background once it exits.
fn process_with(env: &[(&str, &str)]) -> (i32, u64) {
    let mut cmd = tokio::process::Command::new("sleep");
    cmd.arg("120")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap() as i32;
    let ticks = os::stat(pid).unwrap().start_ticks;
    tokio::spawn(async move { child.wait().await });
    (pid, ticks)
}

/// Waits (bounded) until `pid` is gone.
async fn until_gone(pid: (i32, u64)) {
    let t = Instant::now();
    while os::alive(pid.0, pid.1) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pid {} still runs",
            pid.0
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every instance carries the fleet's tag: the same `ROTOR_FLEET_ID` as `fleet/<c>/fleet-id`,
/// kept across runs and instances; a malformed tag file is refused by name, never echoed.
#[tokio::test]
async fn every_instance_carries_the_fleets_tag() {
    let fleet = Fleet::new(2, timings());
    let c = fleet.consumer();
    c.start(&slots(&value(""), None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let id = fleet.layout().fleet_id().unwrap().unwrap();
    assert!(super::disk::is_fleet_id(&id), "{id}");
    let recs = fleet.records();
    assert!(recs.iter().all(|r| r.state == RecordState::Running));
    let found = c.tagged().unwrap();
    let pids: BTreeSet<i32> = found.iter().map(|p| p.pid).collect();
    assert_eq!(pids, recs.iter().map(|r| r.pid).collect());
    for p in &found {
        let rec = recs.iter().find(|r| r.pid == p.pid).unwrap();
        assert_eq!(p.what.instance.as_deref(), Some(rec.id.as_str()));
        assert_eq!(p.what.names, rec.names, "what its environment holds");
    }
    // Another consumer of the same state directory is another fleet.
    assert!(
        fleet
            .consumer_with(|s| s.name = "other".into())
            .tagged()
            .unwrap()
            .is_empty()
    );
    assert!(c.leftovers().await.unwrap().is_empty());
    // A new rotor keeps the tag.
    assert_eq!(fleet.consumer().layout.ensure_fleet_id().unwrap(), id);

    // Refused before anything is stopped.
    std::fs::write(fleet.layout().fleet_id_path(), "not-a-tag-value-1234\n").unwrap();
    let e = c.stop().await.unwrap_err().to_string();
    assert!(
        e.contains("fleet-id is not a fleet id") && !e.contains("not-a-tag"),
        "{e}"
    );
    assert_eq!(fleet.records(), recs);
    assert!(recs.iter().all(|r| os::alive(r.pid, r.pid_start_ticks)));
    std::fs::write(fleet.layout().fleet_id_path(), format!("{id}\n")).unwrap();
    assert_eq!(c.stop().await.unwrap(), 2);
}

/// A rotor killed while starting an instance leaves a process with no record, or with a record
/// still `starting`, and temp files. `check` names both processes (with what they hold); the
/// next rotor that changes the fleet ends both, removes the record and the temp files, and
/// leaves alone the published instance and processes that are not this fleet's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_an_interrupted_start_are_named_then_ended() {
    let fleet = Fleet::new(1, timings());
    let c = fleet.consumer();
    let a = value("");
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let serving = fleet.records().remove(0);
    let tag = fleet.layout().fleet_id().unwrap().unwrap();
    let old = value("");

    // No record at all (killed before this version wrote one first, or a helper left behind).
    let unrecorded = process_with(&[
        ("ROTOR_FLEET_ID", &tag),
        ("ROTOR_CONSUMER", "auth"),
        ("ROTOR_INSTANCE", "auth-1700000000000-0001"),
        ("SERVICE_SECRET", old.expose()),
    ]);
    // A `starting` record: killed between the spawn and the record of its pid.
    let starting_id = "auth-1700000000000-0002";
    let starting = process_with(&[
        ("ROTOR_FLEET_ID", &tag),
        ("ROTOR_CONSUMER", "auth"),
        ("ROTOR_INSTANCE", starting_id),
        ("SERVICE_SECRET", old.expose()),
    ]);
    fleet
        .layout()
        .write_record(&Record {
            id: starting_id.into(),
            state: RecordState::Starting,
            pid: 0,
            pid_start_ticks: 0,
            published: false,
            ..serving.clone()
        })
        .unwrap();
    // Not this fleet's: another tag, the tag under another consumer, no tag.
    let others = [
        process_with(&[
            ("ROTOR_FLEET_ID", "0123456789abcdef0123456789abcdef"),
            ("ROTOR_CONSUMER", "auth"),
        ]),
        process_with(&[("ROTOR_FLEET_ID", &tag), ("ROTOR_CONSUMER", "backend")]),
        process_with(&[("ROTOR_CONSUMER", "auth"), ("ROTOR_INSTANCE", starting_id)]),
    ];
    // A record's temp file, as a kill before its rename leaves it.
    let temp = fleet.layout().instances_dir().join(".tmp-Ab12Cd.part");
    std::fs::write(&temp, b"{}").unwrap();

    let found = c.leftovers().await.unwrap();
    let by_pid = |pid: i32| found.iter().find(|l| l.pid == pid);
    assert_eq!(found.len(), 2, "{found:?}");
    let l = by_pid(unrecorded.0).expect("the unrecorded process is named");
    assert_eq!(l.kind, LeftoverKind::Unrecorded);
    assert_eq!(l.instance.as_deref(), Some("auth-1700000000000-0001"));
    assert_eq!(
        l.names,
        BTreeMap::from([("SERVICE_SECRET".to_string(), old.fingerprint(SECRET))])
    );
    let line = l.describe(|fp| format!("{fp} (A)"));
    assert!(
        line.contains(&format!("process {} runs without a record", unrecorded.0))
            && line.contains(&format!("SERVICE_SECRET={} (A)", old.fingerprint(SECRET)))
            && !line.contains(old.expose()),
        "{line}"
    );
    assert_eq!(by_pid(starting.0).unwrap().kind, LeftoverKind::Starting);

    // While a rotor holds the fleet's lock a `starting` record is a start in flight: only the
    // process without any record is named.
    {
        let _held = fleet.layout().lock(Instant::now()).await.unwrap().unwrap();
        let found = c.leftovers().await.unwrap();
        assert_eq!(
            found.iter().map(|l| l.pid).collect::<Vec<_>>(),
            [unrecorded.0]
        );
    }

    let report = c
        .apply(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert_eq!(report.restarts, 0, "the published instance holds the slots");
    until_gone(unrecorded).await;
    until_gone(starting).await;
    for o in others {
        assert!(
            os::alive(o.0, o.1),
            "a process that is not this fleet's was stopped"
        );
        os::kill_now(o.0, o.1);
    }
    assert_eq!(fleet.records(), vec![serving.clone()]);
    assert!(os::alive(serving.pid, serving.pid_start_ticks));
    assert!(!temp.exists(), "the stale temp file is still there");
    assert!(c.leftovers().await.unwrap().is_empty());
    assert_eq!(c.stop().await.unwrap(), 1);
}

/// `down` ends the processes no record names too, and counts them.
#[tokio::test]
async fn stop_ends_unrecorded_processes_and_counts_them() {
    let fleet = Fleet::new(1, timings());
    let c = fleet.consumer();
    c.start(&slots(&value(""), None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let tag = fleet.layout().fleet_id().unwrap().unwrap();
    let orphan = process_with(&[("ROTOR_FLEET_ID", &tag), ("ROTOR_CONSUMER", "auth")]);
    let found = c.leftovers().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].pid, found[0].instance.as_deref()),
        (orphan.0, None)
    );
    assert_eq!(c.stop().await.unwrap(), 2);
    until_gone(orphan).await;
    assert!(c.tagged().unwrap().is_empty());
}

/// A recorded instance that runs unpublished (rotor died between its start and its publication,
/// or between unpublishing and stopping it) is named with what its record says it holds, then
/// stopped by the next rollout.
#[tokio::test]
async fn an_unpublished_instance_that_still_runs_is_named() {
    let fleet = Fleet::new(1, timings());
    let c = fleet.consumer();
    let a = value("");
    c.start(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    let mut rec = fleet.records().remove(0);
    rec.published = false;
    fleet.layout().write_record(&rec).unwrap();
    let found = c.leftovers().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, LeftoverKind::Unpublished);
    assert_eq!(found[0].instance.as_deref(), Some(rec.id.as_str()));
    assert_eq!(found[0].names, rec.names);
    c.apply(&slots(&a, None), &Ungated, &Sink::default())
        .await
        .unwrap();
    assert!(!os::alive(rec.pid, rec.pid_start_ticks));
    assert!(c.leftovers().await.unwrap().is_empty());
    c.stop().await.unwrap();
}

#[test]
fn only_ids_of_the_consumers_shape_are_read_back() {
    let fleet = Fleet::new(1, timings());
    let c = fleet.consumer();
    assert!(c.is_instance_id("auth-1700000000000-0001"));
    assert!(c.is_instance_id(&c.new_id()));
    for bad in [
        "",
        "auth",
        "auth-1-",
        "auth--1",
        "backend-1-1",
        "auth-1-1/../../x",
        "auth-../1-1",
        &format!("auth-{}-1", "9".repeat(300)),
    ] {
        assert!(!c.is_instance_id(bad), "{bad}");
    }
}

/// A record written before the `state` field existed is a running one.
#[test]
fn an_old_record_without_a_state_is_running() {
    let json = r#"{"id":"auth-1-0001","pid":42,"pid_start_ticks":7,"addr":"127.0.0.1:9",
        "primary":"sha256:0c1f6a9d2b3e","secondary":null,"names":{},"published":true,
        "started_at":"2024-01-01T00:00:00Z"}"#;
    let r: Record = serde_json::from_str(json).unwrap();
    assert_eq!(r.state, RecordState::Running);
    let starting = Record {
        state: RecordState::Starting,
        ..r
    };
    let text = serde_json::to_string(&starting).unwrap();
    assert!(text.contains(r#""state":"starting""#), "{text}");
}
