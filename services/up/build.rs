//! Embed `examples/app` so `kapp up` can make its example repository wherever the binary runs.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read examples/app").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    // The manifest directory of this build, not of the one that compiled this script: a
    // shared target directory reuses the script for every checkout.
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../examples/app").canonicalize().expect("examples/app exists");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut code = String::from("/// The example application repository: (path, contents).\npub static EXAMPLE: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&root).expect("below the root").to_str().expect("UTF-8 path");
        writeln!(code, "    ({rel:?}, include_bytes!({:?})),", f.display().to_string()).expect("write to a String");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("example.rs");
    std::fs::write(out, code).expect("write example.rs");
}
