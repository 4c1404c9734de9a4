#!/usr/bin/env bash
# kapp's write path end to end on this machine: a store, the apiserver and the gitops
# reconciler follow a local git repository (a copy of examples/app; no kubelet runs, so the
# objects are stored but no pods start). It commits a change and a broken manifest, and
# shows the cluster following the first and refusing the second, read through kubectl with
# a read-only kubeconfig. Leaves everything running until Ctrl-C (KAPP_DEMO_EXIT=1 exits at
# the end). Run as root on Debian 12.
source "$(dirname "$0")/setup.sh" /var/tmp/kapp-gitops-demo
"$kapp" gen pki --out "$state/pki" >/dev/null
pki="$state/pki"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

repo="$state/repo"
mkdir -p "$repo" && cp examples/app/*.yaml "$repo/"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=kapp -c user.email=kapp@localhost add -A
git -C "$repo" -c user.name=kapp -c user.email=kapp@localhost commit -q -m "shop: web (3 replicas), its API token, a smoke test and a heartbeat"
commit() { git -C "$repo" -c user.name=kapp -c user.email=kapp@localhost commit -q -am "$1"; }

"$kapp" store --id 1 --listen 127.0.0.1:23790 --members 1=127.0.0.1:23790 --data-dir "$state/store" \
  --ca "$pki/ca.pem" --cert "$pki/store.pem" --key "$pki/store.key" >>"$state/store.log" 2>&1 &
pids+=($!)
"$kapp" apiserver --listen 127.0.0.1:26443 --store 127.0.0.1:23790 \
  --ca "$pki/ca.pem" --cert "$pki/apiserver.pem" --key "$pki/apiserver.key" >>"$state/apiserver.log" 2>&1 &
pids+=($!)
"$kapp" gitops --apiserver https://127.0.0.1:26443 --repo "file://$repo" --branch main --interval 2 \
  --state-dir "$state/gitops" --ca "$pki/ca.pem" --cert "$pki/gitops.pem" --key "$pki/gitops.key" >>"$state/gitops.log" 2>&1 &
pids+=($!)
"$kapp" gen kubeconfig --server https://127.0.0.1:26443 --ca "$pki/ca.pem" --cert "$pki/viewer.pem" --key "$pki/viewer.key" >"$state/viewer.kubeconfig"
export KUBECONFIG="$state/viewer.kubeconfig"
kappctl="$CARGO_TARGET_DIR/debug/kappctl"

wait_for() { # wait_for <description> <command...>
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what; logs in $state" >&2; exit 1
}
applied() { kubectl get gitsync cluster -o jsonpath='{.status.appliedCommit.sha}' | grep -q "$(git -C "$repo" rev-parse HEAD)"; }
replicas() { [ "$(kubectl -n shop get deploy web -o jsonpath='{.spec.replicas}')" = "$1" ]; }

wait_for "the first commit" applied
echo "== the first commit is live"
"$kappctl" status || true
kubectl get gitsync
kubectl get -n shop deploy,svc,cm,secret,job,cronjob

echo "== commit: scale web to 5"
sed -i 's/replicas: 3/replicas: 5/' "$repo/web.yaml" && commit "shop: scale web to 5"
wait_for "the scale-up" replicas 5
kubectl -n shop get deploy web

echo "== commit: a broken Service port (the whole commit is refused, 5 replicas stay)"
sed -i 's/port: 80,/port: eighty,/' "$repo/web.yaml" && sed -i 's/replicas: 5/replicas: 1/' "$repo/web.yaml" && commit "shop: broken"
wait_for "the refusal" sh -c "kubectl get gitsync cluster -o jsonpath='{.status.state}' | grep -q Failed"
kubectl get gitsync cluster -o jsonpath='{.status.message}{"\n"}'
replicas 5 && echo "web still has 5 replicas"
echo "== kappctl status says which commit is live and why the new one was refused (exit code 1: degraded)"
"$kappctl" status && echo "(exit 0)" || echo "(exit $?)"

echo "== kubectl with the viewer's kubeconfig cannot write:"
kubectl -n shop delete deploy web 2>&1 | head -n1 || true

echo
echo "The repository is $repo: edit, commit, and watch with"
echo "  KUBECONFIG=$state/viewer.kubeconfig kubectl get -n shop deploy -w"
echo "  KUBECONFIG=$state/viewer.kubeconfig $kappctl status --watch"
[ "${KAPP_DEMO_EXIT:-0}" = 1 ] && exit 0
echo "Ctrl-C stops everything."
wait
