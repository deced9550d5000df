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
        json!({"ok": true, "via": "jwt"})
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

/// `from_lookup` with `ROTOR_SECRETS_DIR` set to `dir` and nothing else in the environment.
fn from_dir(args: &ServiceArgs, dir: &std::path::Path) -> anyhow::Result<AppState> {
    let dir = dir.as_os_str().to_owned();
    AppState::from_lookup(args, move |name| {
        (name == "ROTOR_SECRETS_DIR").then(|| dir.clone())
    })
}

fn args(extra: &[&str]) -> ServiceArgs {
    let mut argv = vec!["x", "--name", "auth"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn state_from_files_reports_bad_files_by_name_never_content() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(&["--alias-env", "SECRET_KEY"]);
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();

    let e = format!("{:#}", from_dir(&args, dir.path()).unwrap_err());
    assert!(e.contains("SERVICE_SECRET") && e.contains("missing"), "{e}");

    write("SERVICE_SECRET", b"primary-value-0123456789\n");
    write("SECRET_KEY", b"primary-value-0123456789");
    let st = from_dir(&args, dir.path()).unwrap();
    assert_eq!(st.primary.value.expose(), "primary-value-0123456789");
    assert!(st.secondary.is_none(), "no file, no secondary");
    assert_eq!(st.aliases.len(), 1);
    assert_eq!(st.files.as_ref().unwrap().dir, dir.path());
    let line = st.startup_line("127.0.0.1:4000".parse().unwrap());
    assert!(
        !line.contains("primary-value") && !line.contains("differs"),
        "{line}"
    );

    write("SERVICE_SECRET_PREVIOUS", b"secondary-value-0123456789");
    let st = from_dir(&args, dir.path()).unwrap();
    assert_eq!(
        st.secondary.as_ref().unwrap().value.expose(),
        "secondary-value-0123456789"
    );

    // Oversized, not UTF-8, not a regular file: named, never quoted.
    let big = "secret-content-".repeat(5000);
    write("SERVICE_SECRET_PREVIOUS", big.as_bytes());
    let e = format!("{:#}", from_dir(&args, dir.path()).unwrap_err());
    assert!(
        e.contains("SERVICE_SECRET_PREVIOUS") && e.contains("larger than"),
        "{e}"
    );
    assert!(!e.contains("secret-content"), "{e}");
    write("SERVICE_SECRET_PREVIOUS", b"secret-content\xff");
    let e = format!("{:#}", from_dir(&args, dir.path()).unwrap_err());
    assert!(
        e.contains("SERVICE_SECRET_PREVIOUS") && e.contains("UTF-8"),
        "{e}"
    );
    assert!(!e.contains("secret-content"), "{e}");
    std::fs::remove_file(dir.path().join("SERVICE_SECRET_PREVIOUS")).unwrap();
    std::fs::create_dir(dir.path().join("SERVICE_SECRET_PREVIOUS")).unwrap();
    let e = format!("{:#}", from_dir(&args, dir.path()).unwrap_err());
    assert!(e.contains("not a regular file"), "{e}");

    // A name that is not a plain file name.
    let e = format!(
        "{:#}",
        from_dir(&self::args(&["--primary-env", "../etc/passwd"]), dir.path()).unwrap_err()
    );
    assert!(e.contains("cannot name a file"), "{e}");
}

/// Polls `/fingerprints` until `accepts` is what the instance reports (10 s at most).
async fn wait_accepts(addr: std::net::SocketAddr, accepts: &[&rotor_secret::secret::SecretValue]) {
    let want: Vec<String> = accepts
        .iter()
        .map(|v| v.fingerprint("service-secret").to_string())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r: serde_json::Value = client()
            .get(format!("http://{addr}/fingerprints"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<String> = r["accepts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still reports {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ping_status(addr: std::net::SocketAddr, v: &rotor_secret::secret::SecretValue) -> u16 {
    client()
        .get(format!("http://{addr}/api/ping"))
        .header("X-Service-Secret", v.expose())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn values_follow_their_files_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (random(), random());
    let put = |name: &str, v: &rotor_secret::secret::SecretValue| {
        let tmp = dir.path().join(format!(".tmp-{name}"));
        std::fs::write(&tmp, v.expose()).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    };
    put("SERVICE_SECRET", &a);
    let st = from_dir(&args(&[]), dir.path()).unwrap();
    let (app, reloader) = router_with_reload(st).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(ping_status(addr, &b).await, 403);

    // A secondary appears: picked up by the watcher.
    put("SERVICE_SECRET_PREVIOUS", &b);
    wait_accepts(addr, &[&a, &b]).await;
    assert_eq!(ping_status(addr, &b).await, 200);
    // Promotion, then the secondary goes away.
    put("SERVICE_SECRET", &b);
    put("SERVICE_SECRET_PREVIOUS", &a);
    wait_accepts(addr, &[&b, &a]).await;
    std::fs::remove_file(dir.path().join("SERVICE_SECRET_PREVIOUS")).unwrap();
    wait_accepts(addr, &[&b]).await;
    assert_eq!(ping_status(addr, &a).await, 403);

    // A primary that disappears keeps what it held; a reload (what SIGHUP runs) says why.
    std::fs::remove_file(dir.path().join("SERVICE_SECRET")).unwrap();
    let e = format!("{:#}", reloader.reload("SIGHUP").unwrap_err());
    assert!(e.contains("SERVICE_SECRET") && e.contains("missing"), "{e}");
    assert!(!e.contains(b.expose()), "{e}");
    assert_eq!(ping_status(addr, &b).await, 200);
    // An explicit reload reads what is there now.
    put("SERVICE_SECRET", &a);
    reloader.reload("SIGHUP").unwrap();
    assert_eq!(ping_status(addr, &a).await, 200);
    assert_eq!(ping_status(addr, &b).await, 403);
}

#[tokio::test]
async fn values_follow_a_kubernetes_secret_volume_swap() {
    // Kubernetes' layout: NAME -> ..data/NAME, ..data -> ..<timestamp>/, swapped by a rename.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = |n: u32,
                   primary: &rotor_secret::secret::SecretValue,
                   secondary: Option<&rotor_secret::secret::SecretValue>| {
        let v = d.join(format!("..2026_11_30_06_00_0{n}.{n}"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("SERVICE_SECRET"), primary.expose()).unwrap();
        if let Some(s) = secondary {
            std::fs::write(v.join("SERVICE_SECRET_PREVIOUS"), s.expose()).unwrap();
        }
        let tmp = d.join("..data_tmp");
        std::os::unix::fs::symlink(v.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, d.join("..data")).unwrap();
    };
    let (a, b) = (random(), random());
    version(1, &a, None);
    for name in ["SERVICE_SECRET", "SERVICE_SECRET_PREVIOUS"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), d.join(name)).unwrap();
    }
    let st = from_dir(&args(&[]), d).unwrap();
    assert!(st.secondary.is_none(), "a dangling link is an absent file");
    let addr = spawn(st).await;
    assert_eq!(ping_status(addr, &a).await, 200);

    // The kubelet swaps ..data: the file names' own metadata never changes.
    version(2, &a, Some(&b));
    wait_accepts(addr, &[&a, &b]).await;
    version(3, &b, Some(&a));
    wait_accepts(addr, &[&b, &a]).await;
    version(4, &b, None);
    wait_accepts(addr, &[&b]).await;
    assert_eq!(ping_status(addr, &a).await, 403);
    assert_eq!(ping_status(addr, &b).await, 200);
}
