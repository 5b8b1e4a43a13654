# One image for every service: `mlops service <name>` selects the service.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      libssl-dev libsqlite3-dev zlib1g-dev libcurl4-openssl-dev pkg-config cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mlops

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libsqlite3-0 zlib1g libcurl4 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/mlops --create-home mlops
COPY --from=build /src/target/release/mlops /usr/local/bin/mlops
USER mlops
WORKDIR /var/lib/mlops
ENV MLOPS_DATA_DIR=/var/lib/mlops MLOPS_HTTP_HOST=0.0.0.0
ENTRYPOINT ["mlops"]
