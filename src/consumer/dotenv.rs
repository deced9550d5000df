//! The dotenv consumer: env files rotor writes the consumer's names into, then a command that
//! makes the consumer read them again (a compose service recreated with
//! `docker compose up -d --wait --no-deps --force-recreate auth`), then the usual proofs.
//!
//! Owns: rewriting each of its `files` (atomically, at mode 0600, keeping the owner and every
//! line that is not one of its names; a name given twice is written once and the removed
//! entry reported); running `apply` as an exec consumer does (same template fields and
//! environment, plus `{files}` / `ROTOR_FILES`, under the rollout deadline) and remembering
//! what it applied in `<state_dir>/dotenv/<consumer>.json`; waiting until the targets answer
//! (and, with `fingerprints_path`, report the new values) before proving them; and reading the
//! files back for `rotor check`.
//!
//! Must never: put a value in an error, an event or the command's argv or environment (the
//! files are the only place a value goes); follow a name it does not own; write a file it could
//! not read whole (a line the dotenv grammar refuses stops it before anything is written).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::exec::ExecConsumer;
use super::{
    Consumer, ConsumerError, Desired, FileView, Gate, Held, HeldSource, Instance, RolloutReport,
    Slots, deadline_after, report_held, slot_names,
};
use crate::events::{Event, EventSink};
use crate::playbook::{ConsumerSpec, DotenvSpec, Pickup, Playbook};
use crate::protocol::Role;
use crate::secret::Fingerprint;
use crate::transport::Transport;

/// Largest env file rotor reads or writes.
pub const MAX_ENV_FILE: u64 = 1 << 20;

/// How often a target is asked again while it comes back after the command.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// Attempts at a rewrite when the file changes under rotor between its read and its rename.
const REWRITE_ATTEMPTS: usize = 3;

/// Removed duplicates of one name reported by line; the rest are counted in one note.
const DUPLICATES_SHOWN: usize = 3;

/// The prefix of the temporary file a rewrite renames into place.
const TMP_PREFIX: &str = ".rotor-tmp-";

/// How old a temporary file must be before rotor takes it for one a killed rotor left: one
/// being written lives for milliseconds.
const TMP_STALE: Duration = Duration::from_secs(60);

/// A dotenv consumer.
pub struct DotenvConsumer {
    /// The command, the targets and the record of what was applied.
    /// (Its name, role, secret, slot names and timings are this consumer's.)
    exec: ExecConsumer,
    files: Vec<PathBuf>,
    fingerprints_path: Option<String>,
}

/// One env file as read: its text, and the owner a rewrite keeps.
struct Read {
    text: zeroize::Zeroizing<String>,
    owner: Option<(u32, u32)>,
}

impl DotenvConsumer {
    /// The consumer `spec` of `playbook`.
    pub fn new(
        playbook: &Playbook,
        spec: &ConsumerSpec,
        dotenv: &DotenvSpec,
        transport: Transport,
    ) -> Self {
        DotenvConsumer {
            exec: ExecConsumer::for_dotenv(playbook, spec, dotenv, transport),
            files: dotenv.files.clone(),
            fingerprints_path: spec.fingerprints_path.clone(),
        }
    }

    fn file_error(&self, file: &Path, detail: impl std::fmt::Display) -> ConsumerError {
        ConsumerError::EnvFile {
            consumer: self.exec.name.clone(),
            file: file.display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// The file rotor writes for `file`: the file a symbolic link points to (a link named
    /// `.env` stays a link), else `file` itself, whose directory must exist.
    fn real_path(&self, file: &Path) -> Result<PathBuf, ConsumerError> {
        match std::fs::canonicalize(file) {
            Ok(p) => Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = file.parent().unwrap_or(Path::new("."));
                if std::fs::symlink_metadata(file).is_ok() {
                    return Err(self.file_error(
                        file,
                        "is a symbolic link to a file that does not exist; point it at the env file, or list that file",
                    ));
                }
                if !dir.is_dir() {
                    return Err(self.file_error(
                        file,
                        format!(
                            "its directory {} does not exist; create it, or fix the path under `files`",
                            dir.display()
                        ),
                    ));
                }
                Ok(file.to_path_buf())
            }
            Err(e) => Err(self.file_error(
                file,
                format!(
                    "cannot be resolved ({e}); fix the path under `files`, or the link it follows"
                ),
            )),
        }
    }

    /// `file`'s text (empty when it does not exist yet), bounded; never its content in an
    /// error. Opened without blocking: a FIFO put in a file's place is refused, not waited on.
    fn read(&self, file: &Path) -> Result<Read, ConsumerError> {
        let opened = std::fs::File::options()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(file);
        let f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Read {
                    text: zeroize::Zeroizing::new(String::new()),
                    owner: None,
                });
            }
            Err(e) => {
                return Err(self.file_error(
                    file,
                    format!(
                        "cannot be read ({e}); run rotor as a user who may read and replace it"
                    ),
                ));
            }
        };
        let meta = f
            .metadata()
            .map_err(|e| self.file_error(file, format!("cannot be read ({e})")))?;
        if !meta.is_file() {
            return Err(self.file_error(
                file,
                "is not a regular file (a directory, a FIFO, a device); list the env file itself",
            ));
        }
        if meta.nlink() > 1 {
            // A rewrite renames a new file into place: the other names would keep the old
            // values (and the old mode).
            return Err(self.file_error(
                file,
                format!(
                    "has {} hard links: rotor would replace this name only and leave the old values under the others; make the others symbolic links to it",
                    meta.nlink()
                ),
            ));
        }
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_ENV_FILE + 1), &mut bytes)
            .map_err(|e| self.file_error(file, format!("cannot be read ({e})")))?;
        if bytes.len() as u64 > MAX_ENV_FILE {
            return Err(self.file_error(
                file,
                format!("is larger than {MAX_ENV_FILE} bytes, more than an env file holds; check the path under `files`"),
            ));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| {
                self.file_error(
                    file,
                    format!(
                        "is not UTF-8 text (at byte {}); save it as UTF-8",
                        e.valid_up_to()
                    ),
                )
            })?
            .to_string();
        Ok(Read {
            text: zeroize::Zeroizing::new(text),
            owner: Some((meta.uid(), meta.gid())),
        })
    }

    /// What each declared name holds in `text`, and what is wrong with the file for this
    /// consumer (names given twice, entries that are not values rotor wrote, lines the grammar
    /// refuses); never a value.
    fn judge(&self, text: &str) -> (BTreeMap<String, Fingerprint>, Vec<String>) {
        let (entries, problems) = crate::dotenv::parse(text);
        let mut out = BTreeMap::new();
        let mut wrong: Vec<String> = problems
            .iter()
            .take(5)
            .map(|p| format!("line {}: {}", p.line, p.message))
            .collect();
        for name in slot_names(&self.exec.slot_names) {
            let (last, count) = crate::dotenv::last_entries(&entries, name);
            let Some(e) = last else { continue };
            if count > 1 {
                let mut lines: Vec<String> = entries
                    .iter()
                    .filter(|x| x.name == name)
                    .take(DUPLICATES_SHOWN)
                    .map(|x| x.line.to_string())
                    .collect();
                if count > DUPLICATES_SHOWN {
                    lines.push(format!("… {}", e.line));
                }
                wrong.push(format!(
                    "{name} is given {count} times (lines {}); a program reads the last",
                    lines.join(", ")
                ));
            }
            match &e.value {
                None => wrong.push(format!(
                    "line {}: {name} is passed through from the environment, not written in the file",
                    e.line
                )),
                Some(v) if !e.refs.is_empty() => {
                    // The variable is named only where it cannot be a piece of a value: in
                    // `s3cr3t$Xyz9Q`, what follows the `$` is part of a hand-set value.
                    let named = e.refs.iter().find(|r| {
                        v.trim() == format!("${r}")
                            || [format!("${{{r}}}"), format!("${{{r}:"), format!("${{{r}-")]
                                .iter()
                                .any(|form| v.contains(form.as_str()))
                    });
                    wrong.push(match named {
                        Some(r) => format!(
                            "line {}: {name} refers to ${{{r}}} instead of holding a value",
                            e.line
                        ),
                        None => format!(
                            "line {}: {name} refers to another variable (a `$` compose expands) instead of holding a value",
                            e.line
                        ),
                    });
                }
                Some(v) => {
                    let value = crate::secret::SecretValue::new(v.clone());
                    out.insert(name.to_string(), value.fingerprint(&self.exec.secret));
                }
            }
        }
        (out, wrong)
    }

    /// Whether every file holds exactly `d` (each declared name once, with its value; a name
    /// with no value now absent).
    fn files_hold(&self, d: &Desired<'_>) -> bool {
        self.files.iter().all(|f| {
            self.read(f).is_ok_and(|r| {
                let (names, wrong) = self.judge(&r.text);
                wrong.is_empty() && names == d.names
            })
        })
    }

    /// Writes `d` into every file, reporting each duplicate it removes. Every file is read
    /// and rewritten in memory first, so a file rotor cannot read whole stops it before any
    /// file changes.
    fn write_all(&self, d: &Desired<'_>, events: &dyn EventSink) -> Result<(), ConsumerError> {
        let wanted: Vec<(&str, Option<&str>)> = slot_names(&self.exec.slot_names)
            .into_iter()
            .map(|n| {
                let v = d
                    .values
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, v)| v.expose());
                (n, v)
            })
            .collect();
        let mut plans = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let real = self.real_path(file)?;
            let read = self.read(&real)?;
            let rewrite = self.rewrite(file, &read.text, &wanted)?;
            plans.push((file, real, read, rewrite));
        }
        for (file, real, mut read, mut rewrite) in plans {
            let mut attempt = 1;
            loop {
                let mode_ok =
                    std::fs::metadata(&real).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600);
                if !rewrite.changed && mode_ok {
                    break;
                }
                match self.replace(&real, &read, &rewrite.text)? {
                    true => break,
                    // Changed under rotor since it was read: read it again.
                    false if attempt < REWRITE_ATTEMPTS => {
                        attempt += 1;
                        read = self.read(&real)?;
                        rewrite = self.rewrite(file, &read.text, &wanted)?;
                    }
                    false => {
                        return Err(self.file_error(
                            file,
                            "kept changing while rotor rewrote it; stop whatever else writes it, then `rotor resume` or `rotor rollback`",
                        ));
                    }
                }
            }
            // Each removed entry by its line, a few per name; the rest counted in one note.
            let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
            for (name, line) in &rewrite.duplicates {
                let n = shown.entry(name.as_str()).or_default();
                *n += 1;
                if *n <= DUPLICATES_SHOWN {
                    events.emit(&Event::Note {
                        message: format!(
                            "{}: {}:{line}: a second entry of {name} was removed (the file gives each name once now)",
                            self.exec.name,
                            file.display()
                        ),
                    });
                }
            }
            for (name, n) in shown {
                if n > DUPLICATES_SHOWN {
                    events.emit(&Event::Note {
                        message: format!(
                            "{}: {}: {} more entries of {name} were removed",
                            self.exec.name,
                            file.display(),
                            n - DUPLICATES_SHOWN
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn rewrite(
        &self,
        file: &Path,
        text: &str,
        wanted: &[(&str, Option<&str>)],
    ) -> Result<crate::dotenv::Rewrite, ConsumerError> {
        crate::dotenv::rewrite(text, wanted).map_err(|refusal| match refusal {
            crate::dotenv::Refusal::Lines(problems) => {
                let lines: Vec<String> = problems
                    .iter()
                    .take(5)
                    .map(|p| format!("line {}: {}", p.line, p.message))
                    .collect();
                self.file_error(
                    file,
                    format!(
                        "has lines the dotenv grammar does not accept ({}); fix them (rotor changed nothing in it)",
                        lines.join("; ")
                    ),
                )
            }
            crate::dotenv::Refusal::Value { name, why } => self.file_error(
                file,
                format!(
                    "cannot be given the store's value for {name}: it holds {why}; replace that value in the store with one of the playbook's `generate` alphabet (rotor changed nothing in the file)"
                ),
            ),
        })
    }

    /// Replaces `real` with `text` through a temporary file in its directory (mode 0600, the
    /// old file's owner when rotor may set it), unless the file no longer holds what was
    /// `read`: `Ok(false)` then, and nothing changed.
    fn replace(&self, real: &Path, read: &Read, text: &str) -> Result<bool, ConsumerError> {
        let io = |e: std::io::Error| {
            self.file_error(
                real,
                format!("cannot be written ({e}); rotor needs to create and rename files in its directory"),
            )
        };
        let dir = real.parent().unwrap_or(Path::new("."));
        remove_stale_tmp(dir);
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        // As root, the file keeps its owner, and a new file gets its directory's (compose
        // reads it as that user, not as root). Otherwise the file was written by this user or
        // cannot change hands: left as created.
        let owner = read
            .owner
            .or_else(|| std::fs::metadata(dir).ok().map(|m| (m.uid(), m.gid())));
        if let Some((uid, gid)) = owner {
            let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid));
        }
        tmp.as_file().sync_all().map_err(io)?;
        let now = self.read(real)?;
        if now.text.as_str() != read.text.as_str() {
            return Ok(false);
        }
        tmp.persist(real).map_err(|e| io(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(true)
    }

    /// Waits until every target answers again after the command (and reports `d` when the
    /// consumer has a `fingerprints_path`), for at most the readiness timeout; a target that
    /// never does is left to its proof, which then says why.
    async fn settle(&self, d: &Desired<'_>) -> Result<(), ConsumerError> {
        let until = deadline_after(self.exec.timings.readiness_timeout);
        for target in self.exec.instances().await? {
            let Some(addr) = target.addr else { continue };
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let ready = match &self.fingerprints_path {
                    Some(path) => {
                        let at = self.exec.transport().reach(addr, target.host.as_deref());
                        report_held(at, path, left.min(self.exec.timings.probe_timeout))
                            .await
                            .is_ok_and(|h| d.names.iter().all(|(n, f)| h.names.get(n) == Some(f)))
                    }
                    None => tokio::time::timeout(
                        left.min(self.exec.timings.probe_timeout),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                };
                if ready || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(SETTLE_POLL.min(left)).await;
            }
        }
        Ok(())
    }
}

/// Removes the temporary files a rotor killed between writing one and renaming it left in
/// `dir` (they hold values): regular files named `.rotor-tmp-…` unchanged for a minute. What
/// cannot be removed is left.
fn remove_stale_tmp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && entry.metadata().is_ok_and(|m| {
                m.file_type().is_file()
                    && m.modified()
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > TMP_STALE))
            });
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[async_trait]
impl Consumer for DotenvConsumer {
    fn transport(&self) -> &Transport {
        self.exec.transport()
    }

    fn name(&self) -> &str {
        &self.exec.name
    }

    fn role(&self) -> Role {
        self.exec.role
    }

    fn pickup(&self) -> Pickup {
        Pickup::Restart
    }

    /// Every file must be one rotor can rewrite: readable, within bounds, every line one the
    /// dotenv grammar accepts, in a directory that exists.
    async fn preflight(&self) -> Result<(), ConsumerError> {
        for file in &self.files {
            let real = self.real_path(file)?;
            let read = self.read(&real)?;
            self.rewrite(file, &read.text, &[])?;
        }
        Ok(())
    }

    /// Writes the files, runs the command, waits for the targets to come back, then proves
    /// every target through `gate` before the next consumer moves. Files that already hold
    /// the slots, a record that says the command ran for them and targets that pass their
    /// proof: nothing is done (a repeated step, a resume).
    async fn apply(
        &self,
        slots: &Slots,
        gate: &dyn Gate,
        events: &dyn EventSink,
    ) -> Result<RolloutReport, ConsumerError> {
        let d = Desired::new(&self.exec.slot_names, &self.exec.secret, slots);
        if self.files_hold(&d)
            && self.exec.recorded(&d, slots)
            && self.exec.prove_targets(gate, events).await.is_ok()
        {
            return Ok(RolloutReport::default());
        }
        self.write_all(&d, events)?;
        let waited = self.exec.run_recorded(&d, slots, events).await?;
        self.settle(&d).await?;
        self.exec.prove_targets(gate, events).await?;
        Ok(self.exec.finished(events, waited))
    }

    async fn desired_instances(&self) -> Result<usize, ConsumerError> {
        self.exec.desired_instances().await
    }

    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError> {
        self.exec.instances().await
    }

    /// What the target reports at `fingerprints_path`, else what rotor last applied.
    async fn held(&self, instance: &Instance) -> Result<(Held, HeldSource), ConsumerError> {
        let (Some(path), Some(addr)) = (&self.fingerprints_path, instance.addr) else {
            return self.exec.held(instance).await;
        };
        let at = self.exec.transport().reach(addr, instance.host.as_deref());
        let held = report_held(at, path, self.exec.timings.probe_timeout)
            .await
            .map_err(|detail| ConsumerError::Observe {
                consumer: self.exec.name.clone(),
                instance: instance.id.clone(),
                detail,
            })?;
        Ok((held, HeldSource::Reported))
    }

    async fn files(&self) -> Vec<FileView> {
        self.files
            .iter()
            .map(|file| {
                let read = self.real_path(file).and_then(|real| self.read(&real));
                let (names, problems) = match read {
                    Ok(r) => {
                        let (names, mut problems) = self.judge(&r.text);
                        let mode = std::fs::metadata(file).map(|m| m.permissions().mode() & 0o777);
                        if let Ok(mode) = mode
                            && mode & 0o077 != 0
                        {
                            problems.push(format!(
                                "its mode is {mode:04o}: others may read it (rotor writes 0600)"
                            ));
                        }
                        (names, problems)
                    }
                    Err(e) => (BTreeMap::new(), vec![e.to_string()]),
                };
                FileView {
                    consumer: self.exec.name.clone(),
                    file: file.display().to_string(),
                    names,
                    problems,
                }
            })
            .collect()
    }

    /// rotor does not run the consumer: nothing to stop.
    async fn stop(&self) -> Result<usize, ConsumerError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::Slots;
    use crate::secret::SecretValue;

    /// A dotenv consumer writing `files` (relative to `dir`), with the events it emitted.
    fn consumer(dir: &Path, files: &str) -> DotenvConsumer {
        let text = format!(
            "secret: s\nenvironment: development\nstore: {{kind: local, path: s.json}}\nconsumers:\n  - name: auth\n    role: validator\n    kind: dotenv\n    files: {files}\n    apply: [\"true\"]\n    targets: [\"127.0.0.1:9\"]\n    slots: {{primary: P, secondary: P_PREVIOUS, aliases: {{K: primary}}}}\n    probes: [{{type: header, path: /p, header: X-S}}]\n"
        );
        let pb = crate::playbook::load_str(&text, "t.yaml", dir).unwrap();
        let crate::playbook::ConsumerKind::Dotenv(d) = &pb.consumers[0].kind else {
            panic!("a dotenv consumer")
        };
        let t = Transport::for_consumer("auth", None).unwrap();
        DotenvConsumer::new(&pb, &pb.consumers[0], d, t)
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    const A: &str = "value-a-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
    const B: &str = "value-b-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

    #[tokio::test]
    async fn writes_through_a_link_at_0600_and_creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("env")).unwrap();
        std::fs::write(p.join("env/dev.env"), "OTHER=1\n").unwrap();
        std::fs::set_permissions(
            p.join("env/dev.env"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("env/dev.env", p.join(".env")).unwrap();
        let c = consumer(p, "[.env, new.env]");
        let slots = Slots::new(SecretValue::new(A.into()), Some(SecretValue::new(B.into())));
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        assert!(!c.files_hold(&d));
        c.write_all(&d, &crate::events::NullSink).unwrap();
        assert!(c.files_hold(&d));
        assert!(
            std::fs::symlink_metadata(p.join(".env"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link stays a link"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("env/dev.env")).unwrap(),
            format!("OTHER=1\nP={A}\nP_PREVIOUS={B}\nK={A}\n")
        );
        assert_eq!(mode(&p.join("env/dev.env")), 0o600);
        assert_eq!(mode(&p.join("new.env")), 0o600);
        // Back to one value: the secondary's name goes, nothing else moves.
        let slots = Slots::new(SecretValue::new(B.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        c.write_all(&d, &crate::events::NullSink).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.join("new.env")).unwrap(),
            format!("P={B}\nK={B}\n")
        );
        // What `check` reads back: fingerprints per name, nothing wrong.
        let views = c.files().await;
        assert_eq!(views.len(), 2);
        for v in &views {
            assert!(v.problems.is_empty(), "{v:?}");
            assert_eq!(v.names, d.names);
        }
    }

    #[tokio::test]
    async fn a_file_it_cannot_rewrite_stops_it_before_any_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.env"), "X=1\n").unwrap();
        std::fs::write(p.join("b.env"), "X=1\nP='never closed\n").unwrap();
        let c = consumer(p, "[a.env, b.env]");
        let slots = Slots::new(SecretValue::new(A.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        let e = c.write_all(&d, &crate::events::NullSink).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("b.env has lines the dotenv grammar does not accept (line 2: a single quote is never closed)"),
            "{text}"
        );
        assert!(!text.contains("never closed\n"));
        assert_eq!(std::fs::read_to_string(p.join("a.env")).unwrap(), "X=1\n");
        assert!(c.preflight().await.is_err());
        // A directory that does not exist is named, with what to do.
        let c = consumer(p, "[a.env, missing/c.env]");
        let e = c.write_all(&d, &crate::events::NullSink).unwrap_err();
        assert!(e.to_string().contains("does not exist; create it"), "{e}");
        assert_eq!(std::fs::read_to_string(p.join("a.env")).unwrap(), "X=1\n");
        // A value no quoting carries to every reader is named by its name, never written.
        let odd = "legacy$value\\set-by-hand";
        let c = consumer(p, "[a.env]");
        let slots = Slots::new(SecretValue::new(odd.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        let e = c.write_all(&d, &crate::events::NullSink).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("a.env cannot be given the store's value for P: it holds a `$` together with a backslash"),
            "{text}"
        );
        assert!(!text.contains("legacy"), "{text}");
        assert_eq!(std::fs::read_to_string(p.join("a.env")).unwrap(), "X=1\n");
        // An oversized file is refused, not read whole.
        std::fs::write(p.join("a.env"), vec![b'#'; MAX_ENV_FILE as usize + 1]).unwrap();
        let c = consumer(p, "[a.env]");
        let e = c.write_all(&d, &crate::events::NullSink).unwrap_err();
        assert!(e.to_string().contains("is larger than"), "{e}");
    }

    #[tokio::test]
    async fn check_names_duplicates_references_and_loose_modes_never_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("a.env"),
            format!("P={A}\nP=hand-set-value\nK=${{P}}\nP_PREVIOUS\n"),
        )
        .unwrap();
        std::fs::set_permissions(p.join("a.env"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = consumer(p, "[a.env]");
        let views = c.files().await;
        let text = views[0].problems.join("\n");
        for want in [
            "P is given 2 times (lines 1, 2); a program reads the last",
            "line 3: K refers to ${P} instead of holding a value",
            "line 4: P_PREVIOUS is passed through from the environment",
            "its mode is 0644",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert!(!text.contains("hand-set-value") && !text.contains(A));
        // The value a program reads (the last) is the one fingerprinted.
        assert_eq!(
            views[0].names["P"],
            SecretValue::new("hand-set-value".into()).fingerprint("s")
        );
    }

    /// Every event emitted, for the tests that count them.
    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<String>>);

    impl EventSink for Recorded {
        fn emit(&self, event: &Event) {
            if let Event::Note { message } = event {
                self.0.lock().unwrap().push(message.clone());
            }
        }
    }

    #[test]
    fn a_file_rotor_creates_as_root_belongs_to_its_directorys_owner() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("app")).unwrap();
        std::os::unix::fs::chown(p.join("app"), Some(4242), Some(4343)).unwrap();
        let c = consumer(p, "[app/new.env]");
        let slots = Slots::new(SecretValue::new(A.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        c.write_all(&d, &crate::events::NullSink).unwrap();
        let m = std::fs::metadata(p.join("app/new.env")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (4242, 4343, 0o600));
    }

    #[tokio::test]
    async fn a_hard_linked_file_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.env"), "X=1\n").unwrap();
        std::fs::hard_link(p.join("a.env"), p.join("copy.env")).unwrap();
        let c = consumer(p, "[a.env]");
        let e = c.preflight().await.unwrap_err().to_string();
        assert!(e.contains("a.env has 2 hard links"), "{e}");
        let slots = Slots::new(SecretValue::new(A.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        assert!(c.write_all(&d, &crate::events::NullSink).is_err());
        assert_eq!(
            std::fs::read_to_string(p.join("copy.env")).unwrap(),
            "X=1\n"
        );
        assert_eq!(std::fs::read_to_string(p.join("a.env")).unwrap(), "X=1\n");
    }

    #[tokio::test]
    async fn a_file_rotor_cannot_use_is_refused_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::os::unix::fs::symlink("b.env", p.join("a.env")).unwrap();
        std::os::unix::fs::symlink("a.env", p.join("b.env")).unwrap();
        std::fs::create_dir(p.join("d.env")).unwrap();
        std::fs::write(p.join("bom.env"), "\u{feff}P=1\n").unwrap();
        std::fs::write(p.join("latin1.env"), b"P=caf\xe9\n").unwrap();
        for (file, want) in [
            ("a.env", "a.env cannot be resolved ("),
            (
                "a.env",
                "); fix the path under `files`, or the link it follows",
            ),
            (
                "d.env",
                "d.env is not a regular file (a directory, a FIFO, a device); list the env file itself",
            ),
            (
                "bom.env",
                "line 1: starts with a byte-order mark; save the file as UTF-8 without one",
            ),
            (
                "latin1.env",
                "latin1.env is not UTF-8 text (at byte 5); save it as UTF-8",
            ),
        ] {
            let c = consumer(p, &format!("[{file}]"));
            let e = c.preflight().await.unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_path_buf();
        nix::unistd::mkfifo(&p.join("a.env"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let c = consumer(&p, "[a.env]");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.read(&p.join("a.env")).err().map(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a FIFO does not wait for a writer");
        assert!(e.is_some_and(|e| e.contains("is not a regular file")));
    }

    #[tokio::test]
    async fn check_never_shows_what_follows_a_dollar_inside_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.env"), "P=s3cr3t$Xyz9Q\nK=${P}\n").unwrap();
        let c = consumer(p, "[a.env]");
        let views = c.files().await;
        let text = views[0].problems.join("\n");
        assert!(!text.contains("Xyz9Q"), "{text}");
        assert!(
            text.contains("line 1: P refers to another variable"),
            "{text}"
        );
        assert!(text.contains("line 2: K refers to ${P}"), "{text}");
    }

    #[test]
    fn many_duplicates_are_reported_in_a_few_notes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.env"), "P=x\n".repeat(10_000)).unwrap();
        let c = consumer(p, "[a.env]");
        let slots = Slots::new(SecretValue::new(A.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        let events = Recorded::default();
        c.write_all(&d, &events).unwrap();
        let notes = events.0.into_inner().unwrap();
        assert!(notes.len() <= 4, "{} notes", notes.len());
        assert!(
            notes
                .last()
                .unwrap()
                .contains("9996 more entries of P were removed"),
            "{notes:?}"
        );
        assert!(c.files_hold(&d));
        // check names a few lines, and the last.
        std::fs::write(p.join("a.env"), "P=x\n".repeat(10_000)).unwrap();
        let problems = c
            .judge(&std::fs::read_to_string(p.join("a.env")).unwrap())
            .1;
        assert_eq!(
            problems,
            ["P is given 10000 times (lines 1, 2, 3, … 10000); a program reads the last"]
        );
    }

    #[test]
    fn a_temporary_file_a_killed_rotor_left_is_removed_at_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let stale = p.join(".rotor-tmp-AbC123");
        std::fs::write(&stale, format!("P={B}\n")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // One being written right now (another rotor, another secret) is left alone.
        let fresh = p.join(".rotor-tmp-XyZ789");
        std::fs::write(&fresh, "").unwrap();
        let c = consumer(p, "[a.env]");
        let slots = Slots::new(SecretValue::new(A.into()), None);
        let d = Desired::new(&c.exec.slot_names, &c.exec.secret, &slots);
        c.write_all(&d, &crate::events::NullSink).unwrap();
        assert!(!stale.exists(), "a leftover holding values is removed");
        assert!(fresh.exists());
    }
}
