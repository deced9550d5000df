//! The state directory: where rotor keeps a secret's journal, lock, fleet records, audit log and
//! the local store's lock.
//!
//! Owns: deciding whether a directory may serve as one, before anything is written into it. A
//! state directory is created by rotor (mode 0700) and marked with a `.rotor-state` file, as
//! cargo marks its target directory. rotor refuses to adopt a filesystem root, a path that is
//! not a directory, or an existing directory that holds files rotor did not put there — so a
//! typo in `state_dir` can never scatter lock and journal files over someone else's files.
//! Commands that only read (`plan`, `status`, `check`, `graph`) never call it and create
//! nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// The marker file in every state directory rotor created.
pub const MARKER: &str = ".rotor-state";

/// What rotor itself writes into a state directory (a directory holding only these, from a
/// rotor older than the marker, is adopted).
const OWN: &[&str] = &[
    MARKER,
    "lock",
    "lock.json",
    "handover.json",
    "journal.json",
    "history",
    "fleet",
    "exec",
    "audit.log",
    "store.lock",
];

/// Checks that `dir` may serve as a state directory without writing anything: it does not
/// exist yet, or it is one (marked, or holding only rotor's own files).
pub fn check(dir: &Path) -> Result<(), String> {
    verdict(dir).map(|_| ())
}

/// Makes `dir` a state directory: creates and marks it, or checks that it is one. Writes
/// nothing when it refuses.
pub fn prepare(dir: &Path) -> Result<(), String> {
    match verdict(dir)? {
        Verdict::Marked => Ok(()),
        Verdict::Adopt => mark(dir),
        Verdict::Create => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create state_dir {}: {e}", dir.display()))?;
            mark(dir)
        }
    }
}

/// What [`prepare`] would do.
enum Verdict {
    /// A marked state directory.
    Marked,
    /// An unmarked directory holding only rotor's files (or nothing): mark it.
    Adopt,
    /// Nothing there yet: create and mark it.
    Create,
}

fn verdict(dir: &Path) -> Result<Verdict, String> {
    let shown = dir.display();
    let root = dir.parent().is_none() || fs::canonicalize(dir).is_ok_and(|c| c.parent().is_none());
    if root {
        return Err(format!(
            "state_dir {shown} is a filesystem root\n  help: point state_dir at a directory of its own, e.g. `.rotor/<secret>-<environment>`"
        ));
    }
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!(
            "state_dir {shown} exists and is not a directory\n  help: point state_dir at a directory rotor may create"
        )),
        Ok(_) => {
            if dir.join(MARKER).is_file() {
                return Ok(Verdict::Marked);
            }
            let entries = fs::read_dir(dir).map_err(|e| format!("state_dir {shown}: {e}"))?;
            let mut foreign = 0usize;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !OWN.iter().any(|o| name == *o) {
                    foreign += 1;
                }
            }
            if foreign > 0 {
                return Err(format!(
                    "state_dir {shown} holds {foreign} entries rotor did not create\n  help: point state_dir at a new directory (rotor creates and marks it with {MARKER})"
                ));
            }
            Ok(Verdict::Adopt)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Verdict::Create),
        Err(e) => Err(format!("state_dir {shown}: {e}")),
    }
}

fn mark(dir: &Path) -> Result<(), String> {
    let mut f = fs::File::create(dir.join(MARKER))
        .map_err(|e| format!("cannot mark state_dir {}: {e}", dir.display()))?;
    f.write_all(b"Signature: rotor state directory\n# Created by rotor: journal, lock, fleet records, audit log.\n")
        .map_err(|e| format!("cannot mark state_dir {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_marks_adopts_its_own_and_refuses_roots_files_and_foreign_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        prepare(&fresh).unwrap();
        assert!(fresh.join(MARKER).is_file());
        prepare(&fresh).unwrap();

        // An older rotor's directory (its own files only) is adopted.
        let old = tmp.path().join("old");
        fs::create_dir_all(old.join("fleet")).unwrap();
        fs::write(old.join("journal.json"), "{}").unwrap();
        prepare(&old).unwrap();
        assert!(old.join(MARKER).is_file());

        for (dir, why) in [
            (Path::new("/").to_path_buf(), "filesystem root"),
            (tmp.path().join("old/journal.json"), "not a directory"),
        ] {
            let e = prepare(&dir).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let foreign = tmp.path().join("home");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let e = prepare(&foreign).unwrap_err();
        assert!(e.contains("1 entries rotor did not create"), "{e}");
        // Refusing wrote nothing.
        assert!(!foreign.join(MARKER).exists());
        assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);
    }
}
