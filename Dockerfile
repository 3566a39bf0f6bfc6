# syntax=docker/dockerfile:1
# Sluice's two images, from one build stage:
#   docker build --target operator -t ghcr.io/sluice-dev/pipeline-operator:0.1.0 .
#   docker build --target runtime  -t ghcr.io/sluice-dev/pipeline-runtime:0.1.0 .
# scripts/build-images.sh builds and tags both. The binaries are built by
# scripts/build-binaries.sh, the same command CI runs (release profile, locked dependencies).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka is compiled from source by rdkafka-sys: a C/C++ toolchain, make, OpenSSL and zlib
# headers. Versions come from the pinned Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash scripts/build-binaries.sh \
    && mkdir -p /out \
    && cp target/release/pipeline-operator target/release/pipeline-runtime target/release/loadgen /out/ \
    && cp /usr/lib/*-linux-gnu/libz.so.1 /out/

# distroless/cc has glibc, libgcc, libstdc++, OpenSSL and CA certificates; zlib is copied in.
# The nonroot tag runs as uid 65532, the uid the operator's pods and the runtime's pods use.
FROM gcr.io/distroless/cc-debian12:nonroot AS base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Sluice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /out/libz.so.1 /usr/lib/libz.so.1
USER 65532:65532

FROM base AS runtime
LABEL org.opencontainers.image.title="pipeline-runtime" \
      org.opencontainers.image.description="Sluice stream runtime: runs a PipelineDeployment's slots (Kafka in, windows, Kafka out)"
COPY --from=build /out/pipeline-runtime /usr/local/bin/pipeline-runtime
# The load generator, for load tests in the cluster (e2e/cluster/run.sh runs it as a Job).
COPY --from=build /out/loadgen /usr/local/bin/loadgen
EXPOSE 9249
ENTRYPOINT ["/usr/local/bin/pipeline-runtime"]
CMD ["run"]

FROM base AS operator
LABEL org.opencontainers.image.title="pipeline-operator" \
      org.opencontainers.image.description="Sluice Kubernetes operator: reconciles and autoscales PipelineDeployments"
COPY --from=build /out/pipeline-operator /usr/local/bin/pipeline-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pipeline-operator"]
CMD ["run"]
