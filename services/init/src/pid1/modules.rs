//! Kernel modules, loaded with `finit_module` from `<root>/lib/modules/<release>`, their
//! dependencies first (from `modules.dep`), as modprobe would. Built-in modules
//! (`modules.builtin`) and modules already loaded are fine; a missing one is reported, not
//! fatal.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// What the node's services need: overlay root filesystems, the proxy's nftables
/// expressions, the pod bridge and veths, the machine config sources, the state disk.
pub const NODE_MODULES: &[&str] = &[
    "overlay", "nf_tables", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq", "nft_numgen", "nft_fib_inet", "nft_fib_ipv4", "nft_reject_inet", "nf_conntrack_netlink",
    "bridge", "br_netfilter", "veth", "qemu_fw_cfg", "virtio_net", "virtio_blk", "ext4", "vfat", "nls_cp437", "nls_iso8859_1", "isofs", "button", "evdev",
];

/// `modprobe`'s name equivalence: `-` and `_` are the same.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// A module's name from its path in modules.dep (`kernel/fs/overlayfs/overlay.ko.xz`).
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    canonical(file.split(".ko").next().unwrap_or(file))
}

/// The files to load for `module`, dependencies first; `None` if modules.dep does not know
/// it. Pure.
pub fn resolve(modules_dep: &str, module: &str) -> Option<Vec<String>> {
    let want = canonical(module);
    let line = modules_dep.lines().find(|l| l.split(':').next().is_some_and(|p| name_of(p) == want))?;
    let (path, deps) = line.split_once(':')?;
    // modules.dep lists a module's dependencies nearest first: load them in reverse.
    let mut files: Vec<String> = deps.split_whitespace().rev().map(str::to_string).collect();
    files.push(path.trim().to_string());
    Some(files)
}

/// Whether `module` is built into the kernel (`modules.builtin`). Pure.
pub fn builtin(modules_builtin: &str, module: &str) -> bool {
    let want = canonical(module);
    modules_builtin.lines().any(|l| name_of(l.trim()) == want)
}

/// How loading one module went.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Loaded,
    Builtin,
    Already,
    Missing,
    Failed(String),
}

/// Load `names` from `dir` (`<root>/lib/modules/<uname -r>`); each name's outcome.
pub fn load(dir: &Path, names: &[&str]) -> Vec<(String, Loaded)> {
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let builtins = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let mut done: HashSet<String> = HashSet::new();
    names
        .iter()
        .map(|name| {
            let outcome = if builtin(&builtins, name) {
                Loaded::Builtin
            } else {
                match resolve(&dep, name) {
                    None => Loaded::Missing,
                    Some(files) => {
                        let mut outcome = Loaded::Already;
                        for f in files {
                            if !done.insert(f.clone()) {
                                continue;
                            }
                            match insert(&dir.join(&f)) {
                                Ok(true) => outcome = Loaded::Loaded,
                                Ok(false) => {}
                                Err(e) => {
                                    outcome = Loaded::Failed(format!("{f}: {e}"));
                                    break;
                                }
                            }
                        }
                        outcome
                    }
                }
            };
            (name.to_string(), outcome)
        })
        .collect()
}

/// `finit_module` one file (compressed ones are decompressed by the kernel); false if it
/// was loaded already.
fn insert(path: &Path) -> Result<bool, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let name = path.to_string_lossy();
    let compressed = [".xz", ".zst", ".gz"].iter().any(|s| name.ends_with(s));
    // MODULE_INIT_COMPRESSED_FILE (Linux 6.4+).
    let flags = if compressed { ModuleInitFlags::from_bits_retain(4) } else { ModuleInitFlags::empty() };
    match finit_module(&file, &CString::default(), flags) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
kernel/fs/overlayfs/overlay.ko:\n\
kernel/drivers/firmware/qemu_fw_cfg.ko.zst:\n";

    #[test]
    fn dependencies_load_first_and_names_match_like_modprobe() {
        assert_eq!(resolve(DEP, "br_netfilter").unwrap(), ["kernel/net/llc/llc.ko.xz", "kernel/net/802/stp.ko.xz", "kernel/net/bridge/bridge.ko.xz", "kernel/net/bridge/br_netfilter.ko.xz"]);
        assert_eq!(resolve(DEP, "overlay").unwrap(), ["kernel/fs/overlayfs/overlay.ko"]);
        assert_eq!(resolve(DEP, "qemu-fw-cfg").unwrap(), ["kernel/drivers/firmware/qemu_fw_cfg.ko.zst"]);
        assert_eq!(resolve(DEP, "stp"), None);
        assert!(builtin("kernel/net/ipv4/tcp_bbr.ko\nkernel/fs/ext4/ext4.ko\n", "ext4"));
        assert!(!builtin("kernel/fs/ext4/ext4.ko\n", "ext2"));
    }

    #[test]
    fn a_missing_module_or_tree_is_reported_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("modules.dep"), DEP).unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let out = load(d.path(), &["ext4", "nosuch", "overlay"]);
        assert_eq!(out[0], ("ext4".into(), Loaded::Builtin));
        assert_eq!(out[1], ("nosuch".into(), Loaded::Missing));
        // Listed, but the file is not there.
        assert!(matches!(&out[2].1, Loaded::Failed(e) if e.contains("overlay.ko")), "{:?}", out[2]);
    }
}
