//! `rotor graph`: the dependency map of one or more playbooks (secrets → consumers → names and
//! roles) as Mermaid or DOT, with the consumers that read one value under several names.
//! Reads playbooks only.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, load};
use crate::exit::Exit;
use crate::graph::Graph;
use crate::output::Output;

/// Diagram formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Diagram {
    /// A Mermaid flowchart (GitHub and most wikis render it).
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
}

/// `rotor graph` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The playbooks (YAML); several playbooks draw one map.
    #[arg(required = true)]
    pub playbooks: Vec<PathBuf>,
    /// The diagram format.
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: Diagram,
}

pub(super) async fn run(a: Args, state_dir: Option<PathBuf>, out: &Arc<Output>) -> CliResult {
    let mut pbs = Vec::with_capacity(a.playbooks.len());
    for p in &a.playbooks {
        pbs.push(load(p, state_dir.clone())?);
    }
    let graph = Graph::of(&pbs);
    let diagram = match a.format {
        Diagram::Mermaid => graph.mermaid(),
        Diagram::Dot => graph.dot(),
    };
    let notes = graph.multi_name_lines();
    out.result(
        &serde_json::json!({"graph": &graph, "diagram": diagram, "multi_name": notes}),
        || {
            let mut text = diagram.clone();
            if !notes.is_empty() {
                // Comments in both languages, so the output stays a valid diagram.
                let prefix = match a.format {
                    Diagram::Mermaid => "%% ",
                    Diagram::Dot => "// ",
                };
                for n in &notes {
                    text.push_str(prefix);
                    text.push_str(n);
                    text.push('\n');
                }
            }
            text
        },
    );
    Ok(Exit::Ok)
}
