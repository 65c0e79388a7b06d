"""The ``warden`` command line.

Exit codes: 0 success; 1 the operation failed or found problems (invalid rules, drift...);
2 bad usage; 3 the agent could not be reached.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.cli_drift import drift_app
from agent.cli_progress import follow_rollout
from agent.config import WardenConfig, load_config
from agent.durations import DurationError, parse_duration
from agent.errors import ApiError, ConfigError, WardenError

app = typer.Typer(
    help="Warden: monitor and heal a PyTorch model service.\n\n"
    "Quick start: `warden up` runs the model server with the default model and the agent "
    "that watches it, on this machine, with no Docker needed; its status page is "
    "http://127.0.0.1:9400/.\n\n"
    "Exit codes: 0 ok; 1 the operation failed or found problems; 2 bad usage; "
    "3 the agent could not be reached. Shell completion: `warden --install-completion`.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
)
rules_app = typer.Typer(
    help="Validate rule files and try them on recorded traces.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")
app.add_typer(drift_app, name="drift")

# soft_wrap: a message is one line however long (rich would wrap at 80 columns when piped),
# so `file:line: path: message` problems stay one per line for grep and editors.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="warden.yaml (default: ./warden.yaml if present, else built-in defaults).",
        envvar="WARDEN_CONFIG",
    ),
]
ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Agent API URL (default: from the config, http://127.0.0.1:9400).",
        envvar="WARDEN_API",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
EVENTS_POLL_S = 0.5


def _config(path: Path | None) -> WardenConfig:
    if path is None and Path("warden.yaml").is_file():
        path = Path("warden.yaml")
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_PROBLEM) from exc


def _fail(message: str, code: int = EXIT_PROBLEM) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


# --- running ---------------------------------------------------------------------------------


def _run(cfg: WardenConfig, *, embedded: bool, trace: Path | None) -> None:
    from agent.app import Runtime, build_agent, resolve_token
    from agent.rollout.balancer import HaproxyBalancer

    token = resolve_token(cfg, create=embedded)
    try:
        agent = build_agent(cfg, trace_path=trace)
        runtime = Runtime(agent, cfg, token=token)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_PROBLEM) from exc
    except WardenError as exc:
        raise _fail(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start()
    first = f"http://{cfg.backend.host}:{cfg.backend.port}"
    balancer = agent.rollouts.balancer if agent.rollouts is not None else None
    if isinstance(balancer, HaproxyBalancer) and balancer.process.external:
        first = f"HAProxy service on {balancer.bind}"
    elif balancer is not None:
        first += " (HAProxy; replicas on the ports above it)"
    desired = agent.store.desired()
    err.print(
        f"warden: {cfg.backend.kind} backend, {cfg.backend.replicas} replica(s) of "
        f"release {desired.release if desired else '?'}; "
        f"server {first}, agent API and status page http://{cfg.api.bind}/",
        markup=False,
    )
    err.print(
        f"warden: state in {cfg.state_dir}; `warden status` shows what runs; "
        "Ctrl-C stops everything",
        markup=False,
    )
    stop.wait()
    what = (
        "agent and its replicas"
        if cfg.backend.kind == "process"
        else "agent (replicas keep running)"
    )
    err.print(f"warden: stopping the {what}", markup=False)
    runtime.stop()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level.lower() != "debug":  # one line per request or job run drowns what matters
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # "skipped: maximum number of running instances" only says a tick outlasted the interval
        logging.getLogger("apscheduler").setLevel(logging.ERROR)


@app.command()
def up(
    config: ConfigOpt = None,
    port: Annotated[
        int | None,
        typer.Option(help="Public port: HAProxy when installed, else the first replica."),
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas to run.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model directory for the first release (default: packaged all-MiniLM-L6-v2)."
        ),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Server task (default: auto).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and record, but never act.")
    ] = False,
    record_trace: Annotated[
        Path | None,
        typer.Option(
            help="Append every tick's signals to this JSON-lines file (for `rules test`)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the model server and the agent that heals it, on this machine.

    Example: `warden up` (default model on 127.0.0.1:8000, agent API on 127.0.0.1:9400).
    """
    _logging(log_level)
    cfg = _config(config)
    backend = cfg.backend.model_copy(
        update={k: v for k, v in {"port": port, "replicas": replicas}.items() if v is not None}
    )
    if backend.replicas > backend.max_replicas:
        backend = backend.model_copy(update={"max_replicas": backend.replicas})
    release = cfg.release.model_copy(
        update={k: v for k, v in {"model": model, "task": task}.items() if v}
    )
    policy = cfg.policy.model_copy(update={"dry_run": dry_run or cfg.policy.dry_run})
    balancer = cfg.balancer
    if "balancer" not in cfg.model_fields_set:  # HAProxy in front when installed (staged deploys)
        balancer = balancer.model_copy(update={"kind": "auto"})
    cfg = cfg.model_copy(
        update={"backend": backend, "release": release, "policy": policy, "balancer": balancer}
    )
    _run(cfg, embedded=True, trace=record_trace)


@app.command()
def agent(
    config: ConfigOpt = None,
    record_trace: Annotated[
        Path | None, typer.Option(help="Append every tick's signals to this JSON-lines file.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and record, but never act.")
    ] = False,
) -> None:
    """Run only the agent, with the backend from the config (process, docker or swarm).

    Example: `warden agent --config warden.yaml`.
    """
    _logging(log_level)
    cfg = _config(config)
    if dry_run:
        cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"dry_run": True})})
    _run(cfg, embedded=False, trace=record_trace)


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    }
)
def serve(ctx: typer.Context) -> None:
    """Run only the model server (all flags go to it; `warden serve --help` lists them).

    Example: `warden serve --model ./my-bert --task fill-mask --port 8001`.
    """
    try:
        from inference.server import main as serve_main
    except ImportError as exc:
        raise _fail(
            f"the model server is not installed: pip install 'warden[inference]' ({exc})"
        ) from exc
    raise typer.Exit(serve_main(list(ctx.args)))


# --- talking to a running agent --------------------------------------------------------------


class _Client:
    def __init__(self, config: Path | None, api: str | None) -> None:
        from agent.app import resolve_token

        cfg = _config(config)
        self.base = (api or f"http://{cfg.api.bind}").rstrip("/")
        self.token = resolve_token(cfg, create=False)
        self.token_env = cfg.api.token_env
        self.token_file = cfg.state_dir / "api-token"

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            resp = httpx.request(
                method, self.base + path, json=body, params=params, headers=headers, timeout=10.0
            )
        except httpx.HTTPError as exc:
            raise _fail(
                f"cannot reach the Warden agent at {self.base} ({exc}). Start it with "
                "`warden up`, or point --api / WARDEN_API at it.",
                EXIT_UNREACHABLE,
            ) from exc
        if resp.status_code in (401, 403) and not self.token:
            raise _fail(
                f"the agent needs its API token ({_detail(resp)}): set {self.token_env}, "
                f"or run where {self.token_file} is readable"
            )
        if resp.status_code in (401, 403):
            raise _fail(
                f"the agent refused the token ({_detail(resp)}): set {self.token_env} "
                "to the token the agent was started with"
            )
        if resp.status_code >= 400:
            raise _fail(f"{_detail(resp)} (HTTP {resp.status_code})")
        return resp.json()


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        return resp.text[:200]
    return detail if isinstance(detail, str) else json.dumps(detail)


_STATUS_STYLE = {"good": "green", "bad": "bold red", "candidate": "yellow"}
PIPED_WIDTH = 10_000


def _print_table(table: Table) -> None:
    """On a terminal the table fits the window; piped, one row stays one line (for grep)."""
    if out.is_terminal:
        out.print(table)
    else:  # rich wraps at 80 columns when it cannot ask a terminal
        Console(file=sys.stdout, width=PIPED_WIDTH).print(table)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, int(time.time() - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@app.command()
def status(config: ConfigOpt = None, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """What runs now: release, last-good, replicas, firing rules, flags.

    Example: `warden status`, or `warden status --json | jq .replicas`.
    """
    doc = _Client(config, api).request("GET", "/api/status")
    if as_json:
        _print_json(doc)
        return
    flags = [
        f
        for f, on in (
            ("FROZEN", doc["frozen"]),
            ("maintenance", doc["maintenance"]),
            ("dry-run", doc["dry_run"]),
        )
        if on
    ]
    out.print(
        f"release {doc['current_release']} ({doc['current_release_status']}), "
        f"last good {doc['last_good_release'] or '-'}, {doc['backend']} backend"
        + (f"  [{', '.join(flags)}]" if flags else ""),
        markup=False,
        highlight=False,
    )
    signals = doc.get("service_signals", {})
    service = [
        f"{label} {signals[name] * scale:.{digits}f}{unit}"
        for name, label, scale, digits, unit in (
            ("latency_p95_ms", "p95", 1, 0, " ms"),
            ("error_rate", "errors", 100, 1, "%"),
            ("throughput_rps", "traffic", 1, 1, "/s"),
        )
        if name in signals
    ]
    if service:
        out.print("service: " + ", ".join(service), markup=False, highlight=False)
    rollout = doc.get("rollout")
    if rollout:
        paused = ", PAUSED" if rollout["paused"] else ""
        out.print(
            f"rollout: {rollout['candidate']} over {rollout['stable']}, {rollout['stage']} "
            f"({rollout['share']} % of traffic{paused}): {rollout['status']}",
            markup=False,
            highlight=False,
        )
    table = Table(box=None, pad_edge=False)
    for col in (
        "REPLICA",
        "STATE",
        "READY",
        "RELEASE",
        "PID",
        "UP FOR",
        "CPU%",
        "MEM MiB",
        "REASON",
    ):
        table.add_column(col)
    for r in doc["replicas"]:
        table.add_row(
            r["id"],
            Text(r["state"], style="green" if r["state"] == "running" else "bold red"),
            Text("yes", style="green") if r["ready"] else Text("no", style="yellow"),
            r["release"],
            str(r["pid"] or r["container_id"] or "-"),
            _ago(r["started_at"]),
            "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.0f}",
            "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**20:.0f}",
            r["reason"],
        )
    _print_table(table)
    for f in doc["firing"]:
        out.print(Text("firing: ", style="bold red") + Text(f["reason"]), highlight=False)
    for a in doc["in_flight"]:
        out.print(
            f"in flight: {a['kind']} {a['subject']} ({a['status']}): {a['reason']}",
            markup=False,
            highlight=False,
        )


@app.command()
def releases(config: ConfigOpt = None, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Known releases, newest first, with their status (candidate, good, bad).

    Example: `warden releases`.
    """
    doc = _Client(config, api).request("GET", "/api/releases")
    if as_json:
        _print_json(doc)
        return
    from agent.web.rollout import how_far_text, staged_how_far

    table = Table(box=None, pad_edge=False)
    for col in ("RELEASE", "STATUS", "HOW FAR", "DEPLOYED", "BY", "MODEL/IMAGE", "WHY / NOTE"):
        table.add_column(col)
    # A candidate that is not the newest release was replaced by a later deploy.
    newest = doc["releases"][0]["tag"] if doc["releases"] else None
    for r in doc["releases"]:
        staged = r.get("rollout") or {}
        how_far = how_far_text(
            status=r["status"],
            created_at=r["created_at"],
            promoted_at=r["promoted_at"],
            marked_bad_at=r["marked_bad_at"],
            current=r["tag"] == newest,
        )
        if staged:
            how_far = f"{staged_how_far(staged)}; {how_far}"
        what = r["image"] or r["model"] or "(default)"
        if staged.get("weights_sha256"):
            what += f" sha256:{staged['weights_sha256'][:12]}"
        why = r["reason"] or staged.get("status", "")
        if staged.get("note"):
            why = f"{why} [note: {staged['note']}]" if why else f"[note: {staged['note']}]"
        table.add_row(
            r["tag"],
            Text(r["status"], style=_STATUS_STYLE.get(r["status"], "")),
            how_far,
            _ago(r["created_at"]) + " ago",
            staged.get("by") or "",
            what,
            why,
        )
    _print_table(table)


@app.command()
def deploy(
    tag: Annotated[
        str | None,
        typer.Argument(help="Release tag (an image tag for docker/swarm); none with --pause etc."),
    ] = None,
    model: Annotated[str, typer.Option(help="Process backend: model directory.")] = "",
    task: Annotated[str, typer.Option(help="Server task for this release.")] = "",
    image: Annotated[str, typer.Option(help="Docker/Swarm: full image reference.")] = "",
    arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra server flag for this release (repeatable), e.g. --arg=--intents=x.yaml"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Deploy even a release marked bad.")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Follow the release until it is good (exit 0) or bad (exit 1), "
            "showing replicas starting, canaries and the bake's time left.",
        ),
    ] = False,
    timeout: Annotated[
        str, typer.Option(help="With --wait: give up (exit 1) after this long, e.g. 30m.")
    ] = "30m",
    steps: Annotated[
        str | None,
        typer.Option(
            help="Staged rollout: candidate's traffic share at each step, in percent "
            "(default from rollout.steps: 10,50,100). Needs HAProxy (balancer), or on Swarm "
            "balancer kind replicas (each step: the candidate replicas nearest the share)."
        ),
    ] = None,
    step_duration: Annotated[
        str | None, typer.Option(help="Staged rollout: how long each step is watched, e.g. 2m.")
    ] = None,
    load_test: Annotated[
        bool,
        typer.Option(
            "--load-test",
            help="Staged rollout: before any user traffic, a bounded load test of the "
            "candidate alone vs stable under the same load (p95 and errors compared).",
        ),
    ] = False,
    canary_replicas: Annotated[
        int,
        typer.Option(
            help="Staged rollout: replicas of the candidate (split by replicas: the canary "
            "replicas, which never serve users; traffic replicas are added per step).",
            min=1,
            max=16,
        ),
    ] = 1,
    all_at_once: Annotated[
        bool,
        typer.Option(
            "--all-at-once",
            help="Replace every replica and bake, even when HAProxy could stage the rollout.",
        ),
    ] = False,
    note: Annotated[str, typer.Option(help="A note kept with the release's history.")] = "",
    pause: Annotated[
        bool,
        typer.Option("--pause", help="Hold the staged rollout in progress at its current step."),
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Resume a paused rollout.")] = False,
    abort: Annotated[
        bool,
        typer.Option(
            "--abort", help="Abort the rollout: candidate out of traffic at once, marked bad."
        ),
    ] = False,
    promote: Annotated[
        bool,
        typer.Option("--promote", help="Promote the candidate now: it takes all traffic."),
    ] = False,
    config: ConfigOpt = None,
    api: ApiOpt = None,
) -> None:
    """Deploy TAG as a candidate: staged through HAProxy when it runs, else all at once + bake.

    Staged (HAProxy in front): candidate replicas start beside the stable ones with no traffic,
    its golden-set canaries must pass, optionally a load test, then --steps shift traffic to it,
    each step watched for --step-duration and compared with stable (p95 ratio, 5xx rate with a
    significance test, canaries). Any breach: candidate weight 0 at once, marked bad, alert.

    Example: `warden deploy v2 --model ./models/intent-v2 --wait`, or staged:
    `warden deploy v3 --steps 10,50,100 --step-duration 2m --load-test --note "new tokenizer"`,
    then `warden deploy --pause` (or --resume, --abort, --promote).
    """
    commands = [c for c, on in (("pause", pause), ("resume", resume), ("abort", abort),
                                ("promote", promote)) if on]  # fmt: skip
    if len(commands) > 1:
        raise _fail("give one of --pause, --resume, --abort, --promote", EXIT_USAGE)
    client = _Client(config, api)
    if commands:
        state = client.request("POST", f"/api/rollout/{commands[0]}", {})
        out.print(f"{state['candidate']}: {state['status']}", markup=False, highlight=False)
        return
    if tag is None:
        raise _fail("give a release TAG to deploy (or --pause/--resume/--abort/--promote)", 2)
    try:
        timeout_s = parse_duration(timeout)
    except DurationError as exc:
        raise _fail(f"--timeout: {exc}", EXIT_USAGE) from exc
    body: dict[str, Any] = {
        "tag": tag,
        "model": model,
        "task": task,
        "image": image,
        "args": arg or [],
        "force": force,
        "load_test": load_test,
        "canary_replicas": canary_replicas,
        "note": note,
        "step_duration": step_duration,
        "steps": _steps(steps),
    }
    if all_at_once:
        body["staged"] = False
    doc = client.request("POST", "/api/deploy", body)
    staged = doc.get("rollout")
    how = (
        f"staged rollout, steps {','.join(str(s) for s in staged['steps'])} %"
        if staged
        else "all at once, then a bake"
    )
    out.print(
        f"deploying {doc['release']} as candidate (was {doc['previous']}; {how}); "
        + (
            "following it until it is good or bad (Ctrl-C stops following, not the deploy)"
            if wait
            else "`warden deploy --wait` or `warden status` shows progress"
        ),
        markup=False,
        highlight=False,
    )
    if not wait:
        return
    try:
        code, line = follow_rollout(
            lambda: client.request("GET", "/api/rollout", params={"release": tag}),
            out,
            timeout_s=timeout_s,
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    (out if code == 0 else err).print(line, markup=False, highlight=False)
    raise typer.Exit(code)


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise _fail(
            f"--steps: expected percents like 10,50,100; got {text!r}", EXIT_USAGE
        ) from None


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option(help="Release to go back to (default: the newest good one).")
    ] = None,
    config: ConfigOpt = None,
    api: ApiOpt = None,
) -> None:
    """Revert to the last good release (or --to TAG) and mark the current one bad.

    Example: `warden rollback` or `warden rollback --to v1`.
    """
    doc = _Client(config, api).request("POST", "/api/rollback", {"to": to})
    out.print(f"rolling back {doc['previous']} -> {doc['release']}", markup=False, highlight=False)


def _flag(endpoint: str, state: str, config: Path | None, api: str | None) -> dict[str, Any]:
    if state not in ("on", "off"):
        raise _fail(f"expected on or off, got {state!r}", EXIT_USAGE)
    result: dict[str, Any] = _Client(config, api).request("POST", endpoint, {"on": state == "on"})
    return result


@app.command()
def maintenance(
    state: Annotated[str, typer.Argument(help="on or off")],
    config: ConfigOpt = None,
    api: ApiOpt = None,
) -> None:
    """Maintenance mode: alerts still go out, no automatic action is taken.

    Example: `warden maintenance on`.
    """
    doc = _flag("/api/maintenance", state, config, api)
    out.print(f"maintenance {'on' if doc['maintenance'] else 'off'}", markup=False)


@app.command()
def freeze(
    state: Annotated[str, typer.Argument(help="on or off (off resumes automatic healing)")],
    config: ConfigOpt = None,
    api: ApiOpt = None,
) -> None:
    """Freeze or unfreeze automatic remediation (Warden freezes itself after a failed revert).

    Example: `warden freeze off` after you fixed what paged you.
    """
    doc = _flag("/api/freeze", state, config, api)
    out.print(f"frozen: {'yes' if doc['frozen'] else 'no'}", markup=False)


_EVENT_STYLE = {
    "restart": "yellow",
    "scale": "yellow",
    "rollback": "bold red",
    "frozen": "bold red",
    "verify-failed": "bold red",
    "engine-unreachable": "bold red",
    "verified": "green",
    "promoted": "green",
}


@app.command()
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    config: ConfigOpt = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What happened: exits, restarts, deploys, rollbacks, verifications.

    Example: `warden events -f`.
    """
    client = _Client(config, api)
    after = 0
    try:
        while True:
            doc = client.request("GET", "/api/events", params={"after": after, "limit": 500})
            for e in doc["events"]:
                if as_json:
                    sys.stdout.write(json.dumps(e, sort_keys=True) + "\n")
                else:
                    when = time.strftime("%H:%M:%S", time.localtime(e["at"]))
                    out.print(
                        Text(f"{when} ")
                        + Text(f"{e['kind']:<14}", style=_EVENT_STYLE.get(e["kind"], "bold"))
                        + Text(f" {e['subject']:<14} {e['message']}"),
                        highlight=False,
                    )
            sys.stdout.flush()
            after = doc["next"]
            if not follow:
                return
            time.sleep(EVENTS_POLL_S)
    except KeyboardInterrupt:  # Ctrl-C is how one stops following: not an error
        return


# --- rules ------------------------------------------------------------------------------------


@rules_app.command("check")
def rules_check(
    path: Annotated[
        Path | None, typer.Argument(help="Rules directory or file (default: from the config).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate rule files; print every problem as file:line: path: message.

    Example: `warden rules check rules/`.
    """
    from agent.rules import load_rules

    target = path or _config(config).rules
    try:
        rules = load_rules(target)
    except ConfigError as exc:
        for problem in exc.problems:
            out.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_PROBLEM) from exc
    out.print(f"{target}: {len(rules.rules)} rules OK", markup=False, highlight=False)


@rules_app.command("test")
def rules_test(
    trace: Annotated[Path, typer.Option(help="Trace recorded with --record-trace.")],
    path: Annotated[Path | None, typer.Option("--rules", help="Rules directory or file.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay rules over a recorded trace and print what would have fired, and when.

    Example: `warden rules test --trace incident.jsonl --rules rules/`.
    """
    from agent.rules import load_rules
    from agent.trace import read_trace, replay

    try:
        rules = load_rules(path or _config(config).rules)
        records = read_trace(trace)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_PROBLEM) from exc
    events_ = replay(rules, records)
    if as_json:
        _print_json(
            [
                {
                    "at": e.at,
                    "rule": e.rule,
                    "subject": e.subject,
                    "kind": e.kind,
                    "reason": e.reason,
                }
                for e in events_
            ]
        )
        return
    start = records[0].at if records else 0.0
    for e in events_:
        out.print(
            f"+{e.at - start:8.1f}s {e.kind:<8} {e.rule} on {e.subject}: {e.reason}",
            markup=False,
            highlight=False,
        )
    out.print(f"{len(events_)} events over {len(records)} ticks", markup=False)


def main() -> None:
    """Console-script entry point."""
    if os.environ.get("WARDEN_DEBUG"):
        _logging("debug")
    try:
        app()
    except ApiError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_UNREACHABLE)
