//! The service on its own: statuses, relaying over the endpoints file, graceful shutdown, its
//! command line and its environment. Its contract with rotor's probes is tested in rotor
//! (`src/demo/service_tests.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rotor_secret::jwt;
use serde_json::json;

use super::*;
use crate::testing::{client, random, spawn, state};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ServiceArgs,
}

#[tokio::test]
async fn ping_statuses() {
    let a = random();
    let addr = spawn(state("auth", &a, None, &[])).await;
    let c = client();
    let url = format!("http://{addr}/api/ping");
    // No credentials.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    // Wrong header: 403, and the answer never echoes anything.
    let r = c
        .get(&url)
        .header("X-Service-Secret", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.unwrap().contains(a.expose()));
    // Expired token signed with the right key.
    let expired = jwt::sign_hs256(&a, &json!({"sub": "x", "exp": 1}));
    let r = c.get(&url).bearer_auth(expired).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Lower-case scheme is fine.
    let token = jwt::sign_hs256(&a, &jwt::claims_for("x", Duration::from_secs(60)));
    let r = c
        .get(&url)
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"ok": true, "via": "jwt", "key": a.fingerprint("service-secret")})
    );
    // The header wins over a valid token.
    let r = c
        .get(&url)
        .header("X-Service-Secret", "nope")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        c.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
}

#[tokio::test]
async fn relay_round_robins_over_the_endpoints_file_read_on_every_request() {
    let a = random();
    let p1 = spawn(state("auth", &a, None, &[])).await;
    let p2 = spawn(state("auth", &a, None, &[])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("auth")).unwrap();
    let write = |eps: &[SocketAddr]| {
        let eps: Vec<String> = eps.iter().map(ToString::to_string).collect();
        std::fs::write(
            dir.path().join("auth/endpoints.json"),
            json!({"generation": 1, "endpoints": eps}).to_string(),
        )
        .unwrap();
    };
    let mut st = state("backend", &a, None, &[("auth", PeerMode::Header)]);
    st.fleet_dir = Some(dir.path().to_path_buf());
    let signer = spawn(st).await;
    let c = client();
    let relay = || async {
        let r = c
            .get(format!("http://{signer}/relay/auth"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    };
    // No file yet.
    assert_eq!(relay().await.0, 502);
    write(&[p1, p2]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (status, body) = relay().await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body["target"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, [p1.to_string(), p2.to_string()].into_iter().collect());
    // A rollout replaced the list.
    write(&[p2]);
    for _ in 0..3 {
        let (_, body) = relay().await;
        assert_eq!(body["target"], p2.to_string());
    }
    write(&[]);
    assert_eq!(relay().await.0, 502);
}

/// The 200 of `/api/ping` names the accepted value it matched, and a relay passes that on as
/// `peer_key`: a caller can tell which of two accepted values a signer sends.
#[tokio::test]
async fn ping_names_the_matched_value_and_a_relay_reports_the_peer_s() {
    let (a, b) = (random(), random());
    let validator = spawn(state("analytics", &a, Some(&b), &[])).await;
    let c = client();
    let r = c
        .get(format!("http://{validator}/api/ping"))
        .header("X-Service-Secret", b.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["key"],
        b.fingerprint("service-secret").as_str(),
        "{body}"
    );
    for (sends, peer_mode) in [(&a, PeerMode::Jwt), (&b, PeerMode::Header)] {
        let signer = spawn(state("auth", sends, None, &[("analytics", peer_mode)])).await;
        for target in [
            validator.to_string(),
            format!("http://localhost:{}", validator.port()),
        ] {
            let r = c
                .get(format!("http://{signer}/relay/analytics?target={target}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                body["peer_key"],
                sends.fingerprint("service-secret").as_str()
            );
            assert_eq!(body["target"], target.as_str());
        }
    }
}

#[test]
fn relay_targets_are_addresses_or_urls_on_this_machine() {
    for ok in [
        "127.0.0.1:80",
        "[::1]:8443",
        "https://localhost:8443",
        "https://localhost:8443/",
        "http://127.0.0.2:1",
        "https://[::1]:443",
    ] {
        assert!(Target::parse(ok).is_some(), "{ok}");
    }
    assert_eq!(
        Target::parse("https://localhost:8443/").unwrap().ping_url(),
        "https://localhost:8443/api/ping"
    );
    for bad in [
        "localhost:80",
        "https://example.com:443",
        "https://10.0.0.1:443",
        "https://localhost",
        "https://localhost:0",
        "https://localhost:8443/x",
        "https://user@localhost:8443",
        "ftp://localhost:21",
        "https://localhost:8443?x=1",
    ] {
        assert!(Target::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn a_peer_ca_file_must_be_a_small_regular_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = |path: &std::path::Path| {
        Cli::try_parse_from(["x", "--peer-ca-file", path.to_str().unwrap()])
            .unwrap()
            .args
    };
    let lookup = |name: &str| (name == "SERVICE_SECRET").then(|| OsString::from("v"));
    let err = |path: &std::path::Path| {
        format!(
            "{:#}",
            AppState::from_lookup(&args(path), lookup).unwrap_err()
        )
    };
    assert!(err(&dir.path().join("missing")).contains("cannot open --peer-ca-file"));
    assert!(err(dir.path()).contains("is not a regular file"));
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'a'; 1024 * 1024 + 1]).unwrap();
    assert!(err(&big).contains("larger than 1 MiB"));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let state = AppState::from_lookup(&args(&empty), lookup).unwrap();
    assert!(router(state).is_err());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let a = random();
    // A slow peer: accepts, tells the test it has the request, answers 200 later.
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = peer.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await.unwrap();
        got_tx.send(()).unwrap();
        let _ = release_rx.await;
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state("backend", &a, None, &[("auth", PeerMode::Header)])).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async move {
        let _ = stop_rx.await;
    }));

    let request = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/relay/auth?target={peer_addr}"))
            .send()
            .await
            .unwrap()
            .status()
    });
    got_rx.await.unwrap();
    stop_tx.send(()).unwrap();
    // The server keeps going while the request is in flight.
    tokio::task::yield_now().await;
    assert!(!server.is_finished());
    release_tx.send(()).unwrap();
    assert_eq!(request.await.unwrap(), 200);
    server.await.unwrap().unwrap();
    // And it no longer accepts.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn cli_defaults_and_peers() {
    let cli = Cli::try_parse_from(["x"]).unwrap().args;
    assert_eq!(cli.name, "demo");
    assert_eq!(cli.secret_name, "service-secret");
    assert_eq!(cli.primary_env, "SERVICE_SECRET");
    assert_eq!(cli.secondary_env, "SERVICE_SECRET_PREVIOUS");
    assert_eq!(cli.header, "X-Service-Secret");
    assert!(cli.alias_env.is_empty() && cli.peer.is_empty());
    let cli = Cli::try_parse_from([
        "x",
        "--name",
        "auth",
        "--alias-env",
        "SECRET_KEY",
        "--alias-env",
        "OTHER",
        "--peer",
        "backend=jwt",
        "--peer",
        "auth=header",
    ])
    .unwrap()
    .args;
    assert_eq!(cli.alias_env, ["SECRET_KEY", "OTHER"]);
    assert_eq!(
        cli.peer,
        [
            Peer {
                name: "backend".into(),
                mode: PeerMode::Jwt
            },
            Peer {
                name: "auth".into(),
                mode: PeerMode::Header
            }
        ]
    );
    for bad in ["backend", "backend=basic", "=jwt", "../x=jwt"] {
        assert!(Cli::try_parse_from(["x", "--peer", bad]).is_err(), "{bad}");
    }
}

#[test]
fn state_from_environment() {
    let args = Cli::try_parse_from([
        "x",
        "--name",
        "auth",
        "--alias-env",
        "SECRET_KEY",
        "--alias-env",
        "UNSET",
    ])
    .unwrap()
    .args;
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let e = AppState::from_lookup(&args, env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SERVICE_SECRET"), "{e}");
    let e = AppState::from_lookup(&args, env(&[("SERVICE_SECRET", "")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SERVICE_SECRET"), "{e}");

    let st = AppState::from_lookup(
        &args,
        env(&[
            ("SERVICE_SECRET", "primary-value-0123456789"),
            ("SERVICE_SECRET_PREVIOUS", ""),
            ("SECRET_KEY", "primary-value-0123456789"),
            ("ROTOR_FLEET_DIR", "/tmp/fleet"),
        ]),
    )
    .unwrap();
    assert_eq!(st.primary.value.expose(), "primary-value-0123456789");
    assert!(st.secondary.is_none());
    assert_eq!(st.aliases.len(), 1);
    assert_eq!(st.aliases[0].env, "SECRET_KEY");
    assert_eq!(st.fleet_dir, Some(PathBuf::from("/tmp/fleet")));
    let line = st.startup_line("127.0.0.1:4000".parse().unwrap());
    assert!(line.starts_with("demo-service auth listening on 127.0.0.1:4000 primary=sha256:"));
    assert!(line.contains("secondary=-"));
    assert!(!line.contains("primary-value"));
    assert!(!line.contains("differs"));
}
