//! kappctl cannot write, three ways over:
//!
//! 1. by construction: every request is built by `Get` and passes `ensure_read_only` at the
//!    one place requests leave (`ReadOnlyClient::send`), which refuses anything but a GET;
//! 2. by its sources: no file but `readonly.rs` holds the kube-rs client, and no source file
//!    spells a write (`.create(`, `.patch(`, `Method::POST`, …) — checked here by reading them;
//! 3. by its credentials: the viewer identity is refused every write by the apiserver.

use std::path::{Path, PathBuf};

use kapp_testkit::{groups, ControlPlane};
use kappctl::error::Error;
use kappctl::readonly::{ensure_read_only, Get};

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() >= 8, "found the sources");
    out
}

#[test]
fn the_choke_point_refuses_every_method_but_get() {
    for m in [http::Method::POST, http::Method::PUT, http::Method::PATCH, http::Method::DELETE, http::Method::HEAD, http::Method::OPTIONS] {
        let req = http::Request::builder().method(m.clone()).uri("/api/v1/namespaces/default/pods/x").body(Vec::new()).unwrap();
        assert!(matches!(ensure_read_only(&req), Err(Error::WriteRefused { .. })), "{m} got through");
    }
    // A GET with a body is not a read either.
    let req = http::Request::get("/api/v1/pods").body(b"{}".to_vec()).unwrap();
    assert!(ensure_read_only(&req).is_err());
    // What `Get` builds always passes.
    for g in [Get::json("/api/v1/pods"), Get::table("/api/v1/nodes").query("labelSelector", "a=b"), Get::text("/api/v1/namespaces/d/pods/p/log").query("follow", "true")] {
        let req = g.to_request().unwrap();
        assert_eq!(req.method(), http::Method::GET);
        ensure_read_only(&req).unwrap();
    }
}

#[test]
fn no_source_file_spells_a_write() {
    let forbidden = [
        ".create(", ".patch(", ".delete(", ".replace(", ".replace_status(", ".patch_status(", ".delete_collection(", ".evict(", ".create_subresource(", ".patch_subresource(",
        ".replace_subresource(", "Method::POST", "Method::PUT", "Method::PATCH", "Method::DELETE", "Request::post(", "Request::put(", "Request::patch(", "Request::delete(",
        "Request::builder(", "kube::Api", "kube::api::Api", "Api::<", "Api::namespaced", "Api::all",
    ];
    for (path, text) in sources() {
        for f in forbidden {
            assert!(!text.contains(f), "{} contains {f:?}", path.display());
        }
        // The only HTTP method named anywhere is GET.
        for (i, _) in text.match_indices("Method::") {
            assert!(text[i..].starts_with("Method::GET"), "{} names a method other than GET: {:?}", path.display(), &text[i..(i + 20).min(text.len())]);
        }
        // The kube-rs client, able to send anything, lives only behind the choke point.
        if !path.ends_with("readonly.rs") {
            for f in ["kube::Client", ".method(", "request_text(", "request_stream(", "request_events(", ".send(", "kapp_runtime::client("] {
                assert!(!text.contains(f), "{} contains {f:?}: requests must go through readonly::ReadOnlyClient", path.display());
            }
        }
    }
}

/// kappctl links nothing that talks to the store, and knows the viewer files `kapp gen pki`
/// writes by their real names.
#[test]
fn dependencies_and_pki_file_names() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for crate_name in ["kapp-store", "kapp-store-client", "kapp-apiserver", "kapp-gitops", "kapp-bootstrap"] {
        assert!(!deps.lines().any(|l| l.starts_with(&format!("{crate_name}.")) || l.starts_with(&format!("{crate_name} "))), "kappctl must not depend on {crate_name}");
    }
    use kappctl::creds::pki_files;
    assert_eq!(pki_files::CA_CERT, kapp_bootstrap::files::CA_CERT);
    assert_eq!(pki_files::VIEWER_CERT, kapp_bootstrap::files::VIEWER_CERT);
    assert_eq!(pki_files::VIEWER_KEY, kapp_bootstrap::files::VIEWER_KEY);
}

/// The viewer identity kappctl uses cannot write even if a request did get out: the
/// apiserver refuses it (and a writer's request of the same shape succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_refuses_the_viewer_every_write() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let writer: Api<ConfigMap> = Api::namespaced(cp.client("controllers", &[groups::CONTROLLERS]).await, "default");
    let viewer: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    writer.create(&PostParams::default(), &cm).await.unwrap();
    let forbidden = |r: Result<ConfigMap, kube::Error>| matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403);
    let other: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "d"}})).unwrap();
    assert!(forbidden(viewer.create(&PostParams::default(), &other).await));
    let mut changed = viewer.get("c").await.unwrap();
    changed.data = None;
    assert!(forbidden(viewer.replace("c", &PostParams::default(), &changed).await));
    assert!(forbidden(viewer.patch("c", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"k": "w"}}))).await));
    let del = viewer.delete("c", &DeleteParams::default()).await;
    assert!(matches!(del, Err(kube::Error::Api(ref s)) if s.code == 403), "{del:?}");
    assert_eq!(writer.get("c").await.unwrap().data.unwrap()["k"], "v", "nothing changed");
    cp.shutdown().await;
}
