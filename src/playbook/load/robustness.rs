//! The loader against hostile and careless input: an upper bound on every duration, size and
//! count; work linear in the input whatever its shape; bounded echoes; fields that name a
//! secret never echoed; and a seeded mutation harness over the shipped playbooks. The timings
//! printed (`--nocapture`) are for reading; the assertions are on work done, with a time bound
//! an order of magnitude above what was measured.

#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use super::node::{MAX_DEPTH, MAX_NODES};
use super::text::bound;
use super::*;

/// A valid playbook to edit.
const MINIMAL: &str = "secret: s\nenvironment: test\nstore: {kind: local, path: s.json}\nconsumers:\n  - name: a\n    role: both\n    kind: process\n    instances: 1\n    command: [x]\n    slots: {primary: P, secondary: S}\n    probes: [{type: jwt, path: /p}]\n    roundtrips: [{to: a, path: \"/r?t={target}\"}]\n";

/// Longest error text (both lines) any input may produce.
const MAX_ERROR_BYTES: usize = 2048;

fn load(text: &str) -> Result<Playbook> {
    load_counted(text.as_bytes()).0
}

fn load_err(text: &str) -> PlaybookError {
    match load(text) {
        Ok(_) => panic!(
            "loaded, but should fail:\n{}",
            &text[..text.len().min(2000)]
        ),
        Err(e) => e,
    }
}

/// MINIMAL with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} is not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

// 1. Every duration, size and count has an upper bound.

/// A playbook with duration `field` set to `value`.
fn with_duration(field: &str, value: &str) -> String {
    match field {
        "max_age" => format!("{MINIMAL}max_age: {value}\n"),
        "timings.readiness_timeout" => {
            format!("{MINIMAL}timings: {{rollout_timeout: 24h, readiness_timeout: {value}}}\n")
        }
        "cluster.lease_duration" => format!("{MINIMAL}cluster: {{lease_duration: {value}}}\n"),
        "store.retry_deadline" | "store.write_interval" => edit(
            "store: {kind: local, path: s.json}",
            &format!(
                "store: {{kind: gcp, project: my-project, name: s, {}: {value}}}",
                &field[6..]
            ),
        ),
        "consumers[0].probes[0].ttl" => edit(
            "probes: [{type: jwt, path: /p}]",
            &format!("probes: [{{type: jwt, path: /p, ttl: {value}}}]"),
        ),
        timing => format!("{MINIMAL}timings: {{{}: {value}}}\n", &timing[8..]),
    }
}

/// Every duration field, its largest value, and that value as written.
const DURATIONS: &[(&str, Duration, &str)] = &[
    ("max_age", TEN_YEARS, "3650d"),
    ("timings.rollout_timeout", DAY, "24h"),
    ("timings.readiness_timeout", DAY, "24h"),
    ("timings.soak", HOUR, "1h"),
    ("timings.grace", TEN_YEARS, "3650d"),
    ("timings.retention", TEN_YEARS, "3650d"),
    ("timings.drain", HOUR, "1h"),
    ("timings.probe_timeout", Duration::from_secs(600), "10m"),
    ("cluster.lease_duration", HOUR, "1h"),
    ("store.retry_deadline", HOUR, "1h"),
    ("store.write_interval", MINUTE, "1m"),
    ("consumers[0].probes[0].ttl", DAY, "24h"),
];

#[test]
fn every_duration_is_accepted_up_to_its_bound_and_refused_past_it() {
    for &(field, max, shown) in DURATIONS {
        assert_eq!(bound(max), shown, "{field}");
        if let Err(e) = load(&with_duration(field, shown)) {
            panic!("{field}: {shown} should load:\n{e}");
        }
        let past = format!("{}ms", max.as_millis() + 1);
        for value in [
            past.as_str(),
            "300000y",
            "1000000000000000s",
            "18446744073709551615s",
            "99999999999999999999999999999s",
            "9999999999999999999999999999999999999999999999999999d",
        ] {
            let e = load_err(&with_duration(field, value));
            assert_eq!(e.field, field, "{value}: {e}");
            assert!(
                e.message.ends_with(&format!("is longer than {shown}")),
                "{field} {value}: {e}"
            );
            assert!(e.help.contains(&format!("at most {shown}")), "{e}");
        }
    }
}

#[test]
fn the_largest_durations_cannot_overflow_an_instant_or_a_date() {
    let text = format!(
        "{MINIMAL}max_age: 3650d\ntimings: {{rollout_timeout: 24h, readiness_timeout: 24h, soak: 1h, grace: 3650d, retention: 3650d, drain: 1h, probe_timeout: 10m}}\n"
    )
    .replace("path: /p}", "path: /p, ttl: 24h}");
    let pb = load(&text).unwrap();
    let t = &pb.timings;
    let all = [
        pb.max_age.unwrap(),
        t.rollout_timeout,
        t.readiness_timeout,
        t.soak,
        t.grace,
        t.retention,
        t.drain,
        t.probe_timeout,
    ];
    // Every wait at once, added to now, in both clocks.
    let sum: Duration = all.iter().sum();
    assert!(Instant::now().checked_add(sum).is_some());
    let sum = chrono::Duration::from_std(sum).unwrap();
    assert!(chrono::Utc::now().checked_add_signed(sum).is_some());
    assert!(
        chrono::DateTime::<chrono::Utc>::MIN_UTC
            .checked_add_signed(sum)
            .is_some()
    );
}

#[test]
fn integers_and_lists_have_upper_bounds() {
    let consumer = |i: usize| {
        format!(
            "  - {{name: c{i}, role: validator, kind: process, instances: 1, command: [x], slots: {{primary: P, secondary: S}}, probes: [{{type: jwt, path: /p}}]}}\n"
        )
    };
    let fleet = |n: usize| {
        let mut text =
            "secret: s\nenvironment: test\nstore: {kind: local, path: s.json}\nconsumers:\n"
                .to_string();
        (0..n).for_each(|i| text.push_str(&consumer(i)));
        text
    };
    load(&fleet(MAX_CONSUMERS)).unwrap();
    let e = load_err(&fleet(MAX_CONSUMERS + 1));
    assert_eq!(e.field, "consumers");
    assert_eq!(e.message, "1025 consumers; at most 1024 are allowed");

    let list = |item: &str, n: usize| vec![item; n].join(", ");
    let cases = [
        (
            edit("[x]", &format!("[{}]", list("x", MAX_ARGS + 1))),
            "consumers[0].command",
        ),
        (
            edit(
                "[{type: jwt, path: /p}]",
                &format!("[{}]", list("{type: jwt, path: /p}", MAX_PROBES + 1)),
            ),
            "consumers[0].probes",
        ),
        (
            edit(
                "[{to: a, path: \"/r?t={target}\"}]",
                &format!(
                    "[{}]",
                    list("{to: a, path: \"/r?t={target}\"}", MAX_ROUNDTRIPS + 1)
                ),
            ),
            "consumers[0].roundtrips",
        ),
        (
            edit(
                "path: /p}",
                &format!("path: /p, accept: [{}]}}", list("200", MAX_STATUSES + 1)),
            ),
            "consumers[0].probes[0].accept",
        ),
        (
            edit(
                "command: [x]",
                &format!(
                    "command: [x]\n    env: {{{}}}",
                    (0..=MAX_ENV)
                        .map(|i| format!("E{i}: v"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            "consumers[0].env",
        ),
        (
            edit(
                "secondary: S}",
                &format!(
                    "secondary: S, aliases: {{{}}}}}",
                    (0..=MAX_ALIASES)
                        .map(|i| format!("A{i}: primary"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            "consumers[0].slots.aliases",
        ),
    ];
    for (text, field) in cases {
        let e = load_err(&text);
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains("allowed"), "{e}");
    }

    // Strings: names and paths up to 4096 bytes, arguments and env values up to 32 KiB.
    let long = "x".repeat(MAX_STRING + 1);
    let e = load_err(&edit("path: s.json", &format!("path: {long}")));
    assert_eq!(e.field, "store.path");
    assert_eq!(
        e.message,
        "the value is 4097 bytes long, more than the 4096 allowed"
    );
    load(&edit("[x]", &format!("[x, {long}]"))).unwrap();
    let e = load_err(&edit("[x]", &format!("[x, {}]", "y".repeat(MAX_ARG + 1))));
    assert_eq!(e.field, "consumers[0].command[1]");
    let e = load_err(&edit(
        "command: [x]",
        &format!("command: [x]\n    env: {{V: {}}}", "v".repeat(MAX_ARG + 1)),
    ));
    assert_eq!(e.field, "consumers[0].env.V");

    // Whole numbers beyond any integer type are out of range, not "decimal".
    for (field, from, to) in [
        (
            "generate.length",
            "environment: test\n",
            "environment: test\ngenerate: {length: N}\n",
        ),
        ("consumers[0].instances", "instances: 1", "instances: N"),
        (
            "concurrency",
            "environment: test\n",
            "environment: test\nconcurrency: N\n",
        ),
    ] {
        for n in [
            "123456789012345678901234567890123456789",
            "1234567890123456789012345678901234567890",
            "-99999999999999999999999999999999999999999999999999",
            &"9".repeat(3000),
        ] {
            let e = load_err(&edit(from, &to.replace('N', n)));
            assert_eq!(e.field, field, "{e}");
            assert!(
                e.message.contains("out of range") || e.message.contains("maximum"),
                "{e}"
            );
            assert!(!e.message.contains("decimal"), "{e}");
            assert!(e.to_string().len() < 600, "{e}");
        }
    }

    // The file itself.
    let mut big = MINIMAL.to_string();
    big.push_str(&format!("# {}\n", "c".repeat(MAX_FILE_BYTES)));
    let e = load_err(&big);
    assert_eq!((e.line, e.column, e.field.as_str()), (1, 1, "-"));
    assert_eq!(e.message, "the playbook is larger than 4 MiB");
}

// 2. Linear work, whatever the shape of a document up to the size limit.

/// Loads `text`, checks the work is bounded and the error (if any) is short, and returns the
/// result.
fn bounded(name: &str, text: &str) -> Result<Playbook> {
    let started = Instant::now();
    let (result, nodes, steps) = load_counted(text.as_bytes());
    let took = started.elapsed();
    // Measured at most 0.45 s in a debug build and 0.12 s in release (the worst shapes, one
    // core): more than an order of magnitude of headroom for a loaded machine. The work
    // itself is held by the node and step counts below.
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    eprintln!(
        "{name}: {} bytes, {took:?}, {nodes} nodes, {steps} steps",
        text.len()
    );
    assert!(took < limit, "{name}: {took:?}");
    assert!(nodes <= MAX_NODES + 1, "{name}: {nodes} nodes");
    assert!(
        steps <= 4 * nodes + 64,
        "{name}: {steps} steps for {nodes} nodes"
    );
    if let Err(e) = &result {
        assert!(e.to_string().len() <= MAX_ERROR_BYTES, "{name}: {e}");
    }
    result
}

fn about(bytes: usize, unit: &str) -> String {
    unit.repeat(bytes / unit.len())
}

#[test]
fn documents_of_any_shape_are_loaded_or_refused_with_bounded_work() {
    const SIZE: usize = 2 << 20;
    // A mapping of 120,000 keys: refused at the node limit.
    let keys: String = (0..120_000).map(|i| format!("k{i:07}: 1\n")).collect();
    let e = bounded("keys", &keys).unwrap_err();
    assert!(e.message.contains("nodes"), "{e}");
    // A mapping just under the node limit with a duplicate last key: the duplicate check is
    // linear (it compared every pair, 45 s for 120,000 keys).
    let n = MAX_NODES / 2 - 100;
    let env: String = (0..n).map(|i| format!("    E{i}: v\n")).collect();
    let text = edit(
        "command: [x]\n",
        &format!("command: [x]\n    env:\n{env}    E0: again\n"),
    );
    let e = bounded("duplicate key", &text).unwrap_err();
    assert_eq!(e.message, "duplicate key `E0`");
    assert_eq!(e.line as usize, 10 + n + 1);
    // Long sequences, flow and block.
    bounded("flow sequence", &format!("a: [{}1]\n", about(SIZE, "1,"))).unwrap_err();
    bounded("block sequence", &format!("a:\n{}", about(SIZE, "- 1\n"))).unwrap_err();
    bounded(
        "sequence of mappings",
        &format!("a:\n{}", about(SIZE, "- {b: 1}\n")),
    )
    .unwrap_err();
    // Deep nesting, flow and block.
    let e = bounded(
        "flow nesting",
        &format!("a: {}{}\n", "[".repeat(SIZE / 2), "]".repeat(SIZE / 2)),
    )
    .unwrap_err();
    assert!(
        e.message.contains(&format!("more than {MAX_DEPTH} levels")),
        "{e}"
    );
    let deep: String = (0..2000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    bounded("block nesting", &deep).unwrap_err();
    // One huge scalar, as a value, a key, in quotes, folded, and in a comment.
    let x = "x".repeat(SIZE);
    bounded("scalar", &format!("secret: {x}\n")).unwrap_err();
    bounded("quoted", &format!("secret: \"{x}\"\n")).unwrap_err();
    bounded("folded", &format!("secret: >\n  {x}\n")).unwrap_err();
    bounded("key", &format!("? {x}\n: 1\n")).unwrap_err();
    bounded("comment", &format!("{MINIMAL}# {x}\n")).unwrap();
    // Many comments and blank lines.
    bounded("comments", &format!("{}{MINIMAL}", about(SIZE, "#\n\n"))).unwrap();
    // An alias bomb: copies add up past the text limit long before memory does.
    let bomb = format!(
        "a: &x \"{}\"\nb: [{}]\n",
        "x".repeat(1 << 20),
        vec!["*x"; 64].join(", ")
    );
    let e = bounded("alias bomb", &bomb).unwrap_err();
    assert!(e.message.contains("MiB"), "{e}");
    let laughs = format!(
        "a: &a [1,1,1,1,1,1,1,1,1,1]\n{}",
        (b'b'..=b'z')
            .map(|c| {
                let prev = c - 1;
                format!(
                    "{}: &{} [{}]\n",
                    c as char,
                    c as char,
                    vec![format!("*{}", prev as char); 10].join(",")
                )
            })
            .collect::<String>()
    );
    bounded("billion laughs", &laughs).unwrap_err();
    // Many documents.
    bounded("documents", &about(SIZE, "---\n")).unwrap_err();
    // The largest fleet: accepted.
    let mut fleet =
        "secret: s\nenvironment: test\nstore: {kind: local, path: s.json}\nconsumers:\n"
            .to_string();
    for i in 0..MAX_CONSUMERS {
        fleet.push_str(&format!(
            "  - name: consumer-{i}\n    role: both\n    kind: process\n    instances: 64\n    command: [\"./service\", \"--name\", \"consumer-{i}\", \"--verbose\"]\n    env: {{LOG_LEVEL: info, RUST_LOG: debug, REGION: eu-west-1}}\n    slots: {{primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS, aliases: {{SECRET_KEY: primary}}}}\n    probes: [{{type: header, path: /api/ping, header: X-Service-Secret}}, {{type: jwt, path: /api/me}}]\n    roundtrips: [{{to: consumer-{}, path: \"/relay?target={{target}}\"}}]\n",
            (i + 1) % MAX_CONSUMERS
        ));
    }
    assert!(fleet.len() > 400_000, "{}", fleet.len());
    let pb = bounded("fleet", &fleet).unwrap();
    assert_eq!(pb.consumers.len(), MAX_CONSUMERS);
}

// 3. Bounded echo.

#[test]
fn every_echoed_piece_of_input_is_truncated() {
    // A long value (under the string limit, so it reaches the check that echoes it) in every
    // place an error repeats input.
    let v = "Z".repeat(3000);
    let gcp = |field: &str| {
        edit(
            "store: {kind: local, path: s.json}",
            &format!("store: {{kind: gcp, project: my-project, name: s, {field}}}"),
        )
    };
    let cases = [
        edit("environment: test", &format!("environment: {v}")),
        edit("environment: test", &format!("environment: test\n{v}: 1")),
        edit("environment: test", &format!("environment: test\nsecret: again\n{v}: 1\n{v}: 2")),
        edit("environment: test", &format!("environment: test\ngenerate: {{alphabet: {v}}}")),
        edit("kind: local", &format!("kind: {v}")),
        gcp(&format!("endpoint: {v}")).replace("project: my-project, ", &format!("project: {v}, ")),
        gcp(&format!("endpoint: {v}")),
        gcp("endpoint: x").replace("name: s", &format!("name: {v}")),
        format!("{MINIMAL}cluster: {{namespace: {v}}}\n"),
        format!("{MINIMAL}timings: {{grace: {v}}}\n"),
        edit("name: a", &format!("name: {v}")),
        edit("role: both", &format!("role: {v}")),
        edit("kind: process", &format!("kind: {v}")),
        edit("instances: 1", &format!("instances: 1\n    host: {v}")),
        edit("instances: 1", &format!("instances: 1\n    health_path: {v}")),
        edit("instances: 1", &format!("instances: 1\n    stop_signal: {v}")),
        edit("instances: 1", &format!("instances: 1\n    pickup: {v}")),
        edit("instances: 1", &format!("instances: 1\n    fingerprints_path: {v}")),
        edit("instances: 1", &format!("instances: 1\n    {v}: 1")),
        edit("primary: P", &format!("primary: {v}-")),
        edit("primary: P", &format!("primary: ROTOR_{v}")),
        edit("secondary: S", &format!("secondary: P{v}, aliases: {{P{v}: primary}}")),
        edit("secondary: S", &format!("secondary: S, aliases: {{A: {v}}}")),
        edit("command: [x]", &format!("command: [x]\n    env: {{{v}-: 1}}")),
        edit("command: [x]", &format!("command: [x]\n    env: {{ROTOR_{v}: 1}}")),
        edit("command: [x]", &format!("command: [x]\n    env: {{P{v}: 1}}")).replace("primary: P", &format!("primary: P{v}")),
        edit("type: jwt", &format!("type: {v}")),
        edit("path: /p", &format!("path: {v}")),
        edit("{type: jwt, path: /p}", &format!("{{type: header, path: /p, header: \"{v}:\"}}")),
        edit("{type: jwt, path: /p}", &format!("{{type: exec, command: [c], via: {v}}}")),
        edit("{type: jwt, path: /p}", &format!("{{type: exec, command: [c], via: env, env_name: {v}-}}")),
        edit("to: a", &format!("to: {v}")),
        edit("role: both", "role: validator\n  - name: b\n    role: signer\n    kind: process\n    instances: 1\n    command: [x]\n    slots: {primary: P}\n    roundtrips: [{to: ZZ, path: \"/r?t={target}\"}]").replace("to: ZZ", &format!("to: {v}")).replace("    roundtrips: [{to: a, path: \"/r?t={target}\"}]\n", ""),
        edit("kind: process\n    instances: 1\n    command: [x]", &format!("kind: exec\n    apply: [\"x{{{v}}}\"]\n    targets: [h:1]")),
        edit("kind: process\n    instances: 1\n    command: [x]", &format!("kind: exec\n    apply: [x]\n    targets: [{v}]")),
        edit("kind: process\n    instances: 1\n    command: [x]", &format!("kind: kubernetes\n    workload: {{kind: Deployment, name: {v}}}\n    secret: s")),
        edit("kind: process\n    instances: 1\n    command: [x]", &format!("kind: kubernetes\n    workload: {{kind: {v}, name: w}}\n    secret: s")),
        edit("environment: test\n", &format!("environment: test\ngenerate: {{length: !{v} 48}}\n")),
        edit("environment: test\n", &format!("environment: test\ngenerate: {{length: [*{v}]}}\n")),
    ];
    for text in cases {
        let e = load_err(&text);
        let shown = e.to_string();
        assert!(shown.len() < 700, "{} bytes: {shown}", shown.len());
        assert!(!shown.contains(&"Z".repeat(ECHO_CHARS + 1)), "{shown}");
        assert!(!e.message.contains('\n'), "{shown}");
    }
}

#[test]
fn echo_keeps_one_line_of_at_most_80_characters() {
    assert_eq!(echo("abc"), "abc");
    assert_eq!(echo("a\nb\u{1b}"), "a\\nb\\u{1b}");
    let long = "é".repeat(200);
    assert_eq!(echo(&long), format!("{}…", "é".repeat(ECHO_CHARS)));
}

// 4. Fields that name a secret are never echoed.

#[test]
fn a_value_or_url_in_a_field_that_names_a_secret_is_never_echoed() {
    let value = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8=";
    let url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX";
    let cases = [
        (
            edit("secret: s", &format!("secret: {value}")),
            "secret",
            value,
        ),
        (edit("secret: s", "secret: ab_cd"), "secret", "ab_cd"),
        (
            edit("secret: s", &format!("secret: {}", "s".repeat(64))),
            "secret",
            "ssssssssss",
        ),
        (
            format!("{MINIMAL}notify: {{webhook_env: \"{url}\"}}\n"),
            "notify.webhook_env",
            "hooks.slack.com",
        ),
        (
            edit(
                "kind: process\n    instances: 1\n    command: [x]",
                &format!(
                    "kind: kubernetes\n    workload: {{kind: Deployment, name: w}}\n    secret: \"{value}\""
                ),
            ),
            "consumers[0].secret",
            value,
        ),
    ];
    for (text, field, hidden) in cases {
        let e = load_err(&text);
        assert_eq!(e.field, field, "{e}");
        assert!(!e.to_string().contains(hidden), "{e}");
        assert!(e.message.contains("characters that are not"), "{e}");
    }
    let e = load_err(&format!("{MINIMAL}notify: {{webhook_env: \"{url}\"}}\n"));
    assert!(e.message.contains("it looks like a URL"), "{e}");
    let e = load_err(&edit("secret: s", &format!("secret: {value}")));
    assert_eq!(
        e.message,
        "`secret` must be a name of 1 to 63 lowercase letters, digits and '-', starting with a letter (got 52 characters that are not: it does not start with a lowercase letter)"
    );
}

// 5. Smaller defects.

#[test]
fn non_finite_numbers_name_their_field() {
    for v in [".inf", "-.inf", ".nan", ".NaN", "+.INF", "1e999"] {
        let e = load_err(&edit("instances: 1", &format!("instances: {v}")));
        assert_eq!(e.field, "consumers[0].instances", "{v}: {e}");
        assert!(
            e.message.starts_with("expected a whole number, found "),
            "{e}"
        );
        let e = load_err(&edit(
            "environment: test\n",
            &format!("environment: test\ngenerate: {{length: {v}}}\n"),
        ));
        assert_eq!(e.field, "generate.length", "{v}: {e}");
    }
}

#[test]
fn the_node_limit_is_a_plain_message() {
    let text = format!("a: [{}1]\n", "1,".repeat(MAX_NODES + 10));
    let e = load_err(&text);
    assert_eq!(e.field, "-");
    assert_eq!(
        e.message,
        "the document has more than 100000 nodes (values, lists and mappings, counting each copy an alias makes)"
    );
    assert_eq!(
        e.help,
        "split the playbook or shrink it: one playbook describes one secret"
    );
    assert_eq!(e.line, 1);
    // Where the limit was passed: the 100,001st node (the mapping, `a`, the list, then items).
    assert_eq!(e.column as usize, 5 + 2 * (MAX_NODES - 3));
}

#[test]
fn only_core_tags_are_accepted() {
    let length = |v: &str| {
        edit(
            "environment: test\n",
            &format!("environment: test\ngenerate: {{length: {v}}}\n"),
        )
    };
    for (value, tag) in [
        ("!!python/object:os.system 2", "!!python/object:os.system"),
        (
            "!!python/object/apply:os.system [\"id\"]",
            "!!python/object/apply:os.system",
        ),
        ("!secret 48", "!secret"),
        ("!<tag:example.com,2000:x> 48", "!<tag:example.com,2000:x>"),
        ("!!binary NDg=", "!!binary"),
        ("!!timestamp 2001-12-14", "!!timestamp"),
    ] {
        let e = load_err(&length(value));
        assert_eq!(
            e.message,
            format!("unsupported YAML tag `{tag}`"),
            "{value}"
        );
    }
    let e = load_err(&length(&format!("!{} 48", "t".repeat(1000))));
    assert!(e.message.len() < 120, "{e}");
    // Core tags are fine.
    for value in ["!!int 48", "!<tag:yaml.org,2002:int> 48", "! 48x"] {
        let r = load(&length(value));
        assert!(
            r.as_ref().err().is_none_or(|e| !e.message.contains("tag")),
            "{value}: {r:?}"
        );
    }
    assert_eq!(load(&length("!!int 48")).unwrap().generate.length, 48);
    load(&edit("secret: s", "secret: !!str s")).unwrap();
    load(&edit("command: [x]", "command: !!seq [x]")).unwrap();
}

#[test]
fn empty_documents_around_the_playbook_are_accepted() {
    for text in [
        format!("{MINIMAL}---\n"),
        format!("{MINIMAL}---"),
        format!("{MINIMAL}--- # nothing more\n# really\n"),
        format!("{MINIMAL}...\n"),
        format!("{MINIMAL}---\n...\n"),
        format!("---\n{MINIMAL}---\n"),
        format!("{MINIMAL}---\n~\n"),
    ] {
        if let Err(e) = load(&text) {
            panic!("{text:?}: {e}");
        }
    }
    let e = load_err(&format!("{MINIMAL}---\n{MINIMAL}"));
    assert_eq!(e.message, "the file holds more than one YAML document");
    assert_eq!(e.line, 14);
    let e = load_err("---\n---\n");
    assert_eq!(e.message, "the playbook is empty");
}

// 6. A seeded mutation harness.

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Marks a value placed in a field that names a secret: it must never appear in an error.
const PLANTED: &str = "PlantedValue0x5eCr3t";

/// Values that have broken loaders: huge and odd numbers and durations, tags, aliases.
const NASTY: &[&str] = &[
    "99999999999999999999999999999999999999999",
    "-99999999999999999999",
    "18446744073709551616",
    "170141183460469231731687303715884105728",
    ".inf",
    "-.inf",
    ".nan",
    "1e999",
    "0x7fffffffffffffffffffffff",
    "300000y",
    "18446744073709551615s",
    "1000000000000000s",
    "99999999999999999999999999s",
    "0s",
    "!!python/object:os.system 2",
    "!!binary aGVsbG8=",
    "!x y",
    "!!str",
    "*nowhere",
    "&a [*a]",
    "<<: 1",
    "~",
    "\"\"",
    "[]",
    "{}",
    "- - -",
    "\"\\u0000\\n\\t\"",
    "'",
    "\"",
    "{{{",
    "? [a]\n: b",
    "|\n  block\n  text",
    ">-\n  folded",
];

/// One mutation of `text`.
fn mutate(rng: &mut Rng, text: &mut Vec<u8>) {
    let lines = |text: &[u8]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in text.iter().enumerate() {
            if b == b'\n' {
                out.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < text.len() {
            out.push((start, text.len()));
        }
        out
    };
    let all = lines(text);
    let line = if all.is_empty() {
        (0, 0)
    } else {
        all[rng.below(all.len())]
    };
    // Where a value goes on that line: after its ": " or "- ", else at its end.
    let value_at = {
        let l = &text[line.0..line.1];
        l.windows(2)
            .position(|w| w == b": " || w == b"- ")
            .map_or(line.1.saturating_sub(1).max(line.0), |i| line.0 + i + 2)
    };
    let value_end = text[value_at..line.1]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(line.1, |i| value_at + i);
    match rng.below(14) {
        0 => {
            if !text.is_empty() {
                let i = rng.below(text.len());
                text[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            text.drain(line.0..line.1);
        }
        2 => {
            let copy = text[line.0..line.1].to_vec();
            let times = 1 + rng.below(3);
            for _ in 0..times {
                text.splice(line.1..line.1, copy.iter().copied());
            }
        }
        3 | 4 => {
            let nasty = rng.pick(NASTY).as_bytes().to_vec();
            text.splice(value_at..value_end, nasty);
        }
        5 => {
            let len = [100, 5_000, 50_000][rng.below(3)];
            let c = rng.pick(&["x", "é", "0", " ", ": ", "- ", "\"", "\\", "{", "\t"]);
            text.splice(value_at..value_end, c.repeat(len / c.len()).into_bytes());
        }
        6 => {
            let tag = rng.pick(&[
                "!!python/object:os.system ",
                "!custom ",
                "!!binary ",
                "!!timestamp ",
                "!!str ",
                "!!int ",
                "!<tag:yaml.org,2002:map> ",
                "!! ",
            ]);
            text.splice(value_at..value_at, tag.bytes());
        }
        7 => {
            let depth = [3, 40, 200, 5_000][rng.below(4)];
            let (open, close) = if rng.below(2) == 0 {
                ("[", "]")
            } else {
                ("{a: ", "}")
            };
            let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            text.splice(value_at..value_end, nested.into_bytes());
        }
        8 => {
            let other = all[rng.below(all.len().max(1)).min(all.len().saturating_sub(1))];
            if other.0 > line.1 {
                let b = text[other.0..other.1].to_vec();
                let a = text[line.0..line.1].to_vec();
                text.splice(other.0..other.1, a);
                text.splice(line.0..line.1, b);
            }
        }
        9 => {
            let c = rng.pick(&[
                "\t", "\r", "\0", "\u{feff}", "#", "&", "*", "%", "@", "`", ":", "\u{85}",
            ]);
            let i = rng.below(text.len() + 1);
            text.splice(i..i, c.bytes());
        }
        10 => {
            let doc = rng.pick(&["---\n", "...\n", "--- !x\n", "%YAML 1.2\n---\n"]);
            let at = if rng.below(2) == 0 { 0 } else { text.len() };
            text.splice(at..at, doc.bytes());
        }
        11 => {
            // A value in a field that names a secret.
            let field = rng.pick(&["secret", "notify.webhook_env"]);
            let value = rng.pick(&[
                PLANTED,
                "\"https://hooks.example.com/PlantedValue0x5eCr3t\"",
                "PlantedValue0x5eCr3t-with-Upper",
                "planted-value-0x5ecr3t-AND-MORE",
            ]);
            let line = match field {
                "secret" => format!("secret: {value}\n"),
                _ => format!("notify: {{webhook_env: {value}}}\n"),
            };
            let old = text
                .windows(7)
                .position(|w| w == b"secret:")
                .filter(|&i| i == 0 || text[i - 1] == b'\n');
            match (field, old) {
                ("secret", Some(i)) => {
                    let end = text[i..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(text.len(), |e| i + e + 1);
                    text.splice(i..end, line.into_bytes());
                }
                _ => text.splice(0..0, line.into_bytes()).for_each(drop),
            }
        }
        12 => {
            let at = rng.below(text.len() + 1);
            text.truncate(at);
        }
        _ => {
            // An anchor on one value and aliases to it elsewhere.
            text.splice(value_at..value_at, b"&m ".iter().copied());
            let other = all[rng.below(all.len().max(1)).min(all.len().saturating_sub(1))];
            let at = text[other.0..]
                .windows(2)
                .position(|w| w == b": ")
                .map(|i| other.0 + i + 2);
            if let Some(at) = at.filter(|&a| a > value_at + 3) {
                let end = text[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |e| at + e);
                text.splice(at..end, b"*m".iter().copied());
            }
        }
    }
}

/// Lines and the length in characters of each, with YAML's line breaks ("\n", "\r\n", "\r").
fn line_lengths(bytes: &[u8]) -> Vec<usize> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = vec![0];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(0);
            }
            '\n' => out.push(0),
            _ => *out.last_mut().unwrap() += 1,
        }
    }
    out
}

#[test]
fn seeded_mutations_never_panic_and_errors_stay_located_short_and_bounded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = vec![std::fs::read(root.join("playbooks/local-demo.yaml")).unwrap()];
    let good = root.join("tests/fixtures/playbooks/good");
    let mut files: Vec<_> = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    seeds.extend(files.iter().map(|p| std::fs::read(p).unwrap()));
    seeds.push(MINIMAL.as_bytes().to_vec());

    const CASES: usize = 3000;
    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut worst) = (0, Duration::ZERO);
    for case in 0..CASES {
        let mut text = seeds[case % seeds.len()].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut text);
        }
        let one = Instant::now();
        let outcome = std::panic::catch_unwind(|| load_counted(&text));
        worst = worst.max(one.elapsed());
        let (result, nodes, steps) = outcome.unwrap_or_else(|_| {
            panic!(
                "case {case} panicked on:\n{}",
                String::from_utf8_lossy(&text)
            )
        });
        let show = || String::from_utf8_lossy(&text[..text.len().min(3000)]).into_owned();
        assert!(nodes <= MAX_NODES + 1, "case {case}: {nodes} nodes");
        assert!(
            steps <= 4 * nodes + 64,
            "case {case}: {steps} steps, {nodes} nodes"
        );
        let Err(e) = result else { continue };
        refused += 1;
        let shown = e.to_string();
        assert!(
            shown.len() <= MAX_ERROR_BYTES,
            "case {case}: {} bytes of error",
            shown.len()
        );
        assert!(
            !shown.contains("PlantedValue0x5eCr3t"),
            "case {case}: {shown}"
        );
        assert!(!shown.contains("planted-value"), "case {case}: {shown}");
        assert!(
            !e.message.contains('\n') && !e.help.contains('\n'),
            "case {case}: {shown}"
        );
        let lines = line_lengths(&text);
        let line = e.line as usize;
        assert!(
            (1..=lines.len()).contains(&line),
            "case {case}: line {line} of {}: {shown}\n{}",
            lines.len(),
            show()
        );
        assert!(
            (1..=lines[line - 1] + 1).contains(&(e.column as usize)),
            "case {case}: column {} of a {}-character line: {shown}\n{}",
            e.column,
            lines[line - 1],
            show()
        );
    }
    let took = started.elapsed();
    // Most mutations break the playbook; some keep it valid.
    assert!(
        refused > CASES / 2 && refused < CASES,
        "{refused} of {CASES} refused"
    );
    eprintln!("{CASES} mutated playbooks in {took:?} ({refused} refused, slowest {worst:?})");
}
