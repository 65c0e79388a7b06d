"""The agent's own Prometheus metrics (``warden_*``), on a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECOVERY_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300)


class SnapshotGauge(Collector):
    """A labelled gauge whose whole set of series is replaced at once.

    ``Gauge.clear()`` followed by ``labels().set()`` leaves a moment in which a scrape sees none
    of the series; Prometheus then writes staleness markers and the series flicker out of
    instant queries. Here ``replace`` swaps one dict reference (atomic under the GIL), so every
    scrape sees either the previous tick's complete set or this tick's.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        for key in values:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {key} do not match {self.labelnames}")
        self._values = dict(values)

    def value(self, *labels: str) -> float | None:
        """The exported value for these label values (None when absent); for tests and pages."""
        return self._values.get(labels)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self._values.items():
            family.add_metric(list(labels), value)
        yield family


class AgentMetrics:
    """Every ``warden_*`` series. Tests build their own instance; nothing is global."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.actions = Counter(
            "warden_actions",
            "Remediation actions by type and result",
            ["action", "result"],
            registry=r,
        )
        self.decisions = Counter(
            "warden_decisions", "Decisions taken, by action (or held)", ["action"], registry=r
        )
        self.rule_firing = SnapshotGauge(
            "warden_rule_firing",
            "1 while a rule fires on a subject",
            ["rule", "subject", "severity"],
            registry=r,
        )
        self.signal = SnapshotGauge(
            "warden_signal",
            "Last observed value of each signal",
            ["subject", "signal"],
            registry=r,
        )
        self.canary_pass_ratio = Gauge(
            "warden_canary_pass_ratio",
            "Fraction of golden-set canaries passing",
            ["replica"],
            registry=r,
        )
        self.release_info = SnapshotGauge(
            "warden_release_info",
            "1 for the current release, with its status",
            ["release", "status"],
            registry=r,
        )
        self.last_good_info = SnapshotGauge(
            "warden_last_good_release_info",
            "1 for the last release proven good",
            ["release"],
            registry=r,
        )
        self.recovery = Histogram(
            "warden_time_to_recover_seconds",
            "From the remediation decision to the verified fix",
            ["action"],
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.replicas = SnapshotGauge("warden_replicas", "Replicas by state", ["state"], registry=r)
        self.frozen = Gauge("warden_frozen", "1 when automatic remediation is frozen", registry=r)
        self.maintenance = Gauge("warden_maintenance", "1 in maintenance mode", registry=r)
        self.rules_valid = Gauge(
            "warden_rules_valid", "1 when the rule files on disk are valid", registry=r
        )
        self.rules_reloads = Counter(
            "warden_rules_reloads", "Rule file reloads by result", ["result"], registry=r
        )
        self.tick_duration = Histogram(
            "warden_tick_duration_seconds",
            "Time one observe-to-record tick took",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.alerts_pending = Gauge(
            "warden_alerts_pending", "Alerts in the outbox not yet delivered", registry=r
        )
        self.alerts_delivered = Counter(
            "warden_alerts_delivered",
            "Alert deliveries by receiver and result",
            ["receiver", "result"],
            registry=r,
        )

    def set_signals(self, signals: Mapping[str, Mapping[str, float]]) -> None:
        """Replace the exported signal values with this tick's (absent ones disappear)."""
        self.signal.replace(
            {
                (subject, name): value
                for subject, values in signals.items()
                for name, value in values.items()
            }
        )

    def set_firing(self, firing: Iterable[tuple[str, str, str]]) -> None:
        self.rule_firing.replace({key: 1.0 for key in firing})

    def set_replica_states(self, states: Iterable[str]) -> None:
        counts: dict[tuple[str, ...], float] = {}
        for s in states:
            counts[(s,)] = counts.get((s,), 0) + 1
        self.replicas.replace(counts)

    def set_releases(self, current: str, current_status: str, last_good: str | None) -> None:
        self.release_info.replace({(current, current_status): 1.0})
        self.last_good_info.replace({(last_good,): 1.0} if last_good else {})
