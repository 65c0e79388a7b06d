"""Composition root: the one place that wires real parts together and runs them.

``build_agent`` turns a ``WardenConfig`` into an ``Agent`` with a real backend, HTTP client,
state store and audit log; ``Runtime`` runs its ticks on APScheduler, delivers alerts from the
outbox, serves the API with uvicorn, and stops everything cleanly.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from agent import alerts as alerting
from agent.api import create_api
from agent.audit import AuditLog
from agent.backends.base import Backend
from agent.canaries import Canary, load_canaries
from agent.clock import Clock, SystemClock
from agent.config import WardenConfig, is_loopback
from agent.decay_monitor import DecayMonitor, DecaySettings
from agent.drift import engine as drift_engine
from agent.drift.detector import DriftSettings as DetectorSettings
from agent.drift.monitor import DriftMonitor, MonitorSettings
from agent.drift.reference import ReferenceStore, reference_from_file
from agent.errors import BackendError, ConfigError, WardenError
from agent.feedback import FeedbackStore
from agent.file_sd import TargetFile
from agent.history import SignalHistory
from agent.loop import Agent, AgentSettings
from agent.metrics import AgentMetrics
from agent.observe import Observer
from agent.policy import PolicyConfig
from agent.rollout.analysis import Limits
from agent.rollout.balancer import HaproxyBalancer
from agent.rollout.controller import Rollouts, RolloutSettings, RolloutStore
from agent.rollout.haproxy import HaproxyProcess
from agent.rules import RuleWatcher
from agent.slow_clients import guarded_http
from agent.state import StateStore
from agent.trace import TraceRecorder

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"  # noqa: S105 (a file name)


def make_backend(cfg: WardenConfig, clock: Clock) -> Backend:
    """The backend named in the config. Only this function knows every kind."""
    kind = cfg.backend.kind
    if kind == "process":
        from agent.backends.process import ProcessBackend

        return ProcessBackend(
            state_dir=cfg.state_dir,
            service=cfg.service,
            # HAProxy takes the public port; the replicas start on the ports above it
            base_port=cfg.backend.port + (1 if uses_haproxy(cfg) else 0),
            host=cfg.backend.host,
            command=[*cfg.backend.command, *cfg.backend.extra_args],
            grace_s=2.0,  # a replica being replaced is broken or idle: no long drain
            clock=clock,
        )
    if kind == "docker":
        from agent.backends.docker_backend import DockerBackend

        return DockerBackend.from_config(cfg, clock=clock)
    if kind == "swarm":
        from agent.backends.docker_swarm import SwarmBackend

        return SwarmBackend.from_config(cfg, clock=clock)
    raise ConfigError([f"backend: kind {kind!r} is not available in this build"])


def uses_haproxy(cfg: WardenConfig) -> bool:
    """``balancer.kind`` resolved: auto means HAProxy when installed, for the process backend."""
    kind = cfg.balancer.kind
    if kind == "auto":
        return cfg.backend.kind == "process" and HaproxyProcess.available()
    return kind == "haproxy"


def make_rollouts(cfg: WardenConfig, agent: Agent, canaries: Sequence[Canary]) -> Rollouts:
    """Staged rollouts, with HAProxy started (or adopted) when the config uses it."""
    balancer = None
    if uses_haproxy(cfg):
        if cfg.backend.kind == "swarm":
            raise ConfigError(
                ["balancer: kind haproxy is wired for the process and docker backends; on swarm "
                 "use kind replicas (docs/rollout.md, \"Swarm: split by replicas\")"]
            )  # fmt: skip
        lb = cfg.balancer
        process = HaproxyProcess(
            directory=lb.directory or cfg.state_dir / "haproxy",
            bind=lb.bind or f"{cfg.backend.host}:{cfg.backend.port}",
            slots=lb.slots,
            external=lb.external,  # docker-compose.yml's haproxy service (docs/docker.md)
        )
        balancer = HaproxyBalancer(process)
        try:
            balancer.start()
        except BackendError as exc:
            raise ConfigError([f"balancer: {exc}"]) from exc
    r = cfg.rollout
    settings = RolloutSettings(
        steps=r.steps,
        step_duration_s=r.step_duration_s,
        start_timeout_s=r.start_timeout_s,
        drain_timeout_s=r.drain_timeout_s,
        load_test_requests=r.load_test_requests,
        load_test_concurrency=r.load_test_concurrency,
        max_replicas=cfg.backend.max_replicas,
        limits=Limits(
            max_p95_ratio=r.max_p95_ratio,
            min_p95_delta_ms=r.min_p95_delta_ms,
            min_requests=r.min_requests,
            max_error_delta=r.max_error_delta,
            error_alpha=r.error_alpha,
        ),
    )
    texts = [c.input for c in canaries]
    return Rollouts(
        service=cfg.service,
        store=RolloutStore(agent.store.load_kv, agent.store.save_kv),
        balancer=balancer,
        settings=settings,
        hooks=agent.rollout_hooks(lambda: texts, weights_sha256),
        by_replicas=cfg.splits_by_replicas(),
    )


def weights_sha256(url: str) -> str:
    """The ``weights_sha256`` a replica reports in ``/version`` ("" when it does not say)."""
    try:
        body = httpx.get(url.rstrip("/") + "/version", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return ""
    value = body.get("weights_sha256") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def settings_from(cfg: WardenConfig) -> AgentSettings:
    p = cfg.policy
    return AgentSettings(
        service=cfg.service,
        initial_release=cfg.initial_release(),
        replicas=cfg.backend.replicas,
        interval_s=cfg.probe.interval_s,
        fast_interval_s=min(0.25, cfg.probe.interval_s),
        verify_timeout_s=p.verify_timeout_s,
        bake_s=p.bake_s,
        policy=PolicyConfig(
            cooldown_s=p.cooldown_s,
            actions_per_hour=p.actions_per_hour,
            crash_loop_backoff_initial_s=p.crash_loop_backoff_initial_s,
            crash_loop_backoff_max_s=p.crash_loop_backoff_max_s,
            restart_window_s=p.restart_window_s,
            max_replicas=cfg.backend.max_replicas,
            dry_run=p.dry_run,
        ),
    )


def build_agent(
    cfg: WardenConfig,
    *,
    clock: Clock | None = None,
    backend: Backend | None = None,
    client: httpx.Client | None = None,
    trace_path: Path | None = None,
) -> Agent:
    """An ``Agent`` from ``cfg`` with real parts unless some are given (tests)."""
    clock = clock or SystemClock()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    backend = backend or make_backend(cfg, clock)
    canaries = load_canaries(cfg.canaries)
    client = client or httpx.Client(timeout=cfg.probe.timeout_s)
    observer = Observer(
        backend=backend,
        client=client,
        canaries=lambda: canaries,
        timeout_s=cfg.probe.timeout_s,
        canary_interval_s=cfg.probe.canary_interval_s,
        restart_window_s=cfg.policy.restart_window_s,
        startup_grace_s=cfg.probe.startup_grace_s,
    )
    watcher = RuleWatcher(cfg.rules)
    if watcher.rules.rules == () and not watcher.poll().ok:
        raise ConfigError(watcher.poll().problems)
    agent = Agent(
        settings=settings_from(cfg),
        clock=clock,
        backend=backend,
        observer=observer,
        store=StateStore(cfg.state_dir),
        audit=AuditLog(cfg.state_dir),
        rules=watcher,
        metrics=AgentMetrics(),
        receivers=alerting.receivers_from_config(cfg.alerts, generator_url=status_url(cfg)),
        trace=TraceRecorder(trace_path) if trace_path else None,
        decay=decay_monitor(cfg),
        drift=drift_monitor(cfg, client),
    )
    agent.rollouts = make_rollouts(cfg, agent, canaries)
    return agent


def decay_monitor(cfg: WardenConfig) -> DecayMonitor | None:
    """Accuracy decay detection as ``decay:`` configures it (None when disabled)."""
    d = cfg.decay
    if not d.enabled:
        return None
    settings = DecaySettings(
        alpha=d.alpha,
        baseline_runs=d.baseline_runs,
        min_confidence_drop=d.min_confidence_drop,
        min_accuracy_drop=d.min_accuracy_drop,
        feedback_window=d.feedback_window,
        feedback_min_samples=d.feedback_min_samples,
    )
    feedback = FeedbackStore(cfg.state_dir, window=d.feedback_window)
    return DecayMonitor(settings=settings, state_dir=cfg.state_dir, feedback=feedback)


def drift_monitor(cfg: WardenConfig, client: httpx.Client) -> DriftMonitor | None:
    """Drift detection as ``drift:`` configures it (None when disabled); alibi only if asked."""
    d = cfg.drift
    if not d.enabled:
        return None
    try:
        engine = drift_engine(d.engine)
        reference = reference_from_file(d.reference_file) if d.reference_file else None
    except WardenError as exc:
        raise ConfigError([f"drift: {exc}"]) from exc
    detector = DetectorSettings(
        alpha=d.alpha, correction=d.correction, min_statistic=d.min_statistic, test=d.test
    )
    settings = MonitorSettings(
        window=d.window,
        min_window=d.min_window,
        max_age_s=d.max_age_s,
        consecutive=d.consecutive,
        reference_size=d.reference_size,
        min_reference=d.min_reference,
        deploy_windows=d.deploy_windows,
        detector=detector,
    )
    store = ReferenceStore(cfg.state_dir / "drift")
    return DriftMonitor(
        client=client, store=store, settings=settings, engine=engine, reference_file=reference
    )


def status_url(cfg: WardenConfig) -> str:
    """The agent's ``/api/status`` URL as others reach it (alerts link back to it)."""
    host = cfg.api.host
    if host in ("0.0.0.0", "::"):  # noqa: S104 (reading the bind, not binding)
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.api.port}/api/status"


def resolve_token(cfg: WardenConfig, *, create: bool) -> str | None:
    """The API token: ``$<token_env>``, else ``state_dir/api-token`` (created when asked)."""
    from_env = os.environ.get(cfg.api.token_env)
    if from_env:
        return from_env
    path = cfg.state_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip() or None
    if not create:
        return None
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def named_tokens(cfg: WardenConfig) -> dict[str, str]:
    """The secrets of ``api.tokens`` by name, from their variables or files. A token that is
    configured but has no secret stops the agent: running with less auth than asked is worse."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for i, t in enumerate(cfg.api.tokens):
        where = f"${t.env}" if t.env else str(t.file)
        try:
            secret = os.environ.get(t.env, "") if t.env else Path(str(t.file)).read_text()
        except OSError as exc:
            secret = ""
            where = f"{t.file} ({exc.strerror})"
        if secret.strip():
            found[t.name] = secret.strip()
        else:
            problems.append(f"api.tokens[{i}] ({t.name}): no secret in {where}")
    if problems:
        raise ConfigError(problems)
    return found


class Runtime:
    """Runs an ``Agent``: ticks, alert delivery and the API, until ``stop``."""

    def __init__(self, agent: Agent, cfg: WardenConfig, *, token: str | None) -> None:
        tokens = named_tokens(cfg)
        if not is_loopback(cfg.api.host) and token is None and not tokens:
            raise WardenError(
                f"refusing to serve the API on {cfg.api.bind} (not loopback) without a token; "
                f"set {cfg.api.token_env}"
            )
        self.agent = agent
        self.cfg = cfg
        self._wake = threading.Event()
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self.history = SignalHistory()  # the status page's charts: one point per 10 s, 1 h
        app = create_api(
            agent,
            token=token,
            tokens=tokens,
            read_open=cfg.api.read_open,
            history=self.history,
            token_hint=f"${cfg.api.token_env} or {cfg.state_dir / TOKEN_FILE}",
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=cfg.api.host,
                port=cfg.api.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http=guarded_http(cfg.api.request_timeout_s),
            )
        )
        self._api_thread = threading.Thread(target=self._server.run, name="warden-api", daemon=True)
        self._interval = agent.settings.interval_s
        self._http = httpx.Client()
        file_sd = cfg.prometheus.file_sd
        self._targets = TargetFile(file_sd, service=cfg.service) if file_sd else None

    def start(self) -> None:
        self.agent.backend.on_event(lambda _event: self.wake())
        self._api_thread.start()
        self._scheduler.add_job(
            self._run_tick,
            "interval",
            seconds=self._interval,
            id="tick",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(),
        )
        self._scheduler.add_job(
            self._deliver_alerts,
            "interval",
            seconds=1.0,
            id="alerts",
            max_instances=1,
            coalesce=True,
        )
        if isinstance(self.agent.drift, DriftMonitor):  # off the tick: a hung replica's
            self._scheduler.add_job(  # observations must not delay the probes that detect it
                self._poll_drift,
                "interval",
                seconds=self.cfg.drift.interval_s,
                id="drift",
                max_instances=1,
                coalesce=True,
            )
        self._scheduler.start()

    def _poll_drift(self) -> None:
        if not isinstance(self.agent.drift, DriftMonitor):
            return
        try:
            self.agent.drift.poll(self.agent.clock.now())
        except Exception:
            log.exception("drift poll failed; the next poll reads the observations again")

    def wake(self) -> None:
        """Run a tick now (an engine event arrived)."""
        self._wake.set()
        try:
            self._scheduler.modify_job("tick", next_run_time=datetime.now())
        except Exception as exc:  # noqa: BLE001 - a job that is running now is woken below
            log.debug("tick not rescheduled (%s); the running tick will run again", exc)

    def _run_tick(self) -> None:
        for _ in range(4):  # events that arrive during a tick get a tick right after it
            self._wake.clear()
            try:
                with self.agent.metrics.tick_duration.time():
                    report = self.agent.tick()
            except Exception:
                log.exception("tick failed; the next tick will observe and reconcile again")
                return
            self._retime(report.next_interval_s)
            self.history.record(self.agent.mem.last_observation)
            if self._targets is not None:  # Prometheus file_sd: scrape what runs now
                try:
                    self._targets.update(self.agent.backend.list_replicas())
                except BackendError as exc:  # engine down: the tick said so; keep the file
                    log.debug("file_sd not updated: %s", exc)
            if not self._wake.is_set():
                return

    def _retime(self, interval: float) -> None:
        if interval != self._interval:
            self._interval = interval
            self._scheduler.reschedule_job("tick", trigger="interval", seconds=interval)

    def _deliver_alerts(self) -> None:
        store, now = self.agent.store, self.agent.clock.now()
        receivers = {r.name: r for r in self.agent.receivers}
        for item in store.due_alerts(now):
            receiver = receivers.get(item.receiver)
            if receiver is None:
                store.mark_alert_failed(
                    item.id,
                    now + alerting.MAX_BACKOFF_S,
                    f"receiver {item.receiver} is not configured",
                )
                continue
            error = alerting.deliver(
                self._http, receiver, alerting.alert_from_dict(item.payload), now
            )
            result = "failed" if error else "sent"
            self.agent.metrics.alerts_delivered.labels(receiver=receiver.name, result=result).inc()
            if error:
                log.warning(
                    "alert to %s failed (attempt %d): %s", receiver.name, item.attempts + 1, error
                )
                store.mark_alert_failed(item.id, now + alerting.backoff_s(item.attempts + 1), error)
            else:
                store.mark_alert_sent(item.id, now)

    def stop(self) -> None:
        """Stop ticking and serving; close the backend (the process backend stops replicas)."""
        self._scheduler.shutdown(wait=True)
        self._server.should_exit = True
        self._api_thread.join(timeout=5)
        self.agent.observer.close()
        self.agent.backend.close()
        if self.agent.rollouts is not None:
            self.agent.rollouts.close()
            if self.agent.rollouts.balancer is not None:
                self.agent.rollouts.balancer.close()
        if self.agent.decay is not None:
            self.agent.decay.feedback.close()
        self._http.close()
