# walbust: multi-stage build, non-root runtime.
#   docker build -t walbust .
#   docker run --rm -v $PWD/walbust.toml:/etc/walbust/walbust.toml:ro walbust
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
COPY rules ./rules
COPY samples ./samples
RUN cargo build --release --locked --bin walbust

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin walbust
COPY --from=build /src/target/release/walbust /usr/local/bin/walbust
COPY rules /etc/walbust/rules
COPY walbust.toml /etc/walbust/walbust.toml
USER walbust
EXPOSE 9187
ENV WALBUST_LISTEN=0.0.0.0:9187
ENTRYPOINT ["walbust"]
CMD ["run", "--config", "/etc/walbust/walbust.toml"]
