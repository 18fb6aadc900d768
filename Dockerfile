# syntax=docker/dockerfile:1
#
# tagbridge container image: one static (musl) binary on distroless/static,
# running as 65532:65532 (distroless "nonroot"), with no shell and no
# package manager in the final image.
#
#   docker build -t tagbridge:0.1.0 .
#   docker run --rm -v /etc/tagbridge:/etc/tagbridge:ro -p 8443:8443 tagbridge:0.1.0
#
# The configuration is read from /etc/tagbridge/tagbridge.hcl unless the
# arguments say otherwise (the Nomad job passes --config <secrets dir>/...).
# This file is checked by parsing only (tests/packaging.rs): the machine the
# test suite runs on has no container engine. See packaging/README.md.

# ---------------------------------------------------------------- build stage
FROM rust:1-bookworm AS build

# x86_64 by default; musl-gcc (musl-tools) compiles ring's C and assembly.
ARG TARGET=x86_64-unknown-linux-musl
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${TARGET}"

WORKDIR /src
# Everything Cargo.toml names (the library, the binaries, the benches).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches

# --locked: exactly the dependency versions of Cargo.lock. The release
# profile (lto, strip) is in Cargo.toml. The last two commands prove the
# result runs and is fully static (no program interpreter).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" --bin tagbridge \
 && install -D -m 0755 "target/${TARGET}/release/tagbridge" /out/tagbridge \
 && /out/tagbridge --version \
 && ! readelf -lW /out/tagbridge | grep -q "program interpreter"

# -------------------------------------------------------------- final stage
# distroless/static: CA certificates (for Consul, Nomad and notification
# URLs over HTTPS without a ca_file), tzdata, /etc/passwd with "nonroot";
# no shell. Pin it by digest in production (…:nonroot@sha256:<digest>).
FROM gcr.io/distroless/static-debian12:nonroot AS runtime

LABEL org.opencontainers.image.title="tagbridge" \
      org.opencontainers.image.description="Registry webhooks to Consul KV and rolling, health-gated Nomad deploys" \
      org.opencontainers.image.licenses="MPL-2.0"

COPY --from=build /out/tagbridge /usr/local/bin/tagbridge

USER 65532:65532
# Webhooks (HTTPS) and the admin listener (plain HTTP: /healthz, /readyz,
# /metrics); the ports are whatever listen/admin_listen say.
EXPOSE 8443 9102
# SIGTERM drains; SIGHUP reloads the certificate and the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tagbridge"]
CMD ["--config", "/etc/tagbridge/tagbridge.hcl", "serve"]
