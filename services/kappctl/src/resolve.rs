//! `kappctl get pods`, `get po`, `get deployment.apps`, `get GitSync`: which resource a
//! word names — from kapp-api's table of served resources, else from the apiserver's
//! discovery documents (for kinds a newer apiserver serves).

use serde_json::Value;

use crate::error::Error;
use crate::readonly::{Get, ReadOnlyClient};

/// A resource kappctl can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl Kind {
    fn from_table(r: &kapp_api::Resource) -> Kind {
        Kind { group: r.group.into(), version: r.version.into(), kind: r.kind.into(), plural: r.plural.into(), namespaced: r.namespaced }
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The collection URL: in `namespace` (when namespaced and given) or across all.
    pub fn collection(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{}/namespaces/{ns}/{}", self.prefix(), self.plural),
            None => format!("{}/{}", self.prefix(), self.plural),
        }
    }

    /// One object's URL.
    pub fn object(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(Some(namespace)))
    }

    /// `deployment.apps` / `pod`: how kubectl names the kind in `-o name`.
    pub fn qualified(&self) -> String {
        let k = self.kind.to_lowercase();
        if self.group.is_empty() {
            k
        } else {
            format!("{k}.{}", self.group)
        }
    }
}

/// Split `deployments.apps` into (`deployments`, Some(`apps`)).
fn split(word: &str) -> (String, Option<String>) {
    let w = word.to_lowercase();
    match w.split_once('.') {
        Some((name, group)) => (name.to_string(), Some(group.to_string())),
        None => (w, None),
    }
}

/// The served resource `word` names, from kapp-api's table.
pub fn from_table(word: &str) -> Option<Kind> {
    let (name, group) = split(word);
    kapp_api::RESOURCES
        .iter()
        .filter(|r| group.as_deref().is_none_or(|g| g == r.group))
        .find(|r| r.plural == name || r.singular == name || r.kind.to_lowercase() == name || r.short_names.contains(&name.as_str()))
        .map(Kind::from_table)
}

/// The resource `word` names: the table first, then the apiserver's discovery.
pub async fn resolve(client: &ReadOnlyClient, word: &str) -> Result<Kind, Error> {
    if let Some(k) = from_table(word) {
        return Ok(k);
    }
    let (name, group) = split(word);
    let mut lists: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    let groups: Value = client.json(Get::json("/apis")).await?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        if let Some(v) = g["preferredVersion"]["version"].as_str() {
            lists.push((g["name"].as_str().unwrap_or("").to_string(), v.to_string()));
        }
    }
    for (g, v) in lists.into_iter().filter(|(g, _)| group.as_deref().is_none_or(|want| want == g)) {
        let path = if g.is_empty() { format!("/api/{v}") } else { format!("/apis/{g}/{v}") };
        let Ok(list) = client.json::<Value>(Get::json(path)).await else { continue };
        for r in list["resources"].as_array().into_iter().flatten() {
            let plural = r["name"].as_str().unwrap_or("");
            if plural.contains('/') {
                continue;
            }
            let short = r["shortNames"].as_array().is_some_and(|s| s.iter().any(|x| x.as_str() == Some(name.as_str())));
            let kind = r["kind"].as_str().unwrap_or("");
            if plural == name || r["singularName"].as_str() == Some(name.as_str()) || kind.to_lowercase() == name || short {
                return Ok(Kind { group: g, version: v, kind: kind.into(), plural: plural.into(), namespaced: r["namespaced"].as_bool().unwrap_or(true) });
            }
        }
    }
    Err(Error::Usage(format!("the server doesn't have a resource type {word:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_every_name() {
        for w in ["pods", "pod", "po", "Pod", "pods.", "pod.", "PODS"] {
            assert_eq!(from_table(w).unwrap().kind, "Pod", "{w}");
        }
        let d = from_table("deployments.apps").unwrap();
        assert_eq!((d.kind.as_str(), d.collection(Some("shop")).as_str()), ("Deployment", "/apis/apps/v1/namespaces/shop/deployments"));
        assert_eq!(from_table("deploy").unwrap().object("shop", "web"), "/apis/apps/v1/namespaces/shop/deployments/web");
        assert!(from_table("deployments.batch").is_none());
        let gs = from_table("gs").unwrap();
        assert_eq!((gs.collection(Some("x")).as_str(), gs.qualified().as_str()), ("/apis/kapp.dev/v1/gitsyncs", "gitsync.kapp.dev"));
        assert_eq!(from_table("no").unwrap().collection(None), "/api/v1/nodes");
        assert!(from_table("widgets").is_none());
    }
}
