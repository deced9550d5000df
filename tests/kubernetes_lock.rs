//! The Lease lock and the ConfigMap journal against the lab's API server (`rotor_lab`).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use rotor::cluster::Cluster;
use rotor::engine::journal::configmap::{ConfigMapJournal, archive_name};
use rotor::engine::journal::{Journal, JournalError, JournalStore, Mode, Status, VersionRef};
use rotor::engine::lock::lease::{LeaseLock, lease_name};
use rotor::engine::lock::{Holder, LockError, RotationLock};
use rotor::protocol::State;
use rotor::secret::Fingerprint;
use rotor_lab::{Lab, LabHandle, LabOptions, Topology};

const TOPOLOGY: &str = "namespace: demo
nodes:
  - name: lab-node-1
objects:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: demo}
";

struct Env {
    lab: Option<LabHandle>,
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let topo = Topology::parse(TOPOLOGY, Path::new("inline.yaml")).unwrap();
        let lab = Lab::start(LabOptions::new(topo, dir.path().join("lab")))
            .await
            .unwrap();
        let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig_path()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        Env {
            lab: Some(lab),
            cluster: Cluster::from_client(client, "demo"),
            _dir: dir,
        }
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.cluster.client(), "demo")
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.cluster.client(), "demo")
    }

    async fn lease(&self) -> Lease {
        self.leases()
            .get(&lease_name("auth", "prod"))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(lab) = self.lab.take() {
            lab.shutdown().await;
        }
    }
}

fn holder(command: &str, identity: &str) -> Holder {
    let mut h = Holder::me(command);
    h.identity = identity.to_string();
    h
}

/// Polls until `f` holds (the renewal task writes asynchronously).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_second_acquirer_is_told_the_holder_and_stage_and_release_frees_it() {
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod");
    let b = LeaseLock::new(&env.cluster, "auth", "prod");
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    g.set_stage(Some("r-1"), "T2 widen forward");
    eventually("the stage reaches the lease", || async {
        b.holder()
            .await
            .unwrap()
            .is_some_and(|h| h.stage == "T2 widen forward")
    })
    .await;

    for force in [false, true] {
        match b.acquire(holder("rotate", "job-b"), force).await {
            Err(LockError::Held(h)) => {
                assert_eq!(h.identity, "job-a");
                assert_eq!(h.command, "rotate");
                assert_eq!(h.stage, "T2 widen forward");
                assert_eq!(h.rotation.as_deref(), Some("r-1"));
                let text = LockError::Held(h).to_string();
                assert!(text.contains("job-a (rotate)"), "{text}");
            }
            Err(e) => panic!("expected Held (force {force}), got {e}"),
            Ok(_) => panic!("a live lease was taken (force {force})"),
        }
    }
    let lease = env.lease().await;
    let spec = lease.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("job-a"));
    assert_eq!(spec.lease_duration_seconds, Some(30));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    assert!(
        lease.metadata.annotations.as_ref().unwrap()["rotor.dev/holder"]
            .contains("T2 widen forward")
    );

    g.release().await.unwrap();
    let spec = env.lease().await.spec.unwrap();
    assert_eq!(spec.holder_identity, None, "release clears the holder");
    assert!(b.holder().await.unwrap().is_none());
    let g = b.acquire(holder("resume", "job-b"), false).await.unwrap();
    let spec = env.lease().await.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("job-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    g.release().await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn an_expired_lease_is_refused_without_force_and_taken_with_it() {
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod").with_duration(Duration::from_secs(3));
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    g.set_stage(Some("r-1"), "T3 promote forward");
    eventually("the stage reaches the lease", || async {
        a.holder()
            .await
            .unwrap()
            .is_some_and(|h| h.stage == "T3 promote forward")
    })
    .await;
    // The holder dies without releasing: its renewals stop.
    drop(g);
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let b = LeaseLock::new(&env.cluster, "auth", "prod");
    match b.acquire(holder("resume", "job-b"), false).await {
        Err(LockError::Expired(h)) => {
            assert_eq!(h.identity, "job-a");
            assert_eq!(h.stage, "T3 promote forward");
            assert!(h.expires < chrono::Utc::now());
            let text = LockError::Expired(h).to_string();
            assert!(text.contains("expired at"), "{text}");
            assert!(text.contains("--force"), "{text}");
        }
        Err(e) => panic!("expected Expired, got {e}"),
        Ok(_) => panic!("an expired lease was taken without --force"),
    }
    let g = b.acquire(holder("resume", "job-b"), true).await.unwrap();
    let spec = env.lease().await.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("job-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    g.release().await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_guard_that_lost_its_lease_never_writes_it_again() {
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod").with_duration(Duration::from_secs(3));
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    // Someone else takes the lease over behind this run's back (retrying if a renewal of this
    // run lands in between).
    let mut intruded = None;
    for _ in 0..10 {
        let mut lease = env.lease().await;
        lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
        match env
            .leases()
            .replace(&lease_name("auth", "prod"), &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                intruded = Some(l);
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let intruded = intruded.expect("the intruder got its write in");
    // The next renewal (every second) finds out.
    eventually("the guard notices", || async { g.lost().is_some() }).await;
    assert_eq!(g.lost().unwrap().identity, "intruder");
    g.set_stage(None, "T4 narrow forward");
    g.release().await.unwrap();
    let after = env.lease().await;
    assert_eq!(
        after.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("intruder"),
        "release leaves a lease it lost alone"
    );
    assert_eq!(
        after.metadata.resource_version, intruded.metadata.resource_version,
        "nothing wrote it after"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_rekey_asks_the_holder_to_hand_over_and_the_holder_sees_it() {
    use rotor::engine::lock::Handover;
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod").with_duration(Duration::from_secs(3));
    let b = LeaseLock::new(&env.cluster, "auth", "prod");
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    g.set_stage(Some("r-1"), "grace");
    let seen = match b.acquire(holder("rekey", "job-b"), false).await {
        Err(LockError::Held(h)) => *h,
        Err(e) => panic!("expected Held, got {e}"),
        Ok(_) => panic!("a live lease was taken"),
    };
    let claimed = env.lease().await.spec.unwrap();
    let req = Handover {
        by: "job-b".into(),
        reason: "leak".into(),
        at: chrono::Utc::now(),
        to: seen.identity.clone(),
        to_since: seen.since,
        until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    // A request addressed to an earlier acquisition is not delivered.
    let mut stale = seen.clone();
    stale.since -= chrono::Duration::seconds(60);
    assert!(!b.request_handover(&stale, &req).await.unwrap());
    // A request past its deadline (a rekey that died) is void, and a new one replaces it.
    let mut dead = req.clone();
    dead.by = "job-dead".into();
    dead.until = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert!(b.request_handover(&seen, &dead).await.unwrap());
    assert!(b.request_handover(&seen, &req).await.unwrap());
    // The request never renews or takes the claim.
    let lease = env.lease().await;
    let spec = lease.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("job-a"));
    // Same acquisition, same number of holders: the request did not claim the lease.
    assert_eq!(spec.acquire_time, claimed.acquire_time);
    assert_eq!(spec.lease_transitions, claimed.lease_transitions);
    assert!(
        lease.metadata.annotations.as_ref().unwrap()["rotor.dev/holder"].contains("\"handover\"")
    );
    // The holder's next renewal finds it, keeps it, and goes on holding the lease.
    eventually("the holder sees the request", || async {
        g.handover().is_some()
    })
    .await;
    assert_eq!(g.handover().unwrap().by, "job-b");
    assert!(g.lost().is_none());
    eventually("a renewal that keeps the request lands", || async {
        b.holder().await.unwrap().is_some_and(|h| {
            h.identity == "job-a"
                && h.handover.is_some()
                && h.expires > req.at + chrono::Duration::seconds(2)
        })
    })
    .await;
    // Withdrawn (a rekey that gave up), the holder's next renewal drops it and goes on.
    b.withdraw_handover(&req).await.unwrap();
    eventually("the holder sees the withdrawal", || async {
        g.handover().is_none()
    })
    .await;
    assert!(b.holder().await.unwrap().unwrap().handover.is_none());
    assert!(g.lost().is_none());
    // It releases; the rekey takes the lease, and the request is gone with the old claim.
    g.release().await.unwrap();
    let g2 = b.acquire(holder("rekey", "job-b"), false).await.unwrap();
    let h = b.holder().await.unwrap().unwrap();
    assert_eq!(h.identity, "job-b");
    assert!(h.handover.is_none());
    g2.release().await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_claim_that_cannot_be_renewed_lapses_and_the_run_stops_writing() {
    use rotor_lab::{ApiEffect, Fault};
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod").with_duration(Duration::from_secs(3));
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    // The API server refuses every Lease update from now on: renewals fail.
    let faults = env.lab.as_ref().unwrap().faults();
    faults.add(Fault::Api {
        verb: "update".into(),
        resource: "leases".into(),
        namespace: None,
        name: None,
        effect: ApiEffect::Internal,
        hang_ms: None,
        count: None,
        probability: None,
    });
    assert!(g.lost().is_none(), "a fresh claim has not lapsed");
    // After a whole duration without a renewal the guard says the claim lapsed.
    eventually("the claim lapses", || async { g.lost().is_some() }).await;
    let h = g.lost().unwrap();
    assert!(h.identity.contains("lapsed"), "{}", h.identity);
    let text = LockError::Lost(Box::new(h)).to_string();
    assert!(text.contains("no longer holds the lock"), "{text}");
    // From then on the guard writes nothing, not even a stage, though the API works again.
    let written = env.lease().await.metadata.resource_version;
    faults.clear();
    g.set_stage(None, "T4 narrow forward");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(env.lease().await.metadata.resource_version, written);
    // Its release still clears the record, since nobody took it meanwhile.
    g.release().await.unwrap();
    assert_eq!(env.lease().await.spec.unwrap().holder_identity, None);
    let b = LeaseLock::new(&env.cluster, "auth", "prod");
    b.acquire(holder("resume", "job-b"), false)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    env.stop().await;
}

/// Within one run the stage on the Lease only moves forward: stages set one after another
/// while renewals are in flight (slowed) and meet conflicts (409, as when another writer moved
/// the resourceVersion) are read back in order, never an older one after a newer one, and the
/// newest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_on_the_lease_only_move_forward_under_conflicts() {
    use rotor_lab::{ApiEffect, Fault};
    let env = Env::start().await;
    let a = LeaseLock::new(&env.cluster, "auth", "prod");
    let g = a.acquire(holder("rotate", "job-a"), false).await.unwrap();
    let faults = env.lab.as_ref().unwrap().faults();
    for (effect, probability, hang_ms) in [
        (ApiEffect::Conflict, 0.3, None),
        (ApiEffect::Delay, 1.0, Some(20)),
    ] {
        faults.add(Fault::Api {
            verb: "update".into(),
            resource: "leases".into(),
            namespace: None,
            name: None,
            effect,
            hang_ms,
            count: None,
            probability: Some(probability),
        });
    }
    let stages: Vec<String> = (0..30).map(|i| format!("U{i:02}")).collect();
    // Reads the Lease as fast as it can and keeps every stage change it sees, in order.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let leases = env.leases();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(l) = leases.get(&lease_name("auth", "prod")).await
                    && let Some(h) = rotor::engine::lock::lease::holder_of(&l)
                    && seen.last() != Some(&h.stage)
                {
                    seen.push(h.stage);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };
    for stage in &stages {
        g.set_stage(Some("r-1"), stage);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let newest = stages.last().unwrap().clone();
    eventually("the newest stage reaches the lease", || async {
        a.holder().await.unwrap().is_some_and(|h| h.stage == newest)
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.await.unwrap();
    faults.clear();
    let order: Vec<usize> = seen
        .iter()
        .filter_map(|s| stages.iter().position(|x| x == s))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the stage on the lease went back: {seen:?}"
    );
    assert!(order.len() >= 2, "too few stages seen: {seen:?}");
    g.release().await.unwrap();
    env.stop().await;
}

fn journal(id: &str) -> Journal {
    Journal::new(
        id.to_string(),
        "auth",
        "prod",
        Mode::Scheduled,
        "auth.yaml",
        "checksum",
        VersionRef {
            version: Some("1".into()),
            fingerprint: Fingerprint::of("auth", "not-a-real-value"),
        },
        State::S5,
    )
}

#[tokio::test]
async fn the_configmap_journal_round_trips_refuses_a_second_writer_and_archives() {
    let env = Env::start().await;
    let store = ConfigMapJournal::new(&env.cluster, "auth", "prod");
    // Loading a journal that does not exist creates nothing (plan and status stay read-only).
    assert_eq!(store.load().await.unwrap(), None);
    let none = env.configmaps().list(&ListParams::default()).await.unwrap();
    assert!(none.items.is_empty(), "load created {:?}", none.items);

    let mut j = journal("r-20260101T000000Z-aaaaaa");
    store.save(&mut j).await.unwrap();
    j.state = State::S1;
    store.save(&mut j).await.unwrap();
    let cm = env
        .configmaps()
        .get("rotor-journal-auth-prod")
        .await
        .unwrap();
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "rotor"
    );
    let text = &cm.data.as_ref().unwrap()["journal.json"];
    assert_eq!(*text, serde_json::to_string_pretty(&j).unwrap());
    // Another process (a rescheduled Job) resumes from it.
    let other = ConfigMapJournal::new(&env.cluster, "auth", "prod");
    assert_eq!(other.load().await.unwrap(), Some(j.clone()));

    // Two writers: the one that read an older version is refused, nothing is overwritten.
    j.state = State::S2;
    store.save(&mut j).await.unwrap();
    let mut stale = j.clone();
    stale.state = State::S0;
    match other.save(&mut stale).await {
        Err(e @ JournalError::Conflict { .. }) => {
            assert!(e.to_string().contains("rotor-journal-auth-prod"), "{e}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.load().await.unwrap().unwrap().state, State::S2);

    // Archive: a ConfigMap of its own; the current one no longer holds a journal.
    j.status = Status::Completed;
    store.save(&mut j).await.unwrap();
    store.archive(&j).await.unwrap();
    assert_eq!(store.load().await.unwrap(), None);
    let archived = env
        .configmaps()
        .get(&archive_name("rotor-journal-auth-prod", &j.id))
        .await
        .unwrap();
    let labels = archived.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["rotor.dev/rotation"], j.id);
    assert_eq!(labels["rotor.dev/archived"], "true");
    let back: Journal =
        serde_json::from_str(&archived.data.as_ref().unwrap()["journal.json"]).unwrap();
    assert_eq!(back, j);
    // The next rotation starts on the emptied ConfigMap.
    let mut next = journal("r-20260102T000000Z-bbbbbb");
    store.save(&mut next).await.unwrap();
    assert_eq!(other.load().await.unwrap(), Some(next));
    env.stop().await;
}
