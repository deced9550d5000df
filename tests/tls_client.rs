//! rotor's HTTPS client (`rotor::transport`) against a real TLS server (tokio-rustls) with
//! certificates made here (rcgen): the happy path by IP with `server_name`, a wrong CA, an
//! expired certificate, a server that requires mTLS (with and without rotor's client
//! certificate), `insecure`, redirects, and files rotor must refuse to read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rotor::playbook::{ClientAuth, TlsSpec};
use rotor::transport::{MAX_PEM_BYTES, Transport, describe};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;

use crate::tls::{Ca, write};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const NAME: &str = "auth.internal";

/// An HTTPS server answering 200 to anything, presenting `cert`; with `clients`, it
/// requires a client certificate signed by that CA.
async fn server(cert: &(String, String), clients: Option<&Ca>) -> SocketAddr {
    server_answering(
        cert,
        clients,
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into(),
    )
    .await
}

/// Like [`server`], answering `answer` (a whole HTTP response) to anything.
async fn server_answering(
    cert: &(String, String),
    clients: Option<&Ca>,
    answer: String,
) -> SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.0.der().clone()).unwrap();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(v)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn spec(ca: Option<PathBuf>) -> TlsSpec {
    TlsSpec {
        ca_file: ca,
        system_roots: false,
        server_name: Some(NAME.into()),
        client_auth: None,
        insecure: false,
    }
}

/// GET / through `spec`'s transport: Ok(status) or the described failure.
async fn get(spec: &TlsSpec, addr: SocketAddr) -> Result<u16, String> {
    let t = Transport::for_consumer("auth", Some(spec)).map_err(|e| e.to_string())?;
    assert_eq!(t.scheme(), "https");
    let r = t
        .at(addr)
        .client()
        .get(t.at(addr).url("/"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    match r {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(describe(&e).unwrap_or_else(|| {
            let mut chain = format!("not a TLS error: {e}");
            let mut s = std::error::Error::source(&e);
            while let Some(x) = s {
                chain.push_str(&format!(" <- {x} [{x:?}]"));
                s = x.source();
            }
            chain
        })),
    }
}

#[tokio::test]
async fn verifies_by_name_when_probing_by_ip_and_says_why_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("test CA 1"), Ca::new("test CA 2"));
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let good = server(&ca.leaf_pem(NAME, false), None).await;
    assert_eq!(get(&spec(Some(ca_file.clone())), good).await, Ok(200));

    // The name is checked: the same certificate is not valid for another one.
    let mut wrong_name = spec(Some(ca_file.clone()));
    wrong_name.server_name = Some("backend.internal".into());
    let e = get(&wrong_name, good).await.unwrap_err();
    assert!(e.contains("not valid for the name"), "{e}");

    // A certificate from a CA rotor was not told to trust.
    let stranger = server(&other.leaf_pem(NAME, false), None).await;
    let e = get(&spec(Some(ca_file.clone())), stranger)
        .await
        .unwrap_err();
    assert!(e.contains("not signed by a CA rotor trusts"), "{e}");

    // An expired certificate from the right CA.
    let expired = server(&ca.leaf_pem(NAME, true), None).await;
    let e = get(&spec(Some(ca_file.clone())), expired)
        .await
        .unwrap_err();
    assert!(e.contains("has expired"), "{e}");

    // insecure: the stranger is accepted (never in production: the playbook refuses it).
    let mut insecure = spec(None);
    insecure.server_name = None;
    insecure.insecure = true;
    assert_eq!(get(&insecure, stranger).await, Ok(200));
}

/// A target known by a host name (an exec consumer's `https://localhost:PORT`) is dialled by
/// that name: TLS sends it as SNI and verifies the certificate for it, with no `server_name`.
/// The same certificate reached by IP is refused.
#[tokio::test]
async fn a_host_name_target_is_dialled_and_verified_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA 9");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let addr = server(&ca.leaf_pem("localhost", false), None).await;
    let mut by_name = spec(Some(ca_file));
    by_name.server_name = None;
    let t = Transport::for_consumer("api", Some(&by_name)).unwrap();
    let host = format!("localhost:{}", addr.port());
    let at = t.reach(addr, Some(&host));
    assert_eq!(at.url("/x"), format!("https://{host}/x"));
    let status = at
        .client()
        .get(at.url("/"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| describe(&e).unwrap_or_else(|| e.to_string()));
    assert_eq!(status, Ok(200));
    // By IP, the certificate (for "localhost" only) is not valid for what was dialled.
    let e = get(&by_name, addr).await.unwrap_err();
    assert!(e.contains("not valid for the name"), "{e}");
}

#[tokio::test]
async fn a_server_that_requires_mtls_gets_rotor_s_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (Ca::new("test CA 3"), Ca::new("test CA 4"));
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let addr = server(&ca.leaf_pem(NAME, false), Some(&clients)).await;
    let e = get(&spec(Some(ca_file.clone())), addr).await.unwrap_err();
    assert!(e.contains("requires a client certificate"), "{e}");

    let (cert, key) = clients.leaf_pem("rotor", false);
    let mut with_cert = spec(Some(ca_file.clone()));
    with_cert.client_auth = Some(ClientAuth {
        cert: write(dir.path(), "client.pem", &cert),
        key: write(dir.path(), "client.key", &key),
    });
    assert_eq!(get(&with_cert, addr).await, Ok(200));

    // A client certificate from a CA the server does not trust is refused.
    let (cert, key) = Ca::new("test CA 5").leaf_pem("rotor", false);
    let mut stranger = spec(Some(ca_file));
    stranger.client_auth = Some(ClientAuth {
        cert: write(dir.path(), "stranger.pem", &cert),
        key: write(dir.path(), "stranger.key", &key),
    });
    let e = get(&stranger, addr).await.unwrap_err();
    assert!(e.contains("refused rotor's client certificate"), "{e}");
}

#[tokio::test]
async fn a_redirect_is_an_answer_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA 6");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    // Where a followed redirect would carry the request (and its header): plain HTTP.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = elsewhere.local_addr().unwrap();
    let answer = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{to}/api/ping\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let addr = server_answering(&ca.leaf_pem(NAME, false), None, answer).await;
    assert_eq!(get(&spec(Some(ca_file)), addr).await, Ok(307));
    let followed =
        tokio::time::timeout(std::time::Duration::from_millis(300), elsewhere.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
}

#[test]
fn bad_files_name_the_consumer_field_and_file_never_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let secretish = "not-a-pem-but-maybe-a-secret-value-0123456789";
    let junk = write(dir.path(), "junk.pem", secretish);
    let e = Transport::for_consumer("auth", Some(&spec(Some(junk.clone())))).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("consumer `auth`: tls.ca_file ("), "{text}");
    assert!(text.contains("holds no certificate"), "{text}");
    assert!(!text.contains(secretish), "{text}");
    let missing = dir.path().join("missing.pem");
    let e = Transport::for_consumer("auth", Some(&spec(Some(missing)))).unwrap_err();
    assert!(e.to_string().contains("cannot read it"), "{e}");
    let ca = write(dir.path(), "ca.pem", &Ca::new("test CA 7").pem());
    let mut s = spec(Some(ca));
    s.client_auth = Some(ClientAuth {
        cert: write(
            dir.path(),
            "c.pem",
            &Ca::new("test CA 8").leaf_pem("x", false).0,
        ),
        key: junk,
    });
    let e = Transport::for_consumer("auth", Some(&s)).unwrap_err();
    assert_eq!(e.field, "client_key");
    assert!(!e.to_string().contains(secretish), "{e}");
    assert_eq!(
        Transport::for_consumer("auth", None).unwrap().scheme(),
        "http"
    );
    // Not a regular file (a FIFO or a device reports no size): refused, never read.
    let e = Transport::for_consumer("auth", Some(&spec(Some("/dev/zero".into())))).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let big = write(
        dir.path(),
        "big.pem",
        &"A".repeat((MAX_PEM_BYTES + 1) as usize),
    );
    let e = Transport::for_consumer("auth", Some(&spec(Some(big)))).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}
