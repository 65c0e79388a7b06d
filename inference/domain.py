"""Domain values of the model server: what goes into a prediction and what comes out.

Plain frozen values with no torch, no HTTP: the batcher moves them, the model produces them, the
HTTP layer turns them into JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inference.settings import DtypeChoice, QuantizeChoice, Task


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictItem:
    """One text to run through the model (``top_k`` matters only for fill-mask)."""

    text: str
    top_k: int = 5
    tokens: int = 0  # token count with special tokens (after truncation); the batcher's bucket key


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenScore:
    """One candidate for a masked position."""

    token: str
    score: float
    token_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """The model's answer for one item.

    ``label``/``score`` are the top-1 label and its probability (None for ``embed``); canaries
    check any task the same way. ``embedding`` is the L2-normalised mean-pooled sentence embedding;
    every task computes it because live-traffic observations are projections of it.
    """

    label: str | None
    score: float | None
    embedding: tuple[float, ...]
    scores: Mapping[str, float] | None = None  # classify, text-classification
    masks: tuple[tuple[TokenScore, ...], ...] | None = None  # fill-mask: per [MASK], best first


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What was loaded, as reported by ``/version`` and ``inference_model_info``."""

    name: str
    path: Path
    weights_sha256: str
    task: Task
    device: str
    hidden_size: int
    quantize: QuantizeChoice = "none"  # "dynamic-int8": the Linear layers run in int8
    dtype: DtypeChoice = "float32"


class Predictor(Protocol):
    """A loaded model for one task. ``predict_batch`` runs on the batch worker thread only."""

    @property
    def info(self) -> ModelInfo:
        """What was loaded."""
        ...

    def check_inputs(self, texts: Sequence[str]) -> None:
        """Raise ``InputError`` for inputs this task cannot answer (before they are queued)."""
        ...

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model will see it (special tokens in, truncated)."""
        ...

    def predict_batch(self, items: Sequence[PredictItem]) -> list[Prediction]:
        """One prediction per item, in order."""
        ...

    def warm_up(self, lengths: Sequence[int] = ()) -> None:
        """Run forward passes (one per sequence length in ``lengths``, or one short batch) so the
        first real request of each shape does not pay for lazy initialisation."""
        ...
