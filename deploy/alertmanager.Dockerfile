# Alertmanager without an image registry: the host's Debian binary (/usr/bin/prometheus-alertmanager)
# copied onto the local bookworm base image as /bin/alertmanager (the path prom/alertmanager uses).
# scripts/engine.sh stages the binary into the build context and builds warden-alertmanager:local.
ARG BASE_IMAGE=local/bookworm-py:base
FROM ${BASE_IMAGE}
COPY alertmanager /bin/alertmanager
# Debian builds Alertmanager to read its default templates and UI from here.
COPY share/ /usr/share/prometheus/alertmanager/
RUN mkdir -p /alertmanager /etc/alertmanager && chown 65534:65534 /alertmanager
USER 65534:65534
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--cluster.listen-address="]
