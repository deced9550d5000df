//! `rotor demo --lab`: the demo through the Kubernetes path, on a lab started for the run.
//!
//! Owns: the embedded Kubernetes demo playbook and lab topology, starting the lab
//! (`crates/rotor-lab`, linked with the `lab` cargo feature) in the demo's scratch directory,
//! and shutting it down whatever happened. Must never: leave a pod process running.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rotor_lab::{ImageSpec, Lab, LabError, LabOptions, Topology};

use super::{DemoReport, LAB_DEMO_TOPOLOGY, run};
use crate::cluster::Cluster;
use crate::engine::EngineError;
use crate::events::EventSink;
use crate::playbook::{Playbook, StoreSpec};

/// The image the demo topology's pods run.
const DEMO_IMAGE: &str = "rotor-demo-service";

/// The lab topology for `rotor demo --lab`: `file`, or the embedded demo topology.
pub fn lab_topology(file: Option<&Path>) -> Result<Topology, LabError> {
    match file {
        Some(f) => Topology::load(f),
        None => Topology::parse(
            LAB_DEMO_TOPOLOGY,
            Path::new("<embedded>/playbooks/lab-demo.topology.yaml"),
        ),
    }
}

/// Why `rotor demo --lab` could not run.
#[derive(Debug, thiserror::Error)]
pub enum LabDemoError {
    #[error("the lab could not start: {0}")]
    Lab(#[from] LabError),
    #[error("cannot reach the lab: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Runs the Kubernetes demo: starts a lab in `dir/lab` with `topology` (its endpoints files
/// where the load generator looks for them), then runs [`run`] through the Kubernetes path,
/// and shuts the lab down (every pod process stopped) whatever happened.
pub async fn run_lab(
    pb: Playbook,
    topology: Topology,
    dir: &Path,
    events: Arc<dyn EventSink>,
    workers: usize,
    interval: Duration,
) -> Result<(DemoReport, Option<EngineError>), LabDemoError> {
    let mut pb = pb;
    let mut topology = topology;
    // The pods run the demo service this rotor carries (`rotor demo-service`), unless the
    // topology maps the image itself: one build, and the service always matches rotor.
    if !topology.images.contains_key(DEMO_IMAGE) {
        let exe = crate::consumer::process::rotor_exe()
            .map_err(|e| LabDemoError::Engine(EngineError::Io(e.to_string())))?
            .into_string()
            .map_err(|exe| {
                LabDemoError::Engine(EngineError::Io(format!(
                    "the rotor executable's path {} is not UTF-8, which a lab image cannot name; map `{DEMO_IMAGE}` under `images:` in the topology",
                    Path::new(&exe).display()
                )))
            })?;
        topology.images.insert(
            DEMO_IMAGE.into(),
            ImageSpec::Command(vec![exe, "demo-service".into()]),
        );
    }
    let mut opts = LabOptions::new(topology, dir.join("lab"));
    opts.fleet_dir = pb.state_dir.join("fleet");
    let lab = Lab::start(opts).await?;
    // A Secret Manager store lives in the lab too (it serves that API on the same address).
    if let StoreSpec::Gcp(spec) = &mut pb.store {
        spec.endpoint = Some(lab.url());
        spec.credentials = crate::playbook::GcpCredentials::Anonymous;
    }
    events.emit(&crate::events::Event::Note {
        message: format!(
            "lab API server at {} (kubeconfig {})",
            lab.url(),
            lab.kubeconfig_path().display()
        ),
    });
    let namespace = pb
        .cluster
        .as_ref()
        .map(|c| c.namespace.clone())
        .unwrap_or_else(|| lab.namespace().to_string());
    let result = async {
        let cluster =
            Cluster::from_kubeconfig_file(lab.kubeconfig_path(), Some("rotor-lab"), &namespace)
                .await?;
        Ok::<_, LabDemoError>(run(pb, Some(&cluster), events, workers, interval).await?)
    }
    .await;
    lab.shutdown().await;
    result
}
