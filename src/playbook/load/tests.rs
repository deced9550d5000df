//! The loader's unit tests: defaults, the embedded demo, duplicate keys, env values never
//! echoed, suggestions and an unreadable file. Hostile input is `robustness`'s.

use std::net::IpAddr;
use std::path::PathBuf;

use super::*;
use crate::playbook::{ConsumerKind, Pickup, ProbeSpec, StoreSpec, Timings};
use crate::secret::Alphabet;

fn load(text: &str) -> Result<Playbook> {
    load_str(text, "test.yaml", Path::new("/base"))
}

const MINIMAL: &str = "secret: s\nenvironment: test\nstore: {kind: local, path: s.json}\nconsumers:\n  - name: a\n    role: both\n    kind: process\n    instances: 1\n    command: [x]\n    slots: {primary: P, secondary: S}\n    probes: [{type: jwt, path: /p}]\n    roundtrips: [{to: a, path: \"/r?t={target}\"}]\n";

#[test]
fn embedded_demo_loads() {
    let pb = load_str(
        include_str!("../../../playbooks/local-demo.yaml"),
        "<embedded>",
        Path::new("/demo"),
    )
    .unwrap();
    assert_eq!(pb.consumers.len(), 3);
    assert_eq!(pb.generate.length, 48);
    assert_eq!(
        pb.state_dir,
        Path::new("/demo/.rotor/service-secret-development")
    );
}

/// The Cloud Run fleet as shipped: three exec consumers reached over HTTPS by name (a target
/// with `https://` and no `tls`: the system roots), signers proven by exec round trips only.
#[test]
fn cloudrun_fleet_loads() {
    let pb = load_str(
        include_str!("../../../playbooks/cloudrun-fleet.yaml"),
        "cloudrun-fleet.yaml",
        Path::new("/p"),
    )
    .unwrap();
    use crate::playbook::ExecVia;
    use crate::protocol::Role;
    let roles: Vec<(&str, Role)> = pb
        .consumers
        .iter()
        .map(|c| (c.name.as_str(), c.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("auth", Role::Both),
            ("backend", Role::Both),
            ("analytics", Role::Validator)
        ]
    );
    for c in &pb.consumers {
        let ConsumerKind::Exec(exec) = &c.kind else {
            panic!("{} is not an exec consumer", c.name)
        };
        assert_eq!(
            exec.targets,
            [format!("https://{}-abc123-ew.a.run.app:443", c.name)]
        );
        assert!(c.tls.is_some(), "{}: an https:// target is HTTPS", c.name);
        assert!(
            c.roundtrips
                .iter()
                .all(|r| matches!(r, crate::playbook::Roundtrip::Exec(_))),
            "{}",
            c.name
        );
    }
    let trips = |i: usize| pb.consumers[i].roundtrips.len();
    assert_eq!((trips(0), trips(1), trips(2)), (2, 2, 0));
    let crate::playbook::Roundtrip::Exec(b) = &pb.consumers[1].roundtrips[0] else {
        unreachable!()
    };
    assert_eq!(b.via, ExecVia::Stdin);
}

#[test]
fn minimal_uses_defaults() {
    let pb = load(MINIMAL).unwrap();
    assert_eq!(pb.generate.length, 32);
    assert_eq!(pb.generate.alphabet, Alphabet::Alphanumeric);
    assert_eq!(pb.timings, Timings::default());
    assert_eq!(pb.source, "test.yaml");
    assert_eq!(pb.checksum, hex::encode(Sha256::digest(MINIMAL.as_bytes())));
    assert_eq!(
        pb.store,
        StoreSpec::Local {
            path: PathBuf::from("/base/s.json")
        }
    );
    let c = &pb.consumers[0];
    assert_eq!(c.pickup, Pickup::Restart);
    assert_eq!(
        c.probes,
        vec![ProbeSpec::Jwt {
            path: "/p".into(),
            ttl: Duration::from_secs(60),
            accept: vec![200],
            reject: vec![401, 403]
        }]
    );
    let ConsumerKind::Process(p) = &c.kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.host, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(p.health_path, "/healthz");
}

#[test]
fn duplicate_keys_are_reported_with_their_path() {
    let e = load(&MINIMAL.replace("secret: s\n", "secret: s\nsecret: t\n")).unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (2, 1, "secret"));
    assert_eq!(e.message, "duplicate key `secret`");
}

#[test]
fn env_values_are_never_echoed() {
    let text = MINIMAL.replace(
        "    command: [x]\n",
        "    command: [x]\n    env: {P: hunter2}\n",
    );
    let e = load(&text).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let text = MINIMAL.replace(
        "    command: [x]\n",
        "    command: [x]\n    env: {A: [hunter2]}\n",
    );
    let e = load(&text).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn a_document_that_is_not_a_mapping_is_reported_without_a_field() {
    let e = load("- secret: s\n").unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (1, 1, "-"));
    assert_eq!(e.message, "expected a mapping, found a list");
}

#[test]
fn null_sections_take_their_defaults_and_merge_keys_work() {
    let text = MINIMAL.replace(
        "environment: test\n",
        "environment: test\ngenerate:\ntimings:\n",
    ) + "  - <<: *a\n    name: b\n    role: validator\n    roundtrips: []\n";
    let text = text.replace("  - name: a\n", "  - &a\n    name: a\n");
    let pb = load(&text).unwrap();
    assert_eq!(pb.generate.length, 32);
    assert_eq!(pb.timings, Timings::default());
    assert_eq!(pb.consumers[1].name, "b");
    assert_eq!(pb.consumers[1].slots.secondary.as_deref(), Some("S"));
}

#[test]
fn close_misspellings_get_a_suggestion() {
    let e = load(&MINIMAL.replace("environment: test", "environment: stagin")).unwrap_err();
    assert_eq!(
        e.help,
        "did you mean `staging`? use one of production, staging, test, development"
    );
    let e = load(&MINIMAL.replace(
        "    kind: process\n",
        "    kind: process\n    helth_path: /h\n",
    ))
    .unwrap_err();
    assert!(e.help.starts_with("did you mean `health_path`?"), "{e}");
}

#[test]
fn missing_file_is_reported() {
    let e = load_file(Path::new("/nonexistent/rotor.yaml")).unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (0, 0, "-"));
    assert!(e.message.starts_with("cannot read playbook: "), "{e}");
    assert_eq!(e.help, "check the path");
}

#[test]
fn numbers_keep_their_spelling_in_strings() {
    let text = MINIMAL.replace(
        "command: [x]",
        "command: [x, 007, 1.10]\n    env: {V: 1.10}",
    );
    let pb = load(&text).unwrap();
    let ConsumerKind::Process(p) = &pb.consumers[0].kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.command, vec!["x", "007", "1.10"]);
    assert_eq!(p.env["V"], "1.10");
}

/// MINIMAL with `tls` (a flow mapping) on its consumer, in `environment`.
fn with_tls(environment: &str, tls: &str) -> Result<Playbook> {
    let text = MINIMAL
        .replace("environment: test", &format!("environment: {environment}"))
        .replace(
            "    command: [x]\n",
            &format!("    command: [x]\n    tls: {tls}\n"),
        );
    load(&text)
}

#[test]
fn tls_reads_every_field_and_resolves_files_against_the_playbook() {
    let pb = with_tls(
        "production",
        "{ca_file: certs/ca.pem, system_roots: false, server_name: auth.internal, client_cert: c.pem, client_key: k.pem}",
    )
    .unwrap();
    let tls = pb.consumers[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(Path::new("/base/certs/ca.pem"))
    );
    assert!(!tls.system_roots);
    assert_eq!(tls.server_name.as_deref(), Some("auth.internal"));
    let auth = tls.client_auth.as_ref().unwrap();
    assert_eq!(
        (auth.cert.as_path(), auth.key.as_path()),
        (Path::new("/base/c.pem"), Path::new("/base/k.pem"))
    );
    assert!(!tls.insecure);
    assert!(load(MINIMAL).unwrap().consumers[0].tls.is_none());
}

#[test]
fn tls_never_turns_verification_off_silently() {
    let e = with_tls("production", "{insecure: true}").unwrap_err();
    assert_eq!(e.field, "consumers[0].tls.insecure");
    assert!(e.message.contains("production never allows"), "{e}");
    let pb = with_tls("staging", "{insecure: true}").unwrap();
    assert!(pb.consumers[0].tls.as_ref().unwrap().insecure);
    let e = with_tls("test", "{insecure: true, ca_file: ca.pem}").unwrap_err();
    assert!(e.message.contains("`ca_file` would have no effect"), "{e}");
    let e = with_tls("test", "{system_roots: false}").unwrap_err();
    assert_eq!(e.field, "consumers[0].tls.system_roots");
    let e = with_tls("test", "{client_cert: c.pem}").unwrap_err();
    assert_eq!(e.field, "consumers[0].tls.client_cert");
    assert!(e.message.contains("without `client_key`"), "{e}");
    let e = with_tls("test", "{server_name: \"not a name\"}").unwrap_err();
    assert_eq!(e.field, "consumers[0].tls.server_name");
    let e = with_tls("test", "{insecure: yes please}").unwrap_err();
    assert_eq!(e.field, "consumers[0].tls.insecure");
    let e = with_tls("test", "{ca_flie: ca.pem}").unwrap_err();
    assert!(e.help.contains("ca_file"), "{e}");
}

fn exec_consumer(targets: &str, tls: &str) -> Result<Playbook> {
    load(&format!(
        "secret: s\nenvironment: production\ngenerate: {{length: 64}}\nstore: {{kind: local, path: s.json}}\nconsumers:\n  - name: api\n    role: validator\n    kind: exec\n    apply: [x]\n    targets: {targets}\n    slots: {{primary: P, secondary: S}}\n    probes: [{{type: header, path: /p, header: X-S}}]\n{tls}"
    ))
}

#[test]
fn the_scheme_of_exec_targets_decides_how_they_are_reached() {
    // https:// without `tls` is HTTPS verified against the system roots (never plain HTTP).
    let pb = exec_consumer("[\"https://api.example.com:443\"]", "").unwrap();
    let tls = pb.consumers[0].tls.as_ref().expect("https:// means TLS");
    assert!(tls.system_roots && !tls.insecure && tls.ca_file.is_none());
    assert_eq!(tls.server_name, None, "the host name is what is verified");
    // https:// with `tls` keeps what `tls` says.
    let pb = exec_consumer(
        "[\"https://api.example.com:443\"]",
        "    tls: {ca_file: ca.pem, system_roots: false}\n",
    )
    .unwrap();
    let tls = pb.consumers[0].tls.as_ref().unwrap();
    assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/base/ca.pem")));
    assert!(!tls.system_roots);
    // http:// and a bare host:port without `tls` are plain HTTP.
    for t in ["[\"http://api:80\"]", "[\"api:80\"]"] {
        assert!(
            exec_consumer(t, "").unwrap().consumers[0].tls.is_none(),
            "{t}"
        );
    }
    let ConsumerKind::Exec(e) = &pb.consumers[0].kind else {
        panic!("an exec consumer")
    };
    assert_eq!(e.targets, ["https://api.example.com:443"]);
    assert_eq!(
        crate::playbook::ExecSpec::host_port(&e.targets[0]),
        "api.example.com:443"
    );
    // Not a URL with more than a host and a port.
    for bad in [
        "[\"https://user@api:443\"]",
        "[\"https://api:443/x\"]",
        "[\"ftp://api:21\"]",
        "[\"https://:443\"]",
    ] {
        let e = exec_consumer(bad, "").unwrap_err().to_string();
        assert!(e.contains("is not host:port"), "{bad}: {e}");
    }
}

/// Targets that could never resolve (whitespace in the host, an unbracketed IPv6 address, two
/// colons) are refused when loading, not at probe time.
#[test]
fn exec_targets_that_cannot_resolve_are_refused_when_loading() {
    let mut accepted = Vec::new();
    for bad in [
        "[\"https://api :443\"]",
        "[\"https:// api:443\"]",
        "[\"https://::1:443\"]",
        "[\"https://api:8443:443\"]",
        "[\"api\\t:443\"]",
    ] {
        if exec_consumer(bad, "").is_ok() {
            accepted.push(bad);
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

#[test]
fn process_delivery_defaults_to_env_and_reload_needs_file_and_a_signal() {
    let pb = load(MINIMAL).unwrap();
    let ConsumerKind::Process(p) = &pb.consumers[0].kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.delivery, crate::playbook::Delivery::Env);
    assert_eq!(p.reload_signal, None);

    let reload = MINIMAL.replace(
        "    command: [x]\n",
        "    command: [x]\n    delivery: file\n    pickup: reload\n    reload_signal: usr2\n    stop_signal: SIGUSR1\n",
    );
    let pb = load(&reload).unwrap();
    let c = &pb.consumers[0];
    assert_eq!(c.pickup, Pickup::Reload);
    let ConsumerKind::Process(p) = &c.kind else {
        panic!("a process consumer")
    };
    assert_eq!(p.delivery, crate::playbook::Delivery::File);
    assert_eq!(p.reload_signal, Some(crate::playbook::StopSignal::Usr2));

    // `delivery: file` alone keeps restarting.
    let file = MINIMAL.replace(
        "    command: [x]\n",
        "    command: [x]\n    delivery: file\n",
    );
    let pb = load(&file).unwrap();
    assert_eq!(pb.consumers[0].pickup, Pickup::Restart);

    for (fields, field, message) in [
        (
            "    pickup: reload\n    reload_signal: SIGHUP\n",
            "consumers[0].pickup",
            "pickup `reload` needs `delivery: file`",
        ),
        (
            "    delivery: file\n    pickup: reload\n",
            "consumers[0].pickup",
            "pickup `reload` needs a `reload_signal`",
        ),
        (
            "    delivery: file\n    reload_signal: SIGHUP\n",
            "consumers[0].reload_signal",
            "`reload_signal` is only used with `pickup: reload`",
        ),
        (
            "    delivery: file\n    pickup: reload\n    reload_signal: SIGTERM\n",
            "consumers[0].reload_signal",
            "the same as `stop_signal`",
        ),
        (
            "    delivery: file\n    pickup: reload\n    reload_signal: SIGSEGV\n",
            "consumers[0].reload_signal",
            "is not a reload signal rotor sends",
        ),
        (
            "    delivery: disk\n",
            "consumers[0].delivery",
            "unknown delivery `disk`",
        ),
        (
            "    sync_period: 10s\n",
            "consumers[0].sync_period",
            "a `process` consumer has no `sync_period`",
        ),
    ] {
        let text = MINIMAL.replace("    command: [x]\n", &format!("    command: [x]\n{fields}"));
        let e = load(&text).unwrap_err();
        assert_eq!(e.field, field, "{fields}: {e}");
        assert!(e.message.contains(message), "{fields}: {e}");
    }
}

const KUBE: &str = "secret: s\nenvironment: test\ncluster: {namespace: demo}\nstore: {kind: kubernetes, name: s}\nconsumers:\n  - name: a\n    role: validator\n    kind: kubernetes\n    workload: {kind: Deployment, name: a}\n    secret: a-secrets\n    slots: {primary: P, secondary: S}\n    probes: [{type: jwt, path: /p}]\n";

#[test]
fn kubernetes_reload_takes_a_bounded_sync_period() {
    let sync = |pb: &Playbook| match &pb.consumers[0].kind {
        ConsumerKind::Kubernetes(k) => k.sync_period,
        _ => panic!("a kubernetes consumer"),
    };
    let pb = load(KUBE).unwrap();
    assert_eq!(pb.consumers[0].pickup, Pickup::Restart);
    assert_eq!(sync(&pb), None);

    let reload = KUBE.replace(
        "    secret: a-secrets\n",
        "    secret: a-secrets\n    pickup: reload\n",
    );
    let pb = load(&reload).unwrap();
    assert_eq!(pb.consumers[0].pickup, Pickup::Reload);
    assert_eq!(sync(&pb), Some(Duration::from_secs(60)));

    let given = reload.replace(
        "    pickup: reload\n",
        "    pickup: reload\n    sync_period: 90s\n",
    );
    assert_eq!(sync(&load(&given).unwrap()), Some(Duration::from_secs(90)));

    for (fields, field, message) in [
        (
            "    sync_period: 30s\n",
            "consumers[0].sync_period",
            "only used with `pickup: reload`",
        ),
        (
            "    pickup: reload\n    sync_period: 61m\n",
            "consumers[0].sync_period",
            "is longer than 1h",
        ),
        (
            "    pickup: reload\n    sync_period: 0s\n",
            "consumers[0].sync_period",
            "shorter than 1s",
        ),
        (
            "    delivery: file\n",
            "consumers[0].delivery",
            "a `kubernetes` consumer has no `delivery`",
        ),
        (
            "    reload_signal: SIGHUP\n",
            "consumers[0].reload_signal",
            "a `kubernetes` consumer has no `reload_signal`",
        ),
    ] {
        let text = KUBE.replace(
            "    secret: a-secrets\n",
            &format!("    secret: a-secrets\n{fields}"),
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.field, field, "{fields}: {e}");
        assert!(e.message.contains(message), "{fields}: {e}");
    }
}

#[test]
fn exec_consumers_refuse_reload() {
    let text = "secret: s\nenvironment: test\nstore: {kind: gcp, project: my-project, name: s}\nconsumers:\n  - name: a\n    role: validator\n    kind: exec\n    apply: [x]\n    targets: [\"127.0.0.1:1\"]\n    pickup: reload\n    slots: {primary: P, secondary: S}\n    probes: [{type: jwt, path: /p}]\n";
    let e = load(text).unwrap_err();
    assert_eq!(e.field, "consumers[0].pickup");
    assert!(
        e.message.contains("not supported by `exec` consumers"),
        "{e}"
    );
}

fn with_store(store: &str) -> Result<Playbook> {
    load(&MINIMAL.replace("store: {kind: local, path: s.json}", store))
}

#[test]
fn a_vault_store_reads_its_fields_and_defaults_to_the_token_from_the_environment() {
    let pb =
        with_store("store: {kind: vault, mount: kv/team-a, path: rotor/service-secret}").unwrap();
    let crate::playbook::StoreSpec::Vault(v) = &pb.store else {
        panic!("{:?}", pb.store)
    };
    assert_eq!(v.mount, "kv/team-a");
    assert_eq!(v.path, "rotor/service-secret");
    assert_eq!(v.address, None, "VAULT_ADDR decides");
    assert_eq!(v.namespace, None, "VAULT_NAMESPACE decides");
    assert_eq!(v.auth, crate::playbook::VaultAuth::Token);
    assert_eq!(v.retry_deadline, std::time::Duration::from_secs(30));
    assert_eq!(v.lock_duration, std::time::Duration::from_secs(30));
    let pb = with_store(
        "store: {kind: vault, mount: secret, path: s, address: 'https://vault.example.com:8200/', namespace: admin/team-a, retry_deadline: 5s, auth: {method: approle, role_id_file: role-id, secret_id_file: /etc/rotor/secret-id}}",
    )
    .unwrap();
    let crate::playbook::StoreSpec::Vault(v) = &pb.store else {
        panic!()
    };
    assert_eq!(v.address.as_deref(), Some("https://vault.example.com:8200"));
    assert_eq!(v.namespace.as_deref(), Some("admin/team-a"));
    assert_eq!(v.retry_deadline, std::time::Duration::from_secs(5));
    let crate::playbook::VaultAuth::AppRole {
        mount,
        role_id_file,
        secret_id_file,
    } = &v.auth
    else {
        panic!("{:?}", v.auth)
    };
    assert_eq!(mount, "approle");
    assert!(role_id_file.is_absolute() && role_id_file.ends_with("role-id"));
    assert_eq!(secret_id_file, std::path::Path::new("/etc/rotor/secret-id"));
    let pb = with_store(
        "store: {kind: vault, mount: secret, path: s, auth: {method: kubernetes, role: rotor, mount: k8s-prod}}",
    )
    .unwrap();
    let crate::playbook::StoreSpec::Vault(v) = &pb.store else {
        panic!()
    };
    assert_eq!(
        v.auth,
        crate::playbook::VaultAuth::Kubernetes {
            mount: "k8s-prod".into(),
            role: "rotor".into(),
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        }
    );
}

#[test]
fn bad_vault_store_fields_name_the_field_and_what_to_do() {
    for (store, field, message) in [
        (
            "{kind: vault, path: s}",
            "store.mount",
            "missing required field `mount`",
        ),
        (
            "{kind: vault, mount: secret}",
            "store.path",
            "missing required field `path`",
        ),
        (
            "{kind: vault, mount: /secret, path: s}",
            "store.mount",
            "is not a mount path",
        ),
        (
            "{kind: vault, mount: secret, path: a/../b}",
            "store.path",
            "is not a secret path",
        ),
        (
            "{kind: vault, mount: secret, path: 'a b'}",
            "store.path",
            "is not a secret path",
        ),
        (
            "{kind: vault, mount: secret, path: s.rotor-lock}",
            "store.path",
            "rotation lock",
        ),
        (
            "{kind: vault, mount: secret, path: s, address: vault:8200}",
            "store.address",
            "is not an http(s) URL",
        ),
        (
            "{kind: vault, mount: secret, path: s, namespace: 'a b'}",
            "store.namespace",
            "is not a namespace",
        ),
        (
            "{kind: vault, mount: secret, path: s, project: my-project}",
            "store.project",
            "a vault store has no `project`",
        ),
        (
            "{kind: vault, mount: secret, path: s, auth: {method: ldap}}",
            "store.auth.method",
            "unknown auth method `ldap`",
        ),
        (
            "{kind: vault, mount: secret, path: s, auth: {method: token, role: r}}",
            "store.auth.role",
            "the token auth method has no `role`",
        ),
        (
            "{kind: vault, mount: secret, path: s, auth: {method: approle, role_id_file: r}}",
            "store.auth.secret_id_file",
            "missing required field `secret_id_file`",
        ),
        (
            "{kind: vault, mount: secret, path: s, auth: {method: kubernetes}}",
            "store.auth.role",
            "missing required field `role`",
        ),
        (
            "{kind: vault, mount: secret, path: s, auth: {method: kubernetes, role: 'r/x'}}",
            "store.auth.role",
            "is not a role name",
        ),
        (
            "{kind: vault, mount: secret, path: s, retry_deadline: 100ms}",
            "store.retry_deadline",
            "shorter than 1s",
        ),
        (
            "{kind: vault, mount: secret, path: s, lock_duration: 1s}",
            "store.lock_duration",
            "shorter than 3s",
        ),
        (
            "{kind: gcp, project: my-project, name: s, mount: secret}",
            "store.mount",
            "a gcp store has no `mount`",
        ),
    ] {
        let err = with_store(&format!("store: {store}")).unwrap_err();
        assert_eq!(err.field, field, "{store}: {err}");
        assert!(err.message.contains(message), "{store}: {err}");
        assert!(!err.help.is_empty(), "{store}: {err}");
    }
}

#[test]
fn an_aws_store_reads_its_fields_and_leaves_the_rest_to_awss_own_chain() {
    let pb = with_store("store: {kind: aws, name: prod/service-secret}").unwrap();
    let crate::playbook::StoreSpec::Aws(a) = &pb.store else {
        panic!("{:?}", pb.store)
    };
    assert_eq!(
        a,
        &crate::playbook::AwsStoreSpec::new("prod/service-secret")
    );
    assert_eq!((a.region.as_deref(), a.profile.as_deref()), (None, None));
    assert_eq!(a.endpoint_url, None, "AWS_ENDPOINT_URL decides");
    assert_eq!(a.retry_deadline, std::time::Duration::from_secs(30));
    assert_eq!(a.lock_duration, std::time::Duration::from_secs(30));
    assert!(pb.store.keeps_own_lock());
    let pb = with_store(
        "store: {kind: aws, name: s, region: eu-west-1, profile: rotation, endpoint_url: 'https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com/', retry_deadline: 5s, lock_duration: 1m}",
    )
    .unwrap();
    let crate::playbook::StoreSpec::Aws(a) = &pb.store else {
        panic!()
    };
    assert_eq!(a.region.as_deref(), Some("eu-west-1"));
    assert_eq!(a.profile.as_deref(), Some("rotation"));
    assert_eq!(
        a.endpoint_url.as_deref(),
        Some("https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com")
    );
    assert_eq!(a.retry_deadline, std::time::Duration::from_secs(5));
    assert_eq!(a.lock_duration, std::time::Duration::from_secs(60));
}

#[test]
fn bad_aws_store_fields_name_the_field_and_what_to_do() {
    for (store, field, message) in [
        ("{kind: aws}", "store.name", "missing required field `name`"),
        (
            "{kind: aws, name: 'arn:aws:secretsmanager:eu-west-1:1:secret:s-AbCdEf'}",
            "store.name",
            "is not a secret name",
        ),
        (
            "{kind: aws, name: 'a b'}",
            "store.name",
            "is not a secret name",
        ),
        (
            "{kind: aws, name: s.rotor-lock}",
            "store.name",
            "rotation lock",
        ),
        (
            "{kind: aws, name: s, region: EU_WEST}",
            "store.region",
            "is not a region",
        ),
        (
            "{kind: aws, name: s, profile: 'a b'}",
            "store.profile",
            "is not a profile name",
        ),
        (
            "{kind: aws, name: s, endpoint_url: 'localhost:5000'}",
            "store.endpoint_url",
            "is not an http(s) URL",
        ),
        (
            "{kind: aws, name: s, mount: secret}",
            "store.mount",
            "an aws store has no `mount`",
        ),
        (
            "{kind: aws, name: s, lock_duration: 2s}",
            "store.lock_duration",
            "shorter than 3s",
        ),
        (
            "{kind: aws, name: s, retry_deadline: 10ms}",
            "store.retry_deadline",
            "shorter than 1s",
        ),
    ] {
        let err = with_store(&format!("store: {store}")).unwrap_err();
        assert_eq!(err.field, field, "{store}: {err}");
        assert!(err.message.contains(message), "{store}: {err}");
        assert!(!err.help.is_empty(), "{store}: {err}");
    }
    let name = "x".repeat(501);
    let err = with_store(&format!("store: {{kind: aws, name: {name}}}")).unwrap_err();
    assert_eq!(err.field, "store.name");
}

/// A playbook of dotenv consumers (`consumers` is the list's YAML).
fn dotenv_playbook(consumers: &str) -> Result<Playbook> {
    load(&format!(
        "secret: s\nenvironment: development\nstore: {{kind: local, path: s.json}}\nconsumers:\n{consumers}"
    ))
}

const DOTENV_AUTH: &str = "  - name: auth\n    role: validator\n    kind: dotenv\n    files: [.env, ./config/../config/auth.env]\n    apply: [docker, compose, up, -d, --wait, --no-deps, --force-recreate, auth, \"{files}\"]\n    targets: [\"127.0.0.1:8081\"]\n    slots: {primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}\n    probes: [{type: header, path: /p, header: X-S}]\n";

#[test]
fn a_dotenv_consumer_reads_its_files_against_the_playbook_and_an_exec_consumers_fields() {
    let pb = dotenv_playbook(DOTENV_AUTH).unwrap();
    let ConsumerKind::Dotenv(d) = &pb.consumers[0].kind else {
        panic!("{:?}", pb.consumers[0].kind)
    };
    assert_eq!(
        d.files,
        [
            PathBuf::from("/base/.env"),
            PathBuf::from("/base/config/auth.env")
        ]
    );
    assert_eq!(d.exec.apply.last().map(String::as_str), Some("{files}"));
    assert_eq!(d.exec.targets, ["127.0.0.1:8081"]);
    assert_eq!(pb.consumers[0].pickup, Pickup::Restart);
}

#[test]
fn dotenv_consumers_refuse_what_they_cannot_do() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    files: [.env, ./config/../config/auth.env]\n",
            "    files: []\n",
            "no files: rotor would write nothing",
        ),
        (
            "    files: [.env, ./config/../config/auth.env]\n",
            "    files: [.env, ./.env]\n",
            "is already listed as consumers[0].files[0]",
        ),
        (
            "    files: [.env, ./config/../config/auth.env]\n",
            "    files: [config/]\n",
            "is not a file path",
        ),
        (
            "    files: [.env, ./config/../config/auth.env]\n",
            "",
            "missing required field `files`",
        ),
        (
            "\"{files}\"]\n",
            "\"{values}\"]\n",
            "unknown template field `{values}`",
        ),
        (
            "    targets:",
            "    pickup: reload\n    targets:",
            "not supported by `dotenv` consumers",
        ),
        (
            "    targets:",
            "    instances: 2\n    targets:",
            "a `dotenv` consumer has no `instances`",
        ),
    ];
    for (from, to, want) in cases {
        let text = DOTENV_AUTH.replace(from, to);
        assert_ne!(text, DOTENV_AUTH, "{from}");
        let e = dotenv_playbook(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{to}: {e}");
    }
    // `{files}` is a dotenv consumer's field only.
    let exec = DOTENV_AUTH
        .replace("kind: dotenv", "kind: exec")
        .replace("    files: [.env, ./config/../config/auth.env]\n", "");
    let e = dotenv_playbook(&exec).unwrap_err().to_string();
    assert!(e.contains("unknown template field `{files}`"), "{e}");
}

/// Two consumers writing one name into one file would overwrite each other's value (they move
/// at different steps); distinct names in one shared file are fine.
#[test]
fn two_dotenv_consumers_never_write_one_name_into_one_file() {
    let other = DOTENV_AUTH
        .replace("name: auth", "name: api")
        .replace("8081", "8082");
    let e = dotenv_playbook(&format!("{DOTENV_AUTH}{other}")).unwrap_err();
    assert_eq!(e.field, "consumers[1].files");
    assert!(
        e.message
            .contains("consumers `auth` and `api` both write `SERVICE_SECRET` into /base/.env"),
        "{e}"
    );
    let other = other
        .replace("SERVICE_SECRET_PREVIOUS", "JWT_SECRET_KEY_PREVIOUS")
        .replace("SERVICE_SECRET", "JWT_SECRET_KEY");
    dotenv_playbook(&format!("{DOTENV_AUTH}{other}")).unwrap();
}

#[test]
fn one_env_file_reached_by_two_spellings_is_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("config")).unwrap();
    std::fs::write(p.join(".env.development"), "").unwrap();
    std::os::unix::fs::symlink(".env.development", p.join(".env")).unwrap();
    std::os::unix::fs::symlink("config", p.join("conf")).unwrap();
    let text = |a: &str, b: &str| {
        let other = DOTENV_AUTH
            .replace("name: auth", "name: api")
            .replace("8081", "8082")
            .replace("[.env, ./config/../config/auth.env]", &format!("[{b}]"));
        let first = DOTENV_AUTH.replace("[.env, ./config/../config/auth.env]", &format!("[{a}]"));
        format!(
            "secret: s\nenvironment: development\nstore: {{kind: local, path: s.json}}\nconsumers:\n{first}{other}"
        )
    };
    for (a, b, named) in [
        // A link to the file.
        (
            ".env",
            ".env.development",
            ".env.development (listed by `auth` as ",
        ),
        // A linked directory, the file not there yet.
        (
            "config/auth.env",
            "conf/auth.env",
            "conf/auth.env (listed by `auth` as ",
        ),
        // An absolute spelling of a relative one.
        (
            ".env.development",
            &p.join(".env.development").display().to_string(),
            "both write `SERVICE_SECRET` into",
        ),
    ] {
        let e = load_str(&text(a, b), "test.yaml", p).unwrap_err();
        assert_eq!(e.field, "consumers[1].files", "{a} {b}");
        assert!(
            e.message
                .contains("consumers `auth` and `api` both write `SERVICE_SECRET`")
                && e.message.contains(named),
            "{a} {b}: {e}"
        );
    }
    load_str(&text(".env", "config/auth.env"), "test.yaml", p).unwrap();
}

/// MINIMAL with `keep` set to `keep` (a flow mapping, or nothing).
fn with_keep(keep: &str) -> Result<Playbook> {
    load(&MINIMAL.replace(
        "environment: test\n",
        &format!("environment: test\nkeep: {keep}\n"),
    ))
}

#[test]
fn keep_has_documented_defaults_and_reads_every_field() {
    use crate::playbook::Keep;
    let defaults = Keep {
        history: 50,
        instance_logs: 5,
        destroyed_versions: 100,
        audit_log_size: 10 * 1024 * 1024,
        audit_logs: 5,
    };
    assert_eq!(load(MINIMAL).unwrap().keep, defaults);
    assert_eq!(with_keep("").unwrap().keep, defaults, "a null section");
    let pb = with_keep(
        "{history: 0, instance_logs: 1, destroyed_versions: 1, audit_log_size: 512KiB, audit_logs: 100}",
    )
    .unwrap();
    assert_eq!(
        pb.keep,
        Keep {
            history: 0,
            instance_logs: 1,
            destroyed_versions: 1,
            audit_log_size: 512 * 1024,
            audit_logs: 100,
        }
    );
    for (size, bytes) in [("1 GiB", 1 << 30), ("64KiB", 64 << 10), ("2MB", 2_000_000)] {
        let pb = with_keep(&format!("{{audit_log_size: {size}}}")).unwrap();
        assert_eq!(pb.keep.audit_log_size, bytes, "{size}");
    }
    // Only the history bounds how many rotations' logs can be told apart.
    let pb = with_keep("{history: 4, instance_logs: 5}").unwrap();
    assert_eq!((pb.keep.history, pb.keep.instance_logs), (4, 5));
}

#[test]
fn bad_keep_fields_name_the_field_the_bounds_and_what_to_do() {
    for (keep, field, message, help) in [
        ("[50]", "keep", "expected a mapping", "history: 50"),
        (
            "{histroy: 5}",
            "keep.histroy",
            "unknown field `histroy`",
            "did you mean `history`?",
        ),
        (
            "{retention: 7d}",
            "keep.retention",
            "keep has no `retention`",
            "timings.retention",
        ),
        (
            "{history: -1}",
            "keep.history",
            "-1 is out of range (0 to 10000)",
            "<state_dir>/history",
        ),
        (
            "{history: 10001}",
            "keep.history",
            "out of range (0 to 10000)",
            "finished rotations",
        ),
        (
            "{history: lots}",
            "keep.history",
            "expected a whole number",
            "0 to 10000",
        ),
        (
            "{instance_logs: 1001, history: 10000}",
            "keep.instance_logs",
            "out of range (0 to 1000)",
            "stopped process instances",
        ),
        (
            "{destroyed_versions: 0}",
            "keep.destroyed_versions",
            "out of range (1 to 10000)",
            "at least 1",
        ),
        (
            "{audit_logs: 0}",
            "keep.audit_logs",
            "out of range (1 to 100)",
            "audit.log.1",
        ),
        (
            "{audit_log_size: 10}",
            "keep.audit_log_size",
            "`10` is not a size",
            "with a unit",
        ),
        (
            "{audit_log_size: ten megs}",
            "keep.audit_log_size",
            "`ten megs` is not a size",
            "e.g. 10MiB",
        ),
        (
            "{audit_log_size: 1KiB}",
            "keep.audit_log_size",
            "out of range (64.0 KiB to 1.0 GiB)",
            "64.0 KiB",
        ),
        (
            "{audit_log_size: 2GiB}",
            "keep.audit_log_size",
            "out of range",
            "1.0 GiB",
        ),
        (
            "{audit_log_size: [1]}",
            "keep.audit_log_size",
            "expected a size",
            "10MiB",
        ),
        (
            "{instance_logs: 5, history: 3}",
            "keep.instance_logs",
            "keep.instance_logs (5) is more than keep.history (3) + 1",
            "raise keep.history",
        ),
        (
            "{history: 0}",
            "keep.history",
            "keep.instance_logs (5) is more than keep.history (0) + 1",
            "lower keep.instance_logs",
        ),
    ] {
        let e = with_keep(keep).unwrap_err();
        assert_eq!(e.field, field, "{keep}: {e}");
        assert!(e.message.contains(message), "{keep}: {e}");
        assert!(e.help.contains(help), "{keep}: {e}");
        assert!(e.line >= 3, "{keep}: {e}");
    }
}
