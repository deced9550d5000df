//! The dependency map: which secrets reach which consumers under which names, from one or more
//! playbooks, rendered as Mermaid or Graphviz DOT.
//!
//! Owns: the [`Graph`] model (secrets, consumers merged by name across playbooks, one edge per
//! secret and consumer with the role and every name and the slot it carries) and the list of
//! consumers that read one value under more than one name (the `SERVICE_SECRET` vs `SECRET_KEY`
//! case: two names a service can let drift apart). Must never: touch a store or a consumer
//! (it reads playbooks only), or show anything but names.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::playbook::{ConsumerKind, Playbook, SlotRef};

/// A secret in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretNode {
    /// `service-secret/production`.
    pub id: String,
    /// The secret's name.
    pub secret: String,
    /// Its environment.
    pub environment: String,
    /// Where its values live (`gcp:projects/p/secrets/s`, `kubernetes:demo/store`, a file).
    pub store: String,
}

/// A consumer, merged by name across playbooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerNode {
    /// Its name.
    pub name: String,
    /// Where it runs (`Deployment demo/auth`, `2 processes`, `exec`).
    pub runs: String,
}

/// One name under which a consumer reads a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Name {
    /// `SERVICE_SECRET`.
    pub name: String,
    /// `primary` or `secondary`.
    pub slot: &'static str,
}

/// A secret reaching a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// [`SecretNode::id`].
    pub secret: String,
    /// [`ConsumerNode::name`].
    pub consumer: String,
    /// `validator`, `signer` or `both`.
    pub role: String,
    /// Every name, primary names first.
    pub names: Vec<Name>,
}

impl Edge {
    /// The names carrying the primary.
    pub fn primary_names(&self) -> Vec<&str> {
        self.names
            .iter()
            .filter(|n| n.slot == "primary")
            .map(|n| n.name.as_str())
            .collect()
    }
}

/// The map of one or more playbooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Graph {
    /// Secrets, in playbook order.
    pub secrets: Vec<SecretNode>,
    /// Consumers, in order of first appearance.
    pub consumers: Vec<ConsumerNode>,
    /// Secret → consumer edges.
    pub edges: Vec<Edge>,
    /// Edges whose consumer reads the primary under more than one name.
    pub multi_name: Vec<Edge>,
}

fn store_of(pb: &Playbook) -> String {
    use crate::playbook::StoreSpec;
    match &pb.store {
        StoreSpec::Local { path } => format!("local:{}", path.display()),
        StoreSpec::Kubernetes { namespace, name } => format!("kubernetes:{namespace}/{name}"),
        StoreSpec::Gcp(g) => format!("gcp:projects/{}/secrets/{}", g.project, g.name),
        StoreSpec::Vault(v) => format!("vault:{}/{}", v.mount, v.path),
        StoreSpec::Aws(a) => format!(
            "aws:{}/{}",
            a.region.as_deref().unwrap_or("(default region)"),
            a.name
        ),
    }
}

fn runs(kind: &ConsumerKind) -> String {
    match kind {
        ConsumerKind::Process(p) if p.instances == 1 => "1 process".into(),
        ConsumerKind::Process(p) => format!("{} processes", p.instances),
        ConsumerKind::Kubernetes(k) => format!(
            "{} {}/{}",
            k.workload.kind.as_str(),
            k.workload.namespace,
            k.workload.name
        ),
        ConsumerKind::Exec(e) => format!("exec ({})", e.targets.join(", ")),
        ConsumerKind::Dotenv(d) => format!(
            "dotenv {} ({})",
            d.files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|f| f.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", "),
            d.exec.targets.join(", ")
        ),
    }
}

impl Graph {
    /// The map of `playbooks`.
    pub fn of(playbooks: &[Playbook]) -> Graph {
        let mut secrets = Vec::new();
        let mut consumers: Vec<ConsumerNode> = Vec::new();
        let mut edges = Vec::new();
        for pb in playbooks {
            let id = format!("{}/{}", pb.secret, pb.environment.as_str());
            if !secrets.iter().any(|s: &SecretNode| s.id == id) {
                secrets.push(SecretNode {
                    id: id.clone(),
                    secret: pb.secret.clone(),
                    environment: pb.environment.as_str().to_string(),
                    store: store_of(pb),
                });
            }
            for c in &pb.consumers {
                if !consumers.iter().any(|n| n.name == c.name) {
                    consumers.push(ConsumerNode {
                        name: c.name.clone(),
                        runs: runs(&c.kind),
                    });
                }
                let slot = |r: SlotRef| match r {
                    SlotRef::Primary => "primary",
                    SlotRef::Secondary => "secondary",
                };
                let mut names = vec![Name {
                    name: c.slots.primary.clone(),
                    slot: "primary",
                }];
                let aliases: BTreeMap<_, _> = c.slots.aliases.iter().collect();
                for (n, r) in aliases.iter().filter(|(_, r)| ***r == SlotRef::Primary) {
                    names.push(Name {
                        name: (*n).clone(),
                        slot: slot(**r),
                    });
                }
                if let Some(s) = &c.slots.secondary {
                    names.push(Name {
                        name: s.clone(),
                        slot: "secondary",
                    });
                }
                for (n, r) in aliases.iter().filter(|(_, r)| ***r == SlotRef::Secondary) {
                    names.push(Name {
                        name: (*n).clone(),
                        slot: slot(**r),
                    });
                }
                edges.push(Edge {
                    secret: id.clone(),
                    consumer: c.name.clone(),
                    role: c.role.to_string(),
                    names,
                });
            }
        }
        Graph::from_parts(secrets, consumers, edges)
    }

    /// A map of these parts (also what `rotor discover` draws from a repository).
    pub fn from_parts(
        secrets: Vec<SecretNode>,
        consumers: Vec<ConsumerNode>,
        edges: Vec<Edge>,
    ) -> Graph {
        let multi_name = edges
            .iter()
            .filter(|e| e.primary_names().len() > 1)
            .cloned()
            .collect();
        Graph {
            secrets,
            consumers,
            edges,
            multi_name,
        }
    }

    fn label(e: &Edge) -> Vec<String> {
        let mut lines = vec![e.role.clone()];
        for slot in ["primary", "secondary"] {
            let names: Vec<&str> = e
                .names
                .iter()
                .filter(|n| n.slot == slot)
                .map(|n| n.name.as_str())
                .collect();
            if !names.is_empty() {
                lines.push(format!("{slot}: {}", names.join(", ")));
            }
        }
        lines
    }

    fn secret_index(&self, id: &str) -> usize {
        self.secrets.iter().position(|s| s.id == id).unwrap_or(0)
    }

    fn consumer_index(&self, name: &str) -> usize {
        self.consumers
            .iter()
            .position(|c| c.name == name)
            .unwrap_or(0)
    }

    fn is_multi(&self, consumer: &str) -> bool {
        self.multi_name.iter().any(|e| e.consumer == consumer)
    }

    /// Mermaid `flowchart LR`: secrets as cylinders, consumers as boxes, one labelled edge per
    /// secret and consumer; consumers reading one value under several names are marked.
    pub fn mermaid(&self) -> String {
        let q = |s: &str| s.replace('"', "#quot;");
        let mut out = String::from("flowchart LR\n");
        for (i, s) in self.secrets.iter().enumerate() {
            out.push_str(&format!(
                "  s{i}[(\"{}<br/>{}<br/>{}\")]\n",
                q(&s.secret),
                q(&s.environment),
                q(&s.store)
            ));
        }
        for (i, c) in self.consumers.iter().enumerate() {
            out.push_str(&format!("  c{i}[\"{}<br/>{}\"]\n", q(&c.name), q(&c.runs)));
        }
        for e in &self.edges {
            out.push_str(&format!(
                "  s{} -- \"{}\" --> c{}\n",
                self.secret_index(&e.secret),
                q(&Self::label(e).join("<br/>")),
                self.consumer_index(&e.consumer)
            ));
        }
        let multi: Vec<String> = self
            .consumers
            .iter()
            .enumerate()
            .filter(|(_, c)| self.is_multi(&c.name))
            .map(|(i, _)| format!("c{i}"))
            .collect();
        if !multi.is_empty() {
            out.push_str("  classDef multiname stroke:#c00,stroke-width:2px\n");
            out.push_str(&format!("  class {} multiname\n", multi.join(",")));
        }
        out
    }

    /// Graphviz DOT (`dot -Tsvg`): the same nodes and edges.
    pub fn dot(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from("digraph rotor {\n  rankdir=LR;\n");
        for (i, s) in self.secrets.iter().enumerate() {
            out.push_str(&format!(
                "  s{i} [shape=cylinder, label=\"{}\\n{}\\n{}\"];\n",
                q(&s.secret),
                q(&s.environment),
                q(&s.store)
            ));
        }
        for (i, c) in self.consumers.iter().enumerate() {
            let extra = if self.is_multi(&c.name) {
                ", color=red, penwidth=2"
            } else {
                ""
            };
            out.push_str(&format!(
                "  c{i} [shape=box, label=\"{}\\n{}\"{extra}];\n",
                q(&c.name),
                q(&c.runs)
            ));
        }
        for e in &self.edges {
            let label: Vec<String> = Self::label(e).iter().map(|l| q(l)).collect();
            out.push_str(&format!(
                "  s{} -> c{} [label=\"{}\"];\n",
                self.secret_index(&e.secret),
                self.consumer_index(&e.consumer),
                label.join("\\n")
            ));
        }
        out.push_str("}\n");
        out
    }

    /// One line per consumer that reads a value under more than one name.
    pub fn multi_name_lines(&self) -> Vec<String> {
        self.multi_name
            .iter()
            .map(|e| {
                format!(
                    "{} reads {} under {} names: {} (they must always hold the same value)",
                    e.consumer,
                    e.secret,
                    e.primary_names().len(),
                    e.primary_names().join(", ")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_playbook_maps_three_consumers_and_two_multi_name_readers() {
        let dir = tempfile::tempdir().unwrap();
        let pb =
            crate::playbook::load_str(crate::demo::LOCAL_DEMO, "demo.yaml", dir.path()).unwrap();
        let g = Graph::of(&[pb]);
        assert_eq!(g.secrets.len(), 1);
        assert_eq!(g.secrets[0].id, "service-secret/development");
        assert_eq!(
            g.consumers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["auth", "backend", "analytics"]
        );
        let multi: Vec<(&str, Vec<&str>)> = g
            .multi_name
            .iter()
            .map(|e| (e.consumer.as_str(), e.primary_names()))
            .collect();
        assert_eq!(
            multi,
            [
                ("auth", vec!["SERVICE_SECRET", "SECRET_KEY"]),
                ("backend", vec!["SERVICE_SECRET", "JWT_SECRET_KEY"])
            ]
        );
        let m = g.mermaid();
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        assert!(
            m.contains("s0 -- \"both<br/>primary: SERVICE_SECRET, SECRET_KEY<br/>secondary: SERVICE_SECRET_PREVIOUS\" --> c0"),
            "{m}"
        );
        assert!(m.contains("class c0,c1 multiname"), "{m}");
        let d = g.dot();
        assert!(
            d.starts_with("digraph rotor {") && d.ends_with("}\n"),
            "{d}"
        );
        assert!(
            d.contains("s0 -> c2 [label=\"validator\\nprimary: JWT_SECRET_KEY\\nsecondary: JWT_SECRET_KEY_PREVIOUS\"];"),
            "{d}"
        );
        assert_eq!(d.matches(" -> ").count(), 3);
    }

    #[test]
    fn quotes_cannot_break_out_of_a_label() {
        let g = Graph {
            secrets: vec![SecretNode {
                id: "s/test".into(),
                secret: "s".into(),
                environment: "test".into(),
                store: "local:/tmp/a \"b\".json".into(),
            }],
            consumers: vec![],
            edges: vec![],
            multi_name: vec![],
        };
        assert!(
            g.dot().contains(r#"local:/tmp/a \"b\".json"#),
            "{}",
            g.dot()
        );
        assert!(
            g.mermaid().contains("local:/tmp/a #quot;b#quot;.json"),
            "{}",
            g.mermaid()
        );
    }
}
