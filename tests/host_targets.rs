//! Instances known by a host name (`https://localhost:PORT` exec targets) are reached by that
//! name everywhere: in a signer's gate when it asks whether the validator itself refuses the
//! value, and in a hard cut's sampler. Reached by IP, TLS verification for the name would fail
//! and the outcome would be wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rotor::consumer::{Gate, Reach};
use rotor::engine::gate::{InstanceGate, Labeled};
use rotor::engine::hardcut::Sampler;
use rotor::secret::SecretValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::{Ca, write};

const B: &str = "review-value-b-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn response(status: u16) -> String {
    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

/// An HTTPS server on 127.0.0.1 presenting `cert`, answering `answer(request head)`.
async fn tls_server(
    cert: &(String, String),
    answer: impl Fn(&str) -> u16 + Send + Sync + 'static,
) -> SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 8192];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    let _ = tls.write_all(response(answer(&head)).as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A plain HTTP server on 127.0.0.1 answering `status` to anything.
async fn plain_server(status: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(response(status).as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

fn playbook(dir: &std::path::Path, consumers: &str) -> rotor::playbook::Playbook {
    let text = format!(
        "secret: service-secret\nenvironment: test\ngenerate: {{length: 64}}\nstore: {{kind: local, path: s.json}}\nconsumers:\n{consumers}"
    );
    rotor::playbook::load_str(&text, "review.yaml", dir).unwrap()
}

/// The hard cut's sampler runs round trips from a signer that is an exec consumer reached as
/// `https://localhost:PORT`, whose certificate is valid for `localhost` only. Every round trip
/// passes when dialled by name (as the docs promise), but the sampler dials the signer's IP
/// (`Transport::at`, src/engine/hardcut.rs), so TLS refuses every one and the report counts
/// them all as failed requests the cut caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_cut_sampler_reaches_a_host_name_signer_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("review CA 1");
    write(dir.path(), "ca.pem", &ca.pem());
    // The signer relays fine: every round trip passes.
    let signer = tls_server(&ca.leaf_pem("localhost", false), |_| 200).await;
    let validator = plain_server(200).await;
    let pb = playbook(
        dir.path(),
        &format!(
            "  - name: web\n    role: signer\n    kind: exec\n    apply: [\"true\"]\n    targets: [\"https://localhost:{}\"]\n    tls: {{ca_file: ca.pem, system_roots: false}}\n    slots: {{primary: P}}\n    roundtrips: [{{to: api, path: \"/relay?target={{target}}\"}}]\n  - name: api\n    role: validator\n    kind: exec\n    apply: [\"true\"]\n    targets: [\"http://127.0.0.1:{}\"]\n    slots: {{primary: P, secondary: S}}\n    probes: [{{type: header, path: /p, header: X-S}}]\n",
            signer.port(),
            validator.port()
        ),
    );
    let consumers = rotor::consumer::open_all(&pb, None).unwrap();
    let sampler = Sampler::start(
        &consumers,
        |name| {
            pb.consumer(name)
                .map(|c| {
                    c.roundtrips
                        .iter()
                        .filter_map(|r| r.http())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        },
        Duration::from_secs(5),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = sampler.stop().await;
    assert!(report.sampled_round_trips > 0, "{report:?}");
    assert_eq!(
        (report.failed_round_trips, report.unreachable),
        (0, 0),
        "every round trip passes when the signer is dialled by its name: {report:?}"
    );
}

/// A signer's gate (new instances, `rotor check`) must fail when its round trip to a healthy
/// validator fails. It skips the failure when the validator "refuses the value itself"
/// (`InstanceGate::target_refuses`), and that check presents the value to the validator by IP
/// (`consumer.transport().at(addr)`, src/engine/gate.rs): an exec validator reached as
/// `https://localhost:PORT` fails TLS there, which counts as "refuses", so every failing round
/// trip to it is skipped and the gate passes a signer that sends the wrong value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_round_trip_to_an_https_exec_validator_fails_the_signer_gate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("review CA 2");
    write(dir.path(), "ca.pem", &ca.pem());
    // The validator accepts B (and only B), presented directly by name.
    let want = format!("x-s: {}", B.to_lowercase());
    let validator = tls_server(&ca.leaf_pem("localhost", false), move |head| {
        if head.contains(&want) { 200 } else { 403 }
    })
    .await;
    // The signer sends something else: its relay answers 403 (the validator refused).
    let signer = plain_server(403).await;
    let pb = playbook(
        dir.path(),
        &format!(
            "  - name: web\n    role: signer\n    kind: exec\n    apply: [\"true\"]\n    targets: [\"http://127.0.0.1:{}\"]\n    slots: {{primary: P}}\n    roundtrips: [{{to: api, path: \"/relay?target={{target}}\"}}]\n  - name: api\n    role: validator\n    kind: exec\n    apply: [\"true\"]\n    targets: [\"https://localhost:{}\"]\n    tls: {{ca_file: ca.pem, system_roots: false}}\n    slots: {{primary: P, secondary: S}}\n    probes: [{{type: header, path: /p, header: X-S}}]\n",
            signer.port(),
            validator.port()
        ),
    );
    let consumers = rotor::consumer::open_all(&pb, None).unwrap();
    let b = Labeled {
        label: "B".into(),
        value: SecretValue::new(B.into()),
    };
    // Sanity: the validator is healthy, by name it accepts B.
    let api = &consumers[1];
    let inst = &api.instances().await.unwrap()[0];
    let at = api
        .transport()
        .reach(inst.addr.unwrap(), inst.host.as_deref());
    let spec_api = pb.consumer("api").unwrap();
    rotor::engine::gate::prove_validating(
        spec_api,
        at,
        std::slice::from_ref(&b),
        &[],
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    let web = &consumers[0];
    let gate = InstanceGate {
        spec: pb.consumer("web").unwrap(),
        accept: Vec::new(),
        reject: Vec::new(),
        sends: Some(b.value.fingerprint(&pb.secret)),
        sends_value: Some(b.clone()),
        specs: &pb.consumers,
        round_trips: true,
        consumers: &consumers,
        generate: &pb.generate,
        timeout: Duration::from_secs(5),
        transport: web.transport(),
    };
    let host = format!("127.0.0.1:{}", signer.port());
    let r = gate
        .prove(
            "web-0",
            Reach {
                addr: signer,
                host: Some(&host),
            },
        )
        .await;
    assert!(
        r.is_err(),
        "the signer's round trip to a healthy validator failed, yet its gate passed: {r:?}"
    );
}
