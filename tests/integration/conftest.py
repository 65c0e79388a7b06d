"""Shared fixtures for integration tests: real server processes on loopback, tiny models.

- ``free_port()`` - a free TCP port on 127.0.0.1.
- ``running_server(args, env=..., wait=...)`` - context manager: starts ``python -m inference`` on a
  free port, waits (polling with a deadline) until ``/ready`` or ``/health`` answers 200, yields a
  ``RunningServer`` (``url``, ``process``, ``logs()``) and always terminates the process.
- ``launch_server`` fixture - the same as a factory whose servers are stopped at test teardown.
- ``tiny_models`` fixture (session) - tiny random BERT models saved in a temp dir: a masked LM with
  Chinese characters in its vocabulary, a 3-label sequence classifier, and a "broken" masked LM
  whose tokenizer knows one more token than the model has embeddings (the model raises on it).
- ``default_server`` (session) - the packaged all-MiniLM-L6-v2 with the default intents (classify).

Nothing here imports torch at module level: the agent's tests must run without it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import pytest

from tests.integration.polling import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0  # torch import + model load on a busy 2-core machine

Wait = Literal["ready", "health", "none"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server process started by ``running_server``."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _answers(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_server(
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    wait: Wait = "ready",
    timeout: float = START_TIMEOUT_S,
) -> Iterator[RunningServer]:
    """Start ``python -m inference --port FREE *args``; stop it (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="inference-server-"))
    log_path = log_dir / "server.log"
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    command = [sys.executable, "-m", "inference", "--port", str(port), *args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = RunningServer(url=url, process=process, log_path=log_path)
    try:
        if wait != "none":
            path = "/ready" if wait == "ready" else "/health"

            def up() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited ({process.returncode}):\n{server.logs()}")
                return _answers(url, path)

            wait_until(up, timeout=timeout, what=f"{url}{path} to answer 200", logs=server.logs)
        yield server
    finally:
        stop_server(process)


def stop_server(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return int(process.returncode)


@pytest.fixture
def launch_server() -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``launch_server(args, env=None, wait="ready")``; servers stop at teardown."""
    with ExitStack() as stack:

        def launch(
            args: Sequence[str] = (),
            *,
            env: Mapping[str, str] | None = None,
            wait: Wait = "ready",
            timeout: float = START_TIMEOUT_S,
        ) -> RunningServer:
            return stack.enter_context(running_server(args, env=env, wait=wait, timeout=timeout))

        yield launch


@dataclass(frozen=True, slots=True)
class TinyModels:
    """Directories of tiny random models built for tests."""

    masked_lm: Path
    sequence_classifier: Path
    broken_masked_lm: Path  # the token "boom" has no embedding: the forward pass raises
    labels: tuple[str, ...]


TINY_VOCAB = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "床", "前", "明", "月", "光", "疑", "是", "地", "上", "霜", "，", "。",
    "the", "a", "is", "was", "good", "bad", "great", "awful", "movie", "service",
    "i", "love", "hate", "it", "this", "very", "not", "hello", "world", "boom",
)  # fmt: skip
TINY_LABELS = ("negative", "neutral", "positive")


def build_tiny_models(root: Path) -> TinyModels:
    """Save tiny random BERT models (+ tokenizers built from a vocab file) under ``root``."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertTokenizer,
    )

    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)

    def config(vocab_size: int, **extra: object) -> BertConfig:
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            **extra,
        )

    def save(model: torch.nn.Module, name: str) -> Path:
        directory = root / name
        model.save_pretrained(directory)  # type: ignore[operator]
        tokenizer.save_pretrained(directory)
        return directory

    torch.manual_seed(0)
    labels = dict(enumerate(TINY_LABELS))
    return TinyModels(
        masked_lm=save(BertForMaskedLM(config(len(TINY_VOCAB))), "tiny-mlm"),
        sequence_classifier=save(
            BertForSequenceClassification(
                config(
                    len(TINY_VOCAB),
                    num_labels=len(TINY_LABELS),
                    id2label=labels,
                    label2id={v: k for k, v in labels.items()},
                )
            ),
            "tiny-classifier",
        ),
        broken_masked_lm=save(BertForMaskedLM(config(len(TINY_VOCAB) - 1)), "tiny-broken-mlm"),
        labels=TINY_LABELS,
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny random BERT models, built once per test session."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def default_server() -> Iterator[RunningServer]:
    """The packaged all-MiniLM-L6-v2 routing the default intents (task classify), release v-test."""
    with running_server(["--release", "v-test"]) as server:
        yield server


@pytest.fixture(scope="session")
def classifier_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    """The tiny sequence classifier (task auto -> text-classification) with a small queue:
    ``--max-batch 2 --max-queue 8``, so tests can fill the queue on purpose."""
    args = ["--model", str(tiny_models.sequence_classifier), "--max-batch", "2"]
    with running_server([*args, "--max-queue", "8"]) as server:
        yield server


@pytest.fixture(scope="session")
def fill_mask_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    """The tiny masked LM (task auto -> fill-mask)."""
    with running_server(["--model", str(tiny_models.masked_lm)]) as server:
        yield server


# Prometheus, Alertmanager and the whole observed stack (tests/integration/conftest_obs.py).
from tests.integration.conftest_obs import obs_stack, obs_tools  # noqa: E402

__all__ = ["obs_stack", "obs_tools"]
