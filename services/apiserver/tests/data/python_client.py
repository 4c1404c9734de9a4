"""List and watch Deployments with the official Python `kubernetes` client.

Usage: python_client.py KUBECONFIG NAMESPACE
Prints `list <name> <replicas>` per item, then `watch <TYPE> <name> <replicas>` for the
first event after the list's resourceVersion, then exits (or exits 3 after 20 s).
"""
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
apps = client.AppsV1Api()
ns = sys.argv[2]
lst = apps.list_namespaced_deployment(ns)
for d in lst.items:
    print("list", d.metadata.name, d.spec.replicas, flush=True)
w = watch.Watch()
for ev in w.stream(apps.list_namespaced_deployment, ns, resource_version=lst.metadata.resource_version, timeout_seconds=20):
    obj = ev["object"]
    print("watch", ev["type"], obj.metadata.name, obj.spec.replicas, flush=True)
    w.stop()
    sys.exit(0)
sys.exit(3)
