# nginx in front of the shoal nodes, with nginx/nginx.conf.
#   docker build -f deploy/nginx.Dockerfile -t shoal/nginx .
# With a registry the standard Debian base is used and nginx-light is
# installed from Debian; deploy/base-image.sh builds a local base that
# already has it (shoal/nginx-base), so no network is needed then.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN command -v nginx >/dev/null || { \
      apt-get update && apt-get install -y --no-install-recommends nginx-light \
      && rm -rf /var/lib/apt/lists/*; }

COPY nginx/nginx.conf /etc/nginx/nginx.conf

EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --start-period=3s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /nginx-health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

CMD ["nginx", "-g", "daemon off;"]
