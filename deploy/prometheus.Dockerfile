# Prometheus without an image registry: the host's Debian binary (/usr/bin/prometheus, Go, linked
# only against glibc) copied onto the local bookworm base image. scripts/engine.sh stages the binary
# into the build context and builds warden-prometheus:local. The binary sits at /bin/prometheus like
# in prom/prometheus, so docker-compose.yml works with either image (WARDEN_PROMETHEUS_IMAGE).
ARG BASE_IMAGE=local/bookworm-py:base
FROM ${BASE_IMAGE}
COPY prometheus /bin/prometheus
COPY share/ /usr/share/prometheus/web/
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
