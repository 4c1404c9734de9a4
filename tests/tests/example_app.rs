//! The example application (`examples/app`) and the image it runs, so neither can rot:
//! the image built from this host's busybox-static (by the library and by `kapp gen image`)
//! imports into the kubelet's image store and runs; the example renders with gitops'
//! renderer exactly as `kubectl kustomize` renders it, and every object passes the
//! apiserver's validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kapp_bootstrap::image::{build_layout, ImageSpec};
use kapp_e2e::kapp_bin;
use kapp_kubelet::image::{ImageStore, RegistryOptions};
use serde::Deserialize;
use serde_json::Value;

/// The one image every workload of the example runs.
const IMAGE: &str = "kapp.local/busybox:1";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/app")
}

fn image_spec() -> ImageSpec {
    ImageSpec { reference: IMAGE.into(), packages: vec!["busybox-static".into()], busybox_applets: true, cmd: vec!["sh".into()], ..ImageSpec::default() }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// The example, as gitops renders it.
fn rendered() -> Vec<Value> {
    kapp_render::render(&example_dir()).expect("examples/app renders").into_iter().map(|d| d.object).collect()
}

/// Every container (init or app) of a workload object, wherever its pod template is.
fn containers(obj: &Value) -> Vec<&Value> {
    let spec = match obj["kind"].as_str() {
        Some("Deployment" | "Job") => &obj["spec"]["template"]["spec"],
        Some("CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => return Vec::new(),
    };
    ["initContainers", "containers"].iter().flat_map(|k| spec[k].as_array().into_iter().flatten()).collect()
}

/// Run in the image, in a fresh network namespace: bring up loopback, serve /srv with the
/// image's httpd on port 80, wait for it, then run `$SCRIPT`; its exit status is ours.
const SERVE_AND_RUN: &str = r#"
ip link set lo up || exit 2
httpd -f -p 80 -h /srv &
trap "kill $!" EXIT
n=0
until wget -q -O /tmp/up http://127.0.0.1/ 2>/tmp/err; do
  n=$((n + 1))
  [ "$n" -lt 100 ] || { cat /tmp/err; exit 3; }
  sleep 0.1
done
sh -c "$SCRIPT"
"#;

/// The image built by the library and by `kapp gen image` is the same; the kubelet's store
/// imports it under its reference with the config it was given, and the unpacked layer runs:
/// its httpd serves the example's page to its wget.
#[tokio::test]
async fn example_image_imports_into_the_kubelet_store_and_runs() {
    if !is_root() {
        eprintln!("SKIP example_image_imports_into_the_kubelet_store_and_runs: the kubelet's store unpacks as root (owners)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("import/busybox");
    let built = build_layout(&image_spec(), &layout).unwrap();

    let cli_out = dir.path().join("cli");
    let out = Command::new(kapp_bin())
        .args(["gen", "image", "--ref", IMAGE, "--package", "busybox-static", "--busybox-applets", "--cmd", "sh", "--out"])
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(out.status.success(), "kapp gen image: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with(&format!("{IMAGE} {} ", built.manifest_digest)), "the same digest from the CLI: {printed}");

    let store = ImageStore::open(&dir.path().join("store"), RegistryOptions::default()).unwrap();
    let imported = store.import_layout(&layout).await.unwrap();
    assert_eq!(imported.len(), 1);
    let image = store.local(IMAGE).expect("the reference resolves in the store");
    assert_eq!(image.digest, built.manifest_digest);
    assert_eq!(image.size, built.layer_bytes);
    assert_eq!((image.config.entrypoint.as_slice(), image.config.cmd.as_slice()), (&[][..], &["sh".to_string()][..]));
    assert!(image.config.env.iter().any(|e| e.starts_with("PATH=") && e.contains("/bin")), "{:?}", image.config.env);
    // Every image the example names is this one, and present.
    for obj in rendered() {
        for c in containers(&obj) {
            assert!(store.local(c["image"].as_str().unwrap()).is_some(), "{} {}: image {} not in the store", obj["kind"], obj["metadata"]["name"], c["image"]);
        }
    }

    assert_eq!(image.layers.len(), 1);
    let root = store.layer_dir(&image.layers[0]);
    let httpd = std::fs::symlink_metadata(root.join("bin/httpd")).expect("/bin/httpd in the unpacked layer");
    assert!(httpd.file_type().is_symlink());
    assert_eq!(std::fs::read_link(root.join("bin/httpd")).unwrap(), Path::new("busybox"));
    assert!(root.join("bin/busybox").is_file() && root.join("etc/passwd").is_file());

    // Run it as the example does, in a network namespace of its own: the image's httpd
    // serves the example's page on port 80 and the tick CronJob's script fetches it by the
    // short name `web` (from /etc/hosts here; in the cluster, DNS through the search path).
    let objects = rendered();
    let find = |kind: &str| objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("a {kind} in the example"));
    let page = find("ConfigMap")["data"]["index.html"].as_str().unwrap();
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::write(root.join("srv/index.html"), page).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost web\n").unwrap();
    // A container runtime provides /dev; a chroot does not (the shell needs /dev/null).
    std::fs::create_dir_all(root.join("dev")).unwrap();
    assert!(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]).status().unwrap().success());
    let tick = containers(find("CronJob"))[0]["args"][0].as_str().unwrap();
    let out = Command::new("unshare").args(["--net", "chroot"]).arg(&root).args(["/bin/sh", "-c", SERVE_AND_RUN]).env("SCRIPT", tick).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the tick script in the image: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, format!("tick: http://web/ says:\n{page}"));

    // The smoke Job's first line, run by the image's shell with the Secret's token: it
    // states what it got without showing it.
    let token = find("Secret")["stringData"]["api-token"].as_str().unwrap();
    let first = containers(find("Job"))[0]["args"][0].as_str().unwrap().lines().next().unwrap();
    let out = Command::new("chroot").arg(&root).args(["/bin/sh", "-c", first]).env("API_TOKEN", token).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8(out.stdout).unwrap();
    assert_eq!(said, format!("smoke: api-token has {} bytes, sha256 {}\n", token.len(), &sha256_hex(token.as_bytes())[..12]));
    assert!(!said.contains(token));
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One line per object: kind, namespace, name.
fn id(obj: &Value) -> String {
    format!("{}/{}/{}", obj["kind"].as_str().unwrap_or(""), obj["metadata"]["namespace"].as_str().unwrap_or(""), obj["metadata"]["name"].as_str().unwrap_or(""))
}

/// Every rendered object passes the apiserver's validation, is what `kubectl kustomize`
/// renders, and has the shape the example promises (and `kapp up`'s test relies on).
#[test]
fn example_app_renders_validates_and_matches_kubectl() {
    let objects = rendered();
    for obj in &objects {
        let res = kapp_api::by_kind(obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap()).unwrap_or_else(|| panic!("{}: no such resource", id(obj)));
        if let Err(errors) = kapp_api::validate(res, obj) {
            panic!("{}: {}", id(obj), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "));
        }
    }

    let out = Command::new("kubectl").arg("kustomize").arg(example_dir()).output().expect("kubectl (tests/install-deps.sh installs it)");
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let kubectl: Vec<Value> = serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect();
    let by_id = |objs: &[Value]| objs.iter().map(|o| (id(o), o.clone())).collect::<BTreeMap<_, _>>();
    let (ours, theirs) = (by_id(&objects), by_id(&kubectl));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "the same objects");
    for (k, v) in &ours {
        assert_eq!(v, &theirs[k], "{k}: kapp-render and kubectl kustomize differ");
    }

    let want = ["ConfigMap/shop/web-config", "CronJob/shop/tick", "Deployment/shop/web", "Job/shop/smoke", "Namespace//shop", "Secret/shop/web-secret", "Service/shop/web"];
    assert_eq!(ours.keys().map(String::as_str).collect::<Vec<_>>(), want);
    let mut cpu_milli = 0;
    for obj in &objects {
        assert_eq!(obj["metadata"]["labels"]["app.kubernetes.io/part-of"], "shop", "{}", id(obj));
        for c in containers(obj) {
            assert_eq!((c["image"].as_str(), c["imagePullPolicy"].as_str()), (Some(IMAGE), Some("IfNotPresent")), "{}", id(obj));
            let cpu = c["resources"]["requests"]["cpu"].as_str().unwrap_or_else(|| panic!("{}: no cpu request", id(obj)));
            assert!(c["resources"]["requests"]["memory"].is_string(), "{}: no memory request", id(obj));
            let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1);
            cpu_milli += replicas * cpu.strip_suffix('m').unwrap().parse::<u64>().unwrap();
        }
    }
    assert!(cpu_milli <= 200, "requests fit a 2-CPU node with room to spare: {cpu_milli}m");

    let web = &ours["Deployment/shop/web"];
    assert_eq!(web["spec"]["replicas"], 3);
    let c = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["httpd", "-f", "-p", "8080", "-h", "/srv"]));
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/srv");
    assert_eq!(web["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], "web-config");
    assert!(ours["ConfigMap/shop/web-config"]["data"]["index.html"].as_str().unwrap().lines().any(|l| l.contains("hello from kapp")));
    let svc = &ours["Service/shop/web"]["spec"]["ports"][0];
    assert_eq!((svc["port"].as_u64(), svc["targetPort"].as_str()), (Some(80), Some("http")));

    let smoke = &ours["Job/shop/smoke"];
    assert!(smoke["spec"]["backoffLimit"].as_u64().unwrap() <= 3);
    assert!(smoke["spec"]["ttlSecondsAfterFinished"].is_null(), "the finished Job stays to be looked at");
    let smoke_c = &smoke["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(smoke_c["env"][0]["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "web-secret", "key": "api-token"}));
    let script = smoke_c["args"][0].as_str().unwrap();
    for part in ["nslookup", "web.shop.svc.cluster.local", "wget -qO-", "hello from kapp", "${#API_TOKEN}"] {
        assert!(script.contains(part), "the smoke script uses {part}");
    }
    assert!(!script.contains("echo \"$API_TOKEN\""), "the token itself is never printed");
    assert!(ours["Secret/shop/web-secret"]["stringData"]["api-token"].is_string());

    let tick = &ours["CronJob/shop/tick"];
    assert_eq!((tick["spec"]["schedule"].as_str(), tick["spec"]["successfulJobsHistoryLimit"].as_u64()), (Some("* * * * *"), Some(2)));
    assert!(containers(tick)[0]["args"][0].as_str().unwrap().contains("http://web/"));
}
