# Shared by node.sh, cluster.sh and e2e.sh (sourced, not run).
# shellcheck shell=bash

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    [ -e "$ovmf_code" ] || missing+=(ovmf)
    command -v git >/dev/null || missing+=(git)
    [ ${#missing[@]} -eq 0 ] && return
    [ -e /etc/apt/sources.list.d/kapp-backports.sources ] ||
        die "missing ${missing[*]}: run image/build.sh first (it installs the tools)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        qemu-system-x86 qemu-utils >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ovmf git >/dev/null
}

# The accelerator: KVM only if UEFI really runs under it. On nested machines /dev/kvm
# exists, and a real-mode boot sector even runs, but OVMF stops with "KVM internal error"
# or hangs; so start OVMF (no disk) under KVM with a timeout and wait for its boot manager
# on the serial port; anything else means TCG. KAPP_QEMU_ACCEL=kvm|tcg overrides.
qemu_accel() {
    if [ -n "${KAPP_QEMU_ACCEL:-}" ]; then echo "$KAPP_QEMU_ACCEL"; return; fi
    [ -w /dev/kvm ] || { echo tcg; return; }
    local d
    d=$(mktemp -d)
    cp "$ovmf_vars" "$d/vars"
    timeout 20 qemu-system-x86_64 -accel kvm -machine q35 -cpu host -m 256 -nodefaults \
        -display none -drive "if=pflash,format=raw,unit=0,file=$ovmf_code,readonly=on" \
        -drive "if=pflash,format=raw,unit=1,file=$d/vars" -serial "file:$d/serial" >/dev/null 2>"$d/err" &
    local pid=$! i
    for i in $(seq 100); do
        grep -q BdsDxe "$d/serial" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        grep -q "KVM internal error" "$d/err" 2>/dev/null && break
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -q BdsDxe "$d/serial" 2>/dev/null; then echo kvm; else echo tcg; fi
    rm -rf "$d"
}

# qemu_args NAME DIR MEM CPUS IMAGE CONFIG ACCEL: the common command line of one VM whose
# files live in DIR (disk.qcow2 over IMAGE, its own UEFI variables, serial.log, qmp.sock,
# qemu.pid). The caller appends the network.
qemu_args() {
    local name=$1 dir=$2 mem=$3 cpus=$4 image=$5 config=$6 accel=$7
    [ -e "$dir/disk.qcow2" ] ||
        qemu-img create -q -f qcow2 -F qcow2 -b "$(readlink -f "$image")" "$dir/disk.qcow2" 8G
    [ -e "$dir/OVMF_VARS.fd" ] || cp "$ovmf_vars" "$dir/OVMF_VARS.fd"
    local cpu=max
    [ "$accel" = kvm ] && cpu=host
    printf '%s\n' -name "$name" -machine q35 -accel "$accel" -cpu "$cpu" -smp "$cpus" -m "$mem" \
        -nodefaults -display none -no-user-config \
        -drive "if=pflash,format=raw,unit=0,file=$ovmf_code,readonly=on" \
        -drive "if=pflash,format=raw,unit=1,file=$dir/OVMF_VARS.fd" \
        -drive "if=none,id=disk,file=$dir/disk.qcow2,format=qcow2,discard=unmap" \
        -device virtio-blk-pci,drive=disk \
        -device virtio-rng-pci \
        -fw_cfg "name=opt/kapp/machine.yaml,file=$config" \
        -chardev "file,id=serial,path=$dir/serial.log,append=on" -serial chardev:serial \
        -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
        -pidfile "$dir/qemu.pid" -daemonize
}

# qmp DIR COMMAND: send one QMP command (quit = hard power off, system_powerdown = ACPI).
qmp() {
    python3 - "$1/qmp.sock" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    try:
        f.readline()
    except (OSError, ValueError):
        pass
PY
}

# wait_console LOG PATTERN SECONDS [PID]: wait for a console line; fail on a machine config
# error, a kernel panic, or the VM's exit.
wait_console() {
    local log=$1 pattern=$2 secs=$3 pid=${4:-} end=$((SECONDS + $3))
    while [ $SECONDS -lt $end ]; do
        grep -qE "$pattern" "$log" 2>/dev/null && return 0
        if grep -qE 'kapp-init: machine config error|Kernel panic' "$log" 2>/dev/null; then
            grep -E 'kapp-init: machine config error|Kernel panic' "$log" | head -3 >&2
            return 1
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            say "the VM exited"
            return 1
        fi
        sleep 1
    done
    say "no '$pattern' in $log after ${secs}s"
    return 1
}

# kapp_bin: the kapp binary for `kapp gen cluster` and kappctl (the one the image holds).
kapp_bin() {
    local b
    # The kapp the image was built with first (image/build.sh keeps a copy): the configs
    # must suit the kapp that boots.
    for b in "${KAPP_BIN:-}" "$repo/image/out/host-kapp" /var/cache/kapp/target-image/release/kapp "$repo/target/release/kapp"; do
        [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return; }
    done
    die "no kapp binary: run image/build.sh (or set KAPP_BIN)"
}

# app_repo DIR: DIR/app, a git repository holding a copy of examples/app (made once).
app_repo() {
    local dir=$1
    [ -d "$dir/app/.git" ] && return
    mkdir -p "$dir"
    cp -r "$repo/examples/app" "$dir/app"
    git -C "$dir/app" init -q -b main
    git -C "$dir/app" add -A
    git -C "$dir/app" -c user.name=kapp -c user.email=kapp@localhost commit -q -m "example app"
}

# git_daemon BASE ADDRESS PIDFILE [NETNS]: serve BASE's repositories read-only over git://
# on ADDRESS:9418 (inside NETNS when given), unless already running.
git_daemon() {
    local base=$1 addr=$2 pidfile=$3 ns=${4:-}
    [ -e "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && return
    ${ns:+ip netns exec "$ns"} git daemon --reuseaddr --listen="$addr" --port=9418 \
        --base-path="$base" --export-all --detach --pid-file="$pidfile" "$base"
}
