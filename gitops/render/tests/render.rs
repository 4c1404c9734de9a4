//! Plain trees, provenance of documents, and the error paths: each message names the file,
//! the document or field, or the limit.

use std::fs;
use std::path::{Path, PathBuf};

use kapp_render::{render, render_with, Limits, Options, RenderError};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

#[test]
fn plain_trees_render_every_manifest_in_path_order() {
    let docs = render(&fixture("plain")).unwrap();
    let got: Vec<(String, usize, &str)> =
        docs.iter().map(|d| (d.file.display().to_string(), d.index, d.object["metadata"]["name"].as_str().unwrap())).collect();
    let want = [("a.yaml", 0, "a"), ("a.yaml", 2, "b"), ("a.yaml", 2, "c"), ("sub/d.json", 0, "d")];
    assert_eq!(got, want.map(|(f, i, n)| (f.to_string(), i, n)));
}

#[test]
fn kustomize_documents_say_where_they_came_from() {
    let docs = render(&fixture("nested")).unwrap();
    let deploy = docs.iter().find(|d| d.object["kind"] == "Deployment").unwrap();
    assert_eq!((deploy.file.as_path(), deploy.index), (Path::new("base/deployment.yaml"), 0));
    let pvc = docs.iter().find(|d| d.object["kind"] == "PersistentVolumeClaim").unwrap();
    assert_eq!((pvc.file.as_path(), pvc.index), (Path::new("base/service.yaml"), 2));
    let docs = render(&fixture("generators")).unwrap();
    let secret = docs.iter().find(|d| d.object["kind"] == "Secret").unwrap();
    assert_eq!(secret.file, Path::new("kustomization.yaml"));
}

#[test]
fn a_bad_document_names_file_document_and_field() {
    let e = render(&fixture("bad-document")).unwrap_err();
    assert_eq!(e.to_string(), "bad.yaml: document 1 (line 4): missing kind");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [\n");
    let e = render(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with("x.yaml: document 1 (line "), "{e}");
    write(dir.path(), "x.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {}}\n");
    assert_eq!(render(dir.path()).unwrap_err().to_string(), "x.yaml: document 0 (line 1): missing metadata.name");
}

#[test]
fn unsupported_fields_are_refused() {
    let e = render(&fixture("unsupported")).unwrap_err();
    assert_eq!(e.to_string(), "unsupported field replacements in kustomization.yaml");
}

#[test]
fn remote_resources_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "kustomization.yaml", "resources: [https://github.com/acme/base?ref=v1]\n");
    let e = render(dir.path()).unwrap_err();
    assert!(matches!(e, RenderError::Remote { .. }), "{e}");
    assert!(e.to_string().starts_with("kustomization.yaml: remote resource \"https://github.com/acme/base?ref=v1\" refused"), "{e}");
}

#[test]
fn nothing_outside_the_repository_is_read() {
    let repo = tempfile::tempdir().unwrap();
    write(repo.path(), "base/kustomization.yaml", "resources: [cm.yaml]\n");
    write(repo.path(), "base/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
    write(repo.path(), "overlay/kustomization.yaml", "resources: [../base]\nnamePrefix: o-\n");
    let overlay = repo.path().join("overlay");
    // Confined to the overlay itself, ../base is outside.
    let e = render(&overlay).unwrap_err();
    assert_eq!(e.to_string(), "kustomization.yaml: ../base is outside the repository root");
    // Confined to the repository, it is allowed and reported relative to the overlay.
    let opts = Options { repository: Some(repo.path().to_path_buf()), ..Options::default() };
    let docs = render_with(&overlay, &opts).unwrap();
    assert_eq!(docs[0].file, Path::new("../base/cm.yaml"));
    assert_eq!(docs[0].object["metadata"]["name"], "o-a");
    // A symlink out of the repository is refused too.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n");
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), repo.path().join("base/link.yaml")).unwrap();
    let e = render(&repo.path().join("base").join("..")).unwrap_err();
    assert!(matches!(e, RenderError::Escapes { .. }), "{e}");
    assert!(e.to_string().starts_with("base/link.yaml: "), "{e}");
}

#[test]
fn limits_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "big.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{x: {}}}\n", "y".repeat(200)));
    let small = Options { limits: Limits { max_file_size: 100, ..Limits::default() }, ..Options::default() };
    let e = render_with(dir.path(), &small).unwrap_err().to_string();
    assert!(e.starts_with("big.yaml: limit exceeded: file is 2"), "{e}");
    let total = Options { limits: Limits { max_total_size: 100, ..Limits::default() }, ..Options::default() };
    assert_eq!(render_with(dir.path(), &total).unwrap_err().to_string(), "big.yaml: limit exceeded: more than 100 bytes read in total");

    let deep = tempfile::tempdir().unwrap();
    write(deep.path(), "kustomization.yaml", "resources: [a]\n");
    write(deep.path(), "a/kustomization.yaml", "resources: [b]\n");
    write(deep.path(), "a/b/kustomization.yaml", "resources: []\n");
    let shallow = Options { limits: Limits { max_depth: 1, ..Limits::default() }, ..Options::default() };
    assert_eq!(render_with(deep.path(), &shallow).unwrap_err().to_string(), "a/b/kustomization.yaml: limit exceeded: kustomizations nested more than 1 deep");
    assert!(render(deep.path()).unwrap().is_empty());
}

#[test]
fn patch_errors_name_the_patch() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
    write(dir.path(), "kustomization.yaml", "resources: [cm.yaml]\npatches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: b}\n");
    assert_eq!(render(dir.path()).unwrap_err().to_string(), "kustomization.yaml: patch 0: no resource matches ConfigMap b");
    write(dir.path(), "kustomization.yaml", "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    - {op: remove, path: /data}\n");
    let e = render(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with("kustomization.yaml: patch 0: ConfigMap/a: operation 0 (remove /data)"), "{e}");
    write(dir.path(), "kustomization.yaml", "resources: [cm.yaml, cm.yaml]\n");
    let e = render(dir.path()).unwrap_err().to_string();
    assert_eq!(e, "kustomization.yaml: ConfigMap/a from cm.yaml (document 0) is also defined in cm.yaml (document 0)");
}

/// `*.age` files decrypt as they are read and stand in for the name without `.age`: in a
/// plain tree, as kustomize resources, and as generator files; without a key or with the
/// wrong one, the render fails naming the encrypted file.
#[test]
fn age_files_render_as_their_plaintext_names() {
    let key = kapp_age::Identity::generate();
    let enc = |text: &str| kapp_age::encrypt(&[key.to_recipient()], text.as_bytes()).unwrap();
    let with_key = Options { identities: vec![key.clone()], ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    write(&plain, "a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
    fs::write(plain.join("s.yaml.age"), enc("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n")).unwrap();
    fs::write(plain.join("notes.txt.age"), b"not a manifest: never read").unwrap();
    let docs = render_with(&plain, &with_key).unwrap();
    let got: Vec<(String, &str)> = docs.iter().map(|d| (d.file.display().to_string(), d.object["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(got, [("a.yaml".to_string(), "a"), ("s.yaml.age".to_string(), "s")]);
    assert_eq!(docs[1].object["stringData"]["k"], "v");

    let e = render(&plain).unwrap_err();
    assert!(matches!(&e, RenderError::NoKey { file } if file == Path::new("s.yaml.age")), "{e}");
    assert_eq!(e.to_string(), "s.yaml.age: encrypted with age and no decryption key is configured");
    let other = Options { identities: vec![kapp_age::Identity::generate()], ..Default::default() };
    let e = render_with(&plain, &other).unwrap_err();
    assert!(matches!(&e, RenderError::Decrypt { source: kapp_age::Error::NoMatch, .. }), "{e}");
    assert!(e.to_string().starts_with("s.yaml.age: cannot decrypt: "), "{e}");

    let kust = dir.path().join("kust");
    write(&kust, "kustomization.yaml", "resources: [s.yaml]\nsecretGenerator:\n- name: tls\n  files: [tls.key, ca.crt.age]\n  envs: [env]\n");
    fs::write(kust.join("s.yaml.age"), enc("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n")).unwrap();
    fs::write(kust.join("tls.key.age"), enc("KEY")).unwrap();
    fs::write(kust.join("ca.crt.age"), enc("CA")).unwrap();
    fs::write(kust.join("env.age"), enc("A=1\nnot a pair\n")).unwrap();
    let e = render_with(&kust, &with_key).unwrap_err().to_string();
    assert!(e.contains("env: line 2 is not KEY=VALUE") && !e.contains("not a pair"), "decrypted lines are not shown: {e}");
    fs::write(kust.join("env.age"), enc("A=1\n")).unwrap();
    let docs = render_with(&kust, &with_key).unwrap();
    let s = docs.iter().find(|d| d.object["metadata"]["name"] == "s").unwrap();
    assert_eq!(s.file, Path::new("s.yaml.age"));
    let tls = docs.iter().find(|d| d.object["metadata"]["name"].as_str().unwrap().starts_with("tls-")).unwrap();
    let mut keys: Vec<&String> = tls.object["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["A", "ca.crt", "tls.key"]);
    assert_eq!(tls.object["data"]["tls.key"], "S0VZ");
}
