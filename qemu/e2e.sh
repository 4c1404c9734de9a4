#!/bin/bash
# The end-to-end test of kapp in VMs, one command (root; ~30-60 min under TCG on 2 cores,
# so it is NOT part of CI: run it before every release):
#
#   qemu/e2e.sh [--no-build] [--keep] [--results FILE]
#
# build the image (image/build.sh) → boot 3 heads + 2 workers (qemu/cluster.sh) → the
# cluster follows examples/app → kappctl status healthy with the commit applied → commit a
# scale (web 3 → 4 replicas) → converges → commit a new image tag → rolled out → delete
# tick.yaml → its CronJob is pruned →
# power head3 off hard → the cluster still answers and applies the next commit → boot
# head3 again → it is ready and the cluster healthy with all heads. Figures (build time,
# image size, boot → node ready per VM, commit → converged) go to --results (default
# qemu/results.md). Each wait is bounded; the first failure stops the test (the cluster
# is kept for a look with --keep, else destroyed).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
build=yes
keep=no
results=$repo/qemu/results.md
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=no; shift ;;
        --keep) keep=yes; shift ;;
        --results) results=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root"
state=/var/lib/kapp-qemu/e2e
# The commit the image is built from (with --no-build: the checkout's, as the caller says).
built_from=$(git -C "$repo" rev-parse --short HEAD)
export KAPP_QEMU_NETNS=kapp-e2e
cluster() { "$repo/qemu/cluster.sh" "$@" --state "$state"; }
app=$state/git/app
figures=()
fig() { figures+=("| $1 | $2 |"); say "measure: $1 = $2"; }
fail() { say "FAILED: $*"; cluster status || true; [ "$keep" = yes ] || cluster destroy; exit 1; }

# check WHAT [ARG]: read kappctl's ClusterStatus (`status -o json`) and test it:
#   applied SHA   gitops applied that commit (health may be degraded)
#   healthy SHA   verdict healthy and that commit applied
#   web N         Deployment shop/web has N desired and N ready
#   ready "A B"   nodes A and B are Ready
check() {
    # kappctl exits 1 when the cluster is degraded (a head off): read its JSON regardless.
    { cluster kappctl status -o json 2>/dev/null || true; } | python3 -c '
import json, sys
what, arg = sys.argv[1], sys.argv[2]
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
applied = {(g.get("applied") or {}).get("sha") for g in doc["gitops"]["items"]}
if what == "applied":
    ok = arg in applied
elif what == "healthy":
    ok = arg in applied and str(doc["health"]["verdict"]).lower() == "healthy"
elif what == "ready":
    ready = {n["name"] for n in doc["nodes"]["items"] if n["status"] == "Ready"}
    ok = set(arg.split()) <= ready
else:
    n = int(arg)
    ok = any(w["namespace"] == "shop" and w["name"] == "web" and w["desired"] == n and w["ready"] == n
             for w in doc["workloads"]["items"])
sys.exit(0 if ok else 1)' "$1" "$2"
}
# until_ok SECONDS WHAT CMD...: retry CMD every 5 s; on time out, fail naming WHAT.
until_ok() {
    local secs=$1 what=$2 end=$((SECONDS + $1)); shift 2
    until "$@"; do
        [ $SECONDS -lt $end ] || fail "$what (not within ${secs}s)"
        sleep 5
    done
}
commit() {
    git -C "$app" add -A
    git -C "$app" -c user.name=e2e -c user.email=e2e@localhost commit -q -m "$1"
    git -C "$app" rev-parse HEAD
}
object_gone() { ! cluster kappctl get "$1" "$2" -n shop >/dev/null 2>&1; }
# head3_ready: its console shows `node head3 ready` after the last boot marker.
head3_ready() {
    sed -n '/^--- boot/h; /^--- boot/!H; ${x;p}' "$state/vms/head3/serial.log" | grep -aq 'kapp-init: node head3 ready'
}

cluster destroy >/dev/null 2>&1 || true
if [ "$build" = yes ]; then
    t=$SECONDS
    "$repo/image/build.sh"
    fig "image build (warm caches)" "$((SECONDS - t)) s"
fi
fig "image size (raw allocated / qcow2 / UKI)" "$(du -m "$repo/image/out/kapp.raw" | cut -f1) MiB / $(du -m "$repo/image/out/kapp.qcow2" | cut -f1) MiB / $(du -m "$repo/image/out/kapp-a.efi" | cut -f1) MiB"

t=$SECONDS
cluster create || fail "cluster create"
fig "boot → all 5 nodes ready" "$((SECONDS - t)) s"
while read -r n secs; do fig "boot → node ready ($n, all five booting at once)" "$secs s"; done < "$state/ready.txt"

head=$(git -C "$app" rev-parse HEAD)
t=$SECONDS
until_ok 900 "kappctl status healthy at the first commit" check healthy "$head"
fig "ready → first commit converged" "$((SECONDS - t)) s"
# First boot: each node grew its state partition to its disk's end and, once ready, marked
# the boot good (systemd-boot's counter dropped from the UKI's name on the ESP).
for vm in head1 head2 head3 worker1 worker2; do
    log=$state/vms/$vm/serial.log
    grep -aq 'kapp-init: state partition vda4 grown to the end of its disk' "$log" || fail "$vm: state partition not grown"
    grep -aq 'kapp-init: boot marked good: EFI/Linux/kapp-a+2-1.efi → EFI/Linux/kapp-a.efi' "$log" || fail "$vm: boot not marked good"
done
fig "state partition on an 8 GiB disk (head1)" "$(grep -ao 'grown to the end of its disk ([0-9]* MiB)' "$state/vms/head1/serial.log" | head -1 | grep -o '[0-9]* MiB')"

# scale_web FROM TO CHECK FIGURE: commit web's replicas FROM → TO, wait until the commit is
# applied (CHECK: healthy, or applied when a head is down) and TO replicas are ready.
scale_web() {
    sed -i "s/^  replicas: $1\$/  replicas: $2/" "$app/web.yaml"
    head=$(commit "scale web to $2")
    local t=$SECONDS
    until_ok 900 "commit 'scale web to $2' $3" check "$3" "$head"
    until_ok 600 "$2 web replicas ready" check web "$2"
    fig "$4" "$((SECONDS - t)) s"
}

scale_web 3 4 healthy "commit (scale 3 → 4) → pods Running"

# A new image tag rolls the Deployment: every web pod runs kapp.local/busybox:2 and is Ready.
sed -i 's|image: kapp.local/busybox:1$|image: kapp.local/busybox:2|' "$app/web.yaml"
head=$(commit "web: image tag 2")
t=$SECONDS
until_ok 900 "commit 'web: image tag 2' applied" check healthy "$head"
web_on() {
    cluster kappctl get pods -n shop -o json 2>/dev/null | python3 -c '
import json, sys
pods = [p for p in json.load(sys.stdin)["items"] if p["metadata"]["name"].startswith("web-") and "deletionTimestamp" not in p["metadata"]]
ready = lambda p: any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
sys.exit(0 if len(pods) == int(sys.argv[2]) and all(p["spec"]["containers"][0]["image"] == sys.argv[1] and ready(p) for p in pods) else 1)' "$1" "$2"
}
until_ok 900 "4 web pods Ready on kapp.local/busybox:2" web_on kapp.local/busybox:2 4
fig "commit (new image tag) → rolled out, 4 pods Ready" "$((SECONDS - t)) s"

git -C "$app" rm -q tick.yaml
sed -i '/^- tick.yaml$/d' "$app/kustomization.yaml"
head=$(commit "remove tick")
t=$SECONDS
until_ok 600 "delete commit applied" check healthy "$head"
until_ok 300 "CronJob tick pruned" object_gone cronjob tick
fig "commit (delete file) → pruned" "$((SECONDS - t)) s"

cluster poweroff head3 --hard || fail "power off head3"
scale_web 4 3 applied "commit (scale 4 → 3) with head3 off → pods gone"
# The other nodes keep their apiserver (worker2's balancer started with head3's): still
# Ready well past the node controller's 40 s grace.
sleep 60
check ready "head1 head2 worker1 worker2" || fail "a node went NotReady with head3 off"

t=$SECONDS
cluster boot head3 || fail "boot head3"
until_ok 1200 "head3 ready again" head3_ready
until_ok 600 "cluster healthy with head3 back" check healthy "$head"
# Its second boot: the entry marked good last time is not counted any more.
sed -n '/^--- boot/h; /^--- boot/!H; ${x;p}' "$state/vms/head3/serial.log" | grep -aq 'kapp-init: boot: not counted' || fail "head3's second boot was counted again"
fig "head3 boot → ready and caught up" "$((SECONDS - t)) s"

{
    echo "# kapp in VMs: end-to-end figures"
    echo
    echo "\`qemu/e2e.sh\` on $(date -u +%F), $(nproc) cores, accelerator $(qemu_accel), commit $built_from."
    echo
    echo "| what | figure |"
    echo "| --- | --- |"
    printf '%s\n' "${figures[@]}"
    echo
    echo "Checked in the same run: the first commit applied with \`kappctl status\` healthy; every VM's"
    echo "first boot grew its state partition to the disk's end and marked the boot good"
    echo "(\`EFI/Linux/kapp-a+2-1.efi → kapp-a.efi\`); the new image tag (\`kapp.local/busybox:2\`, baked"
    echo "into the image beside \`:1\`) rolled out with every web pod Ready on it; with head3 powered off"
    echo "the commit was applied by the remaining heads and head1, head2, worker1 and worker2 stayed"
    echo "Ready 60 s past the node controller's grace; head3's second boot was not counted again. Web"
    echo "pods ran on the workers only (heads are tainted NoSchedule). The image build figure includes"
    echo "compiling the release binaries from a warm target directory."
} > "$results"
say "PASSED; figures in $results"
[ "$keep" = yes ] || cluster destroy
