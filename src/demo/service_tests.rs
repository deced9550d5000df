//! The demo service against rotor's own probes, round trips and fingerprints report: the
//! contract between rotor and the service its demo fleet runs (`crates/rotor-demo-service`),
//! checked from rotor's side. The service's own behaviour is tested in its crate.

use std::collections::BTreeMap;

use std::time::Duration;

use rotor_demo_service::testing::{client, random, slot, spawn, state};
use rotor_demo_service::*;
use serde_json::json;

use crate::consumer::Held;
use crate::playbook::{ProbeSpec, RoundtripSpec};
use crate::probe::{self, Verdict};
use crate::secret::SecretValue;

const T: Duration = Duration::from_secs(5);

fn header_probe() -> ProbeSpec {
    ProbeSpec::Header {
        path: "/api/ping".into(),
        header: "X-Service-Secret".into(),
        accept: vec![200],
        reject: vec![401, 403],
    }
}

fn jwt_probe() -> ProbeSpec {
    ProbeSpec::Jwt {
        path: "/api/ping".into(),
        ttl: Duration::from_secs(60),
        accept: vec![200],
        reject: vec![401, 403],
    }
}

#[tokio::test]
async fn probes_accept_primary_and_secondary_and_reject_others() {
    let (a, b) = (random(), random());
    let both = spawn(state("auth", &a, Some(&b), &[])).await;
    let only_a = spawn(state("auth", &a, None, &[])).await;
    for spec in [header_probe(), jwt_probe()] {
        let p = |addr, v: SecretValue| {
            let spec = spec.clone();
            async move { probe::present(&spec, addr, &v, T).await.unwrap() }
        };
        assert_eq!(p(both, a.clone()).await, Verdict::Accepted, "{spec:?}");
        assert_eq!(p(both, b.clone()).await, Verdict::Accepted, "{spec:?}");
        assert_eq!(p(both, random()).await, Verdict::Rejected, "{spec:?}");
        assert_eq!(p(only_a, a.clone()).await, Verdict::Accepted, "{spec:?}");
        assert_eq!(p(only_a, b.clone()).await, Verdict::Rejected, "{spec:?}");
    }
}

#[tokio::test]
async fn a_fault_file_changes_what_ping_accepts_while_it_holds_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fault");
    let (a, b) = (random(), random());
    let with = |secondary: Option<&SecretValue>| AppState {
        fault_files: vec![file.clone()],
        ..state("analytics", &a, secondary, &[])
    };
    let both = spawn(with(Some(&b))).await;
    let one = spawn(with(None)).await;
    let p = |addr, v: SecretValue| async move {
        probe::present(&header_probe(), addr, &v, T).await.unwrap()
    };
    use Verdict::{Accepted, Rejected};
    // (fault, instance, value, verdict)
    let cases = [
        ("", both, a.clone(), Accepted),
        ("", both, random(), Rejected),
        ("two-keys", both, a.clone(), Rejected),
        ("two-keys", one, a.clone(), Accepted),
        ("two-keys-open", both, random(), Accepted),
        ("two-keys-open", one, random(), Rejected),
        ("accept-all", one, random(), Accepted),
        ("reject-all", one, a.clone(), Rejected),
        ("unknown words", one, a.clone(), Accepted),
    ];
    for (fault, addr, v, want) in cases {
        std::fs::write(&file, fault).unwrap();
        assert_eq!(p(addr, v).await, want, "{fault:?} at {addr}");
    }
}

#[tokio::test]
async fn fingerprints_report_names_accepts_and_sends() {
    let (a, b, old) = (random(), random(), random());
    let mut st = state("auth", &a, Some(&b), &[]);
    st.aliases = vec![slot("SECRET_KEY", &a), slot("LEGACY_KEY", &old)];
    let addr = spawn(st).await;
    let body = client()
        .get(format!("http://{addr}/fingerprints"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for v in [&a, &b, &old] {
        assert!(!body.contains(v.expose()));
    }
    let fp = |v: &SecretValue| v.fingerprint("service-secret");
    let held: Held = serde_json::from_str(&body).unwrap();
    assert_eq!(
        held.names,
        BTreeMap::from([
            ("SERVICE_SECRET".to_string(), fp(&a)),
            ("SERVICE_SECRET_PREVIOUS".to_string(), fp(&b)),
            ("SECRET_KEY".to_string(), fp(&a)),
            ("LEGACY_KEY".to_string(), fp(&old)),
        ])
    );
    assert_eq!(held.accepts, vec![fp(&a), fp(&b)]);
    assert_eq!(held.sends, Some(fp(&a)));
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw["consumer"], "auth");
}

#[tokio::test]
async fn relay_with_target_succeeds_only_when_the_peer_accepts() {
    let (a, b) = (random(), random());
    let signer = spawn(state(
        "backend",
        &a,
        None,
        &[("auth", PeerMode::Header), ("analytics", PeerMode::Jwt)],
    ))
    .await;
    let accepts_a = spawn(state("auth", &b, Some(&a), &[])).await;
    let rejects_a = spawn(state("auth", &b, None, &[])).await;
    for peer in ["auth", "analytics"] {
        let spec = RoundtripSpec {
            to: peer.into(),
            path: format!("/relay/{peer}?target={{target}}"),
            expect: 200,
        };
        probe::roundtrip(&spec, signer, accepts_a, T).await.unwrap();
        let e = probe::roundtrip(&spec, signer, rejects_a, T)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("signer answered 502"), "{e}");
        assert!(!e.contains(a.expose()) && !e.contains(b.expose()), "{e}");
    }

    let c = client();
    let r = c
        .get(format!("http://{signer}/relay/auth?target={rejects_a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["peer_status"], 403);
    let r = c
        .get(format!(
            "http://{signer}/relay/analytics?target={rejects_a}"
        ))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["peer_status"], 401);
    let r = c
        .get(format!("http://{signer}/relay/auth?target={accepts_a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({
            "ok": true, "peer": "auth", "target": accepts_a.to_string(),
            "peer_key": a.fingerprint("service-secret"),
        })
    );

    // Nobody listening: 502 with no peer status.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = c
        .get(format!("http://{signer}/relay/auth?target={closed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["peer_status"], serde_json::Value::Null);
    // Unknown peer; bad target.
    let r = c
        .get(format!("http://{signer}/relay/billing?target={accepts_a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("http://{signer}/relay/auth?target=nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
