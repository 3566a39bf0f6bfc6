#!/usr/bin/env bash
# Validates every Kubernetes object the operator produces against the API's own schemas (Kubernetes
# 1.33, strict: unknown fields fail) with kubernetes-validate: the children `render` prints for
# each example manifest (with scrape annotations and with a PodMonitor), the CRD and the
# ClusterRole. The PodMonitor has no schema there (a third-party CRD) and is only warned about.
# Usage: scripts/validate-manifests.sh [path/to/pipeline-operator]
set -euo pipefail
cd "$(dirname "$0")/.."

operator="${1:-target/debug/pipeline-operator}"
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for manifest in manifests/examples/*.yaml; do
  name="$(basename "$manifest" .yaml)"
  "$operator" render -f "$manifest" --partitions 24 >"$out/$name.yaml"
  "$operator" render -f "$manifest" --partitions 7 --pod-monitor >"$out/$name-pod-monitor.yaml"
done
"$operator" crd >"$out/crd.yaml"
"$operator" rbac >"$out/rbac.yaml"
python3 -m kubernetes_validate --strict --quiet --no-warn -k 1.33.0 "$out"/*.yaml
echo "kubernetes-validate: $(ls "$out" | wc -l) files valid"
