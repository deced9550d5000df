//! A consumer's `tls`: how rotor reaches its instances over HTTPS. It reads `ca_file`,
//! `system_roots`, `server_name`, `client_cert` with `client_key`, and `insecure`.
//!
//! Must never: let verification be turned off silently. `insecure: true` is written out,
//! refused in `production`, and meaningless next to a CA or a server name. The files are only
//! named here; `probe::tls` reads them when the engine opens.

use std::path::Path;

use super::text::echo;
use super::{Cx, Fields, Result};
use crate::playbook::{ClientAuth, Environment, TlsSpec};

const TLS_FIELDS: &[&str] = &[
    "ca_file",
    "system_roots",
    "server_name",
    "client_cert",
    "client_key",
    "insecure",
];

/// Longest `server_name` (a DNS name).
const MAX_SERVER_NAME: usize = 253;

impl Cx<'_> {
    /// `consumers[i].tls`, when present.
    pub(super) fn tls(
        &self,
        consumer: &Fields<'_>,
        environment: Environment,
        base_dir: &Path,
    ) -> Result<Option<TlsSpec>> {
        let Some(node) = consumer.get("tls") else {
            return Ok(None);
        };
        let path = consumer.sub("tls");
        let f = self.fields(
            node,
            &path,
            node.pos,
            "write `tls:` as a mapping, e.g. `tls: {ca_file: ca.pem}` (see docs/playbook.md)",
        )?;
        self.only(&f, TLS_FIELDS, "tls")?;
        let file = |name: &str| -> Result<Option<std::path::PathBuf>> {
            let Some(node) = f.get(name) else {
                return Ok(None);
            };
            let help =
                format!("give the path of a PEM file for `{name}`, relative to the playbook");
            let text = self.text(node, &f.sub(name), &help)?;
            if text.trim().is_empty() {
                return Err(self.err(node.pos, f.sub(name), "the path is empty", help));
            }
            Ok(Some(base_dir.join(text.trim())))
        };
        let ca_file = file("ca_file")?;
        let cert = file("client_cert")?;
        let key = file("client_key")?;
        let client_auth = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientAuth { cert, key }),
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if f.get("client_cert").is_some() {
                    ("client_cert", "client_key")
                } else {
                    ("client_key", "client_cert")
                };
                return Err(self.err(
                    f.get(given).map_or(node.pos, |n| n.pos),
                    f.sub(given),
                    format!("`{given}` is given without `{missing}`"),
                    "mTLS needs both: the certificate chain in `client_cert` and its key in `client_key`",
                ));
            }
        };
        let flag = |name: &str, default: bool| -> Result<bool> {
            match f.get(name) {
                None => Ok(default),
                Some(n) => self.boolean(
                    n,
                    &f.sub(name),
                    &format!("write `{name}: true` or `{name}: false`"),
                ),
            }
        };
        let system_roots = flag("system_roots", true)?;
        let insecure = flag("insecure", false)?;
        let server_name = match f.get("server_name") {
            None => None,
            Some(n) => {
                const HELP: &str = "give the DNS name the instances' certificate is issued for, e.g. auth.internal";
                let sub = f.sub("server_name");
                let text = self.text(n, &sub, HELP)?.trim();
                let valid = !text.is_empty()
                    && text.len() <= MAX_SERVER_NAME
                    && rustls::pki_types::ServerName::try_from(text).is_ok();
                if !valid {
                    return Err(self.err(
                        n.pos,
                        sub,
                        format!("`{}` is not a DNS name or IP address", echo(text)),
                        HELP,
                    ));
                }
                Some(text.to_string())
            }
        };
        if insecure {
            let pos = f.get("insecure").map_or(node.pos, |n| n.pos);
            if environment == Environment::Production {
                return Err(self.err(
                    pos,
                    f.sub("insecure"),
                    "`insecure: true` turns certificate verification off, which production never allows",
                    "give the CA that signed the instances' certificates in `ca_file` (and `server_name` if they are reached by IP)",
                ));
            }
            if let Some(other) = ["ca_file", "server_name"]
                .into_iter()
                .find(|n| f.get(n).is_some())
            {
                return Err(self.err(
                    pos,
                    f.sub("insecure"),
                    format!(
                        "`insecure: true` skips verification, so `{other}` would have no effect"
                    ),
                    "remove `insecure` to verify against the CA and name you gave, or remove them",
                ));
            }
        }
        if !system_roots && ca_file.is_none() && !insecure {
            return Err(self.err(
                f.get("system_roots").map_or(node.pos, |n| n.pos),
                f.sub("system_roots"),
                "`system_roots: false` without a `ca_file` trusts no certificate at all",
                "give the CA that signed the instances' certificates in `ca_file`",
            ));
        }
        Ok(Some(TlsSpec {
            ca_file,
            system_roots,
            server_name,
            client_auth,
            insecure,
        }))
    }
}
