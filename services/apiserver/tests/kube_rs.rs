//! kube-rs, the Rust ecosystem's client, against the apiserver: typed CRUD, the three patch
//! flavours, list/watch, a watcher that survives an apiserver restart, optimistic
//! concurrency, and a watch on one head seeing writes made through another.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}}, "data": {"k": v}})).unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_patch_list_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let made = cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    assert!(made.metadata.uid.is_some() && made.metadata.resource_version.is_some());
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "1");
    let dup = cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap_err();
    assert!(matches!(&dup, kube::Error::Api(e) if e.code == 409 && e.reason == "AlreadyExists"), "{dup:?}");

    let mut changed = cms.get("a").await.unwrap();
    changed.data.as_mut().unwrap().insert("k".into(), "2".into());
    cms.replace("a", &PostParams::default(), &changed).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"m": "merge"}}))).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Strategic(json!({"data": {"s": "strategic"}}))).await.unwrap();
    let jp: json_patch::Patch = serde_json::from_value(json!([{"op": "add", "path": "/data/j", "value": "json"}])).unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::<()>::Json(jp)).await.unwrap();
    let data = cms.get("a").await.unwrap().data.unwrap();
    assert_eq!((data["k"].as_str(), data["m"].as_str(), data["s"].as_str(), data["j"].as_str()), ("2", "merge", "strategic", "json"));

    // Strategic merge on containers merges by name, as upstream.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}, {"name": "side", "image": "side:1"}]}}}
    })).unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}});
    let patched = deploys.patch("web", &PatchParams::default(), &Patch::Strategic(p)).await.unwrap();
    let images: Vec<String> = patched.spec.unwrap().template.spec.unwrap().containers.iter().map(|c| c.image.clone().unwrap()).collect();
    assert_eq!(images, ["web:2", "side:1"]);

    cms.create(&PostParams::default(), &cm("b", "1")).await.unwrap();
    let mut other = cm("c", "1");
    other.metadata.labels = None;
    cms.create(&PostParams::default(), &other).await.unwrap();
    let listed = cms.list(&ListParams::default().labels("app=web")).await.unwrap();
    let names: Vec<String> = listed.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);

    // A watch from the list's resourceVersion sees exactly what happens after it.
    let mut stream = cms.watch(&kube::api::WatchParams::default(), &listed.metadata.resource_version.unwrap()).await.unwrap().boxed();
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    let ev = within("the delete event", stream.next()).await.unwrap().unwrap();
    assert!(matches!(ev, kube::api::WatchEvent::Deleted(ref o) if o.metadata.name.as_deref() == Some("b")), "{ev:?}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_watcher_resumes_across_an_apiserver_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", "1")).await.unwrap();
    let mut seen = watcher(cms.clone(), watcher::Config::default()).default_backoff().applied_objects().boxed();
    let first = within("the first object", seen.next()).await.unwrap().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("before"));

    cp.restart_api().await;
    // The client's pooled connection died with the old server; a request that caught it
    // before the client noticed fails in transport (as for any client) and is sent again.
    let mut attempts = 0;
    loop {
        match cms.create(&PostParams::default(), &cm("after", "1")).await {
            Ok(_) => break,
            // The lost attempt may have reached the new server after all.
            Err(kube::Error::Api(e)) if attempts > 0 && e.code == 409 => break,
            Err(kube::Error::Service(e)) if attempts < 3 => {
                attempts += 1;
                eprintln!("create after the restart: {e}; again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create after the restart: {e}"),
        }
    }
    loop {
        match within("the object made after the restart", seen.next()).await {
            Some(Ok(o)) if o.metadata.name.as_deref() == Some("after") => break,
            Some(_) => continue,
            None => panic!("the watcher ended"),
        }
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_from_one_resource_version_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let base = cms.create(&PostParams::default(), &cm("race", "0")).await.unwrap();
    let writes = (1..=2).map(|i| {
        let (cms, mut obj) = (cms.clone(), base.clone());
        obj.data.as_mut().unwrap().insert("k".into(), i.to_string());
        tokio::spawn(async move { cms.replace("race", &PostParams::default(), &obj).await })
    });
    let results: Vec<_> = futures_util::future::join_all(writes).await.into_iter().map(Result::unwrap).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results.iter().filter(|r| matches!(r, Err(kube::Error::Api(e)) if e.code == 409)).count();
    assert_eq!((wins, conflicts), (1, 1), "{results:?}");
    let winner = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(cms.get("race").await.unwrap().data, winner.data);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_head_sees_writes_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 3).await;
    let (second, url) = cp.extra_api(2).await;
    let other = cp.client_at(&url, "controllers", &[groups::CONTROLLERS]).await;
    let on_second: Api<ConfigMap> = Api::namespaced(other, "default");
    let on_first: Api<ConfigMap> = Api::namespaced(cp.client("controllers", &[groups::CONTROLLERS]).await, "default");
    let mut seen = watcher(on_second, watcher::Config::default()).default_backoff().applied_objects().boxed();
    on_first.create(&PostParams::default(), &cm("cross", "1")).await.unwrap();
    let got = within("the write through the other head", seen.next()).await.unwrap().unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("cross"));
    second.shutdown().await;
    cp.shutdown().await;
}

/// A list without `limit` is whole, as in Kubernetes (kube-rs' `Api::list` does not follow
/// `continue`); with `limit` it comes in pages read at the first page's revision, and a
/// label selector pages over the matching objects only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_without_limit_is_whole_and_with_limit_comes_in_consistent_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // More than one store page (1,000) and more than kubectl's chunk size (500).
    let total = 1100;
    futures_util::stream::iter(0..total)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let mut c = cm(&format!("cm-{i:04}"), "1");
                c.metadata.labels = Some([("app".to_string(), if i % 2 == 0 { "web" } else { "db" }.to_string())].into());
                cms.create(&PostParams::default(), &c).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let whole = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(whole.items.len(), total);
    assert_eq!(whole.metadata.continue_, None);

    let names = |l: &kube::core::ObjectList<ConfigMap>| l.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect::<Vec<_>>();
    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut params = ListParams::default().limit(400);
    loop {
        let page = cms.list(&params).await.unwrap();
        sizes.push(page.items.len());
        paged.extend(names(&page));
        if sizes.len() == 1 {
            // Made after the first page: not part of this paged list's snapshot.
            cms.create(&PostParams::default(), &cm("later", "1")).await.unwrap();
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(sizes, [400, 400, 300]);
    assert_eq!(paged, names(&whole), "pages in key order, each object once");

    let mut db = Vec::new();
    let mut params = ListParams::default().labels("app=db").limit(300);
    loop {
        let page = cms.list(&params).await.unwrap();
        assert!(page.items.len() <= 300);
        db.extend(names(&page));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(db.len(), total / 2);
    assert!(db.iter().all(|n| n[3..].parse::<usize>().unwrap() % 2 == 1), "only odd (app=db) objects");
    assert_eq!(cms.list(&ListParams::default()).await.unwrap().items.len(), total + 1);
    cp.shutdown().await;
}
