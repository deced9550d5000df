//! The walk: every file under the root that git would track, through the `ignore` crate
//! (ripgrep's walker): `.gitignore` files at every level, `.git/info/exclude` and `.ignore`
//! respected (with or without a `.git` directory), hidden files included (`.env` files are
//! hidden), `.git` itself skipped, symlinks never followed (so nothing outside the tree is
//! read), files larger than [`super::Options::max_file_bytes`] skipped and listed, and the walk
//! stopped after [`super::Options::max_files`] files.

use std::path::Path;

use super::{Options, Skipped};

/// The files to read (relative paths with `/`), in a stable order.
pub struct Walked {
    /// Files to read.
    pub files: Vec<String>,
    /// Files seen but not read.
    pub skipped: Vec<Skipped>,
    /// Whether the walk stopped at the file bound.
    pub truncated: bool,
}

/// Whether a file name is one `discover` reads (anything else is not even opened).
pub fn interesting(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if super::sources::is_dotenv(&lower) {
        return true;
    }
    if matches!(lower.as_str(), "makefile" | "dockerfile" | "procfile") {
        return true;
    }
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(
        ext,
        "yml"
            | "yaml"
            | "tf"
            | "sh"
            | "bash"
            | "py"
            | "js"
            | "mjs"
            | "cjs"
            | "jsx"
            | "ts"
            | "tsx"
            | "go"
            | "rs"
            | "java"
            | "kt"
    )
}

/// Walks `root`.
pub fn walk(root: &Path, opts: &Options) -> std::io::Result<Walked> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    let mut builder = ignore::WalkBuilder::new(root);
    builder
        .hidden(false)
        .follow_links(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .ignore(true)
        .parents(false)
        .require_git(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git");
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut truncated = false;
    for entry in builder.build() {
        let Ok(entry) = entry else {
            continue;
        };
        // Symlinks are not followed: a link (to a file or a directory) is not read.
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if !interesting(&name) {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .replace('\\', "/")
            // A file name is untrusted text too: no control character reaches the report.
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>();
        if files.len() >= opts.max_files {
            truncated = true;
            break;
        }
        match entry.metadata() {
            Ok(m) if m.len() > opts.max_file_bytes => skipped.push(Skipped {
                file: rel,
                reason: format!("larger than {} bytes", opts.max_file_bytes),
            }),
            Ok(_) => files.push(rel),
            Err(e) => skipped.push(Skipped {
                file: rel,
                reason: format!("cannot read its metadata: {e}"),
            }),
        }
    }
    Ok(Walked {
        files,
        skipped,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_hidden_files_symlinks_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("svc")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("leak.env"), "S=1\n").unwrap();
        std::fs::write(root.join(".gitignore"), "ignored.env\nbuild/\n").unwrap();
        std::fs::write(root.join(".env"), "S=1\n").unwrap();
        std::fs::write(root.join("ignored.env"), "S=1\n").unwrap();
        std::fs::create_dir_all(root.join("build")).unwrap();
        std::fs::write(root.join("build/x.env"), "S=1\n").unwrap();
        std::fs::write(root.join(".git/config.env"), "S=1\n").unwrap();
        std::fs::write(root.join("svc/app.py"), "x").unwrap();
        std::fs::write(root.join("svc/readme.md"), "x").unwrap();
        std::fs::write(root.join("svc/big.yaml"), "x".repeat(100)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        std::os::unix::fs::symlink(outside.join("leak.env"), root.join("link.env")).unwrap();
        let opts = Options {
            max_file_bytes: 50,
            ..Options::default()
        };
        let w = walk(&root, &opts).unwrap();
        assert_eq!(w.files, [".env", "svc/app.py"]);
        assert_eq!(w.skipped.len(), 1);
        assert_eq!(w.skipped[0].file, "svc/big.yaml");
        assert!(!w.truncated);
        let opts = Options {
            max_files: 1,
            ..Options::default()
        };
        let w = walk(&root, &opts).unwrap();
        assert_eq!(w.files.len(), 1);
        assert!(w.truncated);
    }
}
