"""The server's Prometheus metrics (names and buckets from docs/contracts.md).

Each app owns its ``CollectorRegistry``: nothing touches the global registry, so tests and several
apps in one process never collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LOAD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300)
LOAD_OUTCOMES = ("success", "failure")
ENDPOINTS = frozenset({"/predict", "/health", "/ready", "/metrics", "/version", "/v1/observations"})
OTHER_ENDPOINT = "other"  # any unknown path: keeps label cardinality bounded
EXPOSITION_CONTENT_TYPE = CONTENT_TYPE_LATEST


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label for a request path (unknown paths share one label)."""
    return path if path in ENDPOINTS else OTHER_ENDPOINT


class ServerMetrics:
    """All ``inference_*`` series of one server, in their own registry."""

    def __init__(self, release: str = "dev") -> None:
        # Every request series carries the release tag, so a staged rollout's candidate and stable
        # are compared on the same minutes of traffic in PromQL too (sum by (release) ...).
        self.release = release
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_duration = Histogram(
            "inference_request_duration_seconds",
            "Time from request received to response sent, by release, endpoint and origin "
            "(probe: the agent's golden set, sent with X-Warden-Probe; user: everything else).",
            ["release", "endpoint", "origin"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "inference_requests",
            "HTTP requests answered, by release, endpoint, status code and origin (probe|user).",
            ["release", "endpoint", "status", "origin"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Items per model batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_duration = Histogram(
            "inference_batch_duration_seconds",
            "Model time per batch (tokenise + forward + post-process).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "inference_queue_depth", "Items waiting for the model worker.", registry=registry
        )
        self.confidence = Histogram(
            "inference_prediction_confidence",
            "Top-1 probability of each prediction (tasks with labels).",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "inference_model_info",
            "The loaded model (always 1); set once the model is ready.",
            ["release", "model", "sha256", "task", "device", "dtype", "quantize"],
            registry=registry,
        )
        self.model_load = Histogram(
            "inference_model_load_duration_seconds",
            "Model load attempts (load + warm-up) by release and outcome (success|failure); "
            "_count by outcome gives the load success rate.",
            ["release", "outcome"],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.model_errors = Counter(
            "inference_model_errors",
            "Requests that failed because the model raised (HTTP 500).",
            registry=registry,
        )
        ProcessCollector(registry=registry)

    def observe_request(
        self, endpoint: str, status: int, seconds: float, origin: str = "user"
    ) -> None:
        """Count one answered request and its duration (``origin``: user or probe)."""
        labels = {"release": self.release, "endpoint": endpoint}
        self.requests.labels(**labels, status=str(status), origin=origin).inc()
        self.request_duration.labels(**labels, origin=origin).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model batch."""
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth`` at every scrape."""
        self.queue_depth.set_function(depth)

    def set_model(
        self,
        *,
        release: str,
        model: str,
        sha256: str,
        task: str,
        device: str,
        dtype: str,
        quantize: str,
    ) -> None:
        """Publish ``inference_model_info`` for the loaded model."""
        self.model_info.clear()
        self.model_info.labels(
            release=release,
            model=model,
            sha256=sha256,
            task=task,
            device=device,
            dtype=dtype,
            quantize=quantize,
        ).set(1)

    def start_release(self, release: str) -> None:
        """Show zero load attempts of ``release`` for each outcome until the load finishes, so a
        success-rate query sees 0 rather than no series."""
        for outcome in LOAD_OUTCOMES:
            self.model_load.labels(release=release, outcome=outcome)

    def observe_load(self, release: str, outcome: str, seconds: float) -> None:
        """Record one model load attempt (called from the loader thread; the client is
        thread-safe)."""
        self.model_load.labels(release=release, outcome=outcome).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
