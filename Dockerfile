# syntax=docker/dockerfile:1
# One image for the four Lifeline services; docker-compose.yml picks the
# binary with `command`. Build: docker build -t lifeline:local .

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directories are cache mounts (kept between builds,
# not in the layer), so the binaries are copied out of target/ in this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/lifeline-ingest \
       target/release/lifeline-evaluator \
       target/release/lifeline-notifier \
       target/release/lifeline-api \
       /out/

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin lifeline
COPY --from=build /out/lifeline-ingest /out/lifeline-evaluator /out/lifeline-notifier /out/lifeline-api /usr/local/bin/
USER 10001:10001
# ingest, api, evaluator (ops), notifier (ops)
EXPOSE 8080 8081 8082 8083
# No default command: run one of lifeline-ingest, lifeline-evaluator,
# lifeline-notifier, lifeline-api.
