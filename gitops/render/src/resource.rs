//! A resource while kustomize transforms it: the object plus what kustomize remembers about
//! it (where it came from, the names it had, whether a content hash is still to be added).

use std::path::PathBuf;

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub(crate) struct Res {
    pub obj: Value,
    /// The file it came from (for generated objects, the kustomization), as reported.
    pub file: PathBuf,
    pub index: usize,
    /// Every earlier `(name, namespace)`, oldest first (kustomize's previous ids).
    pub prev: Vec<(String, String)>,
    /// A generated ConfigMap/Secret whose name still gets the content-hash suffix.
    pub hash: bool,
    /// The name prefixes and suffixes applied to it, innermost first.
    pub affixes: Vec<String>,
}

impl Res {
    pub fn new(obj: Value, file: PathBuf, index: usize) -> Res {
        Res { obj, file, index, prev: Vec::new(), hash: false, affixes: Vec::new() }
    }

    fn str_at(&self, ptr: &str) -> &str {
        self.obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
    }

    pub fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }
    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
    pub fn namespace(&self) -> &str {
        self.str_at("/metadata/namespace")
    }
    /// `(group, version)` of the apiVersion.
    pub fn group_version(&self) -> (&str, &str) {
        split_api_version(self.api_version())
    }

    pub fn original_name(&self) -> &str {
        self.prev.first().map_or(self.name(), |(n, _)| n.as_str())
    }

    pub fn original_namespace(&self) -> &str {
        self.prev.first().map_or(self.namespace(), |(_, ns)| ns.as_str())
    }

    fn remember(&mut self) {
        let id = (self.name().to_string(), self.namespace().to_string());
        self.prev.push(id);
    }

    pub fn set_name(&mut self, name: String) {
        if name != self.name() {
            self.remember();
            *meta(&mut self.obj).entry("name").or_insert(Value::Null) = Value::String(name);
        }
    }

    pub fn set_namespace(&mut self, ns: &str) {
        if ns != self.namespace() {
            self.remember();
            meta(&mut self.obj).insert("namespace".into(), Value::String(ns.to_string()));
        }
    }

    /// Whether `other` has the same group, kind, name and namespace, now or earlier.
    pub fn same_id(&self, other: &Res) -> bool {
        self.group_version().0 == other.group_version().0
            && self.kind() == other.kind()
            && self.ids().any(|a| other.ids().any(|b| a == b))
    }

    fn ids(&self) -> impl Iterator<Item = (&str, &str)> {
        self.prev.iter().map(|(n, ns)| (n.as_str(), ns.as_str())).chain(std::iter::once((self.name(), self.namespace())))
    }

    /// `kind/name` (with the namespace when set), for messages.
    pub fn id(&self) -> String {
        match self.namespace() {
            "" => format!("{}/{}", self.kind(), self.name()),
            ns => format!("{}/{}.{ns}", self.kind(), self.name()),
        }
    }
}

pub(crate) fn split_api_version(av: &str) -> (&str, &str) {
    av.rsplit_once('/').unwrap_or(("", av))
}

/// `metadata` of an object, created when missing.
pub(crate) fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    let m = obj.as_object_mut().expect("resources are objects");
    let meta = m.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("just made an object")
}
