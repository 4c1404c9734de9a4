#!/usr/bin/env bash
# Install what building and testing kapp needs on Debian 12 (run as root). Idempotent.
set -euo pipefail
# nftables, conntrack, iproute2: the proxy's namespace tests; bind9-dnsutils (dig): the DNS tests.
# runc, crun: the kubelet benchmark's peers. dosfstools: the boot-assessment test makes a real FAT ESP; openssh-client: ssh-keygen signs commits; openssh-server: sshd serves git over ssh://; gnupg: gpg signs commits.
# age: kapp-age and gitops interoperate with the real age CLI.
need=(libclang-dev libseccomp-dev clang pkg-config git ca-certificates libssl-dev nftables conntrack iproute2 bind9-dnsutils docker-registry busybox-static runc crun dosfstools openssh-client openssh-server gnupg age)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# kubectl (the apiserver tests drive the real one): every dev/CI machine has 1.32; on a
# fresh Debian fall back to Debian's older kubernetes-client package.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "installing kubernetes-client (kubectl)"
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi
# The official Python client (the apiserver tests use it against kapp).
if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  echo "installing the python kubernetes client"
  python3 -m pip --version >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  python3 -m pip install -q kubernetes 2>/dev/null || python3 -m pip install -q --break-system-packages kubernetes
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust >= 1.85 (https://rustup.rs) and run again" >&2
  exit 1
fi
