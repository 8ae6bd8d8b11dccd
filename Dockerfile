# podium in a container: a build stage that compiles it on Debian 12 and a
# runtime stage with only the shared libraries, the binary and the entry
# point. docs/operations.md explains how to build and run it.
#
#   docker build -t podium .
#   docker run -e PODIUM_STREAM_NAME=race-telemetry -e AWS_REGION=... \
#       -v podium-data:/var/lib/podium -p 9464:9464 podium
#
# The RUN steps call the tools/container-*.sh scripts, which
# tests/e2e/container.sh and tests/e2e/container-static.sh run and check
# without a container engine.

FROM debian:12-slim AS build
COPY tools/container-deps.sh /src/tools/container-deps.sh
RUN bash /src/tools/container-deps.sh build
COPY . /src
WORKDIR /src
RUN bash tools/container-build.sh /opt/podium

FROM debian:12-slim
COPY tools/container-deps.sh /tmp/container-deps.sh
RUN bash /tmp/container-deps.sh runtime && rm /tmp/container-deps.sh
# A fixed uid and gid, so that a volume can be given to them on the host.
RUN groupadd --system --gid 10001 podium \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/podium --shell /usr/sbin/nologin podium \
    && mkdir -p /var/lib/podium \
    && chown 10001:10001 /var/lib/podium
COPY --from=build /opt/podium/bin/podium /usr/local/bin/podium
COPY tools/container-entrypoint.sh /usr/local/bin/podium-entrypoint

# Every setting comes from a PODIUM_* variable; no configuration file is
# needed. The HTTP server of /healthz, /readyz and /metrics listens on
# every address inside the container, so that the port can be published
# (podium itself defaults to 127.0.0.1).
ENV PODIUM_HTTP_LISTEN=0.0.0.0:9464 \
    PODIUM_STORE_PATH=/var/lib/podium/podium.db
VOLUME ["/var/lib/podium"]
EXPOSE 9464
USER 10001:10001
WORKDIR /var/lib/podium

# podium healthcheck gets /readyz on the port of PODIUM_HTTP_LISTEN, so the
# container is healthy once the store is open and the first ListShards
# succeeded.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["podium", "healthcheck", "--timeout-ms", "5000"]
ENTRYPOINT ["podium-entrypoint"]
CMD ["run"]
