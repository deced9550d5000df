//! The lab's object store: every API object as a `serde_json::Value`, one global
//! resourceVersion counter, the watch history and the fan-out to watchers and to the
//! controller and kubelet.
//!
//! Owns: uid, creationTimestamp, resourceVersion and generation bookkeeping, atomic
//! read-modify-write, watch events. Must never: interpret a patch, decide HTTP semantics or
//! log object contents (Secret data lives here; only kinds and names may be logged).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use super::error::ApiError;
use super::resources::Resource;

/// `Value::pointer` without its per-segment allocations: the controller, the kubelet and
/// every label-selected list read a handful of fields from each of thousands of objects many
/// times a second. Segments holding `~` escapes take the standard path.
pub(crate) trait Ptr {
    fn ptr(&self, pointer: &str) -> Option<&Value>;
}

impl Ptr for Value {
    fn ptr(&self, pointer: &str) -> Option<&Value> {
        if pointer.contains('~') {
            return self.pointer(pointer);
        }
        let rest = pointer.strip_prefix('/')?;
        let mut cur = self;
        for seg in rest.split('/') {
            cur = match cur {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

/// One label's value, without copying the label map.
pub(crate) fn label<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("metadata")?.get("labels")?.get(key)?.as_str()
}

/// How many past events a watch can resume from.
const HISTORY: usize = 50_000;

/// One change, as sent on a watch stream.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub resource: &'static Resource,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// Shared with the store's copy: an event costs no clone.
    pub object: Arc<Value>,
}

/// What a change is interesting to.
#[derive(Default)]
pub(crate) struct Listeners {
    /// Woken on workload, ReplicaSet and pod changes (the controller).
    pub controller: Notify,
    /// Woken on pod changes (the kubelet).
    pub kubelet: Notify,
    /// Woken on pod changes (the endpoints writer).
    pub endpoints: Notify,
}

/// Objects of one resource by (namespace, name).
type Objects = BTreeMap<(String, String), Arc<Value>>;
/// Per resource: (label key, value) → the (namespace, name) of the objects carrying it.
type LabelIndex = HashMap<(String, String), BTreeSet<(String, String)>>;

struct Inner {
    rv: u64,
    objects: HashMap<&'static str, Objects>,
    /// Label index: a selected list (`app=svc-7` among 1,000 pods) reads only its matches,
    /// as kube-apiserver's watch cache does with its indexers.
    labels: HashMap<&'static str, LabelIndex>,
    history: VecDeque<Arc<Event>>,
    /// The resourceVersion below which history was dropped.
    oldest: u64,
}

fn label_pairs(v: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    v.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
}

impl Inner {
    /// Every object of `res` (in `ns` when given), shared, in (namespace, name) order.
    fn shared(&self, res: &'static Resource, ns: Option<&str>) -> Vec<Arc<Value>> {
        self.objects
            .get(res.plural)
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores `obj` under `key`, keeping the label index in step.
    fn put(&mut self, res: &'static Resource, key: (String, String), obj: Arc<Value>) {
        self.take(res, &key);
        let index = self.labels.entry(res.plural).or_default();
        for pair in label_pairs(&obj) {
            index.entry(pair).or_default().insert(key.clone());
        }
        self.objects.entry(res.plural).or_default().insert(key, obj);
    }

    /// Removes the object under `key`, keeping the label index in step.
    fn take(&mut self, res: &'static Resource, key: &(String, String)) -> Option<Arc<Value>> {
        let old = self.objects.get_mut(res.plural)?.remove(key)?;
        if let Some(index) = self.labels.get_mut(res.plural) {
            for pair in label_pairs(&old) {
                if let Some(set) = index.get_mut(&pair) {
                    set.remove(key);
                    if set.is_empty() {
                        index.remove(&pair);
                    }
                }
            }
        }
        Some(old)
    }
}

/// The store. Cheap to share behind an `Arc`.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    pub listeners: Listeners,
}

/// Past events and a receiver of the following ones.
pub(crate) type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Why a watch cannot start where asked.
pub(crate) struct TooOld {
    pub oldest: u64,
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `metadata.name`, or "".
pub(crate) fn name_of(v: &Value) -> &str {
    v.ptr("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, or "".
pub(crate) fn namespace_of(v: &Value) -> &str {
    v.ptr("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.resourceVersion` parsed, if any.
pub(crate) fn rv_of(v: &Value) -> Option<&str> {
    v.ptr("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A mutable `metadata` object (created when missing).
pub(crate) fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let obj = v.as_object_mut().expect("object");
    let m = obj.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("object")
}

/// Equality ignoring `metadata.resourceVersion` and `metadata.managedFields`, without copies.
fn same_content(a: &Value, b: &Value) -> bool {
    const IGNORED: [&str; 2] = ["resourceVersion", "managedFields"];
    let (Some(x), Some(y)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let meta_eq = |m: &Value, n: &Value| -> bool {
        let (Some(m), Some(n)) = (m.as_object(), n.as_object()) else {
            return m == n;
        };
        let kept = |o: &serde_json::Map<String, Value>| {
            o.keys().filter(|k| !IGNORED.contains(&k.as_str())).count()
        };
        kept(m) == kept(n)
            && m.iter()
                .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
                .all(|(k, v)| n.get(k) == Some(v))
    };
    x.len() == y.len()
        && x.iter().all(|(k, v)| match y.get(k) {
            None => false,
            Some(w) if k == "metadata" => meta_eq(v, w),
            Some(w) => v == w,
        })
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(16_384);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: HashMap::new(),
                labels: HashMap::new(),
                history: VecDeque::new(),
                oldest: 1,
            }),
            events,
            listeners: Listeners::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current global resourceVersion.
    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: &'static Resource, ns: &str, name: &str) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        // Only the Arc is taken under the lock; the copy is made outside it.
        let shared = self
            .lock()
            .objects
            .get(res.plural)
            .and_then(|m| m.get(&key))
            .cloned();
        shared.map(|v| Value::clone(&v))
    }

    /// Every object of `res` (in `ns` when given), sorted by namespace and name, and the
    /// resourceVersion of the snapshot.
    pub fn list(&self, res: &'static Resource, ns: Option<&str>) -> (Vec<Value>, u64) {
        self.list_where(res, ns, None, |_| true)
    }

    /// Like [`Store::list`], keeping only objects `keep` accepts; only those are copied (a
    /// label-selected list of 1,000 pods copies one).
    pub fn list_where(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        label: Option<(&str, &str)>,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let (shared, rv) = {
            let inner = self.lock();
            let Some(m) = inner.objects.get(res.plural) else {
                return (Vec::new(), inner.rv);
            };
            let in_ns = |n: &String| ns.is_none_or(|ns| ns == n);
            let shared: Vec<Arc<Value>> = match label {
                // Only the objects carrying the label, in (namespace, name) order.
                Some((k, v)) => inner
                    .labels
                    .get(res.plural)
                    .and_then(|i| i.get(&(k.to_string(), v.to_string())))
                    .into_iter()
                    .flatten()
                    .filter(|key| in_ns(&key.0))
                    .filter_map(|key| m.get(key))
                    .filter(|v| keep(v))
                    .cloned()
                    .collect(),
                None => m
                    .iter()
                    .filter(|((n, _), v)| in_ns(n) && keep(v))
                    .map(|(_, v)| v.clone())
                    .collect(),
            };
            (shared, inner.rv)
        };
        // Copies are made outside the lock.
        (shared.iter().map(|v| Value::clone(v)).collect(), rv)
    }

    /// Every object of `res` (in `ns` when given) without copying them: the controller's and
    /// the kubelet's view, taken many times a second.
    pub fn list_shared(&self, res: &'static Resource, ns: Option<&str>) -> Vec<Arc<Value>> {
        self.lock().shared(res, ns)
    }

    fn emit(&self, inner: &mut Inner, res: &'static Resource, kind: &'static str, obj: Arc<Value>) {
        let ev = Arc::new(Event {
            rv: inner.rv,
            resource: res,
            kind,
            object: obj,
        });
        inner.history.push_back(ev.clone());
        while inner.history.len() > HISTORY {
            if let Some(old) = inner.history.pop_front() {
                inner.oldest = old.rv + 1;
            }
        }
        let _ = self.events.send(ev);
        if res.workload || res.plural == "pods" || res.plural == "replicasets" {
            self.listeners.controller.notify_one();
        }
        if res.plural == "pods" {
            self.listeners.kubelet.notify_one();
            self.listeners.endpoints.notify_one();
        }
    }

    /// Stores a new object. Fills uid, creationTimestamp, resourceVersion and generation.
    pub fn create(&self, res: &'static Resource, mut obj: Value) -> Result<Value, ApiError> {
        let ns = if res.namespaced {
            namespace_of(&obj).to_string()
        } else {
            String::new()
        };
        let name = name_of(&obj).to_string();
        let mut inner = self.lock();
        if res.namespaced && !ns.is_empty() {
            let exists = inner
                .objects
                .get("namespaces")
                .is_some_and(|m| m.contains_key(&(String::new(), ns.clone())));
            if !exists {
                return Err(ApiError::namespace_not_found(&ns));
            }
        }
        let key = (ns, name.clone());
        if inner
            .objects
            .get(res.plural)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiError::already_exists(res, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(new_uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
        }
        let shared = Arc::new(obj);
        inner.put(res, key, shared.clone());
        self.emit(&mut inner, res, "ADDED", shared.clone());
        drop(inner);
        Ok(Value::clone(&shared))
    }

    /// Atomic read-modify-write: `f` gets the current object and returns the new one. System
    /// metadata (uid, creationTimestamp, generation, deletionTimestamp) is kept from the current
    /// object; generation is bumped when a workload's `spec` changed. An update that changes
    /// nothing keeps the resourceVersion and emits no event.
    pub fn update<F>(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        f: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&Value) -> Result<Value, ApiError>,
    {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(current) = inner.objects.get(res.plural).and_then(|m| m.get(&key)) else {
            return Err(ApiError::not_found(res, name));
        };
        let current = current.clone();
        let mut new = f(&current)?;
        let cur_meta = current.get("metadata").cloned().unwrap_or(json!({}));
        let mut generation = cur_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if res.workload && new.get("spec") != current.get("spec") {
            generation += 1;
        }
        {
            let m = meta_mut(&mut new);
            for k in ["uid", "creationTimestamp", "namespace", "name"] {
                match cur_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert("generation".into(), json!(generation));
            if let Some(v) = cur_meta.get("deletionTimestamp") {
                m.insert("deletionTimestamp".into(), v.clone());
            }
            m.insert(
                "resourceVersion".into(),
                cur_meta["resourceVersion"].clone(),
            );
        }
        if same_content(&new, &current) {
            drop(inner);
            return Ok(Value::clone(&current));
        }
        inner.rv += 1;
        let rv = inner.rv;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let shared = Arc::new(new);
        inner.put(res, key, shared.clone());
        self.emit(&mut inner, res, "MODIFIED", shared.clone());
        drop(inner);
        Ok(Value::clone(&shared))
    }

    /// Marks an object as terminating (sets `deletionTimestamp`), for pods.
    pub fn mark_deleting(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        grace_seconds: i64,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(current) = inner.objects.get(res.plural).and_then(|m| m.get(&key)) else {
            return Err(ApiError::not_found(res, name));
        };
        if current.ptr("/metadata/deletionTimestamp").is_some() {
            return Ok(Value::clone(current));
        }
        let mut new = Value::clone(current);
        inner.rv += 1;
        let rv = inner.rv;
        {
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace_seconds));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let shared = Arc::new(new);
        inner.put(res, key, shared.clone());
        self.emit(&mut inner, res, "MODIFIED", shared.clone());
        drop(inner);
        Ok(Value::clone(&shared))
    }

    /// Removes an object for good.
    pub fn remove(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(obj) = inner.take(res, &key) else {
            return Err(ApiError::not_found(res, name));
        };
        let mut obj = Arc::unwrap_or_clone(obj);
        inner.rv += 1;
        let rv = inner.rv;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let shared = Arc::new(obj);
        self.emit(&mut inner, res, "DELETED", shared.clone());
        drop(inner);
        Ok(Value::clone(&shared))
    }

    /// Events after `from` (all retained history when `from` is None is NOT replayed: callers
    /// list first) and a receiver for what follows, with no gap between them.
    pub fn subscribe(&self, from: Option<u64>) -> Result<Subscription, TooOld> {
        let inner = self.lock();
        let rx = self.events.subscribe();
        let past = match from {
            None => Vec::new(),
            Some(rv) => {
                if rv + 1 < inner.oldest {
                    return Err(TooOld {
                        oldest: inner.oldest,
                    });
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
        };
        Ok((past, rx))
    }

    /// A snapshot of `res` objects plus a receiver of later events, with no gap.
    pub fn snapshot_and_subscribe(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Arc<Event>>) {
        let (shared, rv, rx) = {
            let inner = self.lock();
            let rx = self.events.subscribe();
            (inner.shared(res, ns), inner.rv, rx)
        };
        (shared.iter().map(|v| Value::clone(v)).collect(), rv, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn pod(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}})
    }

    fn names(items: &[Value]) -> Vec<&str> {
        items.iter().map(name_of).collect()
    }

    #[test]
    fn label_index_follows_create_update_and_remove() {
        let store = Store::new();
        let ns = resources::get("namespaces");
        store
            .create(
                ns,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
            )
            .unwrap();
        let pods = resources::get("pods");
        for (n, app) in [("a", "x"), ("b", "y"), ("c", "x")] {
            store.create(pods, pod(n, app)).unwrap();
        }
        let sel = |app: &str| {
            store
                .list_where(pods, Some("ns"), Some(("app", app)), |_| true)
                .0
        };
        assert_eq!(names(&sel("x")), ["a", "c"]);
        store
            .update(pods, "ns", "a", |cur| {
                let mut n = cur.clone();
                n["metadata"]["labels"]["app"] = json!("y");
                Ok(n)
            })
            .unwrap();
        assert_eq!(names(&sel("x")), ["c"]);
        assert_eq!(names(&sel("y")), ["a", "b"]);
        store.remove(pods, "ns", "b").unwrap();
        assert_eq!(names(&sel("y")), ["a"]);
        assert!(
            store
                .list_where(pods, Some("other"), Some(("app", "y")), |_| true)
                .0
                .is_empty()
        );
        // The keep filter still applies to indexed candidates.
        let kept = store.list_where(pods, Some("ns"), Some(("app", "y")), |o| name_of(o) != "a");
        assert!(kept.0.is_empty());
    }
}
