# slidesync: build with `docker build -t slidesync .`, run with
#   docker run -p 8008:8008 -v slidesync-data:/data -e SYNCV3_SERVER=... slidesync
# (the embedded store and generated secret in /data), or for production add
#   -e SYNCV3_DB=postgres://... -e SYNCV3_SECRET=...
# Metrics and /health are on port 2112 inside the container (publish it only to a
# private network); the HEALTHCHECK asks /health there.

FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources, so this layer is reused until
# Cargo.toml or Cargo.lock changes. Every target Cargo.toml declares must exist for the
# manifest to load, hence the placeholder bench and load generator.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches loadtest \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/room_list.rs \
    && echo 'fn main() {}' > benches/readers.rs \
    && echo 'fn main() {}' > loadtest/main.rs \
    && cargo build --release --locked \
    && rm -rf src benches loadtest

# schema/ (postgres/ and sqlite/) before the real build: sqlx::migrate! embeds the
# migrations at compile time.
COPY schema ./schema
COPY benches ./benches
COPY loadtest ./loadtest
COPY src ./src
# COPY keeps the files' modification times, which can be older than the placeholder
# build; touching the crate roots makes cargo rebuild slidesync itself. The release
# profile (Cargo.toml: thin LTO, 4 codegen units, line tables for profiles) applies.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: the homeserver is reached over HTTPS with the system's roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 slidesync \
    && useradd --uid 10001 --gid slidesync --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin slidesync \
    && install -d -o 10001 -g 10001 -m 0700 /data
COPY --from=builder /build/target/release/slidesync /usr/local/bin/slidesync
USER 10001:10001
ENV SYNCV3_BINDADDR=0.0.0.0:8008 \
    SYNCV3_PROM=0.0.0.0:2112 \
    SYNCV3_DATA_DIR=/data
VOLUME /data
EXPOSE 8008 2112
# No curl in the slim image: bash's /dev/tcp sends the request. /health answers 503
# while the store loads (start period for big databases), then 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SYNCV3_PROM##*:} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/slidesync"]
