"""Drift detector benchmark: speed of one test, agent memory with/without alibi, and power and
detection delay on real MiniLM features (domain shift, gradual mix, label proportions).

Writes the "Drift detection" section of docs/benchmarks.md and docs/img/drift-pvalues.png
(``scripts/bench-drift.sh``). Everything random is seeded; featurised texts are cached in
tests/bench/out/ so ``--reuse`` re-draws the plot and tables without embedding again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.drift.detector import DriftSettings, detect  # noqa: E402
from tests.bench.docs_section import write_marked_section  # noqa: E402
from tests.integration import drift_scenarios as sc  # noqa: E402

OUT = ROOT / "tests" / "bench" / "out"
PLOT = ROOT / "docs" / "img" / "drift-pvalues.png"
START, END = "<!-- bench-drift:start -->", "<!-- bench-drift:end -->"
ALIBI_PYTHON = ROOT / ".venv-alibi" / "bin" / "python"

# VmHWM, not getrusage's ru_maxrss: on Linux the latter survives exec, so a child started by
# this (large) process would report the parent's peak.
RSS_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {root!r})
{imports}
rng = np.random.default_rng(0)
ref, cur = rng.standard_normal((1000, 33)), rng.standard_normal((500, 33))
{run}
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) * 1024)
"""


def time_one_test(rows: int, width: int, repeats: int) -> tuple[float, float]:
    """(first call, median of ``repeats`` later calls) in ms, reference 1000 x width."""
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((1000, width))
    windows = [rng.standard_normal((rows, width)) for _ in range(repeats + 1)]
    settings = DriftSettings()
    started = time.perf_counter()
    detect(ref, windows[0], settings)
    first = (time.perf_counter() - started) * 1000
    times = []
    for window in windows[1:]:
        started = time.perf_counter()
        detect(ref, window, settings)
        times.append((time.perf_counter() - started) * 1000)
    return first, statistics.median(times)


def peak_rss(python: Path | str, imports: str, run: str) -> float:
    """Peak RSS in MiB of a fresh interpreter that imports and runs the given code."""
    code = RSS_SCRIPT.format(root=str(ROOT), imports=imports, run=run)
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def memory() -> dict[str, float | None]:
    """Agent RSS (main venv) and the drift engines' cost in the alibi venv."""
    agent = peak_rss(
        sys.executable,
        "import httpx\nfrom agent.app import drift_monitor\nfrom agent.config import load_config",
        "drift_monitor(load_config(None), httpx.Client())\n"
        "from agent.drift import engine\nengine('scipy')(ref, cur, __import__("
        "'agent.drift.detector', fromlist=['x']).DriftSettings())",
    )
    result: dict[str, float | None] = {"agent_scipy": agent, "scipy": None, "alibi": None}
    if ALIBI_PYTHON.exists():
        base = "from agent.drift import engine\nfrom agent.drift.detector import DriftSettings"
        result["scipy"] = peak_rss(ALIBI_PYTHON, base, "engine('scipy')(ref, cur, DriftSettings())")
        result["alibi"] = peak_rss(ALIBI_PYTHON, base, "engine('alibi')(ref, cur, DriftSettings())")
    return result


def load_pools(reuse: bool) -> sc.Pools:
    cache = OUT / "drift-pools.npz"
    if reuse and cache.exists():
        data = np.load(cache)
        live = {k.removeprefix("live:"): data[k] for k in data.files if k.startswith("live:")}
        return sc.Pools(reference=data["reference"], live=live)
    pools = sc.pools()
    OUT.mkdir(parents=True, exist_ok=True)
    arrays = {"reference": pools.reference} | {f"live:{k}": v for k, v in pools.live.items()}
    np.savez(cache, **arrays)  # type: ignore[arg-type]
    return pools


def plot(runs: list[sc.Run], alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(13, 3.8))
    for ax, run in zip(axes, runs, strict=True):
        x = np.arange(1, len(run.results) + 1)
        p = np.maximum(run.p_values, 1e-300)
        ax.semilogy(x, p, "o-", color="tab:blue", label="corrected p-value (smallest feature)")
        ax.axhline(alpha, color="tab:red", linestyle="--", label=f"α = {alpha:g}")
        ax.axvline(run.shift_starts + 0.5, color="grey", linestyle=":", label="shift starts")
        hit = run.detected_at()
        if hit is not None:
            ax.plot(hit + 1, p[hit], "r*", markersize=14, label="drift_detected = 1")
        ax.set_ylim(top=10)
        ax.set_title(run.name)
        ax.set_xlabel(f"window ({sc.WINDOW} observations)")
        ax.set_xticks(x)
    axes[0].set_ylabel("corrected p-value (log)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Drift p-value per window on MiniLM intent-router features (32-dim + confidence)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trials", type=int, default=100, help="resampled windows per power row")
    parser.add_argument("--reuse", action="store_true", help="reuse cached featurised texts")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    timing = {
        (rows, width): time_one_test(rows, width, args.repeats)
        for rows, width in ((500, 33), (1000, 33), (500, 384), (1000, 384))
    }
    mem = memory()
    started = time.perf_counter()
    pools = load_pools(args.reuse)
    embed_s = time.perf_counter() - started
    rng = np.random.default_rng(sc.SEED)
    runs = [sc.run(name, pools, plan, rng) for name, plan in sc.SCENARIOS.items()]
    rows = [("no shift (false alarms)", {}), *[(f"{s:.0%} unrelated text", {"shifted": s})
            for s in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)],
            ("50 % billing (others 1/6 each)", {"proportions": (0.5, 1 / 6, 1 / 6, 1 / 6)}),
            ("70 % billing (others 10 %)", {"proportions": (0.7, 0.1, 0.1, 0.1)})]  # fmt: skip
    power = [(label, sc.power(pools, rng, args.trials, **kw)) for label, kw in rows]
    alpha = DriftSettings().alpha
    plot(runs, alpha)
    summary = {
        "timing_ms": {f"{r}x{w}": t for (r, w), t in timing.items()},
        "memory_mib": mem,
        "delays": {r.name: r.delay_samples() for r in runs},
        "power": dict(power),
        "embed_s": embed_s,
    }
    print(json.dumps(summary, indent=1))
    if not args.no_write:
        write_marked_section(
            "## Drift detection", START, END, render(timing, mem, runs, power, args.trials)
        )


def render(
    timing: dict[tuple[int, int], tuple[float, float]],
    mem: dict[str, float | None],
    runs: list[sc.Run],
    power: list[tuple[str, float]],
    trials: int,
) -> str:
    load = os.getloadavg()[0]
    lines = [
        START,
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f} during the run (`scripts/bench-drift.sh`). Defaults: KS, "
        "Bonferroni, α 0.01, KS floor 0.1, reference 1000, windows of 500, 2 in a row.",
        "",
        "**One test** (`agent.drift.detector.detect`, scipy engine, reference 1000 rows; median "
        "of later calls with fresh windows; the first call fills the memo of KS p-values, and "
        "the very first one of the process also imports `scipy.stats`):",
        "",
        "| current window | features | first call | median |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {rows} | {width} | {first:.1f} ms | {median:.1f} ms |"
        for (rows, width), (first, median) in timing.items()
    ]
    alibi = (
        f"{mem['alibi']:.0f} MiB with the alibi engine loaded vs {mem['scipy']:.0f} MiB with "
        f"scipy (+{mem['alibi'] - mem['scipy']:.0f} MiB: alibi-detect imports transformers, "
        "scikit-learn, numba...)"
        if mem["alibi"] is not None and mem["scipy"] is not None
        else "alibi venv not built (run scripts/alibi-check.sh)"
    )
    lines += [
        "",
        f"**Memory** (peak RSS of a fresh process): the agent's modules with a scipy drift "
        f"monitor and one test, {mem['agent_scipy']:.0f} MiB. In `.venv-alibi` (drift modules "
        f"only): {alibi}.",
        "",
        "**Detection on real features** (texts through the packaged MiniLM intent router and the "
        "server's projection; each scenario has 2 unshifted windows, then the shift; delay = "
        "observations from the shift's start until `drift_detected` = 1):",
        "",
        "| scenario | corrected p-value per window | delay |",
        "|---|---|---|",
    ]
    for run in runs:
        ps = " ".join(f"{p:.1e}" if p < 0.01 else f"{p:.2f}" for p in run.p_values)
        delay = run.delay_samples()
        lines.append(f"| {run.name} | {ps} | {'not detected' if delay is None else delay} |")
    lines += [
        "",
        f"**Power at α = 0.01** (share of {trials} resampled windows of 500 flagged; a window, "
        "not two in a row):",
        "",
        "| live window | flagged |",
        "|---|---|",
        *[f"| {label} | {share:.0%} |" for label, share in power],
        "",
        "![p-value per window](img/drift-pvalues.png)",
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
