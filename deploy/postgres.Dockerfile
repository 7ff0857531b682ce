# PostgreSQL for the compose stack's history: Debian's server on the same
# Debian 12 base as the node. `make images` builds it on the local base
# with postgresql already in it (deploy/base-image.sh, shoal/postgres-base);
# with a registry, the standard Debian base and Debian's package.
#   docker build -f deploy/postgres.Dockerfile -t shoal/postgres .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN command -v pg_ctlcluster >/dev/null || { \
      apt-get update && apt-get install -y --no-install-recommends postgresql \
      && rm -rf /var/lib/apt/lists/*; }

COPY deploy/postgres-entrypoint.sh /usr/local/bin/shoal-postgres

# The cluster lives in this volume (compose names it shoal_history).
ENV PGDATA=/var/lib/shoal-postgres/data
VOLUME /var/lib/shoal-postgres
EXPOSE 5432

HEALTHCHECK --interval=2s --timeout=2s --start-period=10s --retries=15 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5432"]

ENTRYPOINT ["/usr/local/bin/shoal-postgres"]
