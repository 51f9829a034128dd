# Container images for live-realtime: one file, two final targets.
#
#   docker build --target gateway  -t ghcr.io/live-realtime/live-gateway:dev .
#   docker build --target operator -t ghcr.io/live-realtime/live-operator:dev .
#
# The builder compiles both binaries once (release, --locked); each final stage is distroless
# (glibc + libgcc + CA certificates, no shell, no package manager) running as uid:gid
# 65532:65532, written numerically so a pod with `runAsNonRoot: true` and no `runAsUser` starts
# (the kubelet cannot check a user *name* is not root) and OpenShift can still substitute its own.
#
# No `# syntax=` line: BuildKit's built-in frontend already understands `RUN --mount`, so a
# build where no registry is reachable works once the two base images are present locally.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# rust-toolchain.toml pins 1.95.0 and asks for rustfmt/clippy; the image's toolchain is enough to
# build, so skip rustup's component download.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit); the binaries are
# copied out of the cached target dir because it is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p live-gateway -p live-operator \
 && mkdir -p /out \
 && cp target/release/live-gateway target/release/live-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=builder /out/live-gateway /usr/local/bin/live-gateway
USER 65532:65532
# 3000: Socket.IO (public). 9091: admin (bridge, /metrics, /healthz, /readyz), cluster-internal.
EXPOSE 3000 9091
ENTRYPOINT ["/usr/local/bin/live-gateway"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=builder /out/live-operator /usr/local/bin/live-operator
USER 65532:65532
# 8080: admin (/healthz, /readyz, /metrics).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/live-operator"]
