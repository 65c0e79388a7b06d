"""Docker recovery benchmark: how fast Warden's Docker backend heals a crash, a hang and a bad
release, side by side with what a user has today, in one run on one engine.

Scenarios (each round runs all six, one after the other; median over the rounds):

- crash, Warden: ``kill -9`` of the server process from the host (pid from ``docker inspect``);
  detected = ``ts`` of the agent's restart decision; ready again = first 200 from ``/ready`` of
  the replacement container (polled every 20 ms).
- crash, baseline: the same container with ``--restart on-failure`` and no agent; detected = the
  container's new ``State.StartedAt`` (Docker restarts at once); ready again as above.
- hang, Warden: ``kill -STOP`` of the server process (``docker pause`` would stop Docker's own
  health monitor, so the baseline could never see it); detected = the restart decision.
- hang, baseline: the image's HEALTHCHECK (5 s / 2 s / 3 retries) plus an autoheal-style
  restarter that polls ``health=unhealthy`` every 5 s and ``docker restart``s (10 s stop timeout,
  autoheal's default); detected = when the restarter saw it unhealthy.
- bad release, Warden: ``warden deploy`` of a fresh tag of ``warden-inference:bad`` (canaries
  fail); reverted-and-ready = first 200 from ``/ready`` of a ``good`` container after the
  rollback, measured from when its canaries first failed: the first ``/api/status`` showing the
  bad replica's canary accuracy below 1 (polled every 20 ms), or the rollback decision when that
  came first (the decay test can revert on the first canary run's lower confidences before any
  answer is wrong); detected = the rollback decision, from that same moment.
- bad release, baseline: a person replaces ``good`` with ``bad`` (``docker rm -f`` + ``docker
  run``); an alert fires at the first failing canary check (the same golden set, checked every
  2 s like Warden does while a release bakes, without Warden's 10 s ``for``), and the person runs
  the old tag again at once: "alert + 0 s reaction", the best case for a human.

Model load time = a baseline's cold ``docker run`` → ``/ready`` (every crash-baseline round).
Warden runs with its shipped healing rules and default probe settings (1 s interval, 0.5 s
timeout); bake 5 s instead of 5 min, a crash-loop window of 1 s so back-to-back faults do not
back off, and a verify timeout of 240 s so a model load slowed by a busy machine is waited for
instead of escalated (none of these changes how fast a fault is seen).

Writes the "Docker recovery" section of docs/benchmarks.md (between its markers).
Run: ``bash scripts/bench-docker.sh`` (``--runs N``, ``--budget-min M``, ``--no-write``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.canaries import load_canaries  # noqa: E402
from agent.probes import run_canaries  # noqa: E402
from tests.bench.bench_agent import code_version, loadavg  # noqa: E402
from tests.bench.bench_server import cpu_model  # noqa: E402
from tests.bench.docs_section import write_marked_section  # noqa: E402
from tests.docker.conftest import engine_env  # noqa: E402
from tests.integration.agent_harness import RunningAgent, healing_rules, running_agent  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
HEADING = "## Docker recovery"
START, END = "<!-- bench-docker:start -->", "<!-- bench-docker:end -->"
LABEL = {"warden.test": "bench-docker"}
BASELINE_LABEL = {**LABEL, "bench.role": "baseline"}
AUTOHEAL_LABEL = "autoheal"  # like willfarrell/autoheal's AUTOHEAL_CONTAINER_LABEL
CANARIES = load_canaries(REPO / "rules" / "canaries.yaml")
TIMEOUT_S = 240.0
POLL_S = 0.02
AUTOHEAL_POLL_S = 5.0
AUTOHEAL_STOP_TIMEOUT_S = 10
BASELINE_CANARY_S = 2.0
SCENARIOS = (
    "crash/warden",
    "crash/baseline",
    "hang/warden",
    "hang/baseline",
    "bad/warden",
    "bad/baseline",
)


@dataclass(frozen=True, slots=True)
class Result:
    detect_s: float
    ready_s: float  # crash, hang: from the fault; bad: from the first failing canary


@dataclass(slots=True)
class Results:
    by_scenario: dict[str, list[Result]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def add(self, scenario: str, result: Result) -> None:
        self.by_scenario.setdefault(scenario, []).append(result)
        print(f"  {scenario}: detect {result.detect_s:.2f} s, ready {result.ready_s:.2f} s")


# --- small engine helpers ------------------------------------------------------------------------


def until(what: str, check: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def url_of(container: Any) -> str | None:
    container.reload()
    bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get("8000/tcp")
    return f"http://127.0.0.1:{bindings[0]['HostPort']}" if bindings else None


def host_pid(client: Any, container_id: str) -> int:
    pid = int(client.api.inspect_container(container_id)["State"]["Pid"])
    assert pid, f"{container_id} has no process"
    return pid


def started_at(client: Any, container_id: str) -> float:
    """``State.StartedAt`` (RFC 3339 with nanoseconds, UTC) as seconds since the epoch."""
    text = client.api.inspect_container(container_id)["State"]["StartedAt"]
    head, _, rest = text.rstrip("Z").partition(".")
    start = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return start.timestamp() + float(f"0.{rest[:6] or 0}")


def run_container(
    client: Any, image: str, network: str, labels: dict[str, str] | None = None, **kwargs: Any
) -> tuple[Any, str, float]:
    """``docker run`` a server; returns (container, url, seconds to ready)."""
    t0 = time.monotonic()
    container = client.containers.run(
        image,
        detach=True,
        name=f"bench-docker-{uuid.uuid4().hex[:8]}",
        labels={**BASELINE_LABEL, **(labels or {})},
        network=network,
        ports={"8000/tcp": ("127.0.0.1", None)},
        **kwargs,
    )
    url = until("a published port", lambda: url_of(container), 30)
    until(f"{image} ready", lambda: ready(url))
    return container, url, time.monotonic() - t0


# --- Warden ----------------------------------------------------------------------------------


def audit_ts(agent: RunningAgent, action: str, after: float) -> float | None:
    times = [
        r["ts"]
        for r in agent.audit()
        if r["kind"] == "decision" and r["action"] == action and r["ts"] >= after
    ]
    return min(times) if times else None


def new_ready_replica(agent: RunningAgent, old: str, release: str = "good") -> float:
    """Wall time of the first 200 from ``/ready`` of a container other than ``old``."""

    def replacement() -> str | None:
        doc = agent.try_status()
        for r in doc["replicas"] if doc else ():
            if r["container_id"] not in (None, old) and r["release"] == release and r["url"]:
                return str(r["url"])
        return None

    url = until("the replacement container", replacement)
    until("the replacement ready", lambda: ready(url))
    return time.time()


def warden_fault(agent: RunningAgent, client: Any, sig: signal.Signals) -> Result:
    agent.wait_serving("good", timeout=TIMEOUT_S)
    old = agent.status()["replicas"][0]["container_id"]
    pid = host_pid(client, old)
    t0 = time.time()
    os.kill(pid, sig)
    ready_at = new_ready_replica(agent, old)
    detected = until("the restart decision", lambda: audit_ts(agent, "restart", t0), 10)
    return Result(detect_s=detected - t0, ready_s=ready_at - t0)


def warden_bad(agent: RunningAgent, round_no: int) -> Result:
    agent.wait(lambda s: s["last_good_release"] == "good", "good promoted", TIMEOUT_S)
    agent.wait_serving("good", timeout=TIMEOUT_S)
    old = agent.status()["replicas"][0]["container_id"]
    t0 = time.time()
    tag = f"bad-{os.getpid()}-{round_no}"
    response = agent.post("/api/deploy", {"tag": tag, "image": "warden-inference:bad"})
    assert response.status_code == 202, response.text
    first_fail: list[float] = []
    deployed: list[bool] = []  # the bad tag was current once: "good" again is the revert

    def reverting_after_a_canary_failure() -> bool:
        doc = agent.try_status()
        if doc is None:
            return False
        failing = any(
            r["release"] == tag and r["canary_accuracy"] is not None and r["canary_accuracy"] < 1
            for r in doc["replicas"]
        )
        if failing and not first_fail:
            first_fail.append(time.time())
        if doc["current_release"] == tag:
            deployed.append(True)
        return bool(deployed) and doc["current_release"] == "good"

    until("the revert", reverting_after_a_canary_failure)
    ready_at = new_ready_replica(agent, old)
    detected = until("the rollback decision", lambda: audit_ts(agent, "rollback", t0), 10)
    failed_at = min([detected, *first_fail])  # a decision before any wrong answer: decay
    return Result(detect_s=detected - failed_at, ready_s=ready_at - failed_at)


@contextmanager
def warden(root: Path, network: str, project: str) -> Iterator[RunningAgent]:
    extra = {
        "project": project,
        "backend": {
            "kind": "docker",
            "image": "warden-inference",
            "port": 8000,  # unused by Docker (each replica gets a random loopback port)
            "network": network,
            "reach": "published",
            "labels": LABEL,
        },
        "release": {"tag": "good"},
        "probe": {"interval": "1s", "timeout": "500ms", "canary_interval": "10s"},
        "policy": {
            "bake": "5s",
            "restart_window": "1s",
            "actions_per_hour": 1000,
            "verify_timeout": f"{TIMEOUT_S:.0f}s",
        },
    }
    with running_agent(root, rules=healing_rules(root), extra=extra) as agent:
        yield agent


# --- baselines -------------------------------------------------------------------------------


def baseline_crash(client: Any, network: str, results: Results) -> Result:
    container, url, load_s = run_container(
        client, "warden-inference:good", network, restart_policy={"Name": "on-failure"}
    )
    results.loads.append(load_s)
    try:
        t0 = time.time()
        os.kill(host_pid(client, container.id), signal.SIGKILL)
        restarted = until("the on-failure restart", lambda: started_at(client, container.id) > t0)
        assert restarted
        detected = started_at(client, container.id)
        url = until("the published port", lambda: url_of(container), 30)
        until("ready after the restart", lambda: ready(url))
        return Result(detect_s=detected - t0, ready_s=time.time() - t0)
    finally:
        container.remove(force=True)


class Autoheal:
    """What willfarrell/autoheal does: every 5 s, ``docker restart`` unhealthy containers."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(AUTOHEAL_POLL_S):
            for c in self.client.containers.list(
                ignore_removed=True,
                filters={"health": "unhealthy", "label": f"{AUTOHEAL_LABEL}=true"},
            ):
                self.seen.setdefault(c.id, time.time())
                try:
                    c.restart(timeout=AUTOHEAL_STOP_TIMEOUT_S)
                except docker.errors.APIError as exc:  # removed meanwhile: like autoheal, go on
                    print(f"autoheal: {c.name}: {exc}", flush=True)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def baseline_hang(client: Any, network: str, autoheal: Autoheal) -> Result:
    container, url, _ = run_container(
        client, "warden-inference:good", network, labels={AUTOHEAL_LABEL: "true"}
    )
    try:
        # the HEALTHCHECK's start period (30 s) must be over, or failures do not count
        until("healthy", lambda: _health(container) == "healthy", 90)
        t0 = time.time()
        os.kill(host_pid(client, container.id), signal.SIGSTOP)
        until("the autoheal restart", lambda: container.id in autoheal.seen)
        detected = autoheal.seen[container.id]
        until("restarted", lambda: started_at(client, container.id) > t0)
        url = until("the published port", lambda: url_of(container), 30)
        until("ready after the restart", lambda: ready(url))
        return Result(detect_s=detected - t0, ready_s=time.time() - t0)
    finally:
        container.remove(force=True)


def _health(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


def baseline_bad(client: Any, network: str) -> Result:
    # The person's deploy has put `bad` in place of `good` (what came before is not measured).
    bad, url, _ = run_container(client, "warden-inference:bad", network)
    try:
        with httpx.Client() as http:
            while run_canaries(http, url, CANARIES, 4.0).failures == 0:
                time.sleep(BASELINE_CANARY_S)
        alert_at = time.time()  # the first failing check: alert, and the person reacts at once
        bad.remove(force=True)
        again, _, _ = run_container(client, "warden-inference:good", network)
        ready_at = time.time()
        again.remove(force=True)
        return Result(detect_s=0.0, ready_s=ready_at - alert_at)
    finally:
        with suppress(docker.errors.NotFound):
            bad.remove(force=True)


# --- report ----------------------------------------------------------------------------------


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s" if values else "n/a"


def report(results: Results, info: dict[str, str], rounds: int, minutes: float) -> str:
    rows = []
    labels = {
        "crash": "crash (`kill -9`)",
        "hang": "hang (`kill -STOP`)",
        "bad": "bad release (canaries fail)",
    }
    baselines = {
        "crash": "`--restart on-failure`",
        "hang": "HEALTHCHECK 5s/2s/3 + autoheal (5 s poll)",
        "bad": "alert + person runs old tag (0 s reaction)",
    }
    for fault in ("crash", "hang", "bad"):
        w = results.by_scenario.get(f"{fault}/warden", [])
        b = results.by_scenario.get(f"{fault}/baseline", [])
        rows.append(
            f"| {labels[fault]} | {median([r.detect_s for r in w])} | "
            f"{median([r.ready_s for r in w])} | {baselines[fault]} | "
            f"{median([r.detect_s for r in b]) if fault != 'bad' else '(alert)'} | "
            f"{median([r.ready_s for r in b])} | {len(w)} / {len(b)} |"
        )
    load = statistics.median(results.loads) if results.loads else float("nan")
    w = results.by_scenario
    crash_detect = _med(w, "crash/warden", "detect_s")
    hang_detect = _med(w, "hang/warden", "detect_s")
    crash_ready = _med(w, "crash/warden", "ready_s")
    bad_ready = _med(w, "bad/warden", "ready_s")
    targets = [
        ("crash detected < 1 s", crash_detect, crash_detect < 1.0),
        ("hang detected < 5 s", hang_detect, hang_detect < 5.0),
        (
            f"crash: ready again within model load ({load:.1f} s) + 2 s",
            crash_ready,
            crash_ready < load + 2.0,
        ),
        ("bad release reverted and ready < 15 s after canaries fail", bad_ready, bad_ready < 15.0),
    ]
    target_lines = "\n".join(
        f"| {name} | {value:.2f} s | {'met' if ok else '**NOT met**'} |"
        for name, value, ok in targets
    )
    return f"""{START}
Measured {info["date"]} on {info["nproc"]} CPUs ({info["cpu"]}), Docker {info["engine"]},
code {info["code"]}; load average {info["load_start"]} at the start, {info["load_end"]} at the
end (the machine was shared with other test runs: absolute figures are noisy, the comparison
within a round is fair). {rounds} round(s) in {minutes:.1f} min; medians.

Command: `bash scripts/bench-docker.sh {info["args"]}` (`tests/bench/bench_docker_recovery.py`;
its docstring defines every measurement).

{TABLE_HEAD}
{chr(10).join(rows)}

"Ready again" counts from the fault (crash, hang) or from the first failing canary (bad release;
Warden: the first status showing a failed canary, baseline: the first failing check, every 2 s).
Model load time (cold `docker run` → `/ready`, median of the crash baseline's starts):
**{load:.1f} s**.

| target | measured (median) | |
|---|---|---|
{target_lines}

The bad release's time is the shipped `candidate-canary-failing` rule's `for: 2s` (a release that
is still baking and answers a golden-set item wrongly in one canary run that the next run, 2 s
later, does not clear; Warden's "detected"), then stopping the bad container and a cold start of
`good` (a model load: most of the figure); a proven release keeps `canary-failing`'s `for: 10s`.
The baseline's figure is a best case that assumes a person who acts the instant the first check
fails.
{END}"""


TABLE_HEAD = (
    "| fault | Warden detected | Warden ready again | baseline | baseline detected "
    "| baseline ready again | runs W / B |\n|---|---|---|---|---|---|---|"
)


def _med(by: dict[str, list[Result]], key: str, attr: str) -> float:
    values = [getattr(r, attr) for r in by.get(key, [])]
    return statistics.median(values) if values else float("nan")


def write_section(text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (append it the first time)."""
    write_marked_section(HEADING, START, END, text, DOCS)


# --- main ------------------------------------------------------------------------------------


def run_rounds(
    args: argparse.Namespace, client: Any, agent: RunningAgent, network: str
) -> tuple[int, Results]:
    results, started = Results(), time.monotonic()
    autoheal = Autoheal(client)
    rounds = 0
    try:
        for round_no in range(1, args.runs + 1):
            elapsed = time.monotonic() - started
            if rounds and elapsed * (rounds + 1) / rounds > args.budget_min * 60:
                print(f"stopping after {rounds} round(s): another would pass the budget")
                break
            print(f"round {round_no} (load {loadavg()})", flush=True)
            results.add("crash/warden", warden_fault(agent, client, signal.SIGKILL))
            results.add("crash/baseline", baseline_crash(client, network, results))
            results.add("hang/warden", warden_fault(agent, client, signal.SIGSTOP))
            results.add("hang/baseline", baseline_hang(client, network, autoheal))
            results.add("bad/warden", warden_bad(agent, round_no))
            results.add("bad/baseline", baseline_bad(client, network))
            rounds += 1
    finally:
        autoheal.close()
    return rounds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget-min", type=float, default=9.0, help="stop rounds after this")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    # SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so containers and the agent are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = engine_env()
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], version="1.41", timeout=120)
    project = f"bench-{uuid.uuid4().hex[:6]}"
    network = f"bench-docker-{project}"
    client.networks.create(network, driver="bridge", labels=LABEL)
    started = time.monotonic()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "engine": str(client.version()["Version"]),
        "code": code_version(),
        "load_start": loadavg(),
        "args": " ".join(sys.argv[1:]),
    }
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp,
            warden(Path(tmp), network, project) as agent,
        ):
            rounds, results = run_rounds(args, client, agent, network)
    finally:
        for c in client.containers.list(
            ignore_removed=True, all=True, filters={"label": "warden.test=bench-docker"}
        ):
            c.remove(force=True)
        client.networks.get(network).remove()
    info["load_end"] = loadavg()
    text = report(results, info, rounds, (time.monotonic() - started) / 60)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the '{HEADING[3:]}' section of {DOCS}")


if __name__ == "__main__":
    main()
