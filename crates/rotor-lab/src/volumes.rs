//! Secret volumes, materialised the way the kubelet does it, on the host.
//!
//! A pod's `volumes[].secret` mounted by its container's `volumeMounts[]` becomes the directory
//! `<lab dir>/pods/<pod uid>/volumes/kubernetes.io~secret/<volume>` (the kubelet's own layout
//! under `/var/lib/kubelet`), laid out by the kubelet's atomic writer:
//!
//! ```text
//! ..2026_11_30_05_54_49.123456789/   the payload, one file per key (or `items[].path`)
//! ..data -> ..2026_11_30_05_54_49.123456789
//! SERVICE_SECRET -> ..data/SERVICE_SECRET
//! ```
//!
//! An update writes a new timestamped directory, points a fresh `..data_tmp` symlink at it and
//! renames that over `..data` (one atomic step: a reader that opens `..data/KEY` or `KEY` sees
//! either the whole old payload or the whole new one), then adds and removes the per-key
//! symlinks and deletes the old directory.
//!
//! Pods are processes without a mount namespace, so nothing is mounted at `mountPath`: the
//! kubelet rewrites every environment value and every argument that is a mount path, or starts
//! with one followed by `/`, to the host directory (see [`rewrite`]). A `subPath` mount is a
//! copy made at container start that is never refreshed, as in Kubernetes.
//!
//! Running pods see a Secret change only after the sync delay (`secret_sync_delay`, plus a
//! per-pod share of `secret_sync_jitter`), counted from when the kubelet first saw the change:
//! never before the delay has passed since the write (see [`Pending`]). A pod that starts
//! later gets the Secret as it is then, as on a cluster.
//!
//! Owns: the pod directories under `<lab dir>/pods`. Must never: log a payload (names only).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::time::Instant;

use super::objects::{Ptr as _, Store};
use super::resources;

/// The volume plugin's directory name, as the kubelet names it.
pub(crate) const SECRET_PLUGIN_DIR: &str = "kubernetes.io~secret";
/// The symlink to the current payload directory.
pub(crate) const DATA_DIR: &str = "..data";
/// The symlink renamed over [`DATA_DIR`].
const DATA_TMP: &str = "..data_tmp";
/// The Secret volume's file mode unless `defaultMode` says otherwise (Kubernetes' default).
pub(crate) const DEFAULT_MODE: u32 = 0o644;
/// At most this many files in one volume.
const MAX_FILES: usize = 1024;

/// `items[]` of a secret volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyToPath {
    pub key: String,
    pub path: String,
    pub mode: Option<u32>,
}

/// `volumes[].secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretVolume {
    /// The volume's name.
    pub name: String,
    /// `secretName`.
    pub secret: String,
    pub items: Option<Vec<KeyToPath>>,
    pub optional: bool,
    pub default_mode: u32,
}

/// One mounted secret volume of the running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub volume: SecretVolume,
    /// `mountPath` as the pod spec says.
    pub mount_path: String,
    /// `subPath`, if any (a copy at container start, never refreshed).
    pub sub_path: Option<String>,
}

/// The files of one volume: path inside the volume → (content, mode).
pub(crate) type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Where the volume `name` of the pod whose directory is `pod_dir` lives.
pub(crate) fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(SECRET_PLUGIN_DIR).join(name)
}

fn mode_of(v: &Value, what: &str) -> Result<Option<u32>, String> {
    match v {
        Value::Null => Ok(None),
        v => match v.as_u64() {
            Some(m) if m <= 0o777 => Ok(Some(m as u32)),
            // A topology's YAML reads `0400` as the decimal 400 (YAML 1.2), not as octal the
            // way kubectl's YAML does.
            _ if v.is_f64() => Err(format!(
                "{what}: must be a whole number between 0 and 0777 (octal), both inclusive; in a \
                 topology file write 0o400 or 256 (YAML 1.2 reads 0400 as decimal)"
            )),
            _ => Err(format!(
                "{what}: must be a number between 0 and 0777 (octal), both inclusive"
            )),
        },
    }
}

/// A path inside a volume: relative, no `..` element, not starting with `..`, at most 4096
/// bytes (the API server's rules for `items[].path`).
fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with("..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The secret volumes the container `c` of `pod` mounts. Other volume types are not
/// materialised (their mounts are left alone).
pub(crate) fn secret_mounts(pod: &Value, c: &Value) -> Result<Vec<Mount>, String> {
    let mut volumes: BTreeMap<&str, SecretVolume> = BTreeMap::new();
    for (i, v) in pod
        .ptr("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(s) = v.get("secret") else { continue };
        let name = v["name"].as_str().unwrap_or("");
        let at = format!("spec.volumes[{i}].secret");
        let secret = s["secretName"].as_str().unwrap_or("");
        if secret.is_empty() {
            return Err(format!("{at}.secretName: Required value"));
        }
        let default_mode = mode_of(&s["defaultMode"], &format!("{at}.defaultMode"))?;
        let items = match s.get("items").and_then(Value::as_array) {
            None => None,
            Some(a) => {
                let mut out = Vec::new();
                for (j, it) in a.iter().enumerate() {
                    let path = it["path"].as_str().unwrap_or("");
                    if !valid_path(path) {
                        return Err(format!(
                            "{at}.items[{j}].path: Invalid value: {path:?}: must be a relative \
                             path without `..`"
                        ));
                    }
                    out.push(KeyToPath {
                        key: it["key"].as_str().unwrap_or("").to_string(),
                        path: path.to_string(),
                        mode: mode_of(&it["mode"], &format!("{at}.items[{j}].mode"))?,
                    });
                }
                Some(out)
            }
        };
        volumes.insert(
            name,
            SecretVolume {
                name: name.to_string(),
                secret: secret.to_string(),
                items,
                optional: s["optional"] == true,
                default_mode: default_mode.unwrap_or(DEFAULT_MODE),
            },
        );
    }
    let mut mounts = Vec::new();
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = m["name"].as_str().unwrap_or("");
        let mount_path = m["mountPath"].as_str().unwrap_or("");
        let declared = pod
            .ptr("/spec/volumes")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v["name"] == name));
        if !declared {
            return Err(format!(
                "spec.containers[0].volumeMounts[{i}].name: Not found: {name:?}"
            ));
        }
        let Some(volume) = volumes.get(name) else {
            continue;
        };
        if !mount_path.starts_with('/') {
            return Err(format!(
                "spec.containers[0].volumeMounts[{i}].mountPath: Invalid value: {mount_path:?}: \
                 must be an absolute path"
            ));
        }
        let sub_path = m["subPath"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        if let Some(s) = &sub_path
            && !valid_path(s)
        {
            return Err(format!(
                "spec.containers[0].volumeMounts[{i}].subPath: Invalid value: {s:?}: must be a \
                 relative path without `..`"
            ));
        }
        mounts.push(Mount {
            volume: volume.clone(),
            mount_path: mount_path.trim_end_matches('/').to_string(),
            sub_path,
        });
    }
    Ok(mounts)
}

/// What volume `v` holds, given its Secret (None: it does not exist).
pub(crate) fn payload(
    v: &SecretVolume,
    ns: &str,
    secret: Option<&Value>,
) -> Result<Payload, String> {
    let Some(secret) = secret else {
        return if v.optional {
            Ok(Payload::new())
        } else {
            Err(format!("secret {:?} not found", v.secret))
        };
    };
    let data = secret["data"].as_object();
    let decode = |b64: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .unwrap_or_default()
    };
    let mut out = Payload::new();
    match &v.items {
        None => {
            for (k, b64) in data.into_iter().flatten() {
                out.insert(k.clone(), (decode(b64), v.default_mode));
            }
        }
        Some(items) => {
            for it in items {
                match data.and_then(|d| d.get(&it.key)) {
                    Some(b64) => {
                        out.insert(
                            it.path.clone(),
                            (decode(b64), it.mode.unwrap_or(v.default_mode)),
                        );
                    }
                    None if v.optional => {}
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {ns}/{}",
                            it.key, v.secret
                        ));
                    }
                }
            }
        }
    }
    if out.len() > MAX_FILES {
        return Err(format!(
            "secret {:?} has {} keys; the lab projects at most {MAX_FILES}",
            v.secret,
            out.len()
        ));
    }
    Ok(out)
}

/// The payload of `m` from the Secret as stored now.
pub(crate) fn read(store: &Store, ns: &str, m: &Mount) -> Result<Payload, String> {
    let secret = store.get(resources::get("secrets"), ns, &m.volume.secret);
    payload(&m.volume, ns, secret.as_ref())
}

fn mkdir(p: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    // The umask may have taken bits away: the mode is the pod spec's.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// The first element of a payload path (what gets a symlink at the top of the volume).
fn top(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` into the volume directory `dir` the way the kubelet's atomic writer does:
/// a new timestamped directory, `..data` swapped to it by one rename, per-key symlinks into
/// `..data/`, and the old directory removed.
pub(crate) fn write(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    mkdir(dir, 0o755)?;
    let old = std::fs::read_link(dir.join(DATA_DIR)).ok();
    let stamp = chrono::Utc::now().format("..%Y_%m_%d_%H_%M_%S").to_string();
    let ts = loop {
        let name = format!("{stamp}.{:09}", rand::random::<u32>() % 1_000_000_000);
        match std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir.join(&name))
        {
            Ok(()) => break name,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let ts_dir = dir.join(&ts);
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, (data, mode)) in payload {
        let p = ts_dir.join(path);
        if let Some(parent) = p.parent() {
            mkdir(parent, 0o755)?;
        }
        write_file(&p, data, *mode)?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_DIR))?;
    let wanted: BTreeSet<&str> = payload.keys().map(|p| top(p)).collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("..") && !wanted.contains(name.as_ref()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old
        && old != Path::new(&ts)
        && old.to_string_lossy().starts_with("..")
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Copies the `sub_path` of the volume directory `dir` to `to` (the kubelet's subPath bind
/// mount: what the file held at container start, never refreshed).
pub(crate) fn copy_sub_path(dir: &Path, sub_path: &str, to: &Path) -> std::io::Result<()> {
    let from = dir.join(sub_path);
    if let Some(parent) = to.parent() {
        mkdir(parent, 0o700)?;
    }
    let meta = std::fs::metadata(&from)?;
    let _ = std::fs::remove_file(to);
    if meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "subPath {sub_path:?} is a directory; the lab copies files only"
        )));
    }
    let data = std::fs::read(&from)?;
    write_file(to, &data, meta.permissions().mode() & 0o777)
}

/// Rewrites `value` when it is a mount path or starts with one followed by `/`, or is
/// `NAME=` followed by such a path (`--key-file=/etc/keys/KEY`): the mount path becomes its
/// host directory (the longest mount path that matches wins).
pub(crate) fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> Option<String> {
    rewrite_path(value, mounts).or_else(|| {
        let (flag, path) = value.split_once('=')?;
        rewrite_path(path, mounts).map(|p| format!("{flag}={p}"))
    })
}

fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> Option<String> {
    mounts
        .iter()
        .filter(|(m, _)| {
            value == m
                || value
                    .strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|(m, _)| m.len())
        .map(|(m, host)| format!("{}{}", host.to_string_lossy(), &value[m.len()..]))
}

/// A change of one volume the kubelet has seen but must not show yet.
///
/// Each payload is shown once `delay` has passed since the kubelet first saw it (never
/// before: it saw it after it was written). A payload superseded before its delay passed is
/// never shown, and a change undone in time shows nothing: the volume only ever holds what the
/// Secret held at least `delay` ago.
#[derive(Debug)]
pub(crate) struct Pending {
    /// What the volume holds.
    shown: Payload,
    /// The newest payload seen that differs from `shown`, and when it was first seen.
    next: Option<(Instant, Payload)>,
}

impl Pending {
    /// `shown` is what the volume holds now.
    pub fn new(shown: Payload) -> Pending {
        Pending { shown, next: None }
    }

    /// The Secret holds `p` at `now`.
    pub fn observe(&mut self, now: Instant, p: Payload) {
        let seen = self.next.as_ref().map_or(&self.shown, |(_, n)| n);
        if p == *seen {
            return;
        }
        self.next = (p != self.shown).then_some((now, p));
    }

    /// The payload to show now, if one is due: seen at least `delay` before `now`. A delay
    /// too long to add is never due.
    pub fn due(&mut self, now: Instant, delay: Duration) -> Option<Payload> {
        let (seen, _) = self.next.as_ref()?;
        match seen.checked_add(delay) {
            Some(at) if at <= now => {
                let (_, p) = self.next.take()?;
                self.shown = p.clone();
                Some(p)
            }
            _ => None,
        }
    }
}

/// This pod's sync delay: `delay` plus a share of `jitter` fixed by its uid.
pub(crate) fn pod_delay(uid: &str, delay: Duration, jitter: Duration) -> Duration {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(uid.as_bytes());
    let share = u32::from(u16::from_be_bytes([h[0], h[1]]));
    delay.saturating_add(jitter.mul_f64(f64::from(share) / f64::from(u16::MAX)))
}

/// Keeps the pod's volumes in step with their Secrets, each change shown `delay` after it was
/// first seen; runs until aborted. `shown` is what each mount holds now.
pub(crate) async fn sync(
    store: std::sync::Arc<Store>,
    ns: String,
    pod: String,
    mounts: Vec<(Mount, PathBuf)>,
    shown: Vec<Payload>,
    delay: Duration,
) {
    let poll = (delay / 10).clamp(Duration::from_millis(20), Duration::from_millis(200));
    let mut pending: Vec<Pending> = shown.into_iter().map(Pending::new).collect();
    loop {
        tokio::time::sleep(poll).await;
        for ((m, dir), p) in mounts.iter().zip(pending.iter_mut()) {
            let now = Instant::now();
            // A Secret that is gone (and not optional) leaves the volume as it is, as the
            // kubelet does when it cannot fetch it.
            if let Ok(current) = read(&store, &ns, m) {
                p.observe(now, current);
            }
            if let Some(next) = p.due(now, delay) {
                match write(dir, &next) {
                    Ok(()) => tracing::debug!(namespace = %ns, %pod, volume = %m.volume.name,
                        "lab: secret volume refreshed"),
                    Err(e) => tracing::warn!(namespace = %ns, %pod, volume = %m.volume.name,
                        error = %e, "lab: cannot refresh a secret volume"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn p(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(k, v, m)| (k.to_string(), (v.as_bytes().to_vec(), *m)))
            .collect()
    }

    fn listing(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mounts_and_payloads_follow_the_pod_spec() {
        let pod = json!({"spec": {"volumes": [
            {"name": "keys", "secret": {"secretName": "auth-secrets", "defaultMode": 0o400,
             "items": [{"key": "A", "path": "a.txt"}, {"key": "B", "path": "sub/b", "mode": 0o440}]}},
            {"name": "scratch", "emptyDir": {}},
        ]}});
        let c = json!({"volumeMounts": [
            {"name": "keys", "mountPath": "/etc/keys/"},
            {"name": "scratch", "mountPath": "/tmp/x"},
        ]});
        let m = secret_mounts(&pod, &c).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_path, "/etc/keys");
        assert_eq!(m[0].volume.default_mode, 0o400);
        let secret = json!({"data": {"A": b64("a"), "B": b64("b"), "C": b64("c")}});
        let got = payload(&m[0].volume, "demo", Some(&secret)).unwrap();
        assert_eq!(got, p(&[("a.txt", "a", 0o400), ("sub/b", "b", 0o440)]));
        // A listed key that is missing.
        let e = payload(
            &m[0].volume,
            "demo",
            Some(&json!({"data": {"A": b64("a")}})),
        );
        assert_eq!(
            e.unwrap_err(),
            "couldn't find key B in Secret demo/auth-secrets"
        );
        let e = payload(&m[0].volume, "demo", None).unwrap_err();
        assert_eq!(e, "secret \"auth-secrets\" not found");
        // Every key, 0644 by default; optional and missing is empty.
        let all = SecretVolume {
            items: None,
            default_mode: DEFAULT_MODE,
            optional: true,
            ..m[0].volume.clone()
        };
        let got = payload(&all, "demo", Some(&secret)).unwrap();
        assert_eq!(got["C"], (b"c".to_vec(), 0o644));
        assert!(payload(&all, "demo", None).unwrap().is_empty());
        // Bad specs are refused with the API server's field paths.
        let bad = json!({"spec": {"volumes": [{"name": "k", "secret": {"secretName": "s", "defaultMode": 4096}}]}});
        let e = secret_mounts(&bad, &json!({})).unwrap_err();
        assert!(e.contains("spec.volumes[0].secret.defaultMode"), "{e}");
        let bad = json!({"spec": {"volumes": [{"name": "k", "secret": {"secretName": "s", "defaultMode": 400.0}}]}});
        let e = secret_mounts(&bad, &json!({})).unwrap_err();
        assert!(e.contains("write 0o400 or 256"), "{e}");
        let bad = json!({"spec": {"volumes": [{"name": "k", "secret": {"secretName": "s",
            "items": [{"key": "A", "path": "../x"}]}}]}});
        assert!(
            secret_mounts(&bad, &json!({}))
                .unwrap_err()
                .contains("items[0].path")
        );
        let e = secret_mounts(
            &pod,
            &json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        )
        .unwrap_err();
        assert!(e.contains("volumeMounts[0].name: Not found"), "{e}");
    }

    #[test]
    fn the_layout_is_the_kubelets_and_a_swap_is_one_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        write(&dir, &p(&[("KEY", "one", 0o400), ("sub/x", "x", 0o644)])).unwrap();
        let first = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        let first = first.to_string_lossy().into_owned();
        assert!(first.starts_with("..20"), "{first}");
        assert_eq!(
            listing(&dir),
            BTreeSet::from([first.clone(), "..data".into(), "KEY".into(), "sub".into()])
        );
        assert_eq!(
            std::fs::read_link(dir.join("KEY")).unwrap(),
            Path::new("..data/KEY")
        );
        assert_eq!(std::fs::read_to_string(dir.join("KEY")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("sub/x")).unwrap(), "x");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("KEY")), 0o400);
        assert_eq!(mode(&dir.join("sub/x")), 0o644);

        // A reader holding the old file keeps reading the old payload; the new one replaces
        // it whole, a key that went is gone, and the old directory is removed.
        let held = std::fs::File::open(dir.join("KEY")).unwrap();
        write(&dir, &p(&[("KEY", "two", 0o400), ("NEW", "n", 0o400)])).unwrap();
        let second = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        let second = second.to_string_lossy().into_owned();
        assert_ne!(first, second);
        assert_eq!(
            listing(&dir),
            BTreeSet::from([second, "..data".into(), "KEY".into(), "NEW".into()])
        );
        assert_eq!(std::fs::read_to_string(dir.join("KEY")).unwrap(), "two");
        assert_eq!(std::io::read_to_string(held).unwrap(), "one");
        assert!(!dir.join(&first).exists());
    }

    #[test]
    fn readers_never_see_a_mix_of_two_payloads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let both = |v: &str| p(&[("A", v, 0o644), ("B", v, 0o644)]);
        write(&dir, &both("0")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // As a reloading service reads: resolve `..data` once, read every key
                    // through it.
                    let Ok(data) = std::fs::read_link(dir.join(DATA_DIR)) else {
                        panic!("..data is missing between two writes");
                    };
                    let base = dir.join(data);
                    let (Ok(a), Ok(b)) = (
                        std::fs::read_to_string(base.join("A")),
                        std::fs::read_to_string(base.join("B")),
                    ) else {
                        continue; // that directory was removed meanwhile: resolve again
                    };
                    assert_eq!(a, b, "a reader saw two payloads at once");
                    reads += 1;
                }
                reads
            })
        };
        for i in 1..200 {
            write(&dir, &both(&i.to_string())).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(std::fs::read_to_string(dir.join("A")).unwrap(), "199");
    }

    #[test]
    fn a_change_is_due_only_once_the_delay_has_passed_since_it_was_seen() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let d = s(10);
        let v = |x: &str| p(&[("K", x, 0o644)]);
        let mut q = Pending::new(v("old"));
        // The same payload again is no change.
        q.observe(t0, v("old"));
        assert_eq!(q.due(t0 + d, d), None);
        q.observe(t0, v("v1"));
        q.observe(t0 + s(3), v("v1"));
        assert_eq!(q.due(t0 + Duration::from_millis(9_999), d), None);
        assert_eq!(q.due(t0 + d, d), Some(v("v1")));
        assert_eq!(q.due(t0 + s(30), d), None, "shown once");
        // v2 is superseded by v3 before its delay passed: v2 is never shown, v3 is shown
        // `delay` after it was seen, not after v2 was.
        q.observe(t0 + s(20), v("v2"));
        q.observe(t0 + s(25), v("v3"));
        assert_eq!(q.due(t0 + s(30), d), None);
        assert_eq!(q.due(t0 + Duration::from_millis(34_999), d), None);
        assert_eq!(q.due(t0 + s(35), d), Some(v("v3")));
        // A change undone before its delay passed shows nothing.
        q.observe(t0 + s(40), v("v4"));
        q.observe(t0 + s(41), v("v3"));
        assert_eq!(q.due(t0 + s(60), d), None);
        // A delay too long to add is never due.
        q.observe(t0 + s(50), v("v5"));
        assert_eq!(q.due(t0 + s(60), Duration::MAX), None);
        assert_eq!(q.due(t0 + s(60), d), Some(v("v5")));
    }

    #[test]
    fn jitter_is_a_fixed_share_per_pod_within_bounds() {
        let d = Duration::from_secs(1);
        let j = Duration::from_secs(2);
        let a = pod_delay("uid-a", d, j);
        assert_eq!(a, pod_delay("uid-a", d, j));
        for uid in ["uid-a", "uid-b", "uid-c", "x"] {
            let x = pod_delay(uid, d, j);
            assert!(x >= d && x <= d + j, "{x:?}");
        }
        assert_eq!(pod_delay("uid-a", d, Duration::ZERO), d);
    }

    #[test]
    fn mount_paths_are_rewritten_to_the_host_directory() {
        let mounts = vec![
            (
                "/etc/keys".to_string(),
                PathBuf::from("/lab/pods/u/volumes/k"),
            ),
            ("/etc/keys/inner".to_string(), PathBuf::from("/lab/inner")),
        ];
        assert_eq!(
            rewrite("/etc/keys", &mounts).as_deref(),
            Some("/lab/pods/u/volumes/k")
        );
        assert_eq!(
            rewrite("/etc/keys/KEY", &mounts).as_deref(),
            Some("/lab/pods/u/volumes/k/KEY")
        );
        assert_eq!(
            rewrite("/etc/keys/inner/x", &mounts).as_deref(),
            Some("/lab/inner/x")
        );
        assert_eq!(rewrite("/etc/keysmith", &mounts), None);
        assert_eq!(
            rewrite("--key=/etc/keys/KEY", &mounts).as_deref(),
            Some("--key=/lab/pods/u/volumes/k/KEY")
        );
        assert_eq!(rewrite("--key=/etc/other", &mounts), None);
    }
}
