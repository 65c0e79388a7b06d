"""Live-traffic features for drift detection: a ring buffer of projected embeddings, never raw text.

Every item answered by ``/predict`` leaves one ``Observation``: a 32-dimensional projection of its
L2-normalised sentence embedding (mean-pooled last hidden state), its top-1 confidence and label.
The agent reads them through ``GET /v1/observations?after=CURSOR`` and runs per-feature two-sample
tests against a reference window.

Projection: ``features = embedding @ R`` with ``R[i, j] ~ N(0, 1/32)`` drawn once from
``numpy.random.default_rng(PROJECTION_SEED)`` for the model's hidden size. A Gaussian random
projection keeps distances and the shape of distributions approximately (Johnson-Lindenstrauss),
needs no fitting, and - because the seed is fixed - gives the same features in every process and
every release with the same hidden size, so a reference captured on one replica is comparable with
live traffic on another. It is not invertible to text: 32 numbers from a 384-dimensional embedding.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PROJECTION_DIM = 32
PROJECTION_SEED = 20_241_123

FloatMatrix = npt.NDArray[np.float64]


class Projection:
    """Fixed seeded Gaussian random projection from ``input_dim`` to ``dim`` features."""

    def __init__(self, input_dim: int, *, dim: int = PROJECTION_DIM, seed: int = PROJECTION_SEED):
        if input_dim < 1 or dim < 1:
            raise ValueError(f"projection needs positive sizes, got {input_dim} -> {dim}")
        rng = np.random.default_rng(seed)
        self.input_dim = input_dim
        self.dim = dim
        self.matrix: FloatMatrix = rng.standard_normal((input_dim, dim)) / math.sqrt(dim)

    def project(self, vectors: Sequence[Sequence[float]]) -> FloatMatrix:
        """Project each row of ``vectors`` (shape ``n x input_dim``) to ``dim`` features."""
        array = np.asarray(vectors, dtype=np.float64).reshape(-1, self.input_dim)
        return array @ self.matrix


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What the server keeps about one answered item."""

    seq: int
    at: float  # unix time the prediction was made
    features: tuple[float, ...]
    confidence: float | None
    label: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservationPage:
    """One read of the ring: pass ``next`` as ``after`` to continue where this page ended."""

    next: int
    oldest: int  # seq of the oldest observation kept (last seq + 1 when the ring is empty)
    dim: int
    observations: tuple[Observation, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemFeatures:
    """The inputs of one observation before it gets a sequence number."""

    embedding: Sequence[float]
    confidence: float | None
    label: str | None


class ObservationLog:
    """Bounded ring of observations with monotonically increasing sequence numbers from 1."""

    def __init__(
        self, *, capacity: int, dim: int = PROJECTION_DIM, seed: int = PROJECTION_SEED
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.dim = dim
        self._seed = seed
        self._projection: Projection | None = None  # sized by the first embedding seen
        self._ring: deque[Observation] = deque(maxlen=capacity)
        self._last_seq = 0
        self._lock = threading.Lock()

    def record(self, items: Sequence[ItemFeatures], *, at: float) -> None:
        """Project and append one observation per item, in order."""
        if not items:
            return
        with self._lock:
            if self._projection is None:
                width = len(items[0].embedding)
                self._projection = Projection(width, dim=self.dim, seed=self._seed)
            features = np.round(self._projection.project([i.embedding for i in items]), 6)
            for item, row in zip(items, features, strict=True):
                self._last_seq += 1
                self._ring.append(
                    Observation(
                        seq=self._last_seq,
                        at=at,
                        features=tuple(float(x) for x in row),
                        confidence=item.confidence,
                        label=item.label,
                    )
                )

    def read(self, *, after: int = -1, limit: int = 1000) -> ObservationPage:
        """Observations with ``seq > after``, oldest first, at most ``limit``.

        ``after`` < 0 reads from the oldest kept. A cursor beyond the last sequence number (from
        a previous process of this server) is treated the same way, so a restart never strands a
        reader. Observations evicted from the ring are gone: compare ``oldest`` with ``after + 1``
        to see whether any were missed.
        """
        with self._lock:
            last = self._last_seq
            start = -1 if after < 0 or after > last else after
            oldest = self._ring[0].seq if self._ring else last + 1
            skip = max(0, start + 1 - oldest)  # seqs in the ring are contiguous
            page = tuple(itertools.islice(self._ring, skip, skip + max(limit, 0)))
        empty_cursor = last if start < 0 else start
        cursor = page[-1].seq if page else empty_cursor
        return ObservationPage(next=cursor, oldest=oldest, dim=self.dim, observations=page)
