"""Fixtures for the observability tests: real Prometheus, Alertmanager, agent and model server.

- ``obs_tools`` (session) - paths of ``prometheus``, ``promtool`` and ``prometheus-alertmanager``.
  Missing binaries FAIL the test under CI (env ``CI`` set) and skip it on a developer laptop
  (install them with ``scripts/observability.sh``).
- ``obs_stack`` (session) - the whole thing, run once for every observability test:
  a real Alertmanager (webhook receiver: a loopback ``Sink``), a real Prometheus (1 s scrape) whose
  inference targets come only from the agent's file_sd file, a real ``warden agent`` (process
  backend, one replica of the packaged model) with five alert receivers, 200 ``/predict``
  requests, then ``kill -9`` of the replica so the agent restarts it. Every wait is a poll with a
  deadline; every process is stopped at teardown, whatever happened.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import REPO_ROOT, START_TIMEOUT_S, free_port
from tests.integration.obs_support import (
    MARKER,
    Proc,
    Sink,
    alive,
    answers,
    get_json,
    kill_marked,
    prometheus_query,
    prometheus_range,
    spawn,
    stop,
)
from tests.integration.polling import wait_until

OBS_BINARIES = ("prometheus", "promtool", "prometheus-alertmanager")
PROMETHEUS_DIR = REPO_ROOT / "prometheus"
WEBHOOK_SECRET = "obs-test-secret"  # the HMAC key of the signed webhook receiver
RELEASE = "v-obs"
LOAD_REQUESTS = 200
RESTARTED_RULE = """\
rules:
  - name: restarted-recently
    when: restarts_recent >= 1
    severity: info
    actions: [alert]
"""
# Small drift windows so the 200 requests give a reference and a few tested windows: the drift
# panels and signals must have data (docs/drift.md has the real defaults and why).
DRIFT_SMALL_WINDOWS = {"window": 40, "min_window": 20, "reference_size": 80, "min_reference": 80,
                       "interval": "1s"}  # fmt: skip
TEXTS = (
    "I was charged twice this month",
    "The app crashes when I open it",
    "Please add dark mode",
    "I cannot log in to my account",
    "Refund my last payment please",
    "The website is very slow today",
    "Great product, thank you",
    "My password reset email never arrives",
)


# --- binaries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObsTools:
    prometheus: str
    promtool: str
    alertmanager: str


def require_binaries(names: tuple[str, ...] = OBS_BINARIES) -> dict[str, str]:
    """Paths of ``names``; under CI a missing one fails the test, elsewhere it skips it."""
    found = {name: shutil.which(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        message = (
            f"{', '.join(missing)} not installed; run `sudo bash scripts/observability.sh` "
            "(Debian packages prometheus and prometheus-alertmanager)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    return {name: str(path) for name, path in found.items()}


@pytest.fixture(scope="session")
def obs_tools() -> ObsTools:
    """The Prometheus binaries (fail under CI when missing, skip on a laptop)."""
    paths = require_binaries()
    return ObsTools(
        prometheus=paths["prometheus"],
        promtool=paths["promtool"],
        alertmanager=paths["prometheus-alertmanager"],
    )


def prometheus_config_for_test(
    *, targets_file: Path, agent_address: str, prometheus_address: str
) -> dict[str, Any]:
    """prometheus/prometheus.yml with this test's addresses and a 1 s scrape/evaluation."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(
        {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    )
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    config.pop("alerting", None)  # the agent's own alerts are under test, not Prometheus'
    for job in config["scrape_configs"]:
        if job["job_name"] == "inference":
            job["file_sd_configs"][0]["files"] = [str(targets_file)]
        elif job["job_name"] == "warden-agent":
            job["static_configs"][0]["targets"] = [agent_address]
        elif job["job_name"] == "prometheus":
            job["static_configs"][0]["targets"] = [prometheus_address]
    return config


# --- the stack ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ObsStack:
    """Everything ``obs_stack`` started, and what happened to it."""

    tools: ObsTools
    work: Path
    prometheus_url: str
    alertmanager_url: str
    agent_url: str
    replica_url: str
    targets_file: Path
    prometheus_config: Path
    am_sink: Sink  # Alertmanager's webhook receiver (path /alertmanager)
    hook_sink: Sink  # the agent's signed webhook (/hook) and Slack (/slack) receivers
    flaky_sink: Sink  # answers 500 twice, then 200 (/flaky)
    late_sink: Sink  # not listening when the alert fired; started after a failed delivery
    late_failures_before_up: int
    started_at: float  # Prometheus started (range queries start here)
    killed_pid: int
    killed_at: float
    procs: dict[str, Proc] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        return prometheus_query(self.prometheus_url, expr)

    def query_range(self, expr: str, step: float = 1.0) -> list[dict[str, Any]]:
        """``expr`` over the whole test, on a step grid that ends exactly now (as Grafana's does).

        A grid anchored at ``started_at`` ends up to one step before now and misses a series
        younger than a step, one the instant query sees: e.g. the counter born in the fault the
        fixture has just waited for.
        """
        end = time.time()
        start = end - math.ceil((end - self.started_at) / step) * step
        return prometheus_range(self.prometheus_url, expr, start, end, step)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.logs()}" for p in self.procs.values())


def _write_agent_config(
    work: Path,
    *,
    base_port: int,
    api_port: int,
    am_url: str,
    hook: Sink,
    flaky: Sink,
    late_port: int,
    targets_file: Path,
) -> Path:
    rules = work / "rules"
    rules.mkdir()
    # Only the health rules: the test drives one fault (kill -9 -> replica-exited -> restart).
    shutil.copy(REPO_ROOT / "rules" / "health.yaml", rules / "health.yaml")
    # replica-exited resolves within a second of the restart; this rule keeps firing for the
    # restart window, so Prometheus' 1 s scrape surely sees a rule firing (the rule-state panels).
    (rules / "restarts.yaml").write_text(RESTARTED_RULE)
    config = {
        "service": "inference",
        "backend": {"kind": "process", "port": base_port, "replicas": 1},
        "release": {"tag": RELEASE},
        "probe": {"interval": "1s", "timeout": "2s", "canary_interval": "2s"},
        "canaries": str(REPO_ROOT / "rules" / "canaries.yaml"),
        "rules": str(rules),
        "state_dir": str(work / "state"),
        "api": {"bind": f"127.0.0.1:{api_port}"},
        "prometheus": {"file_sd": str(targets_file)},
        "policy": {"bake": "2s", "verify_timeout": "90s"},
        "drift": DRIFT_SMALL_WINDOWS,
        "alerts": [
            {"kind": "alertmanager", "url": am_url},  # alertmanager-1
            {"kind": "webhook", "url": f"{hook.url}/hook", "secret_env": "OBS_WEBHOOK_SECRET"},
            {"kind": "webhook", "url": f"http://127.0.0.1:{late_port}/late"},  # webhook-3
            {"kind": "webhook", "url": f"{flaky.url}/flaky"},  # webhook-4
            {"kind": "slack", "url": f"{hook.url}/slack"},  # slack-5
        ],
    }
    path = work / "warden.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _alertmanager_config(sink: Sink) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "sink",
            "group_by": ["alertname", "subject"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "sink",
                "webhook_configs": [{"url": f"{sink.url}/alertmanager", "send_resolved": True}],
            }
        ],
    }


def _warden_command() -> list[str]:
    script = Path(sys.executable).with_name("warden")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def _delivery_count(agent_url: str, receiver: str, result: str) -> float:
    text = httpx.get(f"{agent_url}/metrics", timeout=5.0).text
    prefix = f'warden_alerts_delivered_total{{receiver="{receiver}",result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def _send_load(replica_url: str, n: int) -> list[int]:
    """``n`` /predict requests from 16 threads (so the server batches); their status codes."""
    with httpx.Client(timeout=30.0) as client:

        def one(i: int) -> int:
            body = {"inputs": TEXTS[i % len(TEXTS)] + f" (#{i})"}
            return client.post(f"{replica_url}/predict", json=body).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, range(n)))


@pytest.fixture(scope="session")
def obs_stack(obs_tools: ObsTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObsStack]:
    """Alertmanager + Prometheus + agent + replica, under load, after one kill -9 (see module)."""
    work = tmp_path_factory.mktemp("obs")
    marker = str(work)
    with ExitStack() as stack:
        stack.callback(kill_marked, marker)
        procs: dict[str, Proc] = {}

        am_sink = Sink()
        hook_sink = Sink()
        flaky_sink = Sink(fail_first=2)
        stack.callback(am_sink.close)
        stack.callback(hook_sink.close)
        stack.callback(flaky_sink.close)
        late_port = free_port()

        # Alertmanager
        am_port = free_port()
        am_url = f"http://127.0.0.1:{am_port}"
        am_config = work / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(_alertmanager_config(am_sink)))
        (work / "am-data").mkdir()
        procs["alertmanager"] = am = spawn(
            "alertmanager",
            [
                obs_tools.alertmanager,
                f"--config.file={am_config}",
                f"--storage.path={work / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            work,
        )
        stack.callback(stop, am)

        # Prometheus: no inference target until the agent writes the file_sd file
        prom_port, api_port, base_port = free_port(), free_port(), free_port()
        prom_url = f"http://127.0.0.1:{prom_port}"
        agent_url = f"http://127.0.0.1:{api_port}"
        targets_file = work / "file_sd" / "inference.json"
        targets_file.parent.mkdir()
        targets_file.write_text("[]\n")
        prom_config = work / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                prometheus_config_for_test(
                    targets_file=targets_file,
                    agent_address=f"127.0.0.1:{api_port}",
                    prometheus_address=f"127.0.0.1:{prom_port}",
                ),
                sort_keys=False,
            )
        )
        started_at = time.time()
        procs["prometheus"] = prom = spawn(
            "prometheus",
            [
                obs_tools.prometheus,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={work / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            work,
        )
        stack.callback(stop, prom)

        # The agent, which starts the replica (python -m inference) itself
        agent_config = _write_agent_config(
            work,
            base_port=base_port,
            api_port=api_port,
            am_url=am_url,
            hook=hook_sink,
            flaky=flaky_sink,
            late_port=late_port,
            targets_file=targets_file,
        )
        procs["agent"] = agent = spawn(
            "agent",
            [*_warden_command(), "agent", "--config", str(agent_config)],
            work,
            env={
                "PYTHONPATH": str(REPO_ROOT),
                "OBS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                MARKER: marker,
            },
        )
        stack.callback(stop, agent)

        def logs() -> str:
            return "\n".join(f"--- {p.name} ---\n{p.logs()}" for p in procs.values())

        timeline = work / "timeline.txt"  # how long each phase took, for slow CI machines

        def mark(what: str) -> None:
            with timeline.open("a") as f:
                f.write(f"{time.time() - started_at:7.1f} s  {what}\n")

        wait_until(alive(am)(lambda: answers(f"{am_url}/-/ready")), timeout=30,
                   what="Alertmanager ready", logs=logs)  # fmt: skip
        wait_until(alive(prom)(lambda: answers(f"{prom_url}/-/ready")), timeout=30,
                   what="Prometheus ready", logs=logs)  # fmt: skip

        def status() -> dict[str, Any]:
            return dict(get_json(f"{agent_url}/api/status"))

        def replica_ready() -> bool:
            try:
                replicas = status()["replicas"]
            except httpx.HTTPError:
                return False
            return bool(replicas) and all(r["ready"] for r in replicas)

        mark("Alertmanager and Prometheus ready")
        wait_until(alive(agent)(replica_ready), timeout=START_TIMEOUT_S,
                   what="the agent's replica to be ready", logs=logs)  # fmt: skip
        mark("replica ready")
        wait_until(alive(agent)(lambda: status()["last_good_release"] == RELEASE), timeout=60,
                   what=f"{RELEASE} promoted good after its bake", logs=logs)  # fmt: skip

        def has(expr: str) -> Callable[[], bool]:
            return lambda: bool(prometheus_query(prom_url, expr))

        wait_until(has('up{job="inference",replica="inference-1"} == 1'), timeout=30,
                   what="Prometheus scraping the replica found through file_sd",
                   logs=logs)  # fmt: skip

        mark("release good, replica scraped")
        replica = status()["replicas"][0]
        codes = _send_load(replica["url"], LOAD_REQUESTS)
        assert codes == [200] * LOAD_REQUESTS, sorted(set(codes))
        scraped = 'sum(inference_requests_total{endpoint="/predict",status="200"})'
        wait_until(has(f"{scraped} >= {LOAD_REQUESTS}"), timeout=30,
                   what="Prometheus to scrape the load", logs=logs)  # fmt: skip
        # The reference is captured from the release's first observations. When one drift poll
        # reads the whole load, it closes (and skips: nothing to test against yet) every window
        # before the capture in that same poll, and no window is left to test. So: wait for the
        # reference to exist, then send two more windows, which are tested against it.
        reference = work / "state" / "drift" / f"reference-{RELEASE}.json"
        wait_until(reference.exists, timeout=60, what="the drift reference of the load",
                   logs=logs)  # fmt: skip
        more = 2 * int(DRIFT_SMALL_WINDOWS["window"])
        assert _send_load(replica["url"], more) == [200] * more
        wait_until(has('warden_signal{signal="drift_p_value"}'), timeout=60,
                   what="the drift monitor to test a window of the load", logs=logs)  # fmt: skip

        mark("load sent and scraped")
        # The fault: kill -9 the replica; the agent sees the exit and restarts it.
        killed_pid = int(replica["pid"])
        killed_at = time.time()
        os.kill(killed_pid, signal.SIGKILL)

        # The late receiver comes up only after a delivery to it failed.
        wait_until(alive(agent)(lambda: _delivery_count(agent_url, "webhook-3", "failed") >= 1),
                   timeout=30, what="a failed delivery to the receiver that is down",
                   logs=logs)  # fmt: skip
        late_failures = int(_delivery_count(agent_url, "webhook-3", "failed"))
        late_sink = Sink(late_port)
        stack.callback(late_sink.close)

        def restarted() -> bool:
            replicas = status()["replicas"]
            return bool(replicas) and all(r["ready"] and r["pid"] != killed_pid for r in replicas)

        mark("late receiver up")
        wait_until(alive(agent)(restarted), timeout=START_TIMEOUT_S,
                   what="the agent to restart the killed replica", logs=logs)  # fmt: skip
        mark("replica restarted and ready")
        recovered = (
            'warden_actions_total{action="restart",result="verified"}'
            " and on() (warden_time_to_recover_seconds_count > 0)"
            ' and on() (up{job="inference"} == 1)'
        )
        wait_until(has(recovered), timeout=60,
                   what="Prometheus to see the verified restart", logs=logs)  # fmt: skip

        mark("Prometheus saw the verified restart")
        yield ObsStack(
            tools=obs_tools,
            work=work,
            prometheus_url=prom_url,
            alertmanager_url=am_url,
            agent_url=agent_url,
            replica_url=str(replica["url"]),
            targets_file=targets_file,
            prometheus_config=prom_config,
            am_sink=am_sink,
            hook_sink=hook_sink,
            flaky_sink=flaky_sink,
            late_sink=late_sink,
            late_failures_before_up=late_failures,
            started_at=started_at,
            killed_pid=killed_pid,
            killed_at=killed_at,
            procs=procs,
        )
