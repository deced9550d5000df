//! AWS Secrets Manager against moto's server (PyPI `moto[server]`, installed once into a cache
//! under target/): one server per test on a free loopback port, killed by pid. boto3 (which moto
//! installs) checks independently what rotor wrote.
//!
//! moto (5.2) is not AWS for some of the calls rotor makes; a test must not rely on these:
//! - after UpdateSecretVersionStage moves AWSCURRENT, GetSecretValue without VersionId or
//!   VersionStage still returns the old version, and a later PutSecretValue without
//!   VersionStages (or RotateSecret) relabels that stale version, leaving AWSCURRENT on two;
//! - UpdateSecretVersionStage of a label other than AWSCURRENT that is attached elsewhere,
//!   without RemoveFromVersionId, succeeds and leaves the label on both versions (AWS fails);
//!   a MoveToVersionId that does not exist fails only after removing the label;
//! - PutSecretValue with the token of an AWSPENDING version and a different value overwrites
//!   it (AWS: ResourceExistsException); PutSecretValue, UpdateSecretVersionStage and
//!   TagResource on a secret scheduled for deletion succeed (AWS: InvalidRequestException);
//! - unlabelled versions are listed everywhere (IncludeDeprecated, MaxResults ignored),
//!   ListSecretVersionIds' CreatedDate is the time of the call, dates are whole seconds;
//! - no tag limits, no throttling; IAM (when switched on) checks actions only, so a policy
//!   scoped to secret ARNs denies everything, and denials are XML 403s, not JSON.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Out, pip_install, wait_for};

/// moto's default account.
pub const ACCOUNT: &str = "123456789012";
/// The region every client of the harness uses.
pub const REGION: &str = "eu-west-1";

/// Variables a client may inherit from the machine that would point it elsewhere than moto
/// (a profile, a session token, config files, a region): removed by [`Moto::apply`].
const INHERITED: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
];

/// moto's server and boto3, from PyPI's `moto[server]`, installed once; the directory for
/// PYTHONPATH (a `--target` install puts no console script on PATH, so the server runs as
/// `python3 -m moto.server`).
fn moto_root() -> PathBuf {
    pip_install("moto[server]", "pytools-moto", "moto/server.py")
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One moto server on loopback, in memory (its state dies with it).
pub struct Moto {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    root: PathBuf,
    dir: tempfile::TempDir,
    server: Option<Server>,
}

/// A server process, killed by its pid and waited for when dropped (also when a start fails
/// half-way).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Moto {
    /// Starts a server on a free loopback port and waits until it answers HTTP.
    pub async fn start() -> Moto {
        let root = tokio::task::spawn_blocking(moto_root).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rotor-moto-")
            .tempdir()
            .unwrap();
        let mut last_log = String::new();
        // A port taken between free_port() and the server's bind makes it exit at once: try
        // another.
        for _ in 0..3 {
            let port = free_port();
            let endpoint = format!("http://127.0.0.1:{port}");
            match spawn(&root, dir.path(), &endpoint, port).await {
                Ok(server) => {
                    return Moto {
                        endpoint,
                        root,
                        dir,
                        server: Some(server),
                    };
                }
                Err(log) => last_log = log,
            }
        }
        panic!("the moto server did not start: {last_log}");
    }

    /// The server log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        drop(self.server.take());
    }

    /// The environment a client needs to reach this server and nothing else: the endpoint,
    /// moto's test credentials, the region, no instance metadata, and config files that do
    /// not exist (so no profile on the machine applies).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let absent = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", absent("no-aws-config")),
            ("AWS_SHARED_CREDENTIALS_FILE", absent("no-aws-credentials")),
        ]
    }

    /// Sets [`Moto::env`] on `cmd` and removes the AWS variables it could inherit that would
    /// point it elsewhere.
    pub fn apply(&self, cmd: &mut Command) {
        for k in INHERITED {
            cmd.env_remove(k);
        }
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    /// Python `code` (with boto3 importable) and `args`, in [`Moto::env`]; a client made with
    /// `boto3.client("secretsmanager")` reaches this server.
    pub fn py(&self, code: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(code).args(args);
        self.apply(&mut cmd);
        cmd.env("PYTHONPATH", &self.root)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        Out::from(cmd.output().unwrap())
    }

    /// [`Moto::py`] that must succeed; the last line it prints, as JSON.
    #[track_caller]
    pub fn py_json(&self, code: &str, args: &[&str]) -> Value {
        let out = self.py(code, args);
        assert_eq!(
            out.code(),
            Some(0),
            "python failed: {}\nserver log:\n{}",
            out.stderr,
            self.log()
        );
        out.last_json()
    }
}

/// Spawns a server on `port` in `dir` (its log in `server.log` there) and waits until
/// `GET /moto-api/` answers 200; `Err(its log)` if it exits first.
async fn spawn(
    root: &std::path::Path,
    dir: &std::path::Path,
    endpoint: &str,
    port: u16,
) -> Result<Server, String> {
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .env("PYTHONPATH", root)
        .env("HOME", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let url = format!("{endpoint}/moto-api/");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut exited = false;
    wait_for(
        "the moto server to answer",
        Duration::from_secs(120),
        async || {
            if server.0.try_wait().unwrap().is_some() {
                exited = true;
                return true;
            }
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
    if exited {
        return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
    }
    Ok(server)
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Before the temp dir goes: the server runs in it.
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_serves_secrets_manager_to_boto3() {
    let moto = Moto::start().await;
    assert!(moto.endpoint.starts_with("http://127.0.0.1:"));
    const CODE: &str = r#"
import json, sys
import boto3
name, token, value = sys.argv[1:4]
sm = boto3.client("secretsmanager")
created = sm.create_secret(Name=name, SecretString=value, ClientRequestToken=token,
                           Tags=[{"Key": "rotor-secret", "Value": "service-secret"}])
got = sm.get_secret_value(SecretId=name)
d = sm.describe_secret(SecretId=name)
print(json.dumps({
    "endpoint": sm.meta.endpoint_url,
    "region": sm.meta.region_name,
    "arn": created["ARN"],
    "created": created["VersionId"],
    "value": got["SecretString"],
    "version": got["VersionId"],
    "stages": got["VersionStages"],
    "described": d["VersionIdsToStages"],
    "tags": d["Tags"],
}))
"#;
    let token = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    let got = moto.py_json(CODE, &["rotor/service-secret", token, "s3cr3t-value"]);
    assert_eq!(got["endpoint"], moto.endpoint.as_str(), "{got}");
    assert_eq!(got["region"], REGION);
    let arn = got["arn"].as_str().unwrap();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rotor/service-secret-"
        )),
        "{arn}"
    );
    assert_eq!(got["created"], token, "the version id is the request token");
    assert_eq!(got["value"], "s3cr3t-value");
    assert_eq!(got["version"], token);
    assert_eq!(got["stages"], serde_json::json!(["AWSCURRENT"]));
    assert_eq!(
        got["described"],
        serde_json::json!({ token: ["AWSCURRENT"] }),
        "{got}"
    );
    assert_eq!(
        got["tags"],
        serde_json::json!([{"Key": "rotor-secret", "Value": "service-secret"}])
    );

    // Dropping the harness kills the server.
    let url = format!("{}/moto-api/", moto.endpoint);
    drop(moto);
    let http = reqwest::Client::new();
    assert!(
        http.get(&url).send().await.is_err(),
        "the moto server still answers after drop"
    );
}
