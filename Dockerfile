# dynapi: a release build, then a small Debian image with what scripts need
# (sh, git, python3), tini as PID 1 (it reaps the orphans scripts leave), and a
# user that is not root (the kernel holds non-root users to the script process
# limit; see "Run it in Docker" in the README).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && strip target/release/dynapi

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /data dynapi
COPY --from=build /src/target/release/dynapi /usr/local/bin/dynapi
USER dynapi
WORKDIR /data
ENV DYNAPI_WORKSPACE=/data/workspace \
    DYNAPI_LISTEN=0.0.0.0:8000 \
    DYNAPI_LOG_FORMAT=json \
    DYNAPI_SHUTDOWN_GRACE=6s
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# `docker stop` waits 10 s before it kills: the grace above (running calls
# finish), then up to 3 s for killed calls to answer, fit in it.
ENTRYPOINT ["tini", "--", "dynapi"]
CMD ["serve"]
