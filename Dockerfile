# syntax=docker/dockerfile:1
# The responses-router image: one binary, for the router (`serve`) and the bundled model-server
# simulator (`simulate`), as the Kubernetes manifests in deploy/kubernetes/ run it.
#
#   docker build -t responses-router:dev .
#
# Two stages: a Rust builder, then the binary alone on distroless (glibc and libgcc, no shell, no
# package manager), running as the unprivileged uid 65532. The dependencies are compiled in a
# layer of their own, from Cargo.toml and Cargo.lock only, so a change to the sources rebuilds
# just this crate. (The project's own machines have no Docker engine: this file is not built in
# its tests.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /build

# 1. Dependencies: the manifests and placeholder targets (an empty build script too, so the
#    build-dependencies that compile proto/ are cached as well). Cached until Cargo.toml or
#    Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > build.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -r src build.rs

# 2. The crate. `cargo clean --package` drops the placeholder's build first: it is newer than
#    the copied sources, so cargo would otherwise take it as up to date and ship it.
COPY . .
RUN cargo clean --release --package responses-router \
 && cargo build --release --locked --bin responses-router \
 && cp target/release/responses-router /responses-router

# Debian 12 (bookworm), like the builder, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /responses-router /usr/local/bin/responses-router
# Numeric, so Kubernetes can verify `runAsNonRoot` from the image alone.
USER 65532:65532
# ext_proc gRPC and the admin port (/metrics, /healthz) of `serve`; `simulate` listens where told.
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/responses-router"]
CMD ["--help"]
