//! HTTPS to the instances (`tls:` on a consumer), against stock nginx from Debian serving TLS
//! with certificates made here (rcgen): a rotation and `rotor check` verified against the test's
//! CA by name while probing by IP; a CA rotor was not told to trust (the pre-flight refuses,
//! exit 5); a wave whose new instances serve an expired certificate (they never become ready,
//! the step rolls back, exit 3); and a server that requires mTLS (without rotor's client certificate
//! the instances never become ready and nothing is published, exit 1; with it the rotation
//! completes).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::common::Env;
use crate::third_party::{nginx, quoted, wrapper};

const NAME: &str = "validator.internal";

/// A certificate authority made for a test (rcgen).
pub(crate) struct Ca(pub(crate) CertifiedIssuer<'static, KeyPair>);

impl Ca {
    /// A CA named `name` (each CA its own name: a verifier matches an issuer by name first).
    pub(crate) fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    /// The CA's certificate as PEM.
    pub(crate) fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf for `name` signed by this CA, valid now unless `expired`: (certificate, key) PEM.
    pub(crate) fn leaf_pem(&self, name: &str, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes [`Ca::leaf_pem`] as `<stem>.pem` and `<stem>.key` under `dir`.
    fn leaf(&self, dir: &Path, stem: &str, name: &str, expired: bool) {
        let (cert, key) = self.leaf_pem(name, expired);
        write(dir, &format!("{stem}.pem"), &cert);
        write(dir, &format!("{stem}.key"), &key);
    }

    /// Writes the CA's certificate as `file` under `dir`.
    fn write(&self, dir: &Path, file: &str) {
        write(dir, file, &self.pem());
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// One nginx validator over HTTPS (2 instances); `tls` is the consumer's `tls` mapping and
/// `client_ca` makes nginx require a client certificate signed by that CA file.
fn fleet(nginx: &Path, tls: &str, client_ca: Option<&str>) -> String {
    let client_ca = client_ca
        .map(|f| format!(", NGINX_TLS_CLIENT_CA: {f}"))
        .unwrap_or_default();
    crate::common::fleet_head("60s")
        + &format!(
            r#"  - name: nginx
    role: validator
    kind: process
    instances: 2
    command: [{wrapper}]
    stop_signal: SIGQUIT
    env: {{NGINX_BIN: {nginx}, NGINX_TLS_CERT: server.pem, NGINX_TLS_KEY: server.key{client_ca}}}
    slots:
      primary: SERVICE_SECRET
      secondary: SERVICE_SECRET_PREVIOUS
    probes:
      - type: header
        path: /api/ping
        header: X-Service-Secret
    tls: {tls}
"#,
            wrapper = wrapper("nginx-validator"),
            nginx = quoted(nginx.display()),
        )
}

/// `yaml` for steps whose instances can never become ready: wait 10s, not 60s.
fn impatient(yaml: String) -> String {
    yaml.replace("readiness_timeout: 60s", "readiness_timeout: 10s")
}

/// The test CA, a stranger CA and the server's certificate, written into `env`'s directory.
fn pki(env: &Env) -> Ca {
    let (ca, stranger) = (Ca::new("rotor test CA"), Ca::new("a CA nobody named"));
    ca.write(env.path(), "ca.pem");
    stranger.write(env.path(), "stranger.pem");
    ca.leaf(env.path(), "server", NAME, false);
    ca
}

const VERIFIED: &str = "{ca_file: ca.pem, system_roots: false, server_name: validator.internal}";

#[tokio::test]
async fn https_validators_rotate_verified_by_name_and_a_stranger_ca_is_refused() {
    let nginx = nginx();
    let env = Env::with(|_| fleet(&nginx, VERIFIED, None));
    let _ca = pki(&env);
    env.up().await;
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    assert_eq!(out.last_json()["report"]["state"], "S5");
    env.rotor(&["check"]).await.assert_code(0);

    // The system roots (here: the test CA, through SSL_CERT_FILE as OpenSSL reads it) are
    // trusted without a `ca_file`, unless `system_roots: false`.
    std::fs::write(
        &env.playbook,
        fleet(&nginx, "{server_name: validator.internal}", None),
    )
    .unwrap();
    let ca = env.path().join("ca.pem");
    let roots = [
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ("SSL_CERT_DIR", ""),
    ];
    env.rotor_env(&["check"], &roots).await.assert_code(0);
    let stranger = env.path().join("stranger.pem");
    let others = [
        ("SSL_CERT_FILE", stranger.to_str().unwrap()),
        ("SSL_CERT_DIR", ""),
    ];
    let out = env.rotor_env(&["check"], &others).await;
    out.assert_code(5);
    assert!(
        out.stdout.contains("not signed by a CA rotor trusts"),
        "{out:?}"
    );

    // The same fleet, with a playbook that trusts another CA: refused before anything changes.
    let store_before = env.store();
    std::fs::write(
        &env.playbook,
        fleet(&nginx, &VERIFIED.replace("ca.pem", "stranger.pem"), None),
    )
    .unwrap();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(5);
    assert!(
        out.stderr
            .contains("TLS: the instance's certificate is not signed by a CA rotor trusts"),
        "{out:?}"
    );
    assert_eq!(env.store(), store_before, "a refusal changes nothing");
    let out = env.rotor(&["check"]).await;
    out.assert_code(5);
    assert!(
        out.stdout.contains("not signed by a CA rotor trusts"),
        "{out:?}"
    );

    // The right CA but another name: the name is checked, not just the chain.
    std::fs::write(
        &env.playbook,
        fleet(&nginx, &VERIFIED.replace(NAME, "other.internal"), None),
    )
    .unwrap();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(5);
    assert!(out.stderr.contains("not valid for the name"), "{out:?}");
    std::fs::write(&env.playbook, fleet(&nginx, VERIFIED, None)).unwrap();
    env.finish().await;
}

#[tokio::test]
async fn new_instances_serving_an_expired_certificate_never_take_traffic_and_roll_back() {
    let nginx = nginx();
    let env = Env::with(|_| fleet(&nginx, VERIFIED, None));
    let ca = pki(&env);
    env.up().await;
    let serving = env.endpoints("nginx");
    let primary = env.store_primary();
    // Instances started from now on serve an expired certificate (nginx reads it at start):
    // their health checks (over TLS too) never pass.
    ca.leaf(env.path(), "server", NAME, true);
    std::fs::write(&env.playbook, impatient(fleet(&nginx, VERIFIED, None))).unwrap();
    let out = env.rotor(&["rotate", "--yes"]).await;
    out.assert_code(3);
    assert!(out.stderr.contains("certificate has expired"), "{out:?}");
    assert_eq!(
        env.endpoints("nginx"),
        serving,
        "the old instances kept serving"
    );
    assert_eq!(env.store_primary(), primary);
    ca.leaf(env.path(), "server", NAME, false);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish().await;
}

#[tokio::test]
async fn a_server_that_requires_mtls_is_reached_with_rotor_s_client_certificate() {
    let nginx = nginx();
    let env = Env::with(|_| fleet(&nginx, VERIFIED, Some("clients.pem")));
    let _ca = pki(&env);
    let clients = Ca::new("rotor clients");
    clients.write(env.path(), "clients.pem");
    clients.leaf(env.path(), "rotor-client", "rotor", false);

    env.rotor(&["init"]).await.assert_code(0);
    // Without rotor's certificate the instances can never become ready: wait 10s, not 60s.
    std::fs::write(
        &env.playbook,
        impatient(fleet(&nginx, VERIFIED, Some("clients.pem"))),
    )
    .unwrap();
    let out = env.rotor(&["up"]).await;
    // nginx finishes the handshake and answers 400 ("No required SSL certificate was sent");
    // a server that refuses in the handshake is described as such (transport's unit tests).
    // On a loaded machine the last check before the deadline may be the one still waiting.
    out.assert_code(1);
    assert!(
        out.stderr.contains("/healthz answered 400 Bad Request")
            || out
                .stderr
                .contains("/healthz failed: error sending request"),
        "{out:?}"
    );
    let published = rotor::demo::load::endpoints_file(&env.pb, "nginx");
    assert!(
        !published.exists() || env.endpoints("nginx").is_empty(),
        "nothing was published"
    );

    let with_cert = VERIFIED.replace(
        '}',
        ", client_cert: rotor-client.pem, client_key: rotor-client.key}",
    );
    std::fs::write(
        &env.playbook,
        fleet(&nginx, &with_cert, Some("clients.pem")),
    )
    .unwrap();
    env.rotor(&["up"]).await.assert_code(0);
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    assert_eq!(out.last_json()["report"]["state"], "S5");
    env.finish().await;
}

#[tokio::test]
async fn plan_says_how_each_consumer_is_verified_and_production_never_skips_it() {
    let nginx = Path::new("/nonexistent/nginx");
    let env = Env::with(|_| fleet(nginx, "{insecure: true}", None));
    let out = env.rotor(&["plan"]).await;
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("nginx: HTTPS with the server's certificate NOT verified (insecure: true)"),
        "{out:?}"
    );
    std::fs::write(&env.playbook, fleet(nginx, VERIFIED, None)).unwrap();
    let _ca = pki(&env);
    let out = env.rotor(&["plan"]).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("for the name validator.internal"),
        "{out:?}"
    );
    let production = fleet(nginx, "{insecure: true}", None)
        .replace("environment: development", "environment: production")
        .replace("length: 48", "length: 64");
    std::fs::write(&env.playbook, production).unwrap();
    let out = env.rotor(&["plan"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("consumers[0].tls.insecure"), "{out:?}");
    assert!(out.stderr.contains("production never allows"), "{out:?}");
}
