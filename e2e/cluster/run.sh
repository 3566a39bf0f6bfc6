#!/usr/bin/env bash
# End-to-end on a real cluster (opt-in): installs the chart and manifests/dev/ (Kafka, Prometheus),
# applies the dev IoT pipeline, drives load with loadgen (a Job with the runtime image), and
# asserts that the pipeline scales up, scales back down, and that its output is exact
# (`pipeline-operator demo-check`, a Job with the operator image).
#
# Needs: kubectl and helm on PATH, a cluster in KUBECONFIG (kind, k3d or EKS; single node, or a
# default storage class whose ReadWriteOnce volumes every runtime pod can mount), and the two
# images tagged $SLUICE_IMAGE_TAG (default dev) where the cluster can pull them, e.g.
#   scripts/build-images.sh --tag dev
#   kind load docker-image ghcr.io/sluice-dev/pipeline-operator:dev ghcr.io/sluice-dev/pipeline-runtime:dev
# Run: e2e/cluster/run.sh   (or: cargo test -p pipeline-e2e --test cluster -- --ignored)
# SLUICE_E2E_KEEP=1 leaves everything installed for a look around.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag="${SLUICE_IMAGE_TAG:-dev}"
ns=sluice-dev
log() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; kubectl -n "$ns" describe pd iot-sensors >&2 || true; exit 1; }

for tool in kubectl helm; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
if ! kubectl version --request-timeout=10s >/dev/null 2>&1; then
  echo "no cluster reachable (KUBECONFIG=${KUBECONFIG:-~/.kube/config}); see e2e/cluster/run.sh's header" >&2
  exit 2
fi

cleanup() {
  if [ -z "${SLUICE_E2E_KEEP:-}" ]; then
    log "cleaning up"
    kubectl delete -n "$ns" pd --all --wait=true --timeout=120s || true
    kubectl delete -f manifests/dev/ --ignore-not-found --wait=false || true
    helm uninstall sluice-operator -n sluice-system || true
  fi
}
trap cleanup EXIT

log "manifests/dev: Kafka, Prometheus, checkpoint volume"
kubectl apply -f manifests/dev/namespace.yaml
kubectl apply -f manifests/dev/kafka.yaml -f manifests/dev/prometheus.yaml -f manifests/dev/checkpoints.yaml
kubectl -n "$ns" rollout status statefulset/kafka --timeout=300s
kubectl -n "$ns" rollout status deployment/prometheus --timeout=300s

log "helm install sluice-operator (tag $tag)"
helm upgrade --install sluice-operator helm/sluice-operator -n sluice-system --create-namespace \
  -f manifests/dev/values.yaml --set operator.image.tag="$tag" --set runtime.image.tag="$tag" \
  --wait --timeout 5m
helm test sluice-operator -n sluice-system --timeout 3m

log "topics"
for topic in iot-sensor-data:12 sensor-aggregates:3 iot-late:1 iot-dlq:1; do
  kubectl -n "$ns" exec kafka-0 -- /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 \
    --create --if-not-exists --topic "${topic%%:*}" --partitions "${topic##*:}" --replication-factor 1
done

log "the pipeline"
kubectl apply -f manifests/dev/iot-autoscaling.yaml
kubectl -n "$ns" wait pd/iot-sensors --for=condition=Ready --timeout=300s

# A one-pod Job NAME running IMAGE with the JSON array ARGS as its command line (restricted pod).
job() {
  local name="$1" image="$2" command="$3"
  kubectl -n "$ns" delete job "$name" --ignore-not-found
  kubectl -n "$ns" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name, namespace: $ns}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: $name
          image: $image
          command: $command
          resources: {requests: {cpu: 250m, memory: 128Mi}, limits: {memory: 512Mi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
YAML
}

log "load: 3,000/s for 1 min, 15,000/s for 4 min, 3,000/s for 3 min (one slot handles about 5,000/s)"
job loadgen "ghcr.io/sluice-dev/pipeline-runtime:$tag" \
  "[/usr/local/bin/loadgen, --bootstrap-servers, kafka.$ns.svc:9092, --topic, iot-sensor-data, --keys, '1000', --profile, 'steps:3000@60s,15000@240s,3000@180s', --out-of-order, '0.05', --malformed, '0.001', --close-after, 30s, --quiet]"

parallelism() { kubectl -n "$ns" get pd iot-sensors -o jsonpath='{.status.parallelism}'; }
log "waiting for a scale-up"
peak=1
for _ in $(seq 1 60); do
  p="$(parallelism)"; p="${p:-1}"
  [ "$p" -gt "$peak" ] && peak="$p"
  [ "$peak" -ge 3 ] && break
  sleep 5
done
[ "$peak" -ge 3 ] || fail "the pipeline did not scale to 3 slots or more (peak $peak)"
echo "scaled up to $peak slots"

kubectl -n "$ns" wait job/loadgen --for=condition=complete --timeout=900s || fail "loadgen did not finish"
log "waiting for the scale-down"
for _ in $(seq 1 60); do
  p="$(parallelism)"
  [ "${p:-$peak}" -lt "$peak" ] && break
  sleep 5
done
[ "$(parallelism)" -lt "$peak" ] || fail "the pipeline did not scale down after the load fell"

log "output check (demo-check)"
job demo-check "ghcr.io/sluice-dev/pipeline-operator:$tag" \
  "[/usr/local/bin/pipeline-operator, demo-check, --bootstrap-servers, kafka.$ns.svc:9092, --partitions, '12', --timeout, 3m]"
if kubectl -n "$ns" wait job/demo-check --for=condition=complete --timeout=300s; then
  kubectl -n "$ns" logs job/demo-check
else
  kubectl -n "$ns" logs job/demo-check >&2 || true
  fail "the output does not match the input"
fi
kubectl -n "$ns" get events --field-selector involvedObject.name=iot-sensors | grep -E 'AutoscalerScale' || true
echo "PASS: scaled 1 -> $peak -> $(parallelism), output exact"
