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
