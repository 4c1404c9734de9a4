#!/bin/bash
# Build kapp's bootable image in one command: installs its tools (Debian packages only),
# builds the release kapp binary, runs mkosi, converts the disk to qcow2.
#
#   image/build.sh [--profile debug] [--no-tools] [--kapp PATH]
#
# Outputs in image/out/: kapp.raw (dd it onto a disk), kapp.qcow2 (QEMU), kapp-a.efi (the
# UKI), kapp.root-a.raw (the root slot's erofs, for upgrades), SHA256SUMS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$here/out
profile=
tools=yes
kapp_bin=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=$2; shift 2 ;;
        --no-tools) tools=no; shift ;;
        --kapp) kapp_bin=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mkosi needs it)" >&2; exit 1; }
step() { printf '==> %s\n' "$*" >&2; }

install_tools() {
    local src=/etc/apt/sources.list.d/kapp-backports.sources
    if [ ! -e "$src" ]; then
        step "adding the bookworm-backports apt source (mkosi 24, systemd 254's repart/ukify/bootctl)"
        cat > "$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt-get update -qq
    fi
    local want=(mkosi systemd-boot systemd-boot-efi qemu-utils qemu-system-x86 python3-pefile
                dosfstools mtools erofs-utils squashfs-tools kmod ovmf e2fsprogs cpio zstd
                binutils busybox-static libclang-dev libseccomp-dev sccache git)
    local missing=()
    for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return
    step "installing ${missing[*]}"
    [ -n "$(find /var/lib/apt/lists -name '*backports*Packages*' 2>/dev/null | head -1)" ] || apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    # mkosi needs systemd >= 254 (repart, ukify, bootctl) and qemu must match qemu-utils:
    # those come from backports, the rest from bookworm.
    apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        mkosi systemd-boot systemd-boot-efi qemu-utils qemu-system-x86 >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

[ "$tools" = yes ] && install_tools

if [ -z "$kapp_bin" ]; then
    step "building the release kapp binary"
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kapp/target-image}
    export CARGO_INCREMENTAL=0
    command -v sccache >/dev/null && export RUSTC_WRAPPER=${RUSTC_WRAPPER:-sccache}
    (cd "$repo" && cargo build --release --locked -p kapp)
    # kappctl is not in the image (the cluster is read from outside); qemu/ uses it.
    (cd "$repo" && cargo build --release --locked -p kappctl)
    kapp_bin=$CARGO_TARGET_DIR/release/kapp
fi

# Every timestamp in the image is the last commit's time; partition UUIDs are fixed in
# mkosi.repart/ and mkosi.conf's Seed=.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}

stage=$out/stage
rm -rf "$stage"
install -D -m 0755 "$kapp_bin" "$stage/usr/bin/kapp"
strip --strip-unneeded "$stage/usr/bin/kapp"
# The example application's container image (busybox-static from Debian) as an OCI
# layout, so a cluster runs examples/app with no registry (kubelet --import-dir).
# Tag 2 differs only in its config (KAPP_EXAMPLE_RELEASE): the image update the end-to-end
# test commits.
for tag in 1 2; do
    "$kapp_bin" gen image --ref "kapp.local/busybox:$tag" --package busybox-static --busybox-applets \
        --cmd sh --env "KAPP_EXAMPLE_RELEASE=$tag" --out "$stage/usr/share/kapp/images/busybox-$tag" >/dev/null
done
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p /var/cache/kapp/mkosi/cache /var/cache/kapp/mkosi/packages
step "mkosi${profile:+ (profile $profile)}"
start=$(date +%s)
# IMAGE_VERSION (in the UKI's os-release) orders systemd-boot's entries: the newest good one
# boots by default.
version=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y.%m.%d.%H%M%S)
mkosi --directory "$here" ${profile:+--profile "$profile"} --image-version "$version" \
    --extra-tree "$stage:/" --force build
step "mkosi took $(( $(date +%s) - start )) s"

# mkfs.fat (through systemd-repart) stamps the ESP's volume label entry with the time of
# the build; give it SOURCE_DATE_EPOCH like every other entry.
python3 - "$out/kapp.raw" "$SOURCE_DATE_EPOCH" <<'PY'
import json, struct, subprocess, sys, time
disk, epoch = sys.argv[1], int(sys.argv[2])
table = json.loads(subprocess.check_output(["sfdisk", "-J", disk]))["partitiontable"]
esp = next(p for p in table["partitions"] if p.get("name") == "ESP")
base = esp["start"] * table.get("sectorsize", 512)
t = time.gmtime(epoch)
dos_time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
dos_date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
with open(disk, "r+b") as f:
    f.seek(base)
    bs = f.read(512)
    sec, spc, rsvd, nfats = struct.unpack_from("<HBHB", bs, 11)
    root_entries, fatsz16 = struct.unpack_from("<H", bs, 17)[0], struct.unpack_from("<H", bs, 22)[0]
    if fatsz16:
        start, size = rsvd + nfats * fatsz16, root_entries * 32
    else:
        fatsz32, root_clus = struct.unpack_from("<I", bs, 36)[0], struct.unpack_from("<I", bs, 44)[0]
        start, size = rsvd + nfats * fatsz32 + (root_clus - 2) * spc, spc * sec
    f.seek(base + start * sec)
    root = bytearray(f.read(size))
    for off in range(0, size, 32):
        if root[off] == 0:
            break
        if root[off + 11] == 0x08:  # the volume label
            struct.pack_into("<BHHHHHHH", root, off + 13, 0, dos_time, dos_date, dos_date, 0, dos_time, dos_date, 0)
            struct.pack_into("<H", root, off + 26, 0)
    f.seek(base + start * sec)
    f.write(root)
PY

# The pruned root must still run what PID 1 and the services exec (no library missing),
# and hold no shell.
step "checking the root slot"
mnt=$(mktemp -d)
mount -t erofs -o loop,ro "$out/kapp.root-a.raw" "$mnt"
trap 'umount "$mnt" 2>/dev/null; rmdir "$mnt"' EXIT
chroot "$mnt" /usr/bin/kapp --version
chroot "$mnt" /usr/sbin/nft --version
chroot "$mnt" /usr/sbin/conntrack --version
chroot "$mnt" /usr/bin/ip -V
chroot "$mnt" /usr/sbin/mkfs.ext4 -V 2>&1 | head -1
# resize2fs grows /var when the disk grew; it has no version flag (usage: exit 1).
v=$(chroot "$mnt" /usr/sbin/resize2fs 2>&1 | head -1 || true)
[[ $v == "resize2fs "* ]] || { echo "resize2fs does not run in the root: $v" >&2; exit 1; }
echo "$v"
chroot "$mnt" /usr/sbin/modprobe --version
# The modules PID 1 loads (kapp-init's NODE_MODULES) and the ones the root and ESP need.
dep=$(ls -d "$mnt"/usr/lib/modules/*/)modules.dep
for m in overlay nf_tables nft_chain_nat nft_ct nft_nat nft_masq nft_numgen nft_fib_inet \
         nft_fib_ipv4 nft_reject_inet nf_conntrack_netlink bridge br_netfilter veth qemu_fw_cfg \
         virtio_net virtio_blk ext4 vfat nls_cp437 nls_iso8859-1 isofs erofs efivarfs; do
    grep -q "/$m\.ko" "$dep" || { echo "build.sh: kernel module $m is not in the image" >&2; exit 1; }
done
[ "$(readlink "$mnt/sbin/init")" = /usr/bin/kapp ] || { echo "build.sh: /sbin/init is not /usr/bin/kapp" >&2; exit 1; }
if [ "$profile" != debug ]; then
    for sh in bin/sh bin/bash bin/dash bin/busybox; do
        [ ! -e "$mnt/$sh" ] || { echo "build.sh: the root holds /$sh" >&2; exit 1; }
    done
fi
umount "$mnt"; rmdir "$mnt"; trap - EXIT

step "qcow2 for QEMU"
rm -f "$out/kapp.qcow2"
qemu-img convert -f raw -O qcow2 -c "$out/kapp.raw" "$out/kapp.qcow2"
# The UKI under a slot name (mkosi calls the split copy kapp.efi).
[ -e "$out/kapp.efi" ] && mv -f "$out/kapp.efi" "$out/kapp-a.efi"
# The host tools (qemu/, kapp gen cluster) use the very kapp the image boots.
install -m 0755 "$kapp_bin" "$out/host-kapp"
if [ -x "$(dirname "$kapp_bin")/kappctl" ]; then
    install -m 0755 "$(dirname "$kapp_bin")/kappctl" "$out/kappctl"
fi
rm -rf "$stage"
(cd "$out" && sha256sum kapp.raw kapp.qcow2 kapp-a.efi kapp.root-a.raw > SHA256SUMS && cat SHA256SUMS)
du_raw=$(du -m --apparent-size "$out/kapp.raw" | cut -f1)
used_raw=$(du -m "$out/kapp.raw" | cut -f1)
step "kapp.raw: ${du_raw} MiB (${used_raw} MiB allocated); kapp.qcow2: $(du -m "$out/kapp.qcow2" | cut -f1) MiB; UKI: $(du -m "$out/kapp-a.efi" | cut -f1) MiB; root: $(du -m "$out/kapp.root-a.raw" | cut -f1) MiB"
