//! `--playbook-draft`: a playbook skeleton for the secret `discover` found most readers of,
//! with every service that reads it as a consumer, the name it reads as its primary slot and
//! the other names of the same secret it reads as aliases. What discover cannot know (the
//! secret's name, the environment, how each service is redeployed and probed) is a blank,
//! `"<FILL: …>"`; the draft loads as a playbook once every blank is filled.

use std::io::Write as _;
use std::path::Path;

use super::Report;
use super::findings::SecretGroup;

/// The text of a blank with `hint`.
fn blank(hint: &str) -> String {
    format!("\"<FILL: {hint}>\"")
}

/// The draft for `report` (a comment only when it found no secret read by a service).
pub fn playbook(report: &Report) -> String {
    let mut s = format!(
        "# Drafted by `rotor discover` from {}.\n# Fill in every <FILL: …>, check what was discovered (the `discovered:` comments), then\n# run `rotor plan` on it. docs/playbook.md describes every field.\n",
        report.root.display()
    );
    let Some(g) = report
        .secrets
        .iter()
        .filter(|g| !g.readers.is_empty())
        .max_by_key(|g| (g.readers.len(), std::cmp::Reverse(g.names.clone())))
    else {
        s.push_str("# No secret read by a service was found: nothing to draft.\n");
        return s;
    };
    for other in report
        .secrets
        .iter()
        .filter(|o| !o.readers.is_empty() && o.names != g.names)
    {
        s.push_str(&format!(
            "# discovered: another secret ({}) needs its own playbook.\n",
            other.names.join(", ")
        ));
    }
    s.push_str(&format!(
        "secret: {}\nenvironment: {}\n",
        blank("the secret's name, e.g. service-secret"),
        blank("production, staging, test or development")
    ));
    s.push_str(&store(g));
    s.push_str("consumers:\n");
    for (service, names) in &g.readers {
        s.push_str(&consumer(report, g, service, names));
    }
    s
}

fn store(g: &SecretGroup) -> String {
    let sm = g
        .external
        .iter()
        .find_map(|e| e.strip_prefix("secretmanager:"));
    match sm {
        Some(name) => format!(
            "store:                      # discovered: Secret Manager secret {name}\n  kind: gcp\n  project: {}\n  name: {name}\n",
            blank("the Google Cloud project id")
        ),
        None => format!(
            "store:                      # discovered: the value lives in files only; pick a store\n  kind: local\n  path: {}\n",
            blank("a store file, e.g. store.json")
        ),
    }
}

fn consumer(report: &Report, g: &SecretGroup, service: &str, names: &[String]) -> String {
    // The name the service's own code reads, else the group's most read one.
    let primary = report
        .references
        .iter()
        .find(|r| {
            r.service.as_deref() == Some(service)
                && matches!(r.kind, super::RefKind::Reads)
                && !matches!(r.source, "compose" | "dotenv" | "kubernetes" | "cloud-run")
                && names.contains(&r.name)
        })
        .map(|r| r.name.clone())
        .unwrap_or_else(|| primary_of(g, names));
    let mut s = String::new();
    let where_read: Vec<String> = report
        .references
        .iter()
        .filter(|r| r.service.as_deref() == Some(service) && names.contains(&r.name))
        .take(3)
        .map(|r| format!("{}:{}", r.file, r.line))
        .collect();
    s.push_str(&format!(
        "  - name: {service}            # discovered: reads {} ({})\n",
        names.join(", "),
        where_read.join(", ")
    ));
    s.push_str(&format!(
        "    role: both                 # check: signer, validator or both\n    kind: exec\n    apply: [sh, -c, {}]\n    targets: [{}]\n",
        blank(&format!(
            "the command that redeploys {service} with the names in its environment"
        )),
        blank(&format!("host:port where {service} answers"))
    ));
    s.push_str(&format!(
        "    slots:\n      primary: {primary}\n      secondary: {primary}_PREVIOUS   # the name {service} will read the previous value under\n"
    ));
    let aliases: Vec<&String> = names.iter().filter(|n| **n != primary).collect();
    if !aliases.is_empty() {
        s.push_str("      aliases:\n");
        for a in aliases {
            s.push_str(&format!("        {a}: primary\n"));
        }
    }
    s.push_str(&format!(
        "    probes:\n      - type: header\n        path: {}\n        header: X-Service-Secret\n",
        blank("a path that checks the secret, e.g. /api/ping")
    ));
    s.push_str(&format!(
        "    roundtrips:\n      - to: {}\n        path: {}\n",
        blank("a validator consumer this service calls"),
        blank("a path on this service that calls {target} with the secret")
    ));
    s
}

/// The name a service reads as its primary: the group's most read name among `names`.
fn primary_of(g: &SecretGroup, names: &[String]) -> String {
    let count = |n: &String| g.readers.values().filter(|v| v.contains(n)).count();
    names
        .iter()
        .max_by_key(|n| (count(n), std::cmp::Reverse((*n).clone())))
        .cloned()
        .unwrap_or_default()
}

/// Writes `text` to a new file `path` (never over an existing one), mode 0644.
pub fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
