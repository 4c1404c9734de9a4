#!/bin/bash
# Boot one all-in-one kapp node (a head that is also a worker) from the image in QEMU.
#
#   qemu/node.sh [start] [--image image/out/kapp.qcow2] [--config machine.yaml]
#                [--state /var/lib/kapp-qemu/node] [--mem 2048] [--cpus 2] [--api-port 6443]
#                [--wait SECONDS]
#   qemu/node.sh stop|kill|status|console [--state DIR]
#
# UEFI (OVMF) boots the disk (a qcow2 overlay on the image, grown to 8 GiB); the machine
# config goes in by fw_cfg (opt/kapp/machine.yaml); the serial console is <state>/serial.log.
# Networking is QEMU's user mode: the node is 10.0.2.15, the host is 10.0.2.2 to it, and
# the apiserver is forwarded to 127.0.0.1:<api-port>. Without --config, one is made with
# `kapp gen cluster`, following examples/app served by a git daemon on 127.0.0.1:9418 (the
# VM reaches it as git://10.0.2.2/app). `start` waits for `kapp-init: node node1 ready`.
# stop = ACPI power off, kill = hard off.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cmd=start
case "${1:-}" in start|stop|kill|status|console) cmd=$1; shift ;; esac
image=$repo/image/out/kapp.qcow2
config=
state=/var/lib/kapp-qemu/node
mem=2048
cpus=2
api_port=6443
wait=900
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --api-port) api_port=$2; shift 2 ;;
        --wait) wait=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
vm=$state/vm
running() { [ -e "$vm/qemu.pid" ] && kill -0 "$(cat "$vm/qemu.pid")" 2>/dev/null; }

case "$cmd" in
    status)
        if running; then echo "running (pid $(cat "$vm/qemu.pid")), console $vm/serial.log"; { grep -a 'kapp-init:' "$vm/serial.log" || true; } | tail -5
        else echo "not running"; exit 1; fi
        exit 0 ;;
    console) exec tail -n +1 -f "$vm/serial.log" ;;
    stop|kill)
        running || { echo "not running"; exit 0; }
        pid=$(cat "$vm/qemu.pid")
        if [ "$cmd" = stop ]; then qmp "$vm" system_powerdown; else qmp "$vm" quit; fi
        for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && { say "still running after 120 s: hard off"; qmp "$vm" quit; }
        if [ -e "$state/git-daemon.pid" ]; then kill "$(cat "$state/git-daemon.pid")" 2>/dev/null || true; rm -f "$state/git-daemon.pid"; fi
        exit 0 ;;
esac

[ "$(id -u)" = 0 ] || die "run as root"
need_tools
[ -e "$image" ] || die "no image at $image: run image/build.sh"
running && die "already running (pid $(cat "$vm/qemu.pid")); qemu/node.sh stop first"
mkdir -p "$vm"

if [ -z "$config" ]; then
    if [ ! -e "$state/cluster/node1.yaml" ]; then
        say "making the cluster's config with kapp gen cluster"
        rm -rf "$state/cluster"
        "$(kapp_bin)" gen cluster --name kapp-node --head node1=10.0.2.15 --prefix-len 24 \
            --gateway 10.0.2.2 --dns 10.0.2.3 --git-url git://10.0.2.2/app --out "$state/cluster"
    fi
    config=$state/cluster/node1.yaml
    # The example, committed into a repository served read-only on loopback.
    app_repo "$state/git"
    git_daemon "$state/git" 127.0.0.1 "$state/git-daemon.pid"
    # kappctl on the host reaches the forwarded port.
    sed "s#server: https://10.0.2.15:6443#server: https://127.0.0.1:$api_port#" \
        "$state/cluster/viewer.kubeconfig" > "$state/kubeconfig"
fi

accel=$(qemu_accel)
say "booting $image ($accel, ${mem} MiB, $cpus CPUs); console: $vm/serial.log"
: > "$vm/serial.log"
mapfile -t args < <(qemu_args node1 "$vm" "$mem" "$cpus" "$image" "$config" "$accel")
qemu-system-x86_64 "${args[@]}" \
    -netdev "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,hostfwd=tcp:127.0.0.1:$api_port-10.0.2.15:6443" \
    -device virtio-net-pci,netdev=net0,mac=52:54:00:6b:00:01
pid=$(cat "$vm/qemu.pid")
start=$SECONDS
wait_console "$vm/serial.log" 'kapp-init: machine config ' 300 "$pid" || exit 1
say "$(grep -m1 'kapp-init: machine config ' "$vm/serial.log")"
wait_console "$vm/serial.log" 'kapp-init: node [^ ]+ ready' "$wait" "$pid" || exit 1
say "node ready after $((SECONDS - start)) s; kubeconfig: $state/kubeconfig (kappctl --kubeconfig $state/kubeconfig status)"
