"""Observation ring buffer: cursor semantics and the fixed random projection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.observations import (
    PROJECTION_DIM,
    ItemFeatures,
    ObservationLog,
    Projection,
)


def features(n: int, width: int = 8) -> list[ItemFeatures]:
    rng = np.random.default_rng(n)
    return [
        ItemFeatures(embedding=list(rng.standard_normal(width)), confidence=0.5, label=f"l{i}")
        for i in range(n)
    ]


def test_projection_is_the_same_in_every_process_for_the_same_seed() -> None:
    first, second = Projection(384), Projection(384)
    vector = np.linspace(-1, 1, 384)
    assert np.array_equal(first.project([vector]), second.project([vector]))
    assert first.project([vector]).shape == (1, PROJECTION_DIM)


def test_a_different_seed_gives_a_different_projection() -> None:
    vector = np.ones(16)
    assert not np.allclose(
        Projection(16, seed=1).project([vector]), Projection(16).project([vector])
    )


def test_projection_roughly_keeps_the_length_of_unit_vectors() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((200, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lengths = np.linalg.norm(Projection(384).project(vectors), axis=1)
    assert math.isclose(float(lengths.mean()), 1.0, abs_tol=0.1)


def test_reading_from_the_start_returns_everything_in_order() -> None:
    log = ObservationLog(capacity=10)
    log.record(features(3), at=100.0)
    page = log.read(after=-1)
    assert [o.seq for o in page.observations] == [1, 2, 3]
    assert [o.label for o in page.observations] == ["l0", "l1", "l2"]
    assert (page.next, page.oldest, page.dim) == (3, 1, PROJECTION_DIM)
    assert all(len(o.features) == PROJECTION_DIM for o in page.observations)


def test_the_cursor_returns_only_newer_items_and_respects_the_limit() -> None:
    log = ObservationLog(capacity=10)
    log.record(features(5), at=1.0)
    page = log.read(after=1, limit=2)
    assert [o.seq for o in page.observations] == [2, 3]
    assert page.next == 3
    assert [o.seq for o in log.read(after=page.next).observations] == [4, 5]


def test_an_up_to_date_cursor_gets_nothing_and_keeps_its_place() -> None:
    log = ObservationLog(capacity=10)
    log.record(features(2), at=1.0)
    page = log.read(after=2)
    assert (page.observations, page.next, page.oldest) == ((), 2, 1)


def test_an_empty_ring_reports_the_next_sequence_number_as_oldest() -> None:
    page = ObservationLog(capacity=4).read()
    assert (page.observations, page.next, page.oldest) == ((), 0, 1)


def test_evicted_items_are_gone_and_oldest_shows_the_gap() -> None:
    log = ObservationLog(capacity=3)
    log.record(features(5), at=1.0)
    page = log.read(after=0)
    assert [o.seq for o in page.observations] == [3, 4, 5]
    assert page.oldest == 3  # > after + 1: two observations were missed


def test_a_cursor_from_a_previous_process_reads_from_the_oldest() -> None:
    log = ObservationLog(capacity=10)
    log.record(features(2), at=1.0)
    page = log.read(after=5000)
    assert [o.seq for o in page.observations] == [1, 2]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        ObservationLog(capacity=0)
