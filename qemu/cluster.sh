#!/bin/bash
# A kapp cluster of VMs: 3 heads + 2 workers booted from the image, on a private bridge
# inside a network namespace this script creates (nothing leaves the machine), with a git
# server the VMs reach at 10.77.0.1 serving a copy of examples/app.
#
#   qemu/cluster.sh create  [--image image/out/kapp.qcow2] [--state DIR] [--wait SECONDS]
#   qemu/cluster.sh wait    [--state DIR] [--wait SECONDS]   until every node is ready
#   qemu/cluster.sh status  [--state DIR]         every VM's last console line + kappctl status
#   qemu/cluster.sh kappctl ARGS...               kappctl (viewer) inside the namespace
#   qemu/cluster.sh exec CMD...                   any command inside the namespace
#   qemu/cluster.sh poweroff NODE [--hard]        ACPI power off (or pull the plug)
#   qemu/cluster.sh boot NODE                     start a stopped VM again (same disk)
#   qemu/cluster.sh destroy [--state DIR]         stop everything, remove netns and state
#
# Addresses: head1-3 10.77.0.11-13, worker1-2 10.77.0.21-22, the host side (bridge, git
# daemon) 10.77.0.1. Per VM: <state>/vms/<node>/{disk.qcow2,serial.log,qmp.sock}.
# Machine configs: `kapp gen cluster` into <state>/cluster/. The repository the cluster
# follows: <state>/git/app (commit to it; the VMs fetch git://10.77.0.1/app).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cmd=${1:-}; [ $# -gt 0 ] && shift
image=$repo/image/out/kapp.qcow2
state=/var/lib/kapp-qemu/cluster
wait=1800
ns=kapp-qemu
hard=no
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        --wait) wait=$2; shift 2 ;;
        --hard) hard=yes; shift ;;
        *) rest+=("$1"); shift ;;
    esac
done
[ -n "${KAPP_QEMU_NETNS:-}" ] && ns=$KAPP_QEMU_NETNS
bridge=kapp-br0
heads=(head1=10.77.0.11 head2=10.77.0.12 head3=10.77.0.13)
workers=(worker1=10.77.0.21 worker2=10.77.0.22)
nodes=("${heads[@]}" "${workers[@]}")
head_mem=1024
worker_mem=768

node_names() { local n; for n in "${nodes[@]}"; do echo "${n%%=*}"; done; }
vm_dir() { echo "$state/vms/$1"; }
vm_pid() { local f; f="$(vm_dir "$1")/qemu.pid"; [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
last_line() { { grep -a 'kapp-init: ' "$(vm_dir "$1")/serial.log" 2>/dev/null || true; } | tail -1 | sed 's/.*kapp-init: //' | tr -d '\r'; }

boot_vm() {
    local name=$1 i mem=$worker_mem idx=0
    for i in "${!nodes[@]}"; do [ "${nodes[$i]%%=*}" = "$name" ] && idx=$i; done
    case "$name" in head*) mem=$head_mem ;; esac
    local dir tap mac
    dir=$(vm_dir "$name")
    tap=kt-$name
    mac=$(printf '52:54:00:77:00:%02x' $((idx + 1)))
    mkdir -p "$dir"
    [ -n "$(vm_pid "$name")" ] && die "$name is already running"
    ip -n "$ns" link show "$tap" >/dev/null 2>&1 || {
        ip -n "$ns" tuntap add dev "$tap" mode tap
        ip -n "$ns" link set "$tap" master "$bridge" up
    }
    : >> "$dir/serial.log"
    printf '\n--- boot %s ---\n' "$(date -u +%FT%TZ)" >> "$dir/serial.log"
    local args
    mapfile -t args < <(qemu_args "$name" "$dir" "$mem" 1 "$image" "$state/cluster/$name.yaml" "$accel")
    ip netns exec "$ns" qemu-system-x86_64 "${args[@]}" \
        -netdev "tap,id=net0,ifname=$tap,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=net0,mac=$mac"
}

# Progress: one line per change of any VM's last kapp-init line, until every node is ready.
wait_ready() {
    local deadline=$((SECONDS + wait)) start=$SECONDS n
    declare -A seen=()
    while [ $SECONDS -lt $deadline ]; do
        local ready=0
        for n in $(node_names); do
            local l
            l=$(last_line "$n")
            [ -z "$(vm_pid "$n")" ] && l="(not running) $l"
            if [ "${seen[$n]+set}" != set ] || [ "${seen[$n]}" != "$l" ]; then
                seen[$n]=$l
                say "$(printf '%-8s %4ss %s' "$n" $((SECONDS - start)) "${l:-booting}")"
            fi
            if grep -aq "kapp-init: node $n ready" "$(vm_dir "$n")/serial.log" 2>/dev/null; then
                ready=$((ready + 1))
                # Seconds from the start of the wait to this node's first `ready`, for e2e.sh.
                grep -q "^$n " "$state/ready.txt" 2>/dev/null || echo "$n $((SECONDS - start))" >> "$state/ready.txt"
            fi
            if grep -aq 'kapp-init: machine config error' "$(vm_dir "$n")/serial.log" 2>/dev/null; then
                die "$n: $(grep -a 'machine config error' "$(vm_dir "$n")/serial.log" | tail -1)"
            fi
        done
        [ "$ready" -eq ${#nodes[@]} ] && { say "all ${#nodes[@]} nodes ready after $((SECONDS - start)) s"; return 0; }
        sleep 2
    done
    die "not every node was ready after ${wait}s (consoles: $state/vms/*/serial.log)"
}

run_kappctl() {
    local k
    k=$(dirname "$(kapp_bin)")/kappctl
    [ -x "$k" ] || die "no kappctl next to $(kapp_bin): cargo build --release -p kappctl"
    ip netns exec "$ns" "$k" --kubeconfig "$state/kubeconfig" "$@"
}

case "$cmd" in
create)
    [ "$(id -u)" = 0 ] || die "run as root"
    need_tools
    [ -e "$image" ] || die "no image at $image: run image/build.sh"
    ip netns list | grep -qw "$ns" && die "netns $ns exists: qemu/cluster.sh destroy first"
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    accel=$(qemu_accel)
    say "network namespace $ns, bridge $bridge 10.77.0.1/24; accelerator $accel"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add "$bridge" type bridge
    ip -n "$ns" addr add 10.77.0.1/24 dev "$bridge"
    ip -n "$ns" link set "$bridge" up

    say "machine configs: kapp gen cluster"
    gen=(gen cluster --name kapp-qemu --prefix-len 24 --gateway 10.77.0.1 --dns 10.77.0.1
         --git-url git://10.77.0.1/app --git-branch main --out "$state/cluster")
    for n in "${heads[@]}"; do gen+=(--head "$n"); done
    for n in "${workers[@]}"; do gen+=(--worker "$n"); done
    rm -rf "$state/cluster"
    "$(kapp_bin)" "${gen[@]}"
    cp "$state/cluster/viewer.kubeconfig" "$state/kubeconfig"

    say "git server: git://10.77.0.1/app (examples/app)"
    app_repo "$state/git"
    git_daemon "$state/git" 10.77.0.1 "$state/git-daemon.pid" "$ns"

    for n in $(node_names); do say "booting $n"; boot_vm "$n"; done
    wait_ready
    say "kubeconfig: $state/kubeconfig (inside netns $ns); try: qemu/cluster.sh kappctl status"
    ;;
wait) wait_ready ;;
status)
    for n in $(node_names); do
        pid=$(vm_pid "$n" || true)
        run=stopped
        [ -n "$pid" ] && run="running (pid $pid)"
        printf '%-8s %-22s %s\n' "$n" "$run" "$(last_line "$n")"
    done
    ip netns list | grep -qw "$ns" && run_kappctl status || true
    ;;
kappctl) run_kappctl "${rest[@]}" ;;
exec) exec ip netns exec "$ns" "${rest[@]}" ;;
poweroff)
    n=${rest[0]:?node name}
    pid=$(vm_pid "$n") || die "$n is not running"
    if [ "$hard" = yes ]; then qmp "$(vm_dir "$n")" quit; else qmp "$(vm_dir "$n")" system_powerdown; fi
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && die "$n still running after 120 s"
    say "$n is off"
    ;;
boot)
    n=${rest[0]:?node name}
    accel=$(qemu_accel)
    boot_vm "$n"
    say "$n booting; console $(vm_dir "$n")/serial.log"
    ;;
destroy)
    pids=()
    for n in $(node_names); do
        pid=$(vm_pid "$n" || true)
        [ -n "$pid" ] && { kill "$pid"; pids+=("$pid"); say "stopped $n"; }
    done
    if [ -e "$state/git-daemon.pid" ]; then kill "$(cat "$state/git-daemon.pid")" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    ip netns list | grep -qw "$ns" && ip netns delete "$ns"
    rm -rf "$state"
    say "cluster destroyed"
    ;;
*) sed -n '2,19p' "$0"; exit 2 ;;
esac
