//! `store`: its kind, the fields each kind takes, and a `gcp` store's project, secret id,
//! endpoint, credentials and pacing.
//!
//! Owns: the [`StoreSpec`] a playbook names. Loading never reaches the store itself.

use std::path::Path;
use std::time::Duration;

use super::text::{echo, list};
use super::{Cx, Fields, HOUR, MINUTE, Result};
use crate::playbook::{
    AwsStoreSpec, GcpCredentials, GcpStoreSpec, MIN_WRITE_INTERVAL, StoreSpec, VaultAuth,
    VaultStoreSpec,
};

const STORE_FIELDS: &[&str] = &[
    "kind",
    "path",
    "namespace",
    "name",
    "project",
    "endpoint",
    "credentials",
    "retry_deadline",
    "write_interval",
    "mount",
    "address",
    "auth",
    "lock_duration",
    "region",
    "profile",
    "endpoint_url",
];
/// Each store kind with the fields it takes.
const STORE_KINDS: &[(&str, &[&str])] = &[
    ("local", &["kind", "path"]),
    ("kubernetes", &["kind", "namespace", "name"]),
    (
        "gcp",
        &[
            "kind",
            "project",
            "name",
            "endpoint",
            "credentials",
            "retry_deadline",
            "write_interval",
        ],
    ),
    (
        "vault",
        &[
            "kind",
            "mount",
            "path",
            "address",
            "namespace",
            "auth",
            "retry_deadline",
            "lock_duration",
        ],
    ),
    (
        "aws",
        &[
            "kind",
            "name",
            "region",
            "profile",
            "endpoint_url",
            "retry_deadline",
            "lock_duration",
        ],
    ),
];
const AUTH_FIELDS: &[&str] = &[
    "method",
    "mount",
    "role_id_file",
    "secret_id_file",
    "role",
    "token_file",
];
/// Each auth method with the fields it takes.
const AUTH_METHODS: &[(&str, &[&str])] = &[
    ("token", &["method"]),
    (
        "approle",
        &["method", "mount", "role_id_file", "secret_id_file"],
    ),
    ("kubernetes", &["method", "mount", "role", "token_file"]),
];
/// Where a pod's service-account token is mounted.
const K8S_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Cx<'_> {
    pub(super) fn store(
        &self,
        top: &Fields<'_>,
        base_dir: &Path,
        namespace: &str,
    ) -> Result<StoreSpec> {
        let node = self.require(
            top,
            "store",
            "add a store, e.g. `store: {kind: local, path: store.json}`",
        )?;
        let f = self.fields(
            node,
            "store",
            node.pos,
            "write `store:` with `kind` (and what that kind takes) under it",
        )?;
        self.only(&f, STORE_FIELDS, "store")?;
        const KIND_HELP: &str = "use `local` (a file), `kubernetes` (a Secret), `gcp` (Google Cloud Secret Manager), `vault` (OpenBao/Vault KV v2) or `aws` (AWS Secrets Manager)";
        let kind = self.require(&f, "kind", KIND_HELP)?;
        let text = self.text(kind, "store.kind", KIND_HELP)?;
        let Some((_, takes)) = STORE_KINDS.iter().find(|(k, _)| *k == text) else {
            return Err(self.err(
                kind.pos,
                "store.kind",
                format!("unknown store kind `{}`", echo(text)),
                KIND_HELP,
            ));
        };
        for (field, key, _) in &f.entries {
            if !takes.contains(field) {
                return Err(self.err(
                    key.pos,
                    f.sub(field),
                    format!("{} {text} store has no `{field}`", article(text)),
                    format!(
                        "remove `{field}`; {} {text} store takes {}",
                        article(text),
                        list(takes)
                    ),
                ));
            }
        }
        match text {
            "kubernetes" => {
                const NAME_HELP: &str =
                    "name the Secret that holds the values, e.g. `name: service-secret-store`";
                let node = self.require(&f, "name", NAME_HELP)?;
                let name = self.k8s_name(node, "store.name", "Secret name", false)?;
                let namespace = match f.get("namespace") {
                    None => namespace.to_string(),
                    Some(node) => self.k8s_name(node, "store.namespace", "namespace", true)?,
                };
                Ok(StoreSpec::Kubernetes { namespace, name })
            }
            "gcp" => self.gcp_store(&f).map(StoreSpec::Gcp),
            "vault" => self.vault_store(&f, base_dir).map(StoreSpec::Vault),
            "aws" => self.aws_store(&f).map(StoreSpec::Aws),
            _ => {
                const PATH_HELP: &str = "give the store file, relative to the playbook's directory or absolute, e.g. store.json";
                let node = self.require(&f, "path", PATH_HELP)?;
                let path = self.text(node, "store.path", PATH_HELP)?;
                if path.trim().is_empty() {
                    return Err(self.err(node.pos, "store.path", "the path is empty", PATH_HELP));
                }
                Ok(StoreSpec::Local {
                    path: base_dir.join(path),
                })
            }
        }
    }

    fn gcp_store(&self, f: &Fields<'_>) -> Result<GcpStoreSpec> {
        const PROJECT_HELP: &str = "give the Google Cloud project id (6 to 30 lowercase letters, digits or hyphens, starting with a letter), e.g. `project: my-project`";
        let node = self.require(f, "project", PROJECT_HELP)?;
        let project = self.text(node, "store.project", PROJECT_HELP)?;
        let valid_project = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && !project.ends_with('-')
            && project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_project {
            return Err(self.err(
                node.pos,
                "store.project",
                format!("`{}` is not a project id", echo(project)),
                PROJECT_HELP,
            ));
        }
        const NAME_HELP: &str = "name the Secret Manager secret (letters, digits, `-` and `_`, at most 255), e.g. `name: service-secret`";
        let node = self.require(f, "name", NAME_HELP)?;
        let name = self.text(node, "store.name", NAME_HELP)?;
        if name.is_empty()
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err(
                node.pos,
                "store.name",
                format!("`{}` is not a secret id", echo(name)),
                NAME_HELP,
            ));
        }
        let endpoint = self.url_field(
            f,
            "endpoint",
            "give a URL, e.g. `https://secretmanager.googleapis.com` or a private endpoint; leave it out for Google's",
        )?;
        let credentials = match f.get("credentials") {
            None => GcpCredentials::Default,
            Some(node) => match self.choice(
                node,
                "store.credentials",
                &["default", "anonymous"],
                "credentials",
                "use `default` (Application Default Credentials) or `anonymous` (emulators and the lab only)",
            )? {
                0 => GcpCredentials::Default,
                _ => GcpCredentials::Anonymous,
            },
        };
        let mut spec = GcpStoreSpec {
            project: project.to_string(),
            name: name.to_string(),
            endpoint,
            credentials,
            retry_deadline: Duration::from_secs(60),
            write_interval: Duration::from_millis(500),
        };
        spec.retry_deadline = self.retry_deadline(f, spec.retry_deadline)?;
        if let Some(node) = f.get("write_interval") {
            spec.write_interval = self.duration(node, "store.write_interval", MINUTE)?;
            if spec.write_interval < MIN_WRITE_INTERVAL {
                return Err(self.err(
                    node.pos,
                    "store.write_interval",
                    "the write interval is shorter than 500ms",
                    "give at least 500ms (the default): Google allows 2 writes per second per secret",
                ));
            }
        }
        Ok(spec)
    }

    fn vault_store(&self, f: &Fields<'_>, base_dir: &Path) -> Result<VaultStoreSpec> {
        const MOUNT_HELP: &str = "give the mount path of the KV v2 engine, e.g. `mount: secret` (`bao secrets list` shows them)";
        let node = self.require(f, "mount", MOUNT_HELP)?;
        let mount = self.text(node, "store.mount", MOUNT_HELP)?;
        if !vault_path_ok(mount, 128) {
            return Err(self.err(
                node.pos,
                "store.mount",
                format!("`{}` is not a mount path", echo(mount)),
                format!("{MOUNT_HELP}; letters, digits, `-`, `_`, `.` and `/` between non-empty segments, no leading or trailing `/`"),
            ));
        }
        const PATH_HELP: &str = "give the secret's path under the mount, e.g. `path: rotor/service-secret` (as in `bao kv get -mount=secret rotor/service-secret`)";
        let node = self.require(f, "path", PATH_HELP)?;
        let path = self.text(node, "store.path", PATH_HELP)?;
        if !vault_path_ok(path, 400) {
            return Err(self.err(
                node.pos,
                "store.path",
                format!("`{}` is not a secret path", echo(path)),
                format!("{PATH_HELP}; letters, digits, `-`, `_`, `.` and `/` between non-empty segments, no leading or trailing `/`, at most 400 characters"),
            ));
        }
        if path.ends_with(crate::playbook::VAULT_LOCK_SUFFIX) {
            return Err(self.err(
                node.pos,
                "store.path",
                format!(
                    "`{}` is the name of a rotation lock (it ends in `{}`)",
                    echo(path),
                    crate::playbook::VAULT_LOCK_SUFFIX
                ),
                "name the secret itself; rotor keeps its lock beside it",
            ));
        }
        let address = self.url_field(
            f,
            "address",
            "give the server's URL, e.g. `https://vault.example.com:8200`; leave it out to use VAULT_ADDR",
        )?;
        let namespace = match f.get("namespace") {
            None => None,
            Some(node) => {
                const HELP: &str = "give the namespace, e.g. `namespace: team-a` (or `admin/team-a`); leave it out to use VAULT_NAMESPACE";
                let text = self.text(node, "store.namespace", HELP)?;
                if !vault_path_ok(text.trim_end_matches('/'), 128) {
                    return Err(self.err(
                        node.pos,
                        "store.namespace",
                        format!("`{}` is not a namespace", echo(text)),
                        HELP,
                    ));
                }
                Some(text.trim_end_matches('/').to_string())
            }
        };
        let auth = match f.get("auth") {
            None => VaultAuth::Token,
            Some(node) => self.vault_auth(node, base_dir)?,
        };
        let mut spec = VaultStoreSpec {
            mount: mount.to_string(),
            path: path.to_string(),
            address,
            namespace,
            auth,
            retry_deadline: Duration::from_secs(30),
            lock_duration: Duration::from_secs(30),
        };
        spec.lock_duration = self.lock_duration(f, spec.lock_duration)?;
        spec.retry_deadline = self.retry_deadline(f, spec.retry_deadline)?;
        Ok(spec)
    }

    fn aws_store(&self, f: &Fields<'_>) -> Result<AwsStoreSpec> {
        const NAME_HELP: &str = "name the Secrets Manager secret (1 to 500 letters, digits and `/_+=.@-`; a name, not an ARN), e.g. `name: service-secret`";
        let node = self.require(f, "name", NAME_HELP)?;
        let name = self.text(node, "store.name", NAME_HELP)?;
        // At most 500: the lock secret beside it adds `.rotor-lock` within AWS's 512.
        let valid = (1..=500).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
        if !valid || name.starts_with("arn:") {
            return Err(self.err(
                node.pos,
                "store.name",
                format!("`{}` is not a secret name", echo(name)),
                NAME_HELP,
            ));
        }
        if name.ends_with(crate::playbook::AWS_LOCK_SUFFIX) {
            return Err(self.err(
                node.pos,
                "store.name",
                format!(
                    "`{}` is the name of a rotation lock (it ends in `{}`)",
                    echo(name),
                    crate::playbook::AWS_LOCK_SUFFIX
                ),
                "name the secret itself; rotor keeps its lock beside it",
            ));
        }
        let region = match f.get("region") {
            None => None,
            Some(node) => {
                const HELP: &str = "give an AWS region, e.g. `region: eu-west-1`; leave it out to use AWS_REGION or the profile's";
                let text = self.text(node, "store.region", HELP)?.trim();
                let ok = (1..=32).contains(&text.len())
                    && text
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(self.err(
                        node.pos,
                        "store.region",
                        format!("`{}` is not a region", echo(text)),
                        HELP,
                    ));
                }
                Some(text.to_string())
            }
        };
        let profile = match f.get("profile") {
            None => None,
            Some(node) => {
                const HELP: &str = "give a profile of ~/.aws/config, e.g. `profile: rotation`; leave it out to use AWS_PROFILE or the default";
                let text = self.text(node, "store.profile", HELP)?.trim();
                if text.is_empty() || text.len() > 128 || text.chars().any(char::is_whitespace) {
                    return Err(self.err(
                        node.pos,
                        "store.profile",
                        format!("`{}` is not a profile name", echo(text)),
                        HELP,
                    ));
                }
                Some(text.to_string())
            }
        };
        let endpoint_url = self.url_field(
            f,
            "endpoint_url",
            "give a URL, e.g. a VPC endpoint `https://vpce-…secretsmanager.eu-west-1.vpce.amazonaws.com`; leave it out to use AWS_ENDPOINT_URL or AWS's",
        )?;
        let defaults = AwsStoreSpec::new(name);
        Ok(AwsStoreSpec {
            region,
            profile,
            endpoint_url,
            lock_duration: self.lock_duration(f, defaults.lock_duration)?,
            retry_deadline: self.retry_deadline(f, defaults.retry_deadline)?,
            ..defaults
        })
    }

    /// An optional http(s) URL field, without a trailing `/`.
    fn url_field(&self, f: &Fields<'_>, field: &str, help: &str) -> Result<Option<String>> {
        let Some(node) = f.get(field) else {
            return Ok(None);
        };
        let path = format!("store.{field}");
        let text = self.text(node, &path, help)?.trim();
        if !(text.starts_with("https://") || text.starts_with("http://"))
            || text.len() <= "https://".len()
            || text.chars().any(char::is_whitespace)
        {
            return Err(self.err(
                node.pos,
                &path,
                format!("`{}` is not an http(s) URL", echo(text)),
                help,
            ));
        }
        Ok(Some(text.trim_end_matches('/').to_string()))
    }

    /// `lock_duration` (3s to 1h), or `default`.
    fn lock_duration(&self, f: &Fields<'_>, default: Duration) -> Result<Duration> {
        let Some(node) = f.get("lock_duration") else {
            return Ok(default);
        };
        let d = self.duration(node, "store.lock_duration", HOUR)?;
        if d < Duration::from_secs(3) {
            return Err(self.err(
                node.pos,
                "store.lock_duration",
                "the lock duration is shorter than 3s",
                format!(
                    "give 3s to 1h (the default is {}): how long the lock outlives a rotor that stopped renewing it",
                    humantime::format_duration(default)
                ),
            ));
        }
        Ok(d)
    }

    /// `retry_deadline` (at least 1s), or `default`.
    fn retry_deadline(&self, f: &Fields<'_>, default: Duration) -> Result<Duration> {
        let Some(node) = f.get("retry_deadline") else {
            return Ok(default);
        };
        let d = self.duration(node, "store.retry_deadline", HOUR)?;
        if d < Duration::from_secs(1) {
            return Err(self.err(
                node.pos,
                "store.retry_deadline",
                "the retry deadline is shorter than 1s",
                format!(
                    "give at least 1s (the default is {})",
                    humantime::format_duration(default)
                ),
            ));
        }
        Ok(d)
    }

    fn vault_auth(&self, node: &super::Node, base_dir: &Path) -> Result<VaultAuth> {
        let f = self.fields(
            node,
            "store.auth",
            node.pos,
            "write `auth:` as a mapping, e.g. `auth: {method: approle, role_id_file: role-id, secret_id_file: secret-id}`",
        )?;
        self.only(&f, AUTH_FIELDS, "store.auth")?;
        const METHOD_HELP: &str =
            "use `token` (VAULT_TOKEN or ~/.vault-token), `approle` or `kubernetes`";
        let method = self.require(&f, "method", METHOD_HELP)?;
        let idx = self.choice(
            method,
            "store.auth.method",
            &["token", "approle", "kubernetes"],
            "auth method",
            METHOD_HELP,
        )?;
        let (name, takes) = AUTH_METHODS[idx];
        for (field, key, _) in &f.entries {
            if !takes.contains(field) {
                return Err(self.err(
                    key.pos,
                    f.sub(field),
                    format!("the {name} auth method has no `{field}`"),
                    format!("remove `{field}`; `method: {name}` takes {}", list(takes)),
                ));
            }
        }
        let mount = |default: &str| -> Result<String> {
            match f.get("mount") {
                None => Ok(default.to_string()),
                Some(node) => {
                    let help = format!(
                        "give the auth method's mount path, e.g. `mount: {default}` (the default)"
                    );
                    let text = self.text(node, "store.auth.mount", &help)?;
                    if !vault_path_ok(text, 128) {
                        return Err(self.err(
                            node.pos,
                            "store.auth.mount",
                            format!("`{}` is not a mount path", echo(text)),
                            help,
                        ));
                    }
                    Ok(text.to_string())
                }
            }
        };
        let file = |field: &str, help: &str| -> Result<std::path::PathBuf> {
            let node = self.require(&f, field, help)?;
            let path = f.sub(field);
            let text = self.text(node, &path, help)?;
            if text.trim().is_empty() {
                return Err(self.err(node.pos, path, "the path is empty", help));
            }
            Ok(base_dir.join(text))
        };
        Ok(match name {
            "approle" => VaultAuth::AppRole {
                mount: mount("approle")?,
                role_id_file: file(
                    "role_id_file",
                    "give the file holding the AppRole role id, e.g. `role_id_file: /etc/rotor/role-id`",
                )?,
                secret_id_file: file(
                    "secret_id_file",
                    "give the file holding the AppRole secret id, e.g. `secret_id_file: /etc/rotor/secret-id` (never the secret id itself)",
                )?,
            },
            "kubernetes" => {
                const ROLE_HELP: &str =
                    "give the Vault role bound to rotor's service account, e.g. `role: rotor`";
                let node = self.require(&f, "role", ROLE_HELP)?;
                let role = self.text(node, "store.auth.role", ROLE_HELP)?;
                if role.is_empty()
                    || role.len() > 128
                    || !role
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(self.err(
                        node.pos,
                        "store.auth.role",
                        format!("`{}` is not a role name", echo(role)),
                        ROLE_HELP,
                    ));
                }
                let token_file = match f.get("token_file") {
                    None => std::path::PathBuf::from(K8S_TOKEN_FILE),
                    Some(_) => file(
                        "token_file",
                        "give the service-account token file; leave it out for the pod's own",
                    )?,
                };
                VaultAuth::Kubernetes {
                    mount: mount("kubernetes")?,
                    role: role.to_string(),
                    token_file,
                }
            }
            _ => VaultAuth::Token,
        })
    }
}

/// A Vault mount or secret path: `/`-separated non-empty segments of letters, digits, `-`, `_`
/// and `.` (never `.` or `..` alone), at most `max` bytes.
fn vault_path_ok(p: &str, max: usize) -> bool {
    !p.is_empty()
        && p.len() <= max
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// `an` before a kind that starts with a vowel (`an aws store`), else `a`.
fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}
