//! The audit log's file: `<state_dir>/audit.log`, appended one JSON line at a time and rotated
//! by size, the way logrotate numbers files: once it reaches `keep.audit_log_size` it becomes
//! `audit.log.1`, the former `.1` becomes `.2`, and so on up to `keep.audit_logs`; the oldest
//! goes.
//!
//! Owns: the open file, the count of its bytes, and the rotation. Rotation happens only inside a
//! run that holds the secret's lock (only such runs write the audit log), so no two rotors
//! rotate at once. Every step is one rename, so a kill at any moment leaves complete files:
//! at worst one rotated file is gone early, never `audit.log` nor a line already written.
//! Must never: fail a run (a write or rotation error only loses audit lines), or hold a value
//! (lines are redacted before they reach it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Highest suffix rotor ever removes when fewer rotated files are kept than before
/// (`keep.audit_logs` is at most this).
const MAX_ROTATED: usize = 100;

/// `audit.log`, open for appending, rotated by size.
pub(super) struct AuditFile {
    path: PathBuf,
    file: File,
    /// Bytes in `file` (its size when opened, plus what this process wrote).
    written: u64,
    /// Rotate once `written` reaches this.
    max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.<keep>`).
    keep: usize,
}

impl AuditFile {
    /// Opens (creates, 0600) `path` for appending; one that already reached `max_bytes` is
    /// rotated first.
    pub(super) fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<AuditFile> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        let mut f = AuditFile {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
            keep: keep.clamp(1, MAX_ROTATED),
        };
        if f.written >= f.max_bytes {
            f.rotate()?;
        }
        Ok(f)
    }

    /// Appends `line` and a newline; rotates once the file reached its size.
    pub(super) fn append(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.written = self.written.saturating_add(bytes.len() as u64);
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// `audit.log.<n>` → `.<n+1>` from the oldest kept down, `audit.log` → `.1`, then a fresh
    /// `audit.log`; files beyond `keep` (left by a larger setting) are removed.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in self.keep + 1..=MAX_ROTATED {
            remove_if_there(&numbered(n))?;
        }
        for n in (1..self.keep).rev() {
            rename_if_there(&numbered(n), &numbered(n + 1))?;
        }
        fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.written = 0;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Lines of every file, oldest file first.
    fn lines(dir: &Path, keep: usize) -> Vec<String> {
        let mut out = Vec::new();
        for n in (1..=keep).rev() {
            if let Ok(t) = fs::read_to_string(dir.join(format!("audit.log.{n}"))) {
                out.extend(t.lines().map(str::to_string));
            }
        }
        let t = fs::read_to_string(dir.join("audit.log")).unwrap();
        out.extend(t.lines().map(str::to_string));
        out
    }

    #[test]
    fn rotates_by_size_keeps_the_newest_files_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        // 10-byte lines, 25-byte files: three lines a file (rotated after the third).
        let mut f = AuditFile::open(&path, 25, 2).unwrap();
        for i in 0..20 {
            f.append(&format!("line {i:04}")).unwrap();
        }
        assert_eq!(
            names(tmp.path()),
            ["audit.log", "audit.log.1", "audit.log.2"]
        );
        for n in ["audit.log", "audit.log.1", "audit.log.2"] {
            let p = tmp.path().join(n);
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert!(fs::metadata(&p).unwrap().len() <= 30, "{n}");
        }
        // The newest lines survive, whole and in order; the oldest went.
        let all = lines(tmp.path(), 2);
        let want: Vec<String> = (12..20).map(|i| format!("line {i:04}")).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn a_full_log_is_rotated_when_opened_and_fewer_kept_files_remove_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        fs::write(&path, "x".repeat(100)).unwrap();
        for n in 1..=4 {
            fs::write(tmp.path().join(format!("audit.log.{n}")), format!("{n}\n")).unwrap();
        }
        let mut f = AuditFile::open(&path, 50, 2).unwrap();
        f.append("new").unwrap();
        assert_eq!(
            names(tmp.path()),
            ["audit.log", "audit.log.1", "audit.log.2"]
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            fs::read_to_string(tmp.path().join("audit.log.1")).unwrap(),
            "x".repeat(100)
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("audit.log.2")).unwrap(),
            "1\n"
        );
    }

    /// A rotation killed between two renames leaves a gap; the next rotation still ends with
    /// `audit.log` and at most `keep` complete files.
    #[test]
    fn a_rotation_cut_short_leaves_complete_files_and_the_next_one_repairs_the_set() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        // As if killed after `.1` → `.2` and before `audit.log` → `.1`.
        fs::write(tmp.path().join("audit.log.2"), "old\n").unwrap();
        fs::write(&path, "current\n").unwrap();
        let mut f = AuditFile::open(&path, 8, 3).unwrap();
        assert_eq!(
            names(tmp.path()),
            ["audit.log", "audit.log.1", "audit.log.3"]
        );
        f.append("next one").unwrap();
        assert_eq!(
            names(tmp.path()),
            ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
        );
        assert_eq!(lines(tmp.path(), 3), ["old", "current", "next one"]);
    }
}
