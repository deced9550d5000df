//! How rotor reaches one consumer's instances: plain HTTP, or HTTPS verified as its `tls`
//! mapping says (`ca_file` on top of the system roots, `server_name`, a client certificate for
//! mTLS, or `insecure` outside production).
//!
//! Used by consumers (health checks, fingerprints reports) and probes alike.
//!
//! Owns: reading the PEM files when the engine opens (a bad file is an error that names the
//! consumer, the field and the file), building one rustls client per consumer, and describing
//! a failed handshake in words an operator can act on. Must never: turn verification off
//! unless the playbook says `insecure: true`, or quote a file's contents in an error.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::playbook::TlsSpec;

/// Characters of a TLS error's own text kept in a description.
const DESCRIBED: usize = 160;

/// Largest PEM file read (a CA bundle of a few hundred certificates fits).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A consumer's `tls` could not be turned into a client.
#[derive(Debug, thiserror::Error)]
#[error(
    "consumer `{consumer}`: tls.{field}{}: {detail}",
    if file.is_empty() { String::new() } else { format!(" ({file})") }
)]
pub struct TlsError {
    /// The consumer.
    pub consumer: String,
    /// The field that names the file.
    pub field: &'static str,
    /// The file.
    pub file: String,
    /// What is wrong with it and what to do.
    pub detail: String,
}

/// How rotor talks to one consumer's instances: one client, plain HTTP or HTTPS. Every client
/// goes straight to the instance (no proxy: a probe carries a value) and keeps no idle
/// connection (the instance behind an address changes during rollouts).
#[derive(Clone, Debug)]
pub struct Transport {
    client: reqwest::Client,
    https: bool,
}

/// One instance as rotor reaches it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The instance's own address.
    pub addr: SocketAddr,
    /// `host:port` when the instance is known by a host name (an exec consumer's target): it
    /// is dialled by that name, so TLS sends it as SNI and verifies the certificate for it.
    pub host: Option<&'a str>,
    /// How to talk to it.
    pub transport: &'a Transport,
}

impl<'a> Target<'a> {
    /// The URL of `path` on this instance.
    pub fn url(&self, path: &str) -> String {
        match self.host {
            Some(host) => format!("{}://{host}{path}", self.transport.scheme()),
            None => format!("{}://{}{path}", self.transport.scheme(), self.addr),
        }
    }

    /// How messages name this instance (its host name when it has one).
    pub fn name(&self) -> String {
        match self.host {
            Some(host) => host.to_string(),
            None => self.addr.to_string(),
        }
    }

    /// The client to send with.
    pub fn client(&self) -> &'a reqwest::Client {
        &self.transport.client
    }
}

impl From<SocketAddr> for Target<'static> {
    /// Plain HTTP to `addr`.
    fn from(addr: SocketAddr) -> Target<'static> {
        plain().at(addr)
    }
}

/// The shared plain-HTTP transport.
pub fn plain() -> &'static Transport {
    static PLAIN: OnceLock<Transport> = OnceLock::new();
    PLAIN.get_or_init(Transport::plain)
}

/// Never follows a redirect: a probe's header would follow it to wherever it points (off TLS,
/// to an unverified server), and the verdict would be that server's. A 3xx is an answer
/// like any other.
fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
}

impl Transport {
    /// Plain HTTP.
    pub fn plain() -> Transport {
        Transport {
            // Building a client without TLS settings fails only when the system cannot start an
            // HTTP client at all; nothing useful can be done without one.
            client: builder().build().expect("an HTTP client"),
            https: false,
        }
    }

    /// HTTPS as `spec` says, or plain HTTP without one. Reads the PEM files now.
    pub fn for_consumer(consumer: &str, spec: Option<&TlsSpec>) -> Result<Transport, TlsError> {
        let Some(spec) = spec else {
            return Ok(Transport::plain());
        };
        let config = client_config(consumer, spec)?;
        let client = builder()
            .https_only(true)
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| TlsError {
                consumer: consumer.into(),
                field: "ca_file",
                file: String::new(),
                detail: format!("cannot build the HTTPS client: {e}"),
            })?;
        Ok(Transport {
            client,
            https: true,
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// `addr` reached through this transport.
    pub fn at(&self, addr: SocketAddr) -> Target<'_> {
        Target {
            addr,
            host: None,
            transport: self,
        }
    }

    /// The instance at `addr`, dialled by `host` (`host:port`) when it has one.
    pub fn reach<'a>(&'a self, addr: SocketAddr, host: Option<&'a str>) -> Target<'a> {
        Target {
            addr,
            host,
            transport: self,
        }
    }
}

/// A client for services outside the fleet (a webhook): HTTPS verified against the system
/// roots, redirects not followed, `timeout` per request.
pub fn public_client(timeout: std::time::Duration) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Ok(config) = config {
        b = b.use_preconfigured_tls(config);
    }
    b.build().expect("an HTTP client")
}

/// A PEM file's bytes, bounded: a regular file of at most [`MAX_PEM_BYTES`] (a FIFO or a
/// device reports no size, so the read itself is bounded too).
fn read_pem(consumer: &str, field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let err = |detail: String| TlsError {
        consumer: consumer.into(),
        field,
        file: path.display().to_string(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(err("it is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!(
            "it is larger than {MAX_PEM_BYTES} bytes, the most rotor reads of a PEM file"
        )));
    }
    Ok(bytes)
}

/// The certificates in a PEM file (at least one).
fn certificates(
    consumer: &str,
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(consumer, field, path)?;
    let err = |detail: &str| TlsError {
        consumer: consumer.into(),
        field,
        file: path.display().to_string(),
        detail: detail.into(),
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err("it is not a PEM file of certificates (-----BEGIN CERTIFICATE-----)"))?;
    if certs.is_empty() {
        return Err(err(
            "it holds no certificate (-----BEGIN CERTIFICATE-----); give a PEM bundle",
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(consumer: &str, spec: &TlsSpec) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            consumer: consumer.into(),
            field: "ca_file",
            file: String::new(),
            detail: format!("no TLS protocol version available: {e}"),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = if spec.insecure {
        Arc::new(Unverified(provider))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if spec.system_roots {
            // Unreadable system certificates are skipped, as every TLS client does; the CA file
            // is what this consumer relies on.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        if let Some(path) = &spec.ca_file {
            for cert in certificates(consumer, "ca_file", path)? {
                roots.add(cert).map_err(|e| TlsError {
                    consumer: consumer.into(),
                    field: "ca_file",
                    file: path.display().to_string(),
                    detail: format!("a certificate in it is not a usable CA: {e}"),
                })?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError {
                consumer: consumer.into(),
                field: if spec.ca_file.is_some() {
                    "ca_file"
                } else {
                    "system_roots"
                },
                file: spec
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                detail: format!("no trusted root to verify against: {e}"),
            })?;
        let name = match &spec.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| TlsError {
                consumer: consumer.into(),
                field: "server_name",
                file: String::new(),
                detail: "not a DNS name or IP address".into(),
            })?),
            None => None,
        };
        Arc::new(Verified { webpki, name })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &spec.client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some(auth) => {
            let chain = certificates(consumer, "client_cert", &auth.cert)?;
            let bytes = read_pem(consumer, "client_key", &auth.key)?;
            let key_err = |detail: String| TlsError {
                consumer: consumer.into(),
                field: "client_key",
                file: auth.key.display().to_string(),
                detail,
            };
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
                key_err("it holds no private key (PKCS#8, PKCS#1 or SEC1 PEM)".into())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| key_err(format!("it does not fit tls.client_cert: {e}")))
        }
    }
}

/// The standard WebPKI verification, against `name` instead of the address rotor dialled when
/// the playbook gives a `server_name` (instances are reached by IP).
#[derive(Debug)]
struct Verified {
    webpki: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for Verified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.webpki
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecure: true`: any certificate is accepted, but the handshake's signatures are still
/// checked (the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A failed handshake in an operator's words, when `e`'s chain holds a TLS error.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: a chain is a handful of links; a cycle must not hang a probe.
    for _ in 0..32 {
        let Some(err) = next else { break };
        // An io::Error keeps what it wraps out of its `source()`: open it instead.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            next = Some(inner);
            continue;
        }
        if let Some(tls) = err.downcast_ref::<E>() {
            return Some(match tls {
                E::InvalidCertificate(C::UnknownIssuer) => {
                    "TLS: the instance's certificate is not signed by a CA rotor trusts for this consumer (tls.ca_file, tls.system_roots)".into()
                }
                E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    "TLS: the instance's certificate has expired".into()
                }
                E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                    "TLS: the instance's certificate is not valid yet (check the clocks)".into()
                }
                E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    "TLS: the instance's certificate is not valid for the name rotor checks (tls.server_name)".into()
                }
                E::AlertReceived(A::CertificateRequired) => {
                    "TLS: the instance requires a client certificate (tls.client_cert, tls.client_key)".into()
                }
                E::AlertReceived(A::HandshakeFailure) => {
                    "TLS: the instance refused the handshake (a TLS 1.2 server that requires a client certificate says so this way: tls.client_cert)".into()
                }
                E::AlertReceived(A::BadCertificate | A::UnknownCA | A::AccessDenied) => {
                    "TLS: the instance refused rotor's client certificate (tls.client_cert)".into()
                }
                // rustls's own words, which may name what the peer presented: bounded.
                other => {
                    let text: String = other.to_string().chars().take(DESCRIBED).collect();
                    format!("TLS handshake failed: {text}")
                }
            });
        }
        next = err.source();
    }
    None
}
