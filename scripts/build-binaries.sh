#!/usr/bin/env bash
# Builds the release binaries exactly as the container images do (the Dockerfile runs this
# script; CI runs it too and the end-to-end tests use its output): pipeline-operator,
# pipeline-runtime and loadgen, with the locked dependencies, into target/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo build --release --locked -p pipeline-runtime -p pipeline-operator --bins "$@"
