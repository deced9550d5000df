//! The endpoints files: `<fleet dir>/<workload>/endpoints.json` =
//! `{"generation": N, "endpoints": ["127.0.0.5:8080", …]}`, the Ready, non-terminating pods of
//! each workload, sorted; written atomically (temp file, rename; no fsync: the lab is
//! ephemeral and readers only need never to see a torn file) only when the list changes, with the generation incremented on each write. Same format as
//! `consumer::process`'s `Endpoints`, which the demo service and the load generator read.
//!
//! Owns: those files. Must never: write anything else into the fleet dir.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsFile {
    /// Incremented on every write.
    pub generation: u64,
    /// The serving pods' addresses, sorted.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Default)]
struct State {
    /// workload -> pod name -> address of the serving pods.
    serving: BTreeMap<String, BTreeMap<String, SocketAddr>>,
    /// What was last written per workload, with its generation.
    written: BTreeMap<String, (u64, Vec<SocketAddr>)>,
}

/// The endpoints writer.
pub(crate) struct Endpoints {
    fleet_dir: PathBuf,
    state: Mutex<State>,
}

impl Endpoints {
    pub fn new(fleet_dir: PathBuf) -> Endpoints {
        Endpoints {
            fleet_dir,
            state: Mutex::new(State::default()),
        }
    }

    /// Records whether pod `pod` of `workload` serves (`Some(addr)`) or not, and rewrites the
    /// workload's file when its list changed.
    pub fn set(&self, workload: &str, pod: &str, addr: Option<SocketAddr>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pods = st.serving.entry(workload.to_string()).or_default();
        match addr {
            Some(a) => {
                pods.insert(pod.to_string(), a);
            }
            None => {
                pods.remove(pod);
            }
        }
        let list: Vec<SocketAddr> = pods
            .values()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let last = st.written.get(workload);
        if last.is_some_and(|(_, l)| *l == list) {
            return;
        }
        let known = last.map(|(g, _)| *g);
        match write(&self.fleet_dir.join(workload), known, &list) {
            Ok(generation) => {
                st.written.insert(workload.to_string(), (generation, list));
            }
            Err(e) => tracing::warn!(workload, error = %e, "lab: cannot write endpoints.json"),
        }
    }
}

/// Writes the file (generation `known` + 1, or the file's own + 1 the first time this lab
/// writes it); returns the generation written.
fn write(dir: &Path, known: Option<u64>, endpoints: &[SocketAddr]) -> std::io::Result<u64> {
    let path = dir.join("endpoints.json");
    let generation = match known {
        Some(g) => g,
        None => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let current: EndpointsFile = match std::fs::read(&path) {
                Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => EndpointsFile::default(),
                Err(e) => return Err(e),
            };
            if current.endpoints == endpoints {
                return Ok(current.generation);
            }
            current.generation
        }
    };
    let next = EndpointsFile {
        generation: generation + 1,
        endpoints: endpoints.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".part")
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(next.generation)
}
