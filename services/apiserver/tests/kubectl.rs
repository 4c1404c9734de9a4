//! The real kubectl against the apiserver over a real (in-process) store: discovery, create,
//! get (-o json, -l, --field-selector, -A), a stale update refused with 409, a watch that
//! sees a change, invalid objects refused with 422 and the field, and a viewer that can read
//! but not write and never sees Secret data.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kapp_apiserver::{ApiServer, ApiServerConfig, GITOPS, VIEWERS};
use kapp_store::testing::TestCluster;
use kapp_tls::Pem;

fn kubeconfig(dir: &Path, name: &str, server: &str, pem: &Pem) -> String {
    let f = |n: &str| dir.join(format!("{name}-{n}")).display().to_string();
    std::fs::write(f("ca.pem"), &pem.ca).unwrap();
    std::fs::write(f("cert.pem"), &pem.cert).unwrap();
    std::fs::write(f("key.pem"), &pem.key).unwrap();
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kapp\n  cluster:\n    server: https://{server}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: {name}\n  context:\n    cluster: kapp\n    user: {name}\ncurrent-context: {name}\n",
        f("ca.pem"), f("cert.pem"), f("key.pem")
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, cfg).unwrap();
    path.display().to_string()
}

fn kubectl(cfg: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(cfg).arg("--request-timeout=10s").args(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.env("HOME", Path::new(cfg).parent().unwrap());
    let mut child = cmd.spawn().expect("kubectl is installed");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const DEPLOY: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop","labels":{"app":"web"}},
"spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"web:1"}]}}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_and_writes_through_the_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let serving = store.pki.ca.issue("apiserver", &[], &["127.0.0.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = ApiServer::start(ApiServerConfig { tls: serving, store: store.client(), max_connections: 64, secret_key: Some(vec![9u8; 32]), audit_log: None, bookmark_interval: Duration::from_secs(5), watch_cache: Default::default() }, listener).await.unwrap();
    let server = api.addr.to_string();
    let writer = kubeconfig(dir.path(), "gitops", &server, &store.pki.ca.issue("gitops", &[GITOPS], &[]).unwrap());
    let viewer = kubeconfig(dir.path(), "viewer", &server, &store.pki.ca.issue("alice", &[VIEWERS], &[]).unwrap());

    let run = |cfg: &str, args: &[&str], stdin: Option<&str>| {
        let cfg = cfg.to_string();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.map(String::from);
        async move {
            tokio::task::spawn_blocking(move || kubectl(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>(), stdin.as_deref())).await.unwrap()
        }
    };

    let (ok, out, err) = run(&viewer, &["version", "-o", "json"], None).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"minor\": \"33\""), "{out}");
    let (ok, out, err) = run(&viewer, &["api-resources"], None).await;
    assert!(ok, "{err}");
    for r in ["deployments", "pods", "endpointslices", "leases", "namespaces"] {
        assert!(out.contains(r), "api-resources lacks {r}:\n{out}");
    }

    // Writes with the gitops identity.
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop"}}"#)).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(DEPLOY)).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(DEPLOY)).await;
    assert!(!ok && err.contains("AlreadyExists") || err.contains("already exists"), "{err}");
    let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db","namespace":"shop"},"data":{"password":"aHVudGVyMg=="}}"#;
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(secret)).await;
    assert!(ok, "{err}");

    // Invalid: 422 naming the field; nothing stored.
    let bad = DEPLOY.replace("\"replicas\":3", "\"replicas\":\"three\"").replace("\"name\":\"web\",\"namespace\"", "\"name\":\"bad\",\"namespace\"");
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(&bad)).await;
    assert!(!ok && err.contains("spec.replicas"), "{err}");
    let (ok, _, _) = run(&viewer, &["get", "deployment", "bad", "-n", "shop"], None).await;
    assert!(!ok, "the invalid object was not stored");

    // Reads with the viewer identity.
    let (ok, out, err) = run(&viewer, &["get", "deployments", "-A"], None).await;
    assert!(ok && out.contains("web"), "{out}{err}");
    // Server-side printing: the kind's own columns.
    let header = out.lines().next().unwrap_or("").split_whitespace().collect::<Vec<_>>();
    assert_eq!(header, ["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap_or("").contains("0/3"), "{out}");
    let (ok, out, err) = run(&viewer, &["get", "secret", "db", "-n", "shop"], None).await;
    assert!(ok && out.contains("Opaque") && out.contains("TYPE"), "{out}{err}");
    let (ok, out, err) = run(&viewer, &["get", "deploy", "web", "-n", "shop", "-o", "json"], None).await;
    assert!(ok, "{err}");
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(obj["spec"]["replicas"], 3);
    assert!(obj["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let rv = obj["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (ok, out, _) = run(&viewer, &["get", "deploy", "-n", "shop", "-l", "app=web", "-o", "name"], None).await;
    assert!(ok && out.trim() == "deployment.apps/web", "{out}");
    let (ok, out, _) = run(&viewer, &["get", "deploy", "-n", "shop", "-l", "app=db", "-o", "name"], None).await;
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out, _) = run(&viewer, &["get", "deploy", "-n", "shop", "--field-selector", "metadata.name=web", "-o", "name"], None).await;
    assert!(ok && out.trim() == "deployment.apps/web", "{out}");
    let (ok, out, _) = run(&viewer, &["get", "secret", "db", "-n", "shop", "-o", "json"], None).await;
    assert!(ok && !out.contains("aHVudGVyMg==") && !out.contains("\"data\""), "a viewer saw secret data: {out}");
    let (ok, out, _) = run(&writer, &["get", "secret", "db", "-n", "shop", "-o", "json"], None).await;
    assert!(ok && out.contains("aHVudGVyMg=="), "{out}");
    // Encrypted at rest: the Secret's data is in none of the store's files, while a
    // ConfigMap's (stored in the clear) is — which shows the scan can find things.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"plain","namespace":"shop"},"data":{"k":"plain-marker-4711"}}"#;
    let (ok, _, err) = run(&writer, &["create", "--validate=false", "-f", "-"], Some(cm)).await;
    assert!(ok, "{err}");
    let found = |needle: &[u8]| {
        let mut hit = false;
        let mut stack = vec![dir.path().join("m1")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    hit |= bytes.windows(needle.len()).any(|w| w == needle);
                }
            }
        }
        hit
    };
    assert!(found(b"plain-marker-4711"), "the scan finds a ConfigMap value in the store's files");
    assert!(!found(b"aHVudGVyMg=="), "a Secret's data reached the store's files in the clear");

    // A viewer cannot write, and nothing changes.
    let (ok, _, err) = run(&viewer, &["delete", "deploy", "web", "-n", "shop"], None).await;
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let (ok, _, err) = run(&viewer, &["create", "--validate=false", "-f", "-"], Some(&DEPLOY.replace("\"web\",\"namespace\"", "\"web2\",\"namespace\""))).await;
    assert!(!ok && err.contains("Forbidden"), "{err}");

    // Watch: kubectl get -w sees an update made meanwhile.
    let watcher = {
        let viewer = viewer.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("timeout")
                .args(["8", "kubectl", "--kubeconfig", &viewer, "get", "deploy", "-n", "shop", "-w", "-o", "jsonpath={.spec.replicas}{\"\\n\"}"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let updated = DEPLOY.replace("\"replicas\":3", "\"replicas\":5");
    let (ok, _, err) = run(&writer, &["replace", "--validate=false", "-f", "-"], Some(&updated)).await;
    assert!(ok, "{err}");
    let seen = watcher.await.unwrap();
    assert!(seen.lines().any(|l| l == "5"), "the watch did not see the update: {seen:?}");

    // Patches, as kubectl sends them: strategic merge (scale-like), JSON merge, JSON patch.
    let (ok, _, err) = run(&writer, &["patch", "deploy", "web", "-n", "shop", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"web:2"}]}}}}"#], None).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&writer, &["patch", "deploy", "web", "-n", "shop", "--type=merge", "-p", r#"{"metadata":{"labels":{"patched":"yes"}}}"#], None).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&writer, &["patch", "deploy", "web", "-n", "shop", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":6}]"#], None).await;
    assert!(ok, "{err}");
    let (ok, out, _) = run(&viewer, &["get", "deploy", "web", "-n", "shop", "-o", "json"], None).await;
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && obj["spec"]["replicas"] == 6 && obj["metadata"]["labels"]["patched"] == "yes", "{out}");
    assert_eq!(obj["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(obj["spec"]["template"]["spec"]["containers"][0]["image"], "web:2");
    let (ok, _, err) = run(&writer, &["patch", "deploy", "web", "-n", "shop", "--type=merge", "-p", r#"{"spec":{"replicas":"many"}}"#], None).await;
    assert!(!ok && err.contains("spec.replicas"), "an invalid patch is refused with the field: {err}");

    // The official Python client lists, then watches from the list's resourceVersion.
    let py = {
        let viewer = viewer.clone();
        tokio::task::spawn_blocking(move || {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/python_client.py");
            let out = Command::new("timeout").args(["30", "python3", script, &viewer, "shop"]).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (ok, _, err) = run(&writer, &["scale", "deploy", "web", "-n", "shop", "--replicas=8"], None).await;
    assert!(ok, "{err}");
    let (ok, out, err) = py.await.unwrap();
    assert!(ok, "python client failed:\n{out}\n{err}");
    assert!(out.contains("list web 6") && out.contains("watch MODIFIED web 8"), "{out}");

    // An update from a stale resourceVersion is refused with 409.
    let stale = DEPLOY.replace("\"labels\":{\"app\":\"web\"}}", &format!("\"labels\":{{\"app\":\"web\"}},\"resourceVersion\":\"{rv}\"}}")).replace("\"replicas\":3", "\"replicas\":7");
    let (ok, _, err) = run(&writer, &["replace", "--validate=false", "-f", "-"], Some(&stale)).await;
    assert!(!ok && err.contains("the object has been modified"), "{err}");

    let (ok, _, err) = run(&writer, &["delete", "deploy", "web", "-n", "shop", "--wait=false"], None).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&viewer, &["get", "deploy", "web", "-n", "shop"], None).await;
    assert!(!ok && err.contains("not found"), "{err}");

    api.shutdown().await;
    store.shutdown().await;
}
