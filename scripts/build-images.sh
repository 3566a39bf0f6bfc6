#!/usr/bin/env bash
# Builds and tags Sluice's two images from the Dockerfile (targets `operator` and `runtime`)
# with docker, podman or buildah, whichever is installed.
#   scripts/build-images.sh [--registry ghcr.io/sluice-dev] [--tag 0.1.0] [--push] [--platform linux/amd64,linux/arm64]
# The default tag is the workspace version, which the operator uses for its default runtime image.
set -euo pipefail
cd "$(dirname "$0")/.."

registry="ghcr.io/sluice-dev"
tag="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
push=""
platform=""
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --push) push=1; shift ;;
    --platform) platform="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

engine=""
for candidate in docker podman buildah; do
  if command -v "$candidate" >/dev/null 2>&1; then engine="$candidate"; break; fi
done
if [ -z "$engine" ]; then
  echo "no container engine (docker, podman or buildah) found; install one to build the images" >&2
  exit 1
fi

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for target in runtime operator; do
  image="$registry/pipeline-$target:$tag"
  args=(--target "$target" --tag "$image"
        --build-arg "VERSION=$tag" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
  [ -n "$platform" ] && args+=(--platform "$platform")
  echo "== $image"
  if [ "$engine" = buildah ]; then
    buildah bud "${args[@]}" .
  else
    "$engine" build "${args[@]}" .
  fi
  if [ -n "$push" ]; then
    "$engine" push "$image"
  fi
done
