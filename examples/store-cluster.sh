#!/usr/bin/env bash
# kapp's replicated store, end to end on this machine: three members on loopback with
# mutual TLS, a leader killed with SIGKILL, a new leader elected, the killed member back
# from its disk. Leaves the cluster running until Ctrl-C. Run as root on Debian 12.
source "$(dirname "$0")/setup.sh" /var/tmp/kapp-store-demo
"$kapp" gen pki --out "$state/pki"
ports=(23791 23792 23793)
members="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
endpoints="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
declare -A pids
start() {
  local id=$1
  "$kapp" store --id "$id" --listen "127.0.0.1:${ports[$((id-1))]}" --members "$members" \
    --data-dir "$state/m$id" --ca "$state/pki/ca.pem" --cert "$state/pki/store.pem" \
    --key "$state/pki/store.key" >>"$state/m$id.log" 2>&1 &
  pids[$id]=$!
}
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
status() {
  "$kapp" store-status --endpoints "$endpoints" --ca "$state/pki/ca.pem" \
    --cert "$state/pki/store-client.pem" --key "$state/pki/store-client.key"
}
leader() { status 2>/dev/null | awk '$3=="Leader"{print $2}' | head -n1; }
wait_leader() {
  for _ in $(seq 1 100); do l=$(leader); [ -n "$l" ] && { echo "$l"; return; }; sleep 0.2; done
  echo "no leader; logs in $state" >&2; exit 1
}
for id in 1 2 3; do start "$id"; done
l=$(wait_leader)
echo "== three members up; leader is $l"; status
echo "== SIGKILL the leader (member $l)"
kill -KILL "${pids[$l]}"; wait "${pids[$l]}" 2>/dev/null || true
for _ in $(seq 1 50); do sleep 0.2; nl=$(leader); [ -n "$nl" ] && [ "$nl" != "$l" ] && break; done
status || true
echo "== restart member $l from its disk"
start "$l"; sleep 2; status
echo
echo "The store is running (data and logs in $state). Ctrl-C stops it."
wait
