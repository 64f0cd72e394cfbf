# HAProxy load balancer in front of N `api` replicas (compose.scale.yaml). Built here from Debian's haproxy
# package on the same python:3.11-slim base as the API (no registry needed; Python is used only by the
# healthcheck, since slim images have no curl).
#
#   docker build -f docker/lb.Dockerfile -t rescom-lb:local .
#
# Runs as the unprivileged `haproxy` user on ports 8080 (traffic) and 8404 (/healthz, /stats); writes nothing,
# so it runs with a read-only root filesystem. Configuration: docker/haproxy.cfg (see its header).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && haproxy -v

COPY docker/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
# Docker's embedded DNS, the replicas' DNS name and port, and how many of them the balancer can track at most (server-template slots).
ENV RESCOM_LB_BACKEND=api \
    RESCOM_LB_DNS=127.0.0.11:53 \
    RESCOM_LB_BACKEND_PORT=8000 \
    RESCOM_LB_SLOTS=16
RUN haproxy -c -f /usr/local/etc/haproxy/haproxy.cfg

LABEL org.opencontainers.image.title="rescom-lb" \
      org.opencontainers.image.description="HAProxy in front of ResCom API replicas" \
      org.opencontainers.image.licenses="Apache-2.0"
USER haproxy
EXPOSE 8080 8404
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8404/healthz', timeout=2)"]
# SIGUSR1 = soft stop: stop accepting, finish the requests in flight, then exit.
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
