//! What the demo-fleet benchmarks share: their command line and the fleet they start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rotor::demo;
use rotor::engine::Engine;
use rotor::events::NullSink;
use rotor::playbook::Playbook;

/// `-- --workers N --interval 5ms`: load workers per signer→validator path, and the pause
/// between two requests of one worker.
#[allow(dead_code)] // each bench compiles this module; not every bench uses every helper
pub struct Opts {
    pub workers: usize,
    pub interval: Duration,
}

/// The value after `name` on the command line (`--rotations 50`), if given.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Reads the options, and points the demo playbook's `{rotor}` at the built binary. Call it
/// first, before any thread starts.
#[allow(dead_code)]
pub fn setup() -> Opts {
    // SAFETY: single-threaded here, before the runtime starts.
    unsafe { std::env::set_var("ROTOR_EXE", env!("CARGO_BIN_EXE_rotor")) };
    Opts {
        workers: arg("--workers").and_then(|w| w.parse().ok()).unwrap_or(2),
        interval: arg("--interval")
            .and_then(|i| humantime::parse_duration(&i).ok())
            .unwrap_or(Duration::from_millis(5)),
    }
}

/// The embedded demo playbook in a scratch directory (kept while the guard lives).
#[allow(dead_code)]
pub fn demo_playbook() -> (Playbook, PathBuf, Option<tempfile::TempDir>) {
    let (dir, guard) = demo::scratch(None).expect("scratch dir");
    let pb = demo::demo_playbook(None, &dir).expect("embedded playbook");
    (pb, dir, guard)
}

/// The demo fleet initialized and running, with its engine.
#[allow(dead_code)] // each bench compiles this module; not every bench uses every helper
pub async fn demo_fleet() -> (Playbook, Engine, Option<tempfile::TempDir>) {
    let (pb, _dir, guard) = demo_playbook();
    start(pb, guard).await
}

/// The demo fleet with `extra` appended to its playbook (more consumers), running.
#[allow(dead_code)]
pub async fn demo_fleet_with(extra: &str) -> (Playbook, Engine, Option<tempfile::TempDir>) {
    let (dir, guard) = demo::scratch(None).expect("scratch dir");
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, format!("{}{extra}", demo::LOCAL_DEMO)).expect("write playbook");
    let pb = demo::demo_playbook(Some(&file), &dir).expect("bench playbook");
    start(pb, guard).await
}

async fn start(
    pb: Playbook,
    guard: Option<tempfile::TempDir>,
) -> (Playbook, Engine, Option<tempfile::TempDir>) {
    start_with(pb, guard, Arc::new(NullSink)).await
}

/// Initializes and starts the fleet of `pb` with an engine reporting to `events`.
#[allow(dead_code)]
pub async fn start_with(
    pb: Playbook,
    guard: Option<tempfile::TempDir>,
    events: Arc<dyn rotor::events::EventSink>,
) -> (Playbook, Engine, Option<tempfile::TempDir>) {
    let engine = Engine::open(pb.clone(), events).await.expect("engine");
    engine.init().await.expect("init");
    engine.up().await.expect("up");
    (pb, engine, guard)
}
