# syntax=docker/dockerfile:1
# Multi-stage build of Starling's three images; pick one with --target:
#
#   docker build --target broker   -t ghcr.io/starling-mqtt/starling-broker:0.1.0 .
#   docker build --target api      -t ghcr.io/starling-mqtt/starling-api:0.1.0 .
#   docker build --target operator -t ghcr.io/starling-mqtt/starling-operator:0.1.0 .
#
# The binaries use rustls with ring (no OpenSSL) and run as the distroless `nonroot` user
# (65532), which the chart and the operator's pod templates expect.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p starling-broker -p starling-api -p starling-operator \
 && mkdir -p /out \
 && cp target/release/starling-broker target/release/starling-api target/release/starling-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS broker
COPY --from=build /out/starling-broker /usr/local/bin/starling-broker
USER 65532:65532
EXPOSE 8883 8443 9090
ENTRYPOINT ["/usr/local/bin/starling-broker"]

FROM gcr.io/distroless/cc-debian12:nonroot AS api
COPY --from=build /out/starling-api /usr/local/bin/starling-api
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/starling-api"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/starling-operator /usr/local/bin/starling-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/starling-operator"]
CMD ["run"]
