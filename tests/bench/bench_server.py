"""Inference server benchmark: Warden vs a naive server vs the raw model, all in one run.

Measures, on this machine:
- raw model throughput at batch 32, in-process (tokenise + forward + post-process);
- closed-loop throughput at 1, 8 and 32 concurrent clients (one short text per request, HTTP/1.1
  keep-alive) against (a) the Warden server and (b) tests/bench/naive_server.py (same model, one
  forward per request);
- open-loop p95 latency at half of each server's best throughput;
- the Warden server's RSS (current and peak).

Then it rewrites the "Inference server" section of docs/benchmarks.md. The load generator is a
small raw-socket asyncio client so that it costs the shared CPUs as little as possible; it runs on
the same machine as the servers, so every figure includes its cost.

Run: ``bash scripts/bench-server.sh`` (about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Inference server"
PHRASES = [
    "I was charged twice for my subscription",
    "the app crashes when I open the settings page",
    "please add an export to PDF option",
    "I forgot my password and cannot log in",
    "why is my invoice higher this month",
    "the website does not load on my phone",
    "love the new dashboard design",
    "how do I change the email on my account",
]
CLIENTS = (1, 8, 32)


@dataclass(frozen=True, slots=True)
class Load:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for POST /predict."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def predict(self, text: str) -> int:
        body = json.dumps({"inputs": text}).encode()
        head = (
            "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def closed_loop(port: int, clients: int, seconds: float) -> Load:
    """``clients`` connections each sending requests back to back for ``seconds``."""
    connections = [await Connection.open(port) for _ in range(clients)]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(index: int, conn: Connection) -> None:
        i = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await conn.predict(PHRASES[i % len(PHRASES)])
            if status != 200:
                raise RuntimeError(f"status {status}")
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return Load(requests=len(latencies), seconds=elapsed, latencies=latencies)


async def open_loop(port: int, rate: float, seconds: float) -> Load:
    """Requests arriving at a fixed ``rate``; latency counts from the scheduled arrival."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    start = time.perf_counter()
    count = int(rate * seconds)

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        conn = await pool.get()
        await conn.predict(PHRASES[i % len(PHRASES)])
        pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return Load(requests=count, seconds=elapsed, latencies=latencies)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready: {command}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def raw_batch32(seconds: float, threads: int | None) -> float:
    """Sequences per second of the raw model at batch 32, in this process."""
    from inference.domain import PredictItem
    from inference.models import load_predictor

    predictor = load_predictor(model_dir=None, task="auto", device="cpu", threads=threads)
    batch = [PredictItem(text=PHRASES[i % len(PHRASES)]) for i in range(32)]
    predictor.predict_batch(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict_batch(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def measure_server(command: list[str], port: int, seconds: float) -> dict[str, object]:
    with server(command, port) as process:
        asyncio.run(closed_loop(port, 8, 1.0))  # warm up
        loads = {c: asyncio.run(closed_loop(port, c, seconds)) for c in CLIENTS}
        best = max(load.throughput for load in loads.values())
        half = asyncio.run(open_loop(port, best / 2, seconds))
        memory = psutil.Process(process.pid).memory_info().rss
        peak = _peak_rss(process.pid)
    return {"loads": loads, "best": best, "half": half, "rss": memory, "peak": peak}


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) * 1024 if match else 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(
    raw: float,
    warden: dict[str, object],
    naive: dict[str, object],
    secs: float,
    threads: int | None,
) -> str:
    wl, nl = warden["loads"], naive["loads"]
    assert isinstance(wl, dict) and isinstance(nl, dict)
    w32, n32 = wl[32].throughput, nl[32].throughput
    speedup, of_raw = w32 / n32, w32 / raw
    rows = "\n".join(
        f"| {c} | {wl[c].throughput:.0f} | {wl[c].p(0.5):.0f} / {wl[c].p(0.95):.0f} "
        f"| {nl[c].throughput:.0f} | {nl[c].p(0.5):.0f} / {nl[c].p(0.95):.0f} |"
        for c in CLIENTS
    )
    wh, nh = warden["half"], naive["half"]
    assert isinstance(wh, Load) and isinstance(nh, Load)
    mib = 1024 * 1024
    flag = f" --threads {threads}" if threads else ""
    return f"""{SECTION}

Measured {time.strftime("%Y-%m-%d")} on {os.cpu_count()} CPUs ({cpu_model()}), Python
{platform.python_version()}, torch CPU, model all-MiniLM-L6-v2 (task `classify`), one short
customer-service phrase per request. Client, servers and model share the same CPUs (other work
on the machine adds noise); each closed-loop point runs {secs:g} s. Torch threads:
{threads or "torch default"} (same for all three). Load average at the end:
{os.getloadavg()[0]:.1f}.

Command: `bash scripts/bench-server.sh{flag}` (runs `tests/bench/bench_server.py`; 2-3 minutes).

Raw model, in-process, batch 32: **{raw:.0f} sequences/s**.

| clients | Warden req/s | Warden p50 / p95 ms | naive req/s | naive p50 / p95 ms |
|---|---|---|---|---|
{rows}

- Open-loop p95 latency at half the best throughput: Warden {wh.p(0.95):.0f} ms at
  {wh.requests / wh.seconds:.0f} req/s; naive {nh.p(0.95):.0f} ms at
  {nh.requests / nh.seconds:.0f} req/s.
- Warden server RSS after the run: {int(warden["rss"]) / mib:.0f} MiB
  (peak {int(warden["peak"]) / mib:.0f} MiB).
- Target ≥ 4× naive at 32 clients: **{speedup:.1f}×** ({"met" if speedup >= 4 else "NOT met"}).
- Target ≥ 70 % of raw batch-32 throughput at 32 clients: **{of_raw:.0%}**
  ({"met" if of_raw >= 0.7 else "NOT met"}).
"""


def write_section(text: str) -> None:
    old = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    DOCS.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description="Inference server benchmark")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load point")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads everywhere")
    args = parser.parse_args()
    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    raw = raw_batch32(args.seconds, args.threads)
    print(f"raw batch-32: {raw:.0f} seq/s", flush=True)
    port = free_port()
    warden = measure_server(
        [sys.executable, "-m", "inference", "--port", str(port), *extra], port, args.seconds
    )
    port = free_port()
    naive_cmd = [sys.executable, str(REPO / "tests/bench/naive_server.py"), "--port", str(port)]
    naive_cmd += extra
    naive = measure_server(naive_cmd, port, args.seconds)
    text = render(raw, warden, naive, args.seconds, args.threads)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
