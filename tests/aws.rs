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

use crate::common::{Out, free_port, pip_install, wait_for};

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
    pip_install(
        "moto[server]==5.2.5",
        "pytools-moto-5.2.5",
        "moto/server.py",
    )
}

/// One moto server on loopback, in memory (its state dies with it).
pub struct Moto {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    /// The key boto3 checks sign with: moto's test key, or an admin's once IAM is enforced.
    admin: (String, String),
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
                        admin: ("testing".into(), "testing".into()),
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
            ("AWS_ACCESS_KEY_ID", self.admin.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.admin.1.clone()),
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

// ---------------------------------------------------------------------------------------------
// rotor's AWS store against moto.

use crate::common::StoreEnv;

/// The logical secret and the Secrets Manager secret's name.
const SECRET: &str = "service-secret";
/// The lock secret beside it.
const LOCK: &str = "service-secret.rotor-lock";

impl Moto {
    /// Enforces IAM from now on: an admin (every action) signs boto3's checks, and the returned
    /// key holds exactly `actions` (on `Resource: "*"`: moto checks actions only, never which
    /// secret, see the module's note). Keys made before are refused from now on.
    pub fn enforce_iam(&mut self, actions: &[String]) -> (String, String) {
        const CODE: &str = r#"
import json, sys, urllib.request
import boto3
endpoint, actions = sys.argv[1], json.loads(sys.argv[2])
iam = boto3.client("iam", region_name="us-east-1")
def user(name, allowed):
    iam.create_user(UserName=name)
    doc = {"Version": "2012-10-17",
           "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}
    arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return [k["AccessKeyId"], k["SecretAccessKey"]]
admin, rotor = user("admin", ["*"]), user("rotor", actions)
req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                             headers={"Content-Type": "text/plain"})
urllib.request.urlopen(req).read()
print(json.dumps({"admin": admin, "rotor": rotor}))
"#;
        let got = self.py_json(
            CODE,
            &[&self.endpoint, &serde_json::to_string(actions).unwrap()],
        );
        let pair = |v: &Value| {
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_str().unwrap().to_string(),
            )
        };
        self.admin = pair(&got["admin"]);
        pair(&got["rotor"])
    }

    /// What boto3 sees of `name`: every version's labels and value (read by id: moto's default
    /// read is stale after a label move), its tags, ARN and AWS's rotation fields.
    pub fn state(&self, name: &str) -> Value {
        const CODE: &str = r#"
import json, sys
import boto3
name = sys.argv[1]
sm = boto3.client("secretsmanager")
d = sm.describe_secret(SecretId=name)
vs = sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]
print(json.dumps({
    "arn": d["ARN"],
    "labels": {v["VersionId"]: sorted(v.get("VersionStages", [])) for v in vs},
    "values": {v["VersionId"]: sm.get_secret_value(SecretId=name, VersionId=v["VersionId"])["SecretString"] for v in vs},
    "tags": {t["Key"]: t["Value"] for t in d.get("Tags", [])},
    "next_rotation": str(d.get("NextRotationDate")) if d.get("RotationEnabled") else None,
}))
"#;
        self.py_json(CODE, &[name])
    }
}

/// The version of `state` carrying `label`.
fn holder(state: &Value, label: &str) -> Option<String> {
    state["labels"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, l)| l.as_array().unwrap().iter().any(|x| x == label))
        .map(|(id, _)| id.clone())
}

/// The labels of version `id` in `state`.
fn labels(state: &Value, id: &str) -> Vec<String> {
    state["labels"][id]
        .as_array()
        .unwrap_or_else(|| panic!("no version {id}: {state}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn value(state: &Value, id: &str) -> String {
    state["values"][id].as_str().unwrap().to_string()
}

fn fingerprint(value: &str) -> String {
    rotor::secret::Fingerprint::of(SECRET, value)
        .as_str()
        .to_string()
}

/// The `store:` head of the AWS store.
fn aws_head() -> String {
    format!("store:\n  kind: aws\n  name: {SECRET}\n  region: {REGION}\n")
}

/// The demo fleet with its store in `moto`'s Secrets Manager, signing with `key` (`None`:
/// moto's admin key); `extra` lines go under `store:`.
fn aws_env(moto: &Moto, key: Option<&(String, String)>, extra: &str) -> StoreEnv {
    let mut vars: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Some((id, secret)) = key {
        vars.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY");
        vars.push(("AWS_ACCESS_KEY_ID".into(), id.clone()));
        vars.push(("AWS_SECRET_ACCESS_KEY".into(), secret.clone()));
    }
    StoreEnv::with_store("rotor-aws-", &aws_head(), extra, vars, INHERITED)
}

/// The IAM policy docs/aws.md gives: every statement's actions and resources.
fn documented_policy() -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/aws.md"),
    )
    .unwrap();
    let start = doc.find("```json\n").expect("docs/aws.md has the policy") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let policy: Value = serde_json::from_str(&doc[start..end]).expect("the policy is JSON");
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            _ => panic!("{v}"),
        }
    };
    let mut actions = Vec::new();
    let mut resources = Vec::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        actions.extend(list(&st["Action"]));
        resources.push((
            st["Sid"].as_str().unwrap().to_string(),
            list(&st["Resource"]),
        ));
    }
    actions.sort();
    actions.dedup();
    (actions, resources)
}

/// Whether IAM's ARN pattern (`*` any run, `?` one character) matches `arn`.
fn iam_match(pattern: &str, arn: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), arn.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_full_rotation_under_load_under_the_documented_iam_policy() {
    let mut moto = Moto::start().await;
    let (actions, resources) = documented_policy();
    assert!(
        actions
            .iter()
            .all(|a| a.starts_with("secretsmanager:") && !a.contains('*'))
    );
    let key = moto.enforce_iam(&actions);
    let env = aws_env(&moto, Some(&key), "");
    let mut yaml = std::fs::read_to_string(&env.playbook).unwrap();
    yaml.push_str("max_age: 30d\n");
    std::fs::write(&env.playbook, yaml).unwrap();

    env.rotor(&["init"]).await.assert_code(0);
    let s = moto.state(SECRET);
    let a_id = holder(&s, "AWSCURRENT").expect("init made a current version");
    let a = value(&s, &a_id);
    assert_eq!(s["tags"]["rotor-secret"], SECRET, "{s}");
    assert_eq!(
        s["tags"][format!("rotor-fp-{a_id}")],
        fingerprint(&a).as_str()
    );
    env.rotor(&["up"]).await.assert_code(0);
    env.rotor(&["check"]).await.assert_code(0);
    env.rotor(&["plan"]).await.assert_code(0);

    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    let report = load.stop().await;
    out.assert_code(0);
    env.assert_no_failures(&report);
    assert_eq!(out.last_json()["report"]["state"], "S5");

    // What boto3 sees: B is current (no pending, no secondary), A has no label left (destroyed:
    // deprecated), the history keeps both fingerprints, the schedule is recorded.
    let s = moto.state(SECRET);
    let b_id = env.journal()["new"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        holder(&s, "AWSCURRENT").as_deref(),
        Some(b_id.as_str()),
        "{s}"
    );
    assert_eq!(labels(&s, &b_id), ["AWSCURRENT"], "{s}");
    assert!(labels(&s, &a_id).is_empty(), "{s}");
    assert_eq!(holder(&s, "ROTOR_SECONDARY"), None);
    assert_eq!(holder(&s, "ROTOR_DISABLED"), None);
    let b = value(&s, &b_id);
    assert_ne!(a, b);
    assert_eq!(
        s["tags"][format!("rotor-fp-{b_id}")],
        fingerprint(&b).as_str()
    );
    assert_eq!(
        s["tags"][format!("rotor-fp-{a_id}")],
        fingerprint(&a).as_str()
    );
    assert!(s["tags"]["rotor-last-rotation"].is_string(), "{s}");
    let next: chrono::DateTime<chrono::Utc> = s["tags"]["rotor-next-rotation"]
        .as_str()
        .expect("the next due time is recorded")
        .parse()
        .unwrap();
    let in_30d = chrono::Utc::now() + chrono::Duration::days(30);
    assert!((in_30d - next).num_minutes().abs() < 10, "{next}");
    for (k, v) in s["tags"].as_object().unwrap() {
        assert!(v != &a && v != &b, "a value in tag {k}");
    }
    let out = env.rotor(&["rotate", "--if-due", "--yes"]).await;
    assert_eq!(
        out.code(),
        Some(9),
        "nothing is due: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("rotor-next-rotation") || out.stderr.contains("rotor-next-rotation"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    // The lock secret: released (its current version names no holder), never a value, and
    // one version per claim: the renewals and stage changes of the whole run are tags (Secrets
    // Manager counts every version younger than a day against its quota of about 100).
    let l = moto.state(LOCK);
    let current = holder(&l, "AWSCURRENT").unwrap();
    let lock: Value = serde_json::from_str(&value(&l, &current)).unwrap();
    assert_eq!(lock["holder"], "", "{l}");
    assert_eq!(
        labels(&l, &current),
        ["AWSCURRENT", "ROTOR_LOCK_FREE"],
        "{l}"
    );
    let versions = l["labels"].as_object().unwrap().len();
    assert!(
        versions <= 4,
        "{versions} lock versions for init, up and one rotation: {l}"
    );
    assert!(
        l["tags"]["rotor-lock-stage"].is_string(),
        "renewals are tags: {l}"
    );
    // The documented resources name exactly these two secrets.
    let arn = |s: &Value| s["arn"].as_str().unwrap().to_string();
    let (secret_arn, lock_arn) = (arn(&s), arn(&l));
    for (sid, patterns) in &resources {
        let hits = |a: &str| patterns.iter().any(|p| iam_match(p, a));
        match sid.as_str() {
            "RotorCreate" => assert!(hits(&secret_arn) && hits(&lock_arn), "{sid}"),
            "RotorLock" => assert!(hits(&lock_arn) && !hits(&secret_arn), "{sid}"),
            _ => assert!(
                hits(&secret_arn) && !hits(&lock_arn),
                "{sid}: {patterns:?} {secret_arn}"
            ),
        }
    }
    env.rotor(&["status"]).await.assert_code(0);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish(&[a, b]).await;
}

/// A fleet on `moto`, initialized and up: the env, A's version id and A.
async fn started(moto: &Moto, extra: &str) -> (StoreEnv, String, String) {
    let env = aws_env(moto, None, extra);
    env.rotor(&["init"]).await.assert_code(0);
    let s = moto.state(SECRET);
    let a_id = holder(&s, "AWSCURRENT").unwrap();
    let a = value(&s, &a_id);
    env.rotor(&["up"]).await.assert_code(0);
    (env, a_id, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_rollback_from_every_stage_moves_the_labels_back() {
    let moto = Moto::start().await;
    let (env, a_id, a) = started(&moto, "").await;
    let load = env.load();
    let mut values = vec![a.clone()];
    for until in ["S1", "S2", "S3", "S4"] {
        env.rotor(&["rotate", "--yes", "--until", until])
            .await
            .assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], until);
        let b_id = j["new"]["version"].as_str().unwrap().to_string();
        let s = moto.state(SECRET);
        values.push(value(&s, &b_id));
        let (la, lb) = (labels(&s, &a_id), labels(&s, &b_id));
        match until {
            "S1" | "S2" => {
                assert_eq!(la, ["AWSCURRENT"], "{s}");
                assert_eq!(lb, ["AWSPENDING", "ROTOR_SECONDARY"], "{s}");
            }
            "S3" => {
                assert_eq!(la, ["AWSPREVIOUS", "ROTOR_SECONDARY"], "{s}");
                assert_eq!(lb, ["AWSCURRENT"], "{s}");
            }
            _ => {
                assert_eq!(la, ["AWSPREVIOUS", "ROTOR_DISABLED"], "{s}");
                assert_eq!(lb, ["AWSCURRENT"], "{s}");
            }
        }
        env.rotor(&["rollback"]).await.assert_code(0);
        assert_eq!(env.journal()["state"], "S0", "after rollback from {until}");
        // A is current again, B has no label (destroyed), nothing else is marked.
        let s = moto.state(SECRET);
        assert!(labels(&s, &a_id).contains(&"AWSCURRENT".to_string()), "{s}");
        assert!(
            labels(&s, &b_id).is_empty(),
            "B destroyed after rollback from {until}: {s}"
        );
        assert_eq!(holder(&s, "ROTOR_SECONDARY"), None, "{s}");
        assert_eq!(holder(&s, "ROTOR_DISABLED"), None, "{s}");
        assert_eq!(holder(&s, "AWSPENDING"), None, "{s}");
        assert_eq!(value(&s, &a_id), a);
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish(&values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_t1_is_idempotent_and_a_label_moved_by_another_writer_is_a_conflict() {
    use rotor::store::Store as _;
    use rotor::store::aws::{AwsStore, Move};
    let moto = Moto::start().await;
    let mut spec = rotor::playbook::AwsStoreSpec::new(SECRET);
    spec.region = Some(REGION.into());
    spec.endpoint_url = Some(moto.endpoint.clone());
    spec.retry_deadline = Duration::from_secs(5);
    let store = AwsStore::new(&spec, SECRET).with_credentials(
        "testing",
        &rotor::secret::SecretValue::new("testing".into()),
    );
    let first = rotor::secret::SecretValue::new("first-value-0123456789abcdef".into());
    let a = store.init(&first).await.unwrap();
    // T1 retried (a lost answer, a resumed run): the same version, not a second one.
    let b_value = rotor::secret::SecretValue::new("second-value-0123456789abcdef".into());
    let b = store.add_version_for(&b_value, "r-1").await.unwrap();
    let again = store.add_version_for(&b_value, "r-1").await.unwrap();
    assert_eq!(again.id, b.id);
    let s = moto.state(SECRET);
    assert_eq!(s["labels"].as_object().unwrap().len(), 2, "{s}");
    assert_eq!(labels(&s, &b.id), ["AWSPENDING"]);
    store.set_slots(&a.id, Some(&b.id)).await.unwrap();

    // Another writer puts its own version C and moves the secondary slot onto it.
    const CODE: &str = r#"
import json, sys
import boto3
sm = boto3.client("secretsmanager")
name, b = sys.argv[1:3]
c = sm.put_secret_value(SecretId=name, SecretString="someone-elses-value-0123456789",
                        VersionStages=["OTHER"])["VersionId"]
sm.update_secret_version_stage(SecretId=name, VersionStage="ROTOR_SECONDARY",
                               MoveToVersionId=c, RemoveFromVersionId=b)
print(json.dumps({"c": c}))
"#;
    let c = moto.py_json(CODE, &[SECRET, &b.id])["c"]
        .as_str()
        .unwrap()
        .to_string();
    // rotor, deciding from what it read before (the secondary on B), is refused: the label is
    // not where it read it.
    let err = store
        .move_label(&Move {
            label: "ROTOR_SECONDARY",
            to: Some(a.id.clone()),
            from: Some(b.id.clone()),
        })
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, rotor::store::StoreError::Conflict { .. }),
        "{msg}"
    );
    assert!(msg.contains("ROTOR_SECONDARY moved"), "{msg}");
    assert!(
        !msg.contains("someone-elses") && !msg.contains("value-0123"),
        "{msg}"
    );
    // Nothing lost, nothing overwritten.
    let s = moto.state(SECRET);
    assert_eq!(holder(&s, "ROTOR_SECONDARY").as_deref(), Some(c.as_str()));
    assert_eq!(holder(&s, "AWSCURRENT").as_deref(), Some(a.id.as_str()));
    assert_eq!(value(&s, &a.id), first.expose());
    assert_eq!(value(&s, &b.id), b_value.expose());
    assert_eq!(value(&s, &c), "someone-elses-value-0123456789");
    // A version rotor did not write is read once to learn its fingerprint.
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.secondary.as_deref(), Some(c.as_str()));
    assert_eq!(
        snap.version(&c).unwrap().fingerprint.as_str(),
        fingerprint("someone-elses-value-0123456789")
    );

    // The lock: two claims, one wins; a live claim is never taken; release frees it.
    use rotor::engine::lock::RotationLock as _;
    let lock = rotor::engine::lock::aws::AwsLock::new(std::sync::Arc::new(
        AwsStore::new(&spec, SECRET).with_credentials(
            "testing",
            &rotor::secret::SecretValue::new("testing".into()),
        ),
    ));
    let g = lock
        .acquire(rotor::engine::lock::Holder::me("rotate"), false)
        .await
        .unwrap();
    let second = lock
        .acquire(rotor::engine::lock::Holder::me("resume"), true)
        .await
        .err()
        .expect("a live claim is never taken, not even with --force");
    assert!(second.to_string().contains("holds the lock"), "{second}");
    let held = lock.holder().await.unwrap().expect("held");
    assert_eq!(held.command, "rotate");
    g.release().await.unwrap();
    assert!(lock.holder().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_emergency_rekey_under_load_unlabels_the_leaked_version() {
    let moto = Moto::start().await;
    let (env, a_id, a) = started(&moto, "").await;
    let load = env.load();
    let out = env
        .rotor(&[
            "--output",
            "json",
            "rekey",
            "--emergency",
            "--reason",
            "key printed in CI logs",
        ])
        .await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let s = moto.state(SECRET);
    assert!(
        labels(&s, &a_id).is_empty(),
        "the leaked value has no label: {s}"
    );
    let b_id = holder(&s, "AWSCURRENT").unwrap();
    assert_ne!(b_id, a_id);
    let b = value(&s, &b_id);
    env.finish(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_demo_of_the_shipped_playbook_rotates_the_servers_secret() {
    let moto = Moto::start().await;
    let dir = tempfile::Builder::new()
        .prefix("rotor-aws-demo-")
        .tempdir()
        .unwrap();
    let playbook =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/aws-local.yaml");
    let mut cmd = Command::new(crate::common::rotor_exe());
    cmd.args(["--output", "json", "demo", "--playbook"])
        .arg(&playbook)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::null());
    moto.apply(&mut cmd);
    let out = Out::from(tokio::process::Command::from(cmd).output().await.unwrap());
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.last_json()["failed_requests"], 0, "{}", out.stdout);
    let s = moto.state(SECRET);
    assert_eq!(s["labels"].as_object().unwrap().len(), 2, "{s}");
    let b_id = holder(&s, "AWSCURRENT").unwrap();
    assert_eq!(labels(&s, &b_id), ["AWSCURRENT"], "{s}");
    let b = value(&s, &b_id);
    assert!(!out.stdout.contains(&b) && !out.stderr.contains(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_two_rotors_one_lock_and_awss_own_schedule_is_read() {
    let moto = Moto::start().await;
    let (env, a_id, a) = started(&moto, "  lock_duration: 30s\n").await;
    // A second rotor while the first holds the lock: refused (exit 4), nothing changed.
    let first = env.spawn(&["rotate", "--yes"]);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let l = moto.py(
            "import boto3,sys,json\nsm=boto3.client('secretsmanager')\ntry:\n  print(sm.get_secret_value(SecretId=sys.argv[1],VersionStage='AWSCURRENT')['SecretString'])\nexcept Exception:\n  print('')",
            &[LOCK],
        );
        if l.stdout.contains("identity") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the first rotor never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = env.rotor(&["rotate", "--yes"]).await;
    assert_eq!(out.code(), Some(4), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("holds the lock"), "{}", out.stderr);
    let out = Out::from(first.wait_with_output().await.unwrap());
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let s = moto.state(SECRET);
    let b_id = holder(&s, "AWSCURRENT").unwrap();
    assert_ne!(b_id, a_id);
    let b = value(&s, &b_id);

    // AWS's own schedule (RotationRules, NextRotationDate) is read: moto's RotateSecret also
    // rotates (stale value, labels rewritten), so the harness puts the labels back.
    const CODE: &str = r#"
import json, sys
import boto3
sm = boto3.client("secretsmanager")
name, b = sys.argv[1:3]
sm.rotate_secret(SecretId=name, RotationRules={"AutomaticallyAfterDays": 2}, RotateImmediately=False)
vs = sm.list_secret_version_ids(SecretId=name)["Versions"]
for v in vs:
    for l in v.get("VersionStages", []):
        if v["VersionId"] != b or l != "AWSCURRENT":
            if l == "AWSCURRENT":
                sm.update_secret_version_stage(SecretId=name, VersionStage=l, MoveToVersionId=b, RemoveFromVersionId=v["VersionId"])
            else:
                sm.update_secret_version_stage(SecretId=name, VersionStage=l, RemoveFromVersionId=v["VersionId"])
d = sm.describe_secret(SecretId=name)
print(json.dumps({"next": str(d["NextRotationDate"]), "stages": d["VersionIdsToStages"]}))
"#;
    let got = moto.py_json(CODE, &[SECRET, &b_id]);
    let s = moto.state(SECRET);
    assert_eq!(
        holder(&s, "AWSCURRENT").as_deref(),
        Some(b_id.as_str()),
        "{got}"
    );
    let out = env.rotor(&["rotate", "--if-due", "--yes"]).await;
    assert_eq!(out.code(), Some(9), "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("NextRotationDate"), "{text}");
    let day_after = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    assert!(text.contains(&day_after), "{text}");
    env.finish(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_bad_setups_are_clear_errors_that_change_nothing() {
    let moto = Moto::start().await;
    // No region anywhere.
    let env = aws_env(&moto, None, "");
    let yaml = std::fs::read_to_string(&env.playbook)
        .unwrap()
        .replace(&format!("  region: {REGION}\n"), "");
    std::fs::write(&env.playbook, yaml).unwrap();
    let out = env
        .rotor_env(&["init"], &[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "")])
        .await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("no region"), "{}", out.stderr);
    drop(env);
    // A secret rotor did not create: refused with the command that adopts it; adopted, it
    // rotates.
    let env = aws_env(&moto, None, "");
    moto.py_json(
        "import boto3,json\nboto3.client('secretsmanager').create_secret(Name='service-secret', SecretString='a-value-someone-else-wrote-0123456789')\nprint('{}')",
        &[],
    );
    let out = env.rotor(&["rotate", "--yes"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("tag-resource"), "{}", out.stderr);
    // init does not overwrite it either: it says how to adopt it.
    let out = env.rotor(&["init"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("tag-resource"), "{}", out.stderr);
    let s = moto.state(SECRET);
    assert_eq!(s["labels"].as_object().unwrap().len(), 1, "{s}");
    moto.py_json(
        "import boto3,json\nboto3.client('secretsmanager').tag_resource(SecretId='service-secret', Tags=[{'Key':'rotor-secret','Value':'service-secret'}])\nprint('{}')",
        &[],
    );
    env.rotor(&["up"]).await.assert_code(0);
    let load = env.load();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let s = moto.state(SECRET);
    let b_id = holder(&s, "AWSCURRENT").unwrap();
    let b = value(&s, &b_id);
    assert_ne!(b, "a-value-someone-else-wrote-0123456789");
    env.finish(&["a-value-someone-else-wrote-0123456789".into(), b])
        .await;
}

/// A TCP relay to `upstream` on a loopback port that can be cut: while cut, every connection
/// is accepted and closed at once (the service unreachable), and open ones are dropped.
struct Relay {
    addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections refused while cut.
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, e, r) = (cut.clone(), epoch.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(down);
                    continue;
                }
                let (c, e, up) = (c.clone(), e.clone(), upstream.clone());
                let born = e.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
                    let watch = async {
                        while !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            epoch,
            refused,
            task,
        }
    }

    fn set_cut(&self, cut: bool) {
        use std::sync::atomic::Ordering;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_killed_mid_promotion_and_an_unreachable_service_are_finished_by_resume() {
    let moto = Moto::start().await;
    let relay = Relay::start(&moto.endpoint).await;
    // rotor reaches Secrets Manager through the relay (the playbook's endpoint_url wins over
    // AWS_ENDPOINT_URL); boto3 goes straight to moto.
    let extra = format!(
        "  endpoint_url: {}\n  retry_deadline: 2s\n  lock_duration: 3s\n",
        relay.addr
    );
    let (env, a_id, a) = started(&moto, &extra).await;
    let load = env.load();
    // Killed in the middle of T3, right after the labels moved.
    let out = env
        .rotor_env(
            &["rotate", "--yes"],
            &[("ROTOR_FAILPOINT", "T3.forward.store")],
        )
        .await;
    assert_eq!(out.signal(), Some(9), "{out:?}");
    let b_id = env.journal()["new"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let s = moto.state(SECRET);
    assert_eq!(labels(&s, &b_id), ["AWSCURRENT"], "{s}");
    assert_eq!(labels(&s, &a_id), ["AWSPREVIOUS", "ROTOR_SECONDARY"], "{s}");
    // Secrets Manager out of reach: a clear error, nothing changed.
    relay.set_cut(true);
    let out = env.rotor(&["resume", "--yes", "--force"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("still after") && out.stderr.contains("rotor resume"),
        "{}",
        out.stderr
    );
    assert_eq!(moto.state(SECRET)["labels"], s["labels"]);
    // Back: the crashed run's claim lapsed (3s), so --force takes it and the rotation ends.
    relay.set_cut(false);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = env.rotor(&["resume", "--yes", "--force"]).await;
    while out.code() == Some(4) {
        assert!(std::time::Instant::now() < until, "{}", out.stderr);
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = env.rotor(&["resume", "--yes", "--force"]).await;
    }
    out.assert_code(0);
    assert_eq!(env.journal()["state"], "S5");
    let s = moto.state(SECRET);
    assert_eq!(labels(&s, &b_id), ["AWSCURRENT"], "{s}");
    assert!(labels(&s, &a_id).is_empty(), "{s}");
    let b = value(&s, &b_id);

    // A running rotor whose service goes away and comes back within the retry deadline
    // finishes on its own.
    let env = env.with_store_lines(&format!(
        "  endpoint_url: {}\n  retry_deadline: 1m\n  lock_duration: 1m\n",
        relay.addr
    ));
    env.rotor(&["rotate", "--yes", "--until", "S2"])
        .await
        .assert_code(0);
    let c_id = env.journal()["new"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let c = value(&moto.state(SECRET), &c_id);
    relay.set_cut(true);
    let refused = relay.refused.load(std::sync::atomic::Ordering::SeqCst);
    let running = env.spawn(&["resume", "--yes"]);
    // The service comes back only once the running rotor met the outage.
    wait_for(
        "rotor to meet the outage",
        Duration::from_secs(60),
        async || relay.refused.load(std::sync::atomic::Ordering::SeqCst) > refused,
    )
    .await;
    relay.set_cut(false);
    let out = Out::from(running.wait_with_output().await.unwrap());
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let s = moto.state(SECRET);
    assert_eq!(holder(&s, "AWSCURRENT").as_deref(), Some(c_id.as_str()));
    env.finish(&[a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_credentials_and_region_come_from_a_profile_as_for_the_aws_cli() {
    let moto = Moto::start().await;
    let files = tempfile::Builder::new()
        .prefix("rotor-aws-profile-")
        .tempdir()
        .unwrap();
    let credentials = files.path().join("credentials");
    let config = files.path().join("config");
    std::fs::write(
        &credentials,
        "[rotation]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    std::fs::write(&config, format!("[profile rotation]\nregion = {REGION}\n")).unwrap();
    // No key, no region in the environment: only the profile's files.
    let vars = vec![
        ("AWS_ENDPOINT_URL".to_string(), moto.endpoint.clone()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            credentials.display().to_string(),
        ),
        ("AWS_CONFIG_FILE".into(), config.display().to_string()),
    ];
    let mut unset = INHERITED.to_vec();
    unset.extend([
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ]);
    let head = format!("store:\n  kind: aws\n  name: {SECRET}\n");
    // The playbook names the profile.
    let env = StoreEnv::with_store(
        "rotor-aws-",
        &head,
        "  profile: rotation\n",
        vars.clone(),
        &unset,
    );
    env.rotor(&["init"]).await.assert_code(0);
    let s = moto.state(SECRET);
    let a = value(&s, &holder(&s, "AWSCURRENT").unwrap());
    // Without the profile it has no credentials: a clear error naming what it reads.
    let bare = StoreEnv::with_store("rotor-aws-", &head, "", vars.clone(), &unset);
    let out = bare.rotor(&["status"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("AWS_PROFILE"), "{}", out.stderr);
    // AWS_PROFILE does what the field does.
    let out = bare
        .rotor_env(&["status"], &[("AWS_PROFILE", "rotation")])
        .await;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains(&a) && !out.stderr.contains(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_an_adopted_value_is_fingerprinted_before_it_is_disabled_and_an_empty_lock_secret_says_what_to_do()
 {
    use rotor::engine::lock::RotationLock as _;
    use rotor::store::aws::AwsStore;
    use rotor::store::{Store as _, VersionState};
    let moto = Moto::start().await;
    let mut spec = rotor::playbook::AwsStoreSpec::new(SECRET);
    spec.region = Some(REGION.into());
    spec.endpoint_url = Some(moto.endpoint.clone());
    spec.retry_deadline = Duration::from_secs(5);
    let open = || {
        AwsStore::new(&spec, SECRET).with_credentials(
            "testing",
            &rotor::secret::SecretValue::new("testing".into()),
        )
    };
    // A secret rotor did not create, adopted by its tag: its first value has no fingerprint tag.
    const ADOPTED: &str = "a-value-someone-else-wrote-0123456789";
    let a_id = moto.py_json(
        "import boto3,json,sys\nsm=boto3.client('secretsmanager')\nv=sm.create_secret(Name=sys.argv[1], SecretString=sys.argv[2], Tags=[{'Key':'rotor-secret','Value':sys.argv[1]}])['VersionId']\nprint(json.dumps({'id': v}))",
        &[SECRET, ADOPTED],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = open();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.primary.as_deref(), Some(a_id.as_str()));
    let b_value = rotor::secret::SecretValue::new("the-new-value-0123456789abcdefgh".into());
    let b = store.add_version_for(&b_value, "r-1").await.unwrap();
    store.set_slots(&a_id, Some(&b.id)).await.unwrap();
    store.set_slots(&b.id, Some(&a_id)).await.unwrap();
    store.set_slots(&b.id, None).await.unwrap();
    store
        .set_state(&a_id, VersionState::Disabled)
        .await
        .unwrap();
    // Its fingerprint was recorded while it was enabled: a later run (another process, nothing
    // cached) need not read a disabled value to know it.
    let s = moto.state(SECRET);
    assert_eq!(labels(&s, &a_id), ["AWSPREVIOUS", "ROTOR_DISABLED"], "{s}");
    assert_eq!(
        s["tags"][format!("rotor-fp-{a_id}")],
        fingerprint(ADOPTED).as_str(),
        "{s}"
    );
    let later = open().snapshot().await.unwrap();
    let a = later.version(&a_id).unwrap();
    assert_eq!(a.state, VersionState::Disabled);
    assert_eq!(a.fingerprint.as_str(), fingerprint(ADOPTED));
    // Destroyed, it stays in the history (the policy's "never reuse").
    open()
        .set_state(&a_id, VersionState::Destroyed)
        .await
        .unwrap();
    let after = open().snapshot().await.unwrap();
    assert_eq!(
        after.version(&a_id).map(|v| v.state),
        Some(VersionState::Destroyed)
    );

    // A lock secret an operator created beforehand without a value: a clear error that says
    // how to give it one, then the lock works.
    moto.py_json(
        "import boto3,json,sys\nboto3.client('secretsmanager').create_secret(Name=sys.argv[1])\nprint('{}')",
        &[LOCK],
    );
    let lock = rotor::engine::lock::aws::AwsLock::new(std::sync::Arc::new(open()));
    let err = lock
        .acquire(rotor::engine::lock::Holder::me("rotate"), false)
        .await
        .err()
        .expect("no version to read")
        .to_string();
    assert!(err.contains("put-secret-value"), "{err}");
    assert!(!err.contains("restore it from a backup"), "{err}");
    moto.py_json(
        "import boto3,json,sys\nboto3.client('secretsmanager').put_secret_value(SecretId=sys.argv[1], SecretString=json.dumps({'holder': ''}))\nprint('{}')",
        &[LOCK],
    );
    let g = lock
        .acquire(rotor::engine::lock::Holder::me("rotate"), false)
        .await
        .unwrap();
    g.release().await.unwrap();
}
