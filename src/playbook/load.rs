//! Parsing and validation of playbook YAML (stub, being written).
use std::path::Path;

use super::Playbook;

/// A playbook that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}\n  help: {help}")]
pub struct PlaybookError {
    /// File.
    pub file: String,
    /// Line (1-based; 0 when unknown).
    pub line: u64,
    /// Column (1-based; 0 when unknown).
    pub column: u64,
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: String,
}

/// Loads and validates a playbook file.
pub fn load_file(_path: &Path) -> Result<Playbook, PlaybookError> {
    todo!()
}

/// Loads and validates playbook text; `source` names it in errors, `base_dir` resolves paths.
pub fn load_str(_text: &str, _source: &str, _base_dir: &Path) -> Result<Playbook, PlaybookError> {
    todo!()
}
