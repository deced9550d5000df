//! `rotor discover DIR`: where a shared secret lives in a repository (docs/discover.md). Reads
//! files only; changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::graph::Diagram;
use super::{CliError, CliResult};
use crate::discover::{Options, Report};
use crate::exit::Exit;
use crate::graph::{ConsumerNode, Edge, Graph, Name, SecretNode};
use crate::output::Output;

/// "Not read" lines the human report shows (a tree of generated or binary-named files can have
/// hundreds of thousands); the JSON report lists every one.
const MAX_NOT_READ_LINES: usize = 50;
/// `rotor discover` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to scan (a repository's root).
    pub dir: PathBuf,
    /// A name to look for (also `NAME_*`); repeat for several. Without it: every name that
    /// looks like a shared secret.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Also draw the secrets and who reads them under which name.
    #[arg(long, value_enum)]
    pub format: Option<Diagram>,
    /// Write a playbook skeleton for the secrets found to FILE (refused if FILE exists).
    #[arg(long, value_name = "FILE")]
    pub playbook_draft: Option<PathBuf>,
    /// Extra weak or development values, one per line (`#` comments), as a playbook's
    /// `policy.weak_values_file`.
    #[arg(long, value_name = "FILE")]
    pub weak_values_file: Option<PathBuf>,
    /// Most files to read.
    #[arg(long, default_value_t = crate::discover::MAX_FILES)]
    pub max_files: usize,
    /// Largest file to read, in bytes.
    #[arg(long, default_value_t = crate::discover::MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
}

pub(super) async fn run(a: Args, out: &Arc<Output>) -> CliResult {
    for s in &a.secrets {
        if !crate::dotenv::valid_name(s) {
            return Err(CliError::usage(format!(
                "--secret {}: not a variable name\n  help: give the name as services read it, e.g. --secret SERVICE_SECRET",
                crate::redact::redact(s)
            )));
        }
    }
    let weak = match &a.weak_values_file {
        None => Vec::new(),
        Some(p) => crate::engine::policy::read_weak_file(p)
            .map_err(|e| CliError::usage(format!("--weak-values-file {e}")))?,
    };
    if let Some(draft) = &a.playbook_draft
        && draft.exists()
    {
        return Err(CliError::usage(format!(
            "--playbook-draft {}: the file exists\n  help: give a new file; rotor never overwrites one",
            draft.display()
        )));
    }
    let opts = Options {
        secrets: a.secrets.clone(),
        max_files: a.max_files,
        max_file_bytes: a.max_file_bytes,
        weak,
    };
    let dir = a.dir.clone();
    let report = tokio::task::spawn_blocking(move || crate::discover::scan(&dir, &opts))
        .await
        .map_err(|e| internal(format!("the scan stopped: {e}")))?
        .map_err(|e| CliError::usage(e.to_string()))?;
    let graph = graph_of(&report);
    let diagram = a.format.map(|f| match f {
        Diagram::Mermaid => graph.mermaid(),
        Diagram::Dot => graph.dot(),
    });
    if let Some(path) = &a.playbook_draft {
        let base = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let text = crate::discover::draft::playbook(&report, &base);
        crate::discover::draft::write_new(path, &text)
            .map_err(|e| internal(format!("--playbook-draft {}: {e}", path.display())))?;
    }
    out.result(
        &serde_json::json!({
            "discover": &report,
            "diagram": diagram,
        }),
        || human(&report, diagram.as_deref(), a.playbook_draft.as_deref()),
    );
    Ok(if report.findings.is_empty() {
        Exit::Ok
    } else {
        Exit::Findings
    })
}

/// The secrets found as a dependency map: one secret per group, one consumer per service.
fn graph_of(r: &Report) -> Graph {
    let mut secrets = Vec::new();
    let mut consumers: Vec<ConsumerNode> = Vec::new();
    let mut edges = Vec::new();
    for g in &r.secrets {
        let id = g.names.join(" / ");
        secrets.push(SecretNode {
            id: id.clone(),
            secret: g.names.first().cloned().unwrap_or_default(),
            environment: "repository".into(),
            store: if g.external.is_empty() {
                "files".into()
            } else {
                g.external.join(", ")
            },
        });
        for (service, names) in &g.readers {
            if !consumers.iter().any(|c| &c.name == service) {
                consumers.push(ConsumerNode {
                    name: service.clone(),
                    runs: "service".into(),
                });
            }
            edges.push(Edge {
                secret: id.clone(),
                consumer: service.clone(),
                role: "reads".into(),
                names: names
                    .iter()
                    .map(|n| Name {
                        name: n.clone(),
                        slot: "primary",
                    })
                    .collect(),
            });
        }
    }
    Graph::from_parts(secrets, consumers, edges)
}

/// The human report: the references as a table, then the findings, then the diagram.
fn human(r: &Report, diagram: Option<&str>, draft: Option<&std::path::Path>) -> String {
    let mut s = format!(
        "Scanned {} files under {}{}\n",
        r.files,
        r.root.display(),
        if r.truncated {
            " (stopped at --max-files)"
        } else {
            ""
        }
    );
    if r.references.is_empty() {
        s.push_str("No reference to a secret.\n");
    } else {
        let rows: Vec<[String; 6]> = r
            .references
            .iter()
            .map(|x| {
                let (kind, to) = match &x.kind {
                    crate::discover::RefKind::Provides => ("provides", String::new()),
                    crate::discover::RefKind::Reads => ("reads", String::new()),
                    crate::discover::RefKind::Maps { to } => ("maps", format!(" ← {to}")),
                };
                [
                    format!("{}:{}", x.file, x.line),
                    format!("{}{to}", x.name),
                    kind.into(),
                    x.environment.map_or("-", |e| e.as_str()).into(),
                    x.service.clone().unwrap_or_else(|| "-".into()),
                    x.value.as_ref().map_or(String::new(), |v| {
                        format!("{} ({} chars)", v.fingerprint, v.length)
                    }),
                ]
            })
            .collect();
        s.push_str(&table(
            &["WHERE", "NAME", "KIND", "ENV", "SERVICE", "VALUE"],
            &rows,
        ));
    }
    if !r.secrets.is_empty() {
        s.push_str("\nSecrets (names that carry one value):\n");
        for g in &r.secrets {
            let readers: Vec<String> = g
                .readers
                .iter()
                .map(|(svc, n)| format!("{svc}: {}", n.join(", ")))
                .collect();
            s.push_str(&format!(
                "  {}{}{}\n",
                g.names.join(", "),
                if g.external.is_empty() {
                    String::new()
                } else {
                    format!(" ← {}", g.external.join(", "))
                },
                if readers.is_empty() {
                    String::new()
                } else {
                    format!(" — read by {}", readers.join("; "))
                }
            ));
        }
    }
    if !r.skipped.is_empty() {
        s.push_str(&format!("\nNot read ({}):\n", r.skipped.len()));
        for k in r.skipped.iter().take(MAX_NOT_READ_LINES) {
            s.push_str(&format!("  {}: {}\n", k.file, k.reason));
        }
        if r.skipped.len() > MAX_NOT_READ_LINES {
            s.push_str(&format!(
                "  … and {} more (`--output json` lists every one)\n",
                r.skipped.len() - MAX_NOT_READ_LINES
            ));
        }
    }
    if r.findings.is_empty() {
        s.push_str("\nNo findings.\n");
    } else {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &r.findings {
            *counts.entry(f.kind.as_str()).or_default() += 1;
        }
        s.push_str(&format!("\nFindings ({}):\n", r.findings.len()));
        for f in &r.findings {
            s.push_str(&format!(
                "  ✘ {}:{} [{}] {}\n",
                f.file,
                f.line,
                f.kind.as_str(),
                f.message
            ));
        }
        let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        s.push_str(&format!("  ({})\n", summary.join(", ")));
    }
    if let Some(d) = diagram {
        s.push('\n');
        s.push_str(d);
    }
    if let Some(p) = draft {
        s.push_str(&format!(
            "\nPlaybook draft written to {}: fill in every `<FILL: …>` and run `rotor plan` on it.\n",
            p.display()
        ));
    }
    s
}

/// A left-aligned text table.
fn table(head: &[&str; 6], rows: &[[String; 6]]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut s = line(head.to_vec());
    for r in rows {
        s.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    s
}

fn internal(message: String) -> CliError {
    CliError {
        message,
        exit: Exit::Internal,
    }
}
