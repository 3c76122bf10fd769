# apiscope: one static-ish binary on a slim Debian base.
#   docker build -t apiscope .
#   docker run -p 127.0.0.1:4318:4318 -p 127.0.0.1:7171:7171 \
#     -v $PWD/apiscope.toml:/etc/apiscope.toml:ro -e APISCOPE_CONFIG=/etc/apiscope.toml apiscope
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The ship profile: stripped, thin LTO (see Cargo.toml).
RUN cargo build --profile ship --locked --bin apiscope

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data apiscope \
    && mkdir -p /data && chown apiscope /data
COPY --from=build /src/target/ship/apiscope /usr/local/bin/apiscope
USER apiscope
# In a container the listeners face the container network, so apiscope refuses to start
# until tokens are configured ([[auth.tokens]] in the file APISCOPE_CONFIG names), or
# APISCOPE_INSECURE_NO_AUTH=true says that the published ports are protected otherwise.
ENV APISCOPE_DATA_DIR=/data \
    APISCOPE_OTLP_GRPC_ADDR=0.0.0.0:4317 \
    APISCOPE_OTLP_HTTP_ADDR=0.0.0.0:4318 \
    APISCOPE_HTTP_ADDR=0.0.0.0:7171 \
    APISCOPE_PG_ADDR=0.0.0.0:7432
VOLUME /data
EXPOSE 4317 4318 7171 7432
ENTRYPOINT ["apiscope"]
CMD ["serve"]
