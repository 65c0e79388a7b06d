"""Baseline for the agent benchmark: a liveness-probe supervisor with Kubernetes' defaults.

It starts ``python -m inference --port P`` itself, probes ``GET /health`` every ``--period``
seconds (10) with a ``--timeout`` (1 s), and after ``--failure-threshold`` (3) consecutive
failures kills the server with SIGKILL and starts a new one on the same port. That is a
Kubernetes ``livenessProbe`` with ``periodSeconds: 10``, ``timeoutSeconds: 1`` and
``failureThreshold: 3`` (all defaults), except that the kill is immediate (Kubernetes sends
SIGTERM and waits up to ``terminationGracePeriodSeconds``, 30 s, which a stopped process never
answers). It does not watch the process for exits: like the probe, it learns of a crash only by
probing, so a crash is found the same way as a hang.

Probes run on a fixed schedule (start + k * period, like the kubelet's ticker); the first probe
is one period after each start. Every event is one JSON line in ``--events`` with ``ts`` in
wall-clock seconds (``time.time()``), so the benchmark can compare it with when it injected a
fault:

    {"ts": ..., "event": "started", "pid": 123}
    {"ts": ..., "event": "probe", "ok": false, "reason": "timed out", "failures": 2}
    {"ts": ..., "event": "restart", "pid": 123, "reason": "3 consecutive /health failures"}

Run: ``python tests/bench/baseline_supervisor.py --port 8123 --events events.jsonl``;
SIGTERM or SIGINT stops it and its server.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, TextIO

STOP_GRACE_S = 10.0


class Supervisor:
    """One server process, probed and restarted on a fixed schedule."""

    def __init__(self, args: argparse.Namespace, events: TextIO, log: IO[bytes]) -> None:
        self.args = args
        self.events = events
        self.log = log
        self.stopping = threading.Event()
        self.server: subprocess.Popen[bytes] | None = None
        self.url = f"http://{args.host}:{args.port}/health"

    def record(self, event: str, **fields: Any) -> None:
        """Append one event line (flushed at once: the benchmark tails the file)."""
        self.events.write(json.dumps({"ts": time.time(), "event": event, **fields}) + "\n")
        self.events.flush()

    def start_server(self) -> float:
        """Start the server; return the monotonic time it was started at."""
        command = [sys.executable, "-m", "inference", "--host", self.args.host]
        command += ["--port", str(self.args.port), *self.args.server_args]
        self.server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.record("started", pid=self.server.pid)
        return time.monotonic()

    def kill_server(self) -> None:
        """SIGKILL the server and reap it."""
        if self.server is None:
            return
        self.server.kill()
        self.server.wait()

    def probe(self) -> tuple[bool, str]:
        """One liveness probe: ``GET /health`` answered 200 within the timeout."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.args.timeout) as response:
                return response.status == 200, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, reset, timed out
            return False, str(getattr(exc, "reason", exc))

    def run(self) -> None:
        """Probe and restart until stopped; then stop the server."""
        started = self.start_server()
        next_probe = started + self.args.period
        failures = 0
        while not self.stopping.wait(max(0.0, next_probe - time.monotonic())):
            next_probe += self.args.period
            if self.server is not None:
                self.server.poll()  # reap a crashed server; the probe is what notices it
            ok, reason = self.probe()
            failures = 0 if ok else failures + 1
            self.record("probe", ok=ok, reason=reason, failures=failures)
            if failures >= self.args.failure_threshold:
                pid = self.server.pid if self.server else None
                because = f"{failures} consecutive /health failures (last: {reason})"
                self.record("restart", pid=pid, reason=because)
                self.kill_server()
                next_probe = self.start_server() + self.args.period
                failures = 0
        self.stop_server()

    def stop_server(self) -> None:
        """SIGTERM (and SIGCONT, in case it is paused), SIGKILL after a grace period."""
        if self.server is None or self.server.poll() is not None:
            return
        self.server.send_signal(signal.SIGTERM)
        self.server.send_signal(signal.SIGCONT)
        try:
            self.server.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill_server()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between probes")
    parser.add_argument("--timeout", type=float, default=1.0, help="probe timeout, seconds")
    parser.add_argument("--failure-threshold", type=int, default=3)
    parser.add_argument("--events", type=Path, required=True, help="JSON-lines event file")
    parser.add_argument("--server-log", type=Path, default=Path("/dev/null"))
    parser.add_argument(
        "server_args", nargs="*", help="extra server arguments (after --)", default=[]
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with args.events.open("a", encoding="utf-8") as events, args.server_log.open("ab") as log:
        supervisor = Supervisor(args, events, log)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: supervisor.stopping.set())
        supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
