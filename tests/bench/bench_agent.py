"""Agent benchmark: how fast Warden heals a crash and a hang, next to a liveness-probe baseline,
and what watching replicas costs the agent. All in one run, measured from outside.

1. Recovery. One agent (process backend, packaged model, shipped healing rules, default probe
   interval 1 s) and ``tests/bench/baseline_supervisor.py`` (``/health`` every 10 s, restart after
   3 failures: the Kubernetes liveness defaults) each run one model server. Each round injects a
   crash (``kill -9``) into the agent's replica and then into the baseline's server, or a hang
   (SIGSTOP) into both; rounds alternate crash/hang. For every fault, from the injection time t0:
   "detected" is the ``ts`` of the restart decision (the agent's ``audit.jsonl``, the baseline's
   event file; wall clock, so t0 is also taken with ``time.time()``); "ready again" is the first
   200 from the replica's ``/ready`` (polled every 20 ms) once the old process is gone. The
   baseline's fault lands at a stratified phase after one of its probes (0.5/n, 1.5/n, ... of the
   period), so its median is its expected value, not luck. The agent's fault is injected first,
   so it has normally healed before the baseline decides and the two model loads do not overlap
   (rounds where they did are counted and reported).
   Model load time: every baseline restart is a cold ``python -m inference`` start; its time
   from spawn to the first 200 from ``/ready`` is the load time "ready again" is judged by.
2. Idle cost. Everything starts at once; then, before the faults, for ``--idle-seconds``: CPU
   (user + system of the agent process only, not its replicas) and RSS of (a) the agent above
   with its one real replica, and agents watching (b) 1 and (c) 20 replicas of
   ``tests/integration/fake_server.py`` (a torch-free stand-in). Also whether torch is mapped
   into the agent process (``/proc/<pid>/maps``).

Then it prints a table and rewrites its own section of docs/benchmarks.md (between the
``bench-agent`` markers). Run: ``bash scripts/bench-agent.sh`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the integration harness: how tests start a real agent

from agent.collectors import parse_metrics  # noqa: E402
from tests.bench.bench_server import cpu_model  # noqa: E402
from tests.bench.docs_section import write_marked_section  # noqa: E402
from tests.integration.agent_harness import (  # noqa: E402
    RunningAgent,
    healing_rules,
    running_agent,
)
from tests.integration.conftest import free_port  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
HEADING = "## Agent recovery and overhead"
START, END = "<!-- bench-agent:start -->", "<!-- bench-agent:end -->"
FAKE_SERVER = REPO / "tests" / "integration" / "fake_server.py"
SUPERVISOR = REPO / "tests" / "bench" / "baseline_supervisor.py"
POLL_S = 0.02
FAULT_TIMEOUT_S = 180.0
BASELINE_PERIOD_S = 10.0
MIB = 1024 * 1024
# The agent's defaults (probe interval 1 s, timeout 0.5 s, canaries every 10 s), except two
# policy limits that would make back-to-back faults depend on each other: the crash-loop backoff
# (the 4th restart within 10 min waits 40 s) and the 10 actions per hour budget. Neither changes
# how fast a first fault is detected or restarted.
AGENT_PROBE = {"interval": "1s", "timeout": "500ms", "canary_interval": "10s"}
AGENT_POLICY = {"restart_window": "1s", "actions_per_hour": 1000}


# --- reading from outside --------------------------------------------------------------------


class JsonTail:
    """New JSON lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def ready_status(port: int, timeout: float = 0.25) -> int | None:
    """HTTP status of ``GET /ready`` on a fresh connection (cheap: the bench polls at 50 Hz)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(64).split(b" ", 2)
    except OSError:
        return None
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def torch_mapped(pid: int) -> bool:
    """Whether any torch library is mapped into the process (it imported torch)."""
    maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    return "libtorch" in maps or "/torch/" in maps


# --- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # "crash" (SIGKILL) or "hang" (SIGSTOP)
    pid: int
    t0_wall: float
    t0_mono: float


@dataclass(slots=True)
class Recovery:
    """One fault, seconds from its injection (None: did not happen before the deadline)."""

    supervisor: str  # "warden" or "baseline"
    fault: str
    t0_wall: float = 0.0  # when the fault was injected (time.time())
    detected_s: float | None = None  # restart decision's own timestamp
    recorded_s: float | None = None  # when the bench first saw the decision written
    started_s: float | None = None  # new server process started
    ready_s: float | None = None  # first 200 from /ready
    restarts: int = 0  # restart decisions for this one fault (more than 1: it restarted again)
    canary_wait: bool = False  # the agent's tick was stuck in a canary call that timed out

    @property
    def load_s(self) -> float | None:
        """Start of the new process to ready (a cold start of the server)."""
        if self.started_s is None or self.ready_s is None:
            return None
        return self.ready_s - self.started_s


def inject(kind: str, pid: int) -> Fault:
    sig = signal.SIGKILL if kind == "crash" else signal.SIGSTOP
    t0_mono, t0_wall = time.monotonic(), time.time()
    os.kill(pid, sig)
    return Fault(kind=kind, pid=pid, t0_wall=t0_wall, t0_mono=t0_mono)


def follow(
    fault: Fault,
    port: int,
    tail: JsonTail,
    recovery: Recovery,
    *,
    is_decision: Callable[[dict[str, Any]], bool],
    is_start: Callable[[dict[str, Any]], bool] = lambda _: False,
) -> Recovery:
    """Poll the decision log and ``/ready`` until the replica answers ready again."""
    deadline = fault.t0_mono + FAULT_TIMEOUT_S
    while time.monotonic() < deadline:
        for record in tail.new():
            recovery.restarts += is_decision(record)
            if recovery.detected_s is None and is_decision(record):
                recovery.detected_s = record["ts"] - fault.t0_wall
                recovery.recorded_s = time.monotonic() - fault.t0_mono
            elif (
                recovery.detected_s is not None and recovery.started_s is None and is_start(record)
            ):
                recovery.started_s = record["ts"] - fault.t0_wall
        if ready_status(port) == 200 and not alive(fault.pid):
            recovery.ready_s = time.monotonic() - fault.t0_mono
            return recovery
        time.sleep(POLL_S)  # the poll interval, not synchronisation
    print(f"  ! {recovery.supervisor} {fault.kind}: not ready {FAULT_TIMEOUT_S:g} s after it")
    return recovery


# --- the two supervisors -------------------------------------------------------------------


def _idle(status: dict[str, Any]) -> bool:
    replicas = status["replicas"]
    return (
        len(replicas) == status["desired_replicas"]
        and all(r["ready"] for r in replicas)
        and not status["in_flight"]
        and not status["firing"]
    )


def _is_restart(record: dict[str, Any]) -> bool:
    return record.get("kind") == "decision" and record.get("action") == "restart"


def agent_fault(agent: RunningAgent, kind: str) -> Recovery:
    """Inject ``kind`` into the agent's replica; follow it until ready again and settled."""
    (pid,) = agent.replica_pids()
    tail = JsonTail(agent.root / "state" / "audit.jsonl")
    fault = inject(kind, pid)
    recovery = follow(
        fault,
        agent.server_port,
        tail,
        Recovery(supervisor="warden", fault=kind, t0_wall=fault.t0_wall),
        is_decision=_is_restart,
    )
    status = agent.wait(_idle, "the restart to be verified and the rules resolved", 120)
    recovery.restarts += sum(_is_restart(r) for r in tail.new())
    if recovery.detected_s is not None:
        window = (fault.t0_wall, fault.t0_wall + recovery.detected_s + 1.0)
        recovery.canary_wait = any(window[0] <= t <= window[1] for t in unanswered_canaries(agent))
    started_at = status["replicas"][0]["started_at"]
    if started_at is not None and started_at > fault.t0_wall:
        recovery.started_s = started_at - fault.t0_wall
    return recovery


def unanswered_canaries(agent: RunningAgent) -> list[float]:
    """When the agent logged "canaries got no answer" (its log is in local time)."""
    found = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        if "canaries got no answer" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            found.append(stamp.timestamp())
    return found


@dataclass(slots=True)
class Baseline:
    """A running ``baseline_supervisor.py`` and what it reported."""

    port: int
    events: Path
    process: subprocess.Popen[bytes]
    pids: list[int] = field(default_factory=list)

    def starts(self) -> list[dict[str, Any]]:
        """The supervisor's "started" events, oldest first."""
        lines = self.events.read_text(encoding="utf-8").splitlines()
        return [r for r in map(json.loads, filter(None, lines)) if r["event"] == "started"]

    def server_pid(self) -> int:
        """The current server's pid (every pid seen is kept for cleanup)."""
        self.pids = [int(r["pid"]) for r in self.starts()]
        return self.pids[-1]


@contextmanager
def running_baseline(root: Path) -> Iterator[Baseline]:
    root.mkdir(parents=True, exist_ok=True)
    port, events = free_port(), root / "events.jsonl"
    events.touch()
    command = [sys.executable, str(SUPERVISOR), "--port", str(port), "--events", str(events)]
    command += ["--server-log", str(root / "server.log")]
    with (root / "supervisor.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    baseline = Baseline(port=port, events=events, process=process)
    try:
        yield baseline
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in baseline.pids:  # a server left behind (paused, or the supervisor was killed)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_cold_start(baseline: Baseline) -> float:
    """Wait for the baseline's first server; seconds from its start to the first ready."""
    deadline = time.monotonic() + FAULT_TIMEOUT_S
    while ready_status(baseline.port) != 200:
        if baseline.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the baseline server never became ready (see {baseline.events})")
        time.sleep(POLL_S)
    baseline.server_pid()
    return time.time() - float(baseline.starts()[-1]["ts"])


def baseline_fault(baseline: Baseline, kind: str, phase_s: float) -> Recovery:
    """Inject ``kind`` ``phase_s`` after the baseline's next probe; follow it until ready."""
    tail = JsonTail(baseline.events)
    probed_at = None
    while probed_at is None:
        probes = [r for r in tail.new() if r["event"] == "probe"]
        probed_at = probes[-1]["ts"] if probes else None
        time.sleep(POLL_S)
    time.sleep(max(0.0, probed_at + phase_s - time.time()))  # the fault's phase: by design
    fault = inject(kind, baseline.server_pid())
    recovery = follow(
        fault,
        baseline.port,
        tail,
        Recovery(supervisor="baseline", fault=kind, t0_wall=fault.t0_wall),
        is_decision=lambda r: r["event"] == "restart",
        is_start=lambda r: r["event"] == "started",
    )
    baseline.server_pid()  # remember the new pid for cleanup
    return recovery


def fault_rounds(agent: RunningAgent, baseline: Baseline, runs: int) -> list[Recovery]:
    """``runs`` crash and ``runs`` hang rounds, alternating; each hits the agent, then the
    baseline (at a stratified phase of its probe period)."""
    phases = [(i + 0.5) * BASELINE_PERIOD_S / runs for i in range(runs)]
    results: list[Recovery] = []
    for i in range(2 * runs):
        kind = "crash" if i % 2 == 0 else "hang"
        phase = phases[i // 2] if kind == "crash" else phases[-1 - i // 2]
        with ThreadPoolExecutor(max_workers=2) as pool:
            warden = pool.submit(agent_fault, agent, kind)
            base = pool.submit(baseline_fault, baseline, kind, phase)
            pair = [warden.result(), base.result()]
        results += pair
        print("  " + "  |  ".join(_one_line(r) for r in pair), flush=True)
    return results


def _one_line(r: Recovery) -> str:
    extra = f" ({r.restarts} restarts)" if r.restarts != 1 else ""
    return f"{r.supervisor} {r.fault}: detected {_s(r.detected_s)}, ready {_s(r.ready_s)}{extra}"


# --- idle cost ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleCost:
    label: str
    replicas: int
    cpu_percent: float
    rss_mib: float
    torch: bool
    seconds: float
    decisions: int  # restart/alert decisions while measuring (0: it really was idle)


def billing_canaries(path: Path) -> Path:
    """The shipped golden set with every answer "billing": what the fake server answers, so the
    agent runs as many canaries on it as on the real model and they pass."""
    data = yaml.safe_load((REPO / "rules" / "canaries.yaml").read_text())
    for item in data["canaries"]:
        item["expected"] = "billing"
    path.write_text(yaml.safe_dump(data))
    return path


def fake_agent_config(root: Path, replicas: int) -> dict[str, Any]:
    backend = {
        "kind": "process",
        "replicas": replicas,
        "max_replicas": replicas,
        "port": free_port(),
        "command": [sys.executable, str(FAKE_SERVER)],
    }
    canaries = billing_canaries(root / "canaries.yaml")
    return {
        "backend": backend,
        "canaries": str(canaries),
        "probe": AGENT_PROBE,
        "policy": AGENT_POLICY,
    }


def measure_idle(agents: dict[str, tuple[RunningAgent, int]], seconds: float) -> list[IdleCost]:
    """CPU % of one core and RSS of each agent process over the same ``seconds``."""
    for agent, _ in agents.values():
        agent.wait(_idle, "the agent to be idle", 120)
    procs = {label: psutil.Process(_pid(agent)) for label, (agent, _) in agents.items()}
    audits = {label: len(agent.audit()) for label, (agent, _) in agents.items()}
    before = {label: _cpu(p) for label, p in procs.items()}
    started = time.monotonic()
    print(f"measuring idle cost for {seconds:g} s", flush=True)
    time.sleep(seconds)  # the measurement window
    elapsed = time.monotonic() - started
    costs = []
    for label, (agent, replicas) in agents.items():
        busy = _cpu(procs[label]) - before[label]
        new = agent.audit()[audits[label] :]
        costs.append(
            IdleCost(
                label=label,
                replicas=replicas,
                cpu_percent=100 * busy / elapsed,
                rss_mib=procs[label].memory_info().rss / MIB,
                torch=torch_mapped(procs[label].pid),
                seconds=elapsed,
                decisions=sum(1 for r in new if r.get("kind") == "decision"),
            )
        )
    for c in costs:
        print(f"  {c.label}: {c.cpu_percent:.1f} % CPU, {c.rss_mib:.0f} MiB, torch={c.torch}")
    return costs


def _pid(agent: RunningAgent) -> int:
    assert agent.process is not None
    return agent.process.pid


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def metrics_parse_ms(port: int, repeat: int = 200) -> tuple[float, int]:
    """CPU ms of one ``parse_metrics`` of the real server's ``/metrics`` (the stand-in has none).

    CPU time, not wall time: on a loaded machine this process waits for a core too."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    text = data.split(b"\r\n\r\n", 1)[1].decode()
    started = time.process_time()
    for _ in range(repeat):
        parse_metrics(text)
    return 1000 * (time.process_time() - started) / repeat, len(text)


# --- report --------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def spread(values: list[float | None]) -> tuple[float, float, float] | None:
    """(min, median, max) of the measured values; None when there are none."""
    got = [v for v in values if v is not None]
    return (min(got), statistics.median(got), max(got)) if got else None


def fmt(stats: tuple[float, float, float] | None) -> str:
    if stats is None:
        return "—"
    low, median, high = stats
    return f"{low:.2f} / **{median:.2f}** / {high:.2f}"


@dataclass(frozen=True, slots=True)
class Results:
    machine: dict[str, str]
    command: str
    runs: list[Recovery]
    cold_loads: list[float]
    idle: list[IdleCost]
    parse_ms: float
    metrics_bytes: int
    minutes: float

    def overlaps(self) -> int:
        """Rounds where the baseline decided to restart before the agent's replica was ready
        again (their model loads overlapped)."""
        pairs = zip(self.runs[::2], self.runs[1::2], strict=True)
        return sum(_ends(w, "ready_s") > _ends(b, "detected_s") for w, b in pairs)

    def pick(self, supervisor: str, fault: str) -> list[Recovery]:
        return [r for r in self.runs if r.supervisor == supervisor and r.fault == fault]

    def median(self, supervisor: str, fault: str, what: str) -> float | None:
        stats = spread([getattr(r, what) for r in self.pick(supervisor, fault)])
        return None if stats is None else stats[1]


def _ends(r: Recovery, what: str) -> float:
    value = getattr(r, what)
    return r.t0_wall + (FAULT_TIMEOUT_S if value is None else value)


def recovery_table(res: Results) -> str:
    rows = [
        "| fault | supervisor | n | detected | new process | ready again | start → ready "
        "| restarts |",
        "|---" * 8 + "|",
    ]
    for fault in ("crash", "hang"):
        for who in ("warden", "baseline"):
            runs = res.pick(who, fault)
            rows.append(
                f"| {fault} | {who} | {len(runs)} | {fmt(spread([r.detected_s for r in runs]))} "
                f"| {fmt(spread([r.started_s for r in runs]))} "
                f"| {fmt(spread([r.ready_s for r in runs]))} "
                f"| {fmt(spread([r.load_s for r in runs]))} | {sum(r.restarts for r in runs)} |"
            )
    rows.append(
        f"| — | cold start `python -m inference` → `/ready` | {len(res.cold_loads)} | — | — "
        f"| — | {fmt(spread(list(res.cold_loads)))} | — |"
    )
    return "\n".join(rows)


def targets(res: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the agent issue."""
    load = statistics.median(res.cold_loads) if res.cold_loads else None
    crash_det = res.median("warden", "crash", "detected_s")
    hang_det = res.median("warden", "hang", "detected_s")
    crash_ready = res.median("warden", "crash", "ready_s")
    hang_ready = res.median("warden", "hang", "ready_s")
    hang_after = _minus(hang_ready, hang_det)

    def within(value: float | None, limit: float | None) -> bool | None:
        return None if value is None or limit is None else value <= limit

    budget = None if load is None else load + 1.0
    return [
        ("crash detected < 1 s", f"{_s(crash_det)} s", within(crash_det, 1.0)),
        ("hang detected < 3 s", f"{_s(hang_det)} s", within(hang_det, 3.0)),
        (
            "crash: ready again within model load + 1 s (from the fault)",
            f"{_s(crash_ready)} s vs {_s(load)} + 1 s",
            within(crash_ready, budget),
        ),
        (
            "hang: ready again within model load + 1 s (from the fault)",
            f"{_s(hang_ready)} s vs {_s(load)} + 1 s",
            within(hang_ready, budget),
        ),
        (
            "hang: ready again within model load + 1 s (from the decision)",
            f"{_s(hang_after)} s vs {_s(load)} + 1 s",
            within(hang_after, budget),
        ),
        *[
            (
                f"idle RSS < 150 MB ({c.label})",
                f"{c.rss_mib * MIB / 1e6:.0f} MB",
                c.rss_mib * MIB / 1e6 < 150,
            )
            for c in res.idle
        ],
        ("agent does not load torch", _torch_summary(res.idle), not any(c.torch for c in res.idle)),
    ]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _torch_summary(idle: list[IdleCost]) -> str:
    loaded = [c.label for c in idle if c.torch]
    return f"torch mapped in: {', '.join(loaded)}" if loaded else "no torch library mapped"


def idle_table(res: Results) -> str:
    rows = ["| agent watching | CPU % of one core | RSS MiB | torch mapped | decisions |"]
    rows.append("|---|---|---|---|---|")
    for c in res.idle:
        rows.append(
            f"| {c.label} | {c.cpu_percent:.1f} | {c.rss_mib:.0f} | "
            f"{'yes' if c.torch else 'no'} | {c.decisions} |"
        )
    return "\n".join(rows)


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**NOT met**")


def render(res: Results) -> str:
    m = res.machine
    lines = "\n".join(f"| {t} | {v} | {_met(ok)} |" for t, v, ok in targets(res))
    runs = len(res.pick("warden", "crash"))
    window = res.idle[0].seconds if res.idle else 0.0
    per_20 = 20 * res.parse_ms / 10  # ms per second at 1 Hz -> % of one core
    hangs = res.pick("warden", "hang")
    canary_waits = f"{sum(r.canary_wait for r in hangs)} of {len(hangs)}"
    return f"""{START}
Measured {m["date"]} on {m["nproc"]} CPUs ({m["cpu"]}), Python {m["python"]}; load average at
start {m["load_start"]}, at the end {m["load_end"]} (other jobs share this machine: compare rows
of one run, not runs). Took {res.minutes:.1f} minutes.

Command: `{res.command}` (runs `tests/bench/bench_agent.py`) on commit {m["code"]}.

### Time to detect and to be ready again

Seconds from the fault (min / **median** / max of {runs} runs each; crash = `kill -9` of the
server, hang = SIGSTOP). Warden: process backend, shipped healing rules, probe interval 1 s
(0.25 s while something fails), timeout 0.5 s. Baseline: `tests/bench/baseline_supervisor.py`,
`GET /health` every 10 s, timeout 1 s, SIGKILL and start after 3 failures (Kubernetes liveness
defaults; the fault lands at phases spread evenly over its period).

{recovery_table(res)}

- *detected*: the restart decision's timestamp (Warden `audit.jsonl` `ts` — the start of the
  tick that decided, so for a hang up to one 0.5 s probe timeout before the decision was
  written — or the baseline's event). *new process*: the replacement server was started.
  *ready again*: first 200 from the replica's `/ready` (polled every 20 ms) after the old
  process is gone. *start → ready*: from the new process's start to ready, i.e. a cold start;
  the cold-start row is every baseline restart (its first start overlapped the agent's and is
  not counted). *restarts*: restart decisions in all runs (one per fault is right; more means
  a replica was restarted again while it loaded).
- Each round hits Warden first, so it normally heals before the baseline decides and the two
  model loads do not overlap; they overlapped in {res.overlaps()} of {len(res.runs) // 2} rounds.
- Warden hang detections that waited for a canary call to time out (the fault hit while the
  tick was running canaries): {canary_waits}.
- The baseline only probes; it does not watch for exits, so it finds a crash like a hang. A real
  kubelet also restarts a container whose process exits (at once the first time, then with
  CrashLoopBackOff), but it kills a hung one with SIGTERM and waits up to 30 s before SIGKILL;
  the baseline kills at once.

### Targets

| target | measured (median) | |
|---|---|---|
{lines}

### Agent idle cost

CPU (user + system of the agent process only, not its replicas) and RSS over the same
{window:.0f} s window, every replica ready and nothing firing. The real replica is the packaged
model; the stand-in is `tests/integration/fake_server.py` (same flags and `/health` `/ready`
`/predict`, no torch; canaries rewritten to its answer so they pass and still run).

{idle_table(res)}

- The stand-in has no `/metrics` (404), so with it the agent skips parsing metrics. Parsing the
  real server's `/metrics` ({res.metrics_bytes} bytes) takes {res.parse_ms:.2f} ms of CPU,
  about {per_20:.1f} % of one core more for 20 real replicas at 1 probe/s.
{END}"""


def write_section(text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (append it the first time)."""
    write_marked_section(HEADING, START, END, text, DOCS)


# --- main --------------------------------------------------------------------------------------


def machine(load: str) -> dict[str, str]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "load_start": load,
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, and whether agent/ or inference/ differ from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "agent", "inference")
    return git("rev-parse", "--short", "HEAD") + (
        " (agent/ or inference/ modified)" if dirty else ""
    )


def loadavg() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def run(args: argparse.Namespace, tmp: Path) -> Results:
    started, info = time.monotonic(), machine(loadavg())
    print(f"machine: {info}", flush=True)
    (tmp / "warden").mkdir()
    with ExitStack() as stack:
        # Everything starts at once (the first model loads overlap, so the baseline's first
        # start is not counted as a cold start); the stand-in agents stop after the idle window.
        warden = stack.enter_context(
            running_agent(tmp / "warden", extra={"probe": AGENT_PROBE, "policy": AGENT_POLICY})
        )
        baseline = stack.enter_context(running_baseline(tmp / "baseline"))
        with ExitStack() as fakes:
            agents = {"1 real replica (model)": (warden, 1), **start_fakes(fakes, tmp, args)}
            wait_cold_start(baseline)
            for agent, _ in agents.values():
                agent.wait_serving("v1")
            print(f"all serving after {time.monotonic() - started:.0f} s", flush=True)
            idle = measure_idle(agents, args.idle_seconds)
        parse_ms, size = metrics_parse_ms(warden.server_port)
        runs = fault_rounds(warden, baseline, args.runs)
    info["load_end"] = loadavg()
    return Results(
        machine=info,
        command=" ".join(["bash scripts/bench-agent.sh", *sys.argv[1:]]),
        runs=runs,
        cold_loads=[r.load_s for r in runs if r.supervisor == "baseline" and r.load_s is not None],
        idle=idle,
        parse_ms=parse_ms,
        metrics_bytes=size,
        minutes=(time.monotonic() - started) / 60,
    )


def start_fakes(
    stack: ExitStack, tmp: Path, args: argparse.Namespace
) -> dict[str, tuple[RunningAgent, int]]:
    """Agents watching 1 and ``--fake-replicas`` stand-in servers (stopped with ``stack``)."""
    agents = {}
    for n in sorted({1, args.fake_replicas}):
        root = tmp / f"fake-{n}"
        root.mkdir()
        agent = stack.enter_context(
            running_agent(root, rules=healing_rules(root), extra=fake_agent_config(root, n))
        )
        agents[f"{n} stand-in replica{'s' if n > 1 else ''}"] = (agent, n)
    return agents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="faults of each kind (>= 5)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--fake-replicas", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        res = run(args, Path(tmp))
    section = render(res)
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
